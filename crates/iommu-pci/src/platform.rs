//! The machine around the PCI tree: which IOMMU translates it (a driver
//! property: which devices it covers, and facts vendor quirks test), the
//! kernel parameters, and quirks a platform declares by hand.

use crate::quirks::vendor;
use crate::{Bdf, DeviceQuirks, Function, KernelParams};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

/// The IOMMU in front of the PCI devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IommuKind {
    /// An IOMMU that covers every function and has no vendor rules (the
    /// software IOMMU, virtio-iommu, an SMMU).
    #[default]
    Generic,
    /// Intel VT-d: covers every function.
    IntelVtd,
    /// AMD-Vi: its ACPI IVRS table exists (which an AMD southbridge ACS
    /// quirk tests); the IOMMU's own PCI function is not translated by
    /// itself (Linux removes it from the IVRS lookup), nor is the root
    /// complex function at device 0 function 0, which the firmware's IVRS
    /// device ranges leave out on AMD platforms (seen on every AMD
    /// machine of the test corpus).
    AmdVi,
    /// An Arm SMMU described by ACPI IORT: the root complex function at
    /// device 0 function 0 of each root bus is outside the ID mappings the
    /// firmware gives (seen on the Arm servers of the test corpus); and,
    /// as arm-smmu-v3 does, one master per stream id: a device whose DMA
    /// carries a requester id another device already holds (two devices
    /// behind one PCIe-to-PCI bridge) is refused and gets no group.
    ArmSmmu,
    /// A virtio-iommu described by ACPI VIOT (or a device tree): covers
    /// every function but its own (the IOMMU does not translate itself);
    /// `x86` when the machine around it is an x86 PC (an Intel or AMD
    /// host bridge), which sets the kernel's default invalidation policy
    /// and the MSI range the device reports.
    VirtioIommu {
        /// The machine is an x86 PC.
        x86: bool,
    },
}

impl IommuKind {
    /// Whether the IOMMU translates `f`'s DMA, so that `f` gets a group.
    pub fn covers(self, f: &Function) -> bool {
        self.why_not_covered(f).is_none()
    }

    /// Why the IOMMU does not translate `f`, when it does not.
    pub fn why_not_covered(self, f: &Function) -> Option<&'static str> {
        let root_complex = f.class >> 8 == 0x0600 && f.bdf.devfn == 0;
        match self {
            IommuKind::AmdVi if f.vendor == vendor::AMD && f.class >> 8 == 0x0806 => {
                Some("AMD-Vi does not translate the IOMMU's own function")
            }
            IommuKind::AmdVi if f.vendor == vendor::AMD && root_complex => {
                Some("AMD-Vi's firmware table (IVRS) leaves out the root complex at device 0 function 0")
            }
            IommuKind::VirtioIommu { .. }
                if f.vendor == vendor::RED_HAT_VIRTIO && f.device == VIRTIO_IOMMU_DEVICE =>
            {
                Some("the virtio-iommu does not translate its own function")
            }
            IommuKind::ArmSmmu if root_complex => {
                Some("the Arm SMMU's ID mappings (IORT) leave out the root complex at device 0 function 0")
            }
            _ => None,
        }
    }

    /// The IOMMU a machine most likely has: AMD-Vi where an AMD IOMMU
    /// function (class 0806) is present, an Arm SMMU where a root complex
    /// is an Arm server vendor's, VT-d where the host bridge is Intel's,
    /// otherwise a generic one.
    pub fn detect(functions: &[Function]) -> IommuKind {
        /// Vendors of Arm server root complexes: Ampere, Huawei, Cavium,
        /// Qualcomm, HXT, Amazon, Phytium, Arm.
        const ARM: [u16; 8] = [
            0x1def, 0x19e5, 0x177d, 0x17cb, 0x1dbf, 0x1c36, 0x1db7, 0x13b5,
        ];
        if functions
            .iter()
            .any(|f| f.vendor == vendor::AMD && f.class >> 8 == 0x0806)
        {
            IommuKind::AmdVi
        } else if functions
            .iter()
            .any(|f| f.class >> 8 == 0x0600 && f.bdf.devfn == 0 && ARM.contains(&f.vendor))
        {
            IommuKind::ArmSmmu
        } else if functions
            .iter()
            .any(|f| f.vendor == vendor::INTEL && f.class >> 8 == 0x0600 && f.bdf.bus == 0)
        {
            IommuKind::IntelVtd
        } else {
            IommuKind::Generic
        }
    }

    /// Whether the IOMMU is an x86 one (VT-d, AMD-Vi, a virtio-iommu on a
    /// PC): where Linux's x86 defaults apply (lazy invalidation) and the
    /// IOMMU reports the hardware's MSI range instead of getting a
    /// software MSI window.
    pub fn is_x86(self) -> bool {
        matches!(
            self,
            IommuKind::IntelVtd | IommuKind::AmdVi | IommuKind::VirtioIommu { x86: true }
        )
    }

    /// Whether Linux 6.12 built with its own defaults gives translated
    /// default domains a flush queue (lazy invalidation, sysfs type
    /// `DMA-FQ`) when the command line says nothing: Kconfig's default is
    /// `IOMMU_DEFAULT_DMA_LAZY` on x86 and `IOMMU_DEFAULT_DMA_STRICT`
    /// elsewhere. (A VT-d in caching mode, as a hypervisor's virtual VT-d
    /// may be, makes the kernel strict: the registers PCI shows cannot say
    /// so.)
    pub fn lazy_by_default(self) -> bool {
        self.is_x86()
    }

    /// A virtio-iommu on the machine of `functions`: an x86 PC when its
    /// host bridge at 00:00.0 is Intel's or AMD's.
    pub fn virtio_on(functions: &[Function]) -> IommuKind {
        let x86 = functions.iter().any(|f| {
            f.bdf.bus == 0
                && f.bdf.devfn == 0
                && f.class >> 8 == 0x0600
                && (f.vendor == vendor::INTEL || f.vendor == vendor::AMD)
        });
        IommuKind::VirtioIommu { x86 }
    }
}

/// Whether the AMD IOMMU function among `functions` reports NpCache (bit
/// 26 of its IOMMU capability header, which amd_iommu reads at the offset
/// the IVRS gives; 0x40 on every AMD IOMMU seen, as on QEMU's). A listing
/// that only rebuilt the bytes (`lspci -vvv` does not decode that
/// capability) says nothing of it: then QEMU's IOMMU (subsystem vendor Red
/// Hat) is known to set it, and hardware IOMMUs do not.
pub fn amd_np_cache<'a>(functions: impl IntoIterator<Item = &'a Function>) -> bool {
    const SECURE_DEVICE_CAP: u8 = 0x0f;
    const NP_CACHE: u32 = 1 << 26;
    functions
        .into_iter()
        .filter(|f| f.vendor == vendor::AMD && f.class >> 8 == 0x0806)
        .any(|f| {
            if f.reconstructed {
                return f.subsystem.0 == vendor::RED_HAT_VIRTIO;
            }
            let at = f
                .capabilities
                .iter()
                .find(|&&(id, _)| id == SECURE_DEVICE_CAP)
                .map(|&(_, off)| off)
                .or_else(|| (f.config.read_u8(0x40) == Some(SECURE_DEVICE_CAP)).then_some(0x40));
            at.and_then(|off| f.config.read_u32(off))
                .is_some_and(|hdr| hdr & NP_CACHE != 0)
        })
}

/// The virtio-iommu's PCI device id (virtio device type 23, modern).
pub const VIRTIO_IOMMU_DEVICE: u16 = 0x1040 + 23;

impl fmt::Display for IommuKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IommuKind::Generic => "generic",
            IommuKind::IntelVtd => "intel-vtd",
            IommuKind::AmdVi => "amd-vi",
            IommuKind::ArmSmmu => "arm-smmu",
            IommuKind::VirtioIommu { .. } => "virtio",
        })
    }
}

/// Everything grouping depends on beyond configuration space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// The IOMMU.
    pub iommu: IommuKind,
    /// Kernel parameters.
    pub params: KernelParams,
    /// Apply Linux 6.12's quirk tables by vendor and device id (the
    /// default); off, only the registers and [`quirks`](Self::quirks)
    /// count.
    pub linux_quirks: bool,
    /// Quirks declared by hand, by address (firmware-provided aliases such
    /// as AMD's IVRS alias entries, or devices of a hand-made platform);
    /// they add to Linux's.
    pub quirks: BTreeMap<Bdf, DeviceQuirks>,
    /// Addresses the IOMMU does not cover, beyond what
    /// [`IommuKind::covers`] leaves out (devices outside the firmware's
    /// IOMMU scope).
    pub not_covered: Vec<Bdf>,
    /// The kernel whose rules apply where they changed between versions
    /// (Linux 6.12, the rules modelled, by default).
    pub kernel: KernelVersion,
}

/// A Linux version, as far as the rules that changed between versions
/// care: major and minor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelVersion {
    /// Major version (`6` of 6.12).
    pub major: u16,
    /// Minor version (`12` of 6.12).
    pub minor: u16,
}

impl KernelVersion {
    /// Linux 6.12, whose rules this crate follows.
    pub const V6_12: KernelVersion = KernelVersion {
        major: 6,
        minor: 12,
    };

    /// Whether arm-smmu-v3 refuses a master whose stream ids hold one id
    /// twice (a device behind a PCIe-to-PCI bridge whose alias is its own
    /// requester id): it inserted the second copy into its stream tree,
    /// found the first, and failed the probe (`stream already in tree`),
    /// until the fix `iommu/arm-smmu-v3: Fix iommu_device_probe bug due to
    /// duplicated stream ids` (mainline 6.15, carried by the 6.12 stable
    /// series).
    pub fn arm_smmu_refuses_duplicate_stream_ids(self) -> bool {
        self < KernelVersion::V6_12
    }
}

impl Default for KernelVersion {
    fn default() -> Self {
        KernelVersion::V6_12
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A version that is not `MAJOR.MINOR[...]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelVersionError;

impl fmt::Display for KernelVersionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "not a kernel version (MAJOR.MINOR, as `uname -r` begins: 6.8, 5.15.0-91-generic)",
        )
    }
}

impl core::str::FromStr for KernelVersion {
    type Err = KernelVersionError;

    /// `6.8`, `6.12.95+deb12-amd64`, `5.15.0-91-generic`: what `uname -r`
    /// prints; only the major and minor numbers count.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().splitn(3, '.');
        let num = |p: Option<&str>| -> Result<u16, KernelVersionError> {
            let p = p.ok_or(KernelVersionError)?;
            let digits = p.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 4 {
                return Err(KernelVersionError);
            }
            p[..digits].parse().map_err(|_| KernelVersionError)
        };
        let major = num(parts.next())?;
        let minor = num(parts.next())?;
        if major == 0 || major > 99 {
            return Err(KernelVersionError);
        }
        Ok(KernelVersion { major, minor })
    }
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            iommu: IommuKind::Generic,
            params: KernelParams::default(),
            linux_quirks: true,
            quirks: BTreeMap::new(),
            not_covered: Vec::new(),
            kernel: KernelVersion::V6_12,
        }
    }
}

impl Platform {
    /// Why the IOMMU driver makes invalidation strict whatever the command
    /// line or the build says, when it does: amd_iommu on an IOMMU caching
    /// non-present entries (NpCache, which only virtual AMD IOMMUs such as
    /// QEMU's report). (intel_iommu does the same on a VT-d in caching
    /// mode, which configuration space cannot show.)
    pub fn forces_strict<'a>(
        &self,
        functions: impl IntoIterator<Item = &'a Function>,
    ) -> Option<&'static str> {
        (self.iommu == IommuKind::AmdVi && amd_np_cache(functions)).then_some(
            "amd_iommu makes invalidation strict on an IOMMU that caches non-present entries (NpCache: a virtual AMD IOMMU)",
        )
    }

    /// Whether function `f` gets a group.
    pub fn covers(&self, f: &Function) -> bool {
        self.iommu.covers(f) && !self.not_covered.contains(&f.bdf)
    }
}

#[cfg(test)]
mod tests {
    use super::KernelVersion;

    #[test]
    fn kernel_versions_read_as_uname_prints_them() {
        let v = |s: &str| s.parse::<KernelVersion>();
        assert_eq!(v("6.8"), Ok(KernelVersion { major: 6, minor: 8 }));
        assert_eq!(
            v("5.15.0-91-generic"),
            Ok(KernelVersion {
                major: 5,
                minor: 15
            })
        );
        assert_eq!(v("6.12.95+deb12-amd64\n"), Ok(KernelVersion::V6_12));
        assert_eq!(v("6.12-rc3"), Ok(KernelVersion::V6_12));
        for bad in [
            "", "6", "six.8", "0.1", "6.", ".8", "100.1", "6.99999", "banana",
        ] {
            assert!(v(bad).is_err(), "{bad}");
        }
        assert!(v("5.15").unwrap().arm_smmu_refuses_duplicate_stream_ids());
        assert!(!KernelVersion::V6_12.arm_smmu_refuses_duplicate_stream_ids());
        assert!(KernelVersion { major: 7, minor: 0 } > KernelVersion::V6_12);
    }
}
