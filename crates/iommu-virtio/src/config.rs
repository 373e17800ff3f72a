//! What the VMM chooses for its device: the features it offers, the
//! configuration space the driver reads, the guest-physical range mappings
//! may target, and the bounds on what a guest can grow.

use crate::spec::{feature, size};

/// Bounds on what a guest can make the device hold. Past one, the request
/// gets NOMEM and changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Limits {
    /// Domains that exist at once.
    pub domains: usize,
    /// Mappings in one domain.
    pub mappings_per_domain: usize,
    /// Mappings in all domains together.
    pub mappings: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            domains: 4096,
            mappings_per_domain: 1 << 20,
            mappings: 1 << 22,
        }
    }
}

/// The device as the VMM configures it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DeviceConfig {
    /// The features offered (`VERSION_1` is always added).
    pub features: u64,
    /// Page sizes that can be mapped; the lowest set bit is the granule.
    pub page_size_mask: u64,
    /// The addresses the device translates, inclusive (with
    /// `INPUT_RANGE`; without it, the whole 64-bit space).
    pub input_range: (u64, u64),
    /// The domain ids the device supports, inclusive (with
    /// `DOMAIN_RANGE`; without it, any id).
    pub domain_range: (u32, u32),
    /// Bytes of properties a PROBE request carries.
    pub probe_size: u32,
    /// The `bypass` field's value at system reset (with `BYPASS_CONFIG`).
    pub bypass: bool,
    /// The guest-physical addresses a mapping may translate to, inclusive.
    pub phys_range: (u64, u64),
    /// Bounds on what a guest can grow.
    pub limits: Limits,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            features: feature::INPUT_RANGE
                | feature::DOMAIN_RANGE
                | feature::MAP_UNMAP
                | feature::PROBE
                | feature::MMIO
                | feature::BYPASS_CONFIG
                | feature::VERSION_1,
            page_size_mask: !0xfff,
            input_range: (0, u64::MAX),
            domain_range: (0, u32::MAX),
            probe_size: 512,
            bypass: false,
            phys_range: (0, u64::MAX),
            limits: Limits::default(),
        }
    }
}

/// A configuration the device cannot present.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `page_size_mask` has no bit set.
    #[error("page_size_mask needs at least one bit")]
    NoPageSize,
    /// A range whose start is past its end.
    #[error("{0} starts after it ends")]
    EmptyRange(&'static str),
    /// Both bypass features offered.
    #[error("BYPASS and BYPASS_CONFIG are not offered together")]
    BothBypass,
    /// `bypass` set to 1 without the feature that presents it.
    #[error("an initial bypass of 1 needs BYPASS_CONFIG")]
    BypassWithoutFeature,
    /// A feature the device does not implement.
    #[error("feature bits {0:#x} are not implemented")]
    UnknownFeature(u64),
    /// `probe_size` too small for a property (PROBE offered), or larger
    /// than [`MAX_PROBE_SIZE`].
    #[error("probe_size {0} cannot hold a RESV_MEM property or is over {MAX_PROBE_SIZE}")]
    ProbeSize(u32),
}

/// The largest `probe_size` a device presents: a PROBE reply is built in
/// host memory before it is copied to the guest, so it is kept bounded.
pub const MAX_PROBE_SIZE: u32 = 64 * 1024;

/// Every feature this device implements.
pub const IMPLEMENTED: u64 = feature::INPUT_RANGE
    | feature::DOMAIN_RANGE
    | feature::MAP_UNMAP
    | feature::BYPASS
    | feature::PROBE
    | feature::MMIO
    | feature::BYPASS_CONFIG
    | feature::VERSION_1;

impl DeviceConfig {
    /// Checks what the specification asks of the configuration.
    ///
    /// # Errors
    /// A [`ConfigError`] for the first rule broken.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.page_size_mask == 0 {
            return Err(ConfigError::NoPageSize);
        }
        if self.input_range.0 > self.input_range.1 {
            return Err(ConfigError::EmptyRange("input_range"));
        }
        if self.domain_range.0 > self.domain_range.1 {
            return Err(ConfigError::EmptyRange("domain_range"));
        }
        if self.phys_range.0 > self.phys_range.1 {
            return Err(ConfigError::EmptyRange("phys_range"));
        }
        let unknown = self.features & !IMPLEMENTED;
        if unknown != 0 {
            return Err(ConfigError::UnknownFeature(unknown));
        }
        if self.features & feature::BYPASS != 0 && self.features & feature::BYPASS_CONFIG != 0 {
            return Err(ConfigError::BothBypass);
        }
        if self.bypass && self.features & feature::BYPASS_CONFIG == 0 {
            return Err(ConfigError::BypassWithoutFeature);
        }
        let too_small =
            self.features & feature::PROBE != 0 && (self.probe_size as usize) < size::RESV_MEM;
        if too_small || self.probe_size > MAX_PROBE_SIZE {
            return Err(ConfigError::ProbeSize(self.probe_size));
        }
        Ok(())
    }

    /// The page granule: the lowest page size.
    pub fn granule(&self) -> u64 {
        self.page_size_mask & self.page_size_mask.wrapping_neg()
    }
}

/// Byte offsets in `struct virtio_iommu_config`.
pub mod offset {
    /// `page_size_mask`.
    pub const PAGE_SIZE_MASK: usize = 0;
    /// `input_range.start`.
    pub const INPUT_START: usize = 8;
    /// `input_range.end`.
    pub const INPUT_END: usize = 16;
    /// `domain_range.start`.
    pub const DOMAIN_START: usize = 24;
    /// `domain_range.end`.
    pub const DOMAIN_END: usize = 28;
    /// `probe_size`.
    pub const PROBE_SIZE: usize = 32;
    /// `bypass`.
    pub const BYPASS: usize = 36;
}

/// The configuration space's bytes, with `bypass` as it stands.
pub(crate) fn layout(c: &DeviceConfig, bypass: bool) -> [u8; size::CONFIG] {
    let mut b = [0u8; size::CONFIG];
    b[0..8].copy_from_slice(&c.page_size_mask.to_le_bytes());
    b[8..16].copy_from_slice(&c.input_range.0.to_le_bytes());
    b[16..24].copy_from_slice(&c.input_range.1.to_le_bytes());
    b[24..28].copy_from_slice(&c.domain_range.0.to_le_bytes());
    b[28..32].copy_from_slice(&c.domain_range.1.to_le_bytes());
    b[32..36].copy_from_slice(&c.probe_size.to_le_bytes());
    b[offset::BYPASS] = u8::from(bypass);
    b
}
