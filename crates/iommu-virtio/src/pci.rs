//! The virtio-pci modern transport (virtio 1.2, 4.1), the guest's side,
//! `no_std`: what a kernel needs to run [`driver::Viommu`](crate::driver::Viommu)
//! on a virtio-iommu PCI function, as QEMU's `virtio-iommu-pci` is.
//!
//! A modern virtio-pci function describes its registers with
//! vendor-specific capabilities in configuration space, each naming a BAR,
//! an offset and a length: the common configuration (features, status,
//! queue set-up), the notification area, the ISR byte and the device's
//! own configuration (for virtio-iommu: page sizes, input range, domain
//! range, probe size, bypass). [`VirtioPciCaps::parse`] reads them from
//! the function's configuration space bytes; [`PciTransport`] drives the
//! registers through [`PciBars`], the embedder's access to the BARs it
//! assigned and mapped.
//!
//! ```
//! use iommu_virtio::pci::{PciRegion, VirtioPciCaps};
//!
//! // Configuration space with the capability list QEMU's virtio-pci
//! // functions carry: common, ISR, device and notification structures
//! // in BAR 4.
//! let mut cfg = [0u8; 256];
//! cfg[0x06] = 0x10; // status: a capability list
//! cfg[0x34] = 0x40;
//! let caps: [(u8, u8, u32, u32, u8); 4] =
//!     [(1, 0x40, 0x0000, 0x1000, 0x50), (3, 0x50, 0x1000, 0x1000, 0x60),
//!      (4, 0x60, 0x2000, 0x1000, 0x70), (2, 0x70, 0x3000, 0x1000, 0x00)];
//! for (ty, at, offset, length, next) in caps {
//!     let at = usize::from(at);
//!     cfg[at] = 0x09; // vendor-specific
//!     cfg[at + 1] = next;
//!     cfg[at + 2] = if ty == 2 { 20 } else { 16 };
//!     cfg[at + 3] = ty;
//!     cfg[at + 4] = 4; // BAR 4
//!     cfg[at + 8..at + 12].copy_from_slice(&offset.to_le_bytes());
//!     cfg[at + 12..at + 16].copy_from_slice(&length.to_le_bytes());
//! }
//! cfg[0x70 + 16..0x70 + 20].copy_from_slice(&4u32.to_le_bytes()); // notify_off_multiplier
//! let parsed = VirtioPciCaps::parse(&cfg).unwrap();
//! assert_eq!(parsed.common, PciRegion { bar: 4, offset: 0, length: 0x1000 });
//! assert_eq!(parsed.notify_off_multiplier, 4);
//! assert_eq!(parsed.device, Some(PciRegion { bar: 4, offset: 0x2000, length: 0x1000 }));
//! ```

use crate::driver::{QueueLayout, Transport};
use alloc::collections::BTreeMap;
use iommu_core::sync::Mutex;
use iommu_core::Errno;

/// The vendor-specific capability's id in PCI configuration space.
const CAP_VENDOR: u8 = 0x09;

/// The `cfg_type` values of a virtio-pci capability.
pub mod cap {
    /// Common configuration.
    pub const COMMON: u8 = 1;
    /// Notifications.
    pub const NOTIFY: u8 = 2;
    /// The ISR status byte.
    pub const ISR: u8 = 3;
    /// Device-specific configuration.
    pub const DEVICE: u8 = 4;
    /// The configuration-space access window (not used: BARs are mapped).
    pub const PCI: u8 = 5;
}

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest knows how to drive it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    /// The guest gave up on the device.
    pub const FAILED: u8 = 0x80;
}

/// Offsets in the common configuration structure (`virtio_pci_common_cfg`).
pub mod common {
    /// `device_feature_select` (32 bits).
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// `device_feature` (32 bits).
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// `driver_feature_select` (32 bits).
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// `driver_feature` (32 bits).
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// `num_queues` (16 bits).
    pub const NUM_QUEUES: u64 = 0x12;
    /// `device_status` (8 bits).
    pub const DEVICE_STATUS: u64 = 0x14;
    /// `config_generation` (8 bits).
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// `queue_select` (16 bits).
    pub const QUEUE_SELECT: u64 = 0x16;
    /// `queue_size` (16 bits).
    pub const QUEUE_SIZE: u64 = 0x18;
    /// `queue_msix_vector` (16 bits).
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// `queue_enable` (16 bits).
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// `queue_notify_off` (16 bits).
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// `queue_desc` (64 bits, written as two 32-bit halves).
    pub const QUEUE_DESC: u64 = 0x20;
    /// `queue_driver` (the available ring).
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// `queue_device` (the used ring).
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// The structure's length up to `queue_device`'s end.
    pub const LEN: u32 = 0x38;
}

/// "No MSI-X vector" for `queue_msix_vector`.
const NO_VECTOR: u16 = 0xffff;

/// One structure's place: a BAR, an offset in it, a length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciRegion {
    /// The BAR (0 to 5).
    pub bar: u8,
    /// Where the structure starts in the BAR.
    pub offset: u32,
    /// Its length in bytes.
    pub length: u32,
}

/// The structures a modern virtio-pci function's capabilities describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioPciCaps {
    /// The common configuration.
    pub common: PciRegion,
    /// The notification area.
    pub notify: PciRegion,
    /// Queue `q`'s notification address is `notify.offset +
    /// queue_notify_off(q) * notify_off_multiplier`.
    pub notify_off_multiplier: u32,
    /// The ISR status byte.
    pub isr: PciRegion,
    /// The device-specific configuration, when the device has one.
    pub device: Option<PciRegion>,
}

/// Why a function's configuration space is no modern virtio-pci function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PciCapsError {
    /// Fewer than 64 bytes of configuration space.
    #[error("configuration space of {0} bytes: the header alone is 64")]
    Short(usize),
    /// The status register says there is no capability list.
    #[error("the function has no capability list")]
    NoCapabilities,
    /// The list points into the header, past the space given, or loops.
    #[error("the capability list is malformed at {0:#x}")]
    BadList(usize),
    /// A structure every modern function has is missing (1 common, 2
    /// notify, 3 ISR), or its region is too small for it.
    #[error("no usable virtio-pci capability of type {0}")]
    Missing(u8),
}

/// The most capabilities a list may hold before it is taken for a loop:
/// each takes at least 4 of the 192 bytes after the header.
const MAX_CAPS: usize = 48;

impl VirtioPciCaps {
    /// Reads the virtio-pci capabilities from a function's configuration
    /// space (`config`: its first 256 bytes, or all 4096). The first
    /// usable capability of each type is taken, as the specification asks
    /// (4.1.4); capabilities naming a reserved BAR, shorter than their
    /// type needs, of an unknown type, or misaligned for the accesses
    /// their registers take (a common structure off 4 bytes, a
    /// notification structure off 2 or with an odd multiplier) are
    /// skipped.
    ///
    /// # Errors
    /// See [`PciCapsError`]. Bounded: at most 48 capabilities are read.
    pub fn parse(config: &[u8]) -> Result<VirtioPciCaps, PciCapsError> {
        if config.len() < 64 {
            return Err(PciCapsError::Short(config.len()));
        }
        let limit = config.len().min(256);
        if config[0x06] & 0x10 == 0 {
            return Err(PciCapsError::NoCapabilities);
        }
        let (mut common, mut notify, mut isr, mut device) = (None, None, None, None);
        let mut multiplier = 0;
        let mut at = usize::from(config[0x34] & !3);
        let mut seen = 0;
        while at != 0 {
            if at < 0x40 || at + 2 > limit || seen == MAX_CAPS {
                return Err(PciCapsError::BadList(at));
            }
            seen += 1;
            let next = usize::from(config[at + 1] & !3);
            if config[at] == CAP_VENDOR && at + 16 <= limit {
                let cap_len = usize::from(config[at + 2]);
                let ty = config[at + 3];
                let bar = config[at + 4];
                let word = |o: usize| {
                    u32::from_le_bytes([
                        config[at + o],
                        config[at + o + 1],
                        config[at + o + 2],
                        config[at + o + 3],
                    ])
                };
                let region = PciRegion {
                    bar,
                    offset: word(8),
                    length: word(12),
                };
                let fits = region.offset.checked_add(region.length).is_some();
                if bar <= 5 && cap_len >= 16 && fits {
                    match ty {
                        cap::COMMON
                            if common.is_none()
                                && region.length >= common::LEN
                                && region.offset.is_multiple_of(4) =>
                        {
                            common = Some(region)
                        }
                        cap::NOTIFY
                            if notify.is_none()
                                && cap_len >= 20
                                && at + 20 <= limit
                                && region.length >= 2
                                && region.offset.is_multiple_of(2)
                                && word(16).is_multiple_of(2) =>
                        {
                            notify = Some(region);
                            multiplier = word(16);
                        }
                        cap::ISR if isr.is_none() && region.length >= 1 => isr = Some(region),
                        cap::DEVICE if device.is_none() => device = Some(region),
                        _ => {}
                    }
                }
            }
            at = next;
        }
        Ok(VirtioPciCaps {
            common: common.ok_or(PciCapsError::Missing(cap::COMMON))?,
            notify: notify.ok_or(PciCapsError::Missing(cap::NOTIFY))?,
            notify_off_multiplier: multiplier,
            isr: isr.ok_or(PciCapsError::Missing(cap::ISR))?,
            device,
        })
    }
}

/// The embedder's access to the function's BARs, as it assigned and
/// mapped them: little-endian accesses of one width at `offset` bytes
/// into BAR `bar`. [`PciTransport`] only accesses inside the regions the
/// capabilities name, at offsets aligned to the access's width.
pub trait PciBars: Send + Sync {
    /// Reads a byte.
    fn read8(&self, bar: u8, offset: u64) -> u8;
    /// Reads 16 bits.
    fn read16(&self, bar: u8, offset: u64) -> u16;
    /// Reads 32 bits.
    fn read32(&self, bar: u8, offset: u64) -> u32;
    /// Writes a byte.
    fn write8(&self, bar: u8, offset: u64, v: u8);
    /// Writes 16 bits.
    fn write16(&self, bar: u8, offset: u64, v: u16);
    /// Writes 32 bits.
    fn write32(&self, bar: u8, offset: u64, v: u32);
}

/// How many times [`PciTransport`] rereads the device's configuration
/// when `config_generation` changes under it, and polls for a reset to
/// complete, before giving up.
const RETRIES: usize = 1 << 16;

/// A virtio-pci modern function as a [`Transport`]: the driver's side of
/// the common configuration, the notification area and the device's
/// configuration, through [`PciBars`].
///
/// [`PciTransport::new`] resets the device and sets ACKNOWLEDGE and
/// DRIVER; the driver's probe then negotiates features (FEATURES_OK),
/// sets up its queues and sets DRIVER_OK. Interrupts are not used: queue
/// vectors are left unassigned, and the driver polls its used rings.
pub struct PciTransport<B> {
    bars: B,
    caps: VirtioPciCaps,
    /// Each ready queue's notification offset, in bytes from the
    /// notification area's start.
    notify_at: Mutex<BTreeMap<u16, u64>>,
}

impl<B> core::fmt::Debug for PciTransport<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PciTransport")
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

impl<B: PciBars> PciTransport<B> {
    /// Resets the function described by `caps` (whose BARs `bars`
    /// reaches) and sets ACKNOWLEDGE and DRIVER.
    ///
    /// # Errors
    /// `ENODEV` when the reset does not complete (the status never reads
    /// back 0).
    pub fn new(bars: B, caps: VirtioPciCaps) -> Result<PciTransport<B>, Errno> {
        let t = PciTransport {
            bars,
            caps,
            notify_at: Mutex::new(BTreeMap::new()),
        };
        t.set_status(0);
        if !(0..RETRIES).any(|_| t.status() == 0) {
            return Err(Errno::ENODEV);
        }
        t.set_status(status::ACKNOWLEDGE);
        t.set_status(status::ACKNOWLEDGE | status::DRIVER);
        Ok(t)
    }

    /// The capabilities the transport drives.
    pub fn caps(&self) -> &VirtioPciCaps {
        &self.caps
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        self.bars
            .read8(self.caps.common.bar, self.common(common::DEVICE_STATUS))
    }

    /// Marks the device FAILED (the driver gave up on it).
    pub fn fail(&self) {
        self.set_status(self.status() | status::FAILED);
    }

    /// Resets the device: it forgets its queues, features and domains.
    pub fn reset(&self) {
        self.set_status(0);
        let _ = (0..RETRIES).any(|_| self.status() == 0);
        self.notify_at.lock().clear();
    }

    /// Reads and clears the ISR status byte (bit 0: a used buffer, bit 1:
    /// a configuration change).
    pub fn isr(&self) -> u8 {
        self.bars
            .read8(self.caps.isr.bar, u64::from(self.caps.isr.offset))
    }

    /// The number of queues the device has.
    pub fn num_queues(&self) -> u16 {
        self.bars
            .read16(self.caps.common.bar, self.common(common::NUM_QUEUES))
    }

    fn common(&self, field: u64) -> u64 {
        u64::from(self.caps.common.offset) + field
    }

    fn set_status(&self, s: u8) {
        self.bars
            .write8(self.caps.common.bar, self.common(common::DEVICE_STATUS), s);
    }

    fn write64(&self, field: u64, v: u64) {
        let bar = self.caps.common.bar;
        self.bars.write32(bar, self.common(field), v as u32);
        self.bars
            .write32(bar, self.common(field) + 4, (v >> 32) as u32);
    }

    /// One read of `buf.len()` bytes of device configuration at `at`,
    /// byte by byte (the fields a driver reads are 8 to 64 bits wide;
    /// byte accesses are allowed for all of them on PCI).
    fn read_device(&self, region: PciRegion, at: usize, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = match at.checked_add(i) {
                Some(o) if o < region.length as usize => self
                    .bars
                    .read8(region.bar, u64::from(region.offset) + o as u64),
                _ => 0,
            };
        }
    }
}

impl<B: PciBars> Transport for PciTransport<B> {
    fn device_features(&self) -> u64 {
        let bar = self.caps.common.bar;
        let mut features = 0u64;
        for half in 0..2u32 {
            self.bars
                .write32(bar, self.common(common::DEVICE_FEATURE_SELECT), half);
            let v = self.bars.read32(bar, self.common(common::DEVICE_FEATURE));
            features |= u64::from(v) << (32 * half);
        }
        features
    }

    fn set_driver_features(&self, features: u64) -> Result<(), Errno> {
        let bar = self.caps.common.bar;
        for half in 0..2u32 {
            self.bars
                .write32(bar, self.common(common::DRIVER_FEATURE_SELECT), half);
            self.bars.write32(
                bar,
                self.common(common::DRIVER_FEATURE),
                (features >> (32 * half)) as u32,
            );
        }
        self.set_status(self.status() | status::FEATURES_OK);
        if self.status() & status::FEATURES_OK == 0 {
            self.fail();
            return Err(Errno::ENODEV);
        }
        Ok(())
    }

    /// Reads the device configuration; rereads it while
    /// `config_generation` changes under the read (a consistent
    /// snapshot). Bytes past the structure read as zero; without a device
    /// configuration, all do.
    fn read_config(&self, at: usize, buf: &mut [u8]) {
        let Some(region) = self.caps.device else {
            buf.fill(0);
            return;
        };
        let bar = self.caps.common.bar;
        let generation = || self.bars.read8(bar, self.common(common::CONFIG_GENERATION));
        for _ in 0..RETRIES {
            let before = generation();
            self.read_device(region, at, buf);
            if generation() == before {
                return;
            }
        }
    }

    fn write_config(&self, at: usize, data: &[u8]) -> Result<(), Errno> {
        let region = self.caps.device.ok_or(Errno::EOPNOTSUPP)?;
        let end = at.checked_add(data.len()).ok_or(Errno::EINVAL)?;
        if end > region.length as usize {
            return Err(Errno::EINVAL);
        }
        for (i, &b) in data.iter().enumerate() {
            self.bars
                .write8(region.bar, u64::from(region.offset) + (at + i) as u64, b);
        }
        Ok(())
    }

    /// Selects queue `index`, checks its size against the device's
    /// maximum, writes the three ring addresses and enables it.
    ///
    /// # Errors
    /// `ENOENT` when the device has no such queue (its size reads 0) or
    /// its notification address falls outside the notification area;
    /// `EINVAL` when `layout.size` is over the device's maximum or not a
    /// power of two.
    fn queue_ready(&self, index: u16, layout: QueueLayout) -> Result<(), Errno> {
        let bar = self.caps.common.bar;
        self.bars
            .write16(bar, self.common(common::QUEUE_SELECT), index);
        let max = self.bars.read16(bar, self.common(common::QUEUE_SIZE));
        if max == 0 {
            return Err(Errno::ENOENT);
        }
        if layout.size > max || !layout.size.is_power_of_two() {
            return Err(Errno::EINVAL);
        }
        let notify_off = self.bars.read16(bar, self.common(common::QUEUE_NOTIFY_OFF));
        let at = u64::from(notify_off) * u64::from(self.caps.notify_off_multiplier);
        if at + 2 > u64::from(self.caps.notify.length) {
            return Err(Errno::ENOENT);
        }
        self.bars
            .write16(bar, self.common(common::QUEUE_SIZE), layout.size);
        self.bars
            .write16(bar, self.common(common::QUEUE_MSIX_VECTOR), NO_VECTOR);
        self.write64(common::QUEUE_DESC, layout.desc);
        self.write64(common::QUEUE_DRIVER, layout.avail);
        self.write64(common::QUEUE_DEVICE, layout.used);
        self.bars.write16(bar, self.common(common::QUEUE_ENABLE), 1);
        self.notify_at.lock().insert(index, at);
        Ok(())
    }

    fn queue_max_size(&self, index: u16) -> Option<u16> {
        let bar = self.caps.common.bar;
        self.bars
            .write16(bar, self.common(common::QUEUE_SELECT), index);
        Some(self.bars.read16(bar, self.common(common::QUEUE_SIZE)))
    }

    fn notify(&self, index: u16) {
        let Some(at) = self.notify_at.lock().get(&index).copied() else {
            return;
        };
        self.bars.write16(
            self.caps.notify.bar,
            u64::from(self.caps.notify.offset) + at,
            index,
        );
    }

    fn driver_ok(&self) {
        self.set_status(self.status() | status::DRIVER_OK);
    }
}
