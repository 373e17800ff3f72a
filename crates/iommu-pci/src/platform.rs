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
}

impl IommuKind {
    /// Whether Linux 6.12 built with its own defaults gives translated
    /// default domains a flush queue (lazy invalidation, sysfs type
    /// `DMA-FQ`) when the command line says nothing: Kconfig's default is
    /// `IOMMU_DEFAULT_DMA_LAZY` on x86, where VT-d and AMD-Vi live, and
    /// `IOMMU_DEFAULT_DMA_STRICT` elsewhere. (A VT-d in caching mode, as a
    /// hypervisor's virtual VT-d may be, makes the kernel strict: the
    /// registers PCI shows cannot say so.)
    pub fn lazy_by_default(self) -> bool {
        matches!(
            self,
            IommuKind::IntelVtd | IommuKind::AmdVi | IommuKind::VirtioIommu { x86: true }
        )
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
pub fn amd_np_cache(functions: &[Function]) -> bool {
    const SECURE_DEVICE_CAP: u8 = 0x0f;
    const NP_CACHE: u32 = 1 << 26;
    functions
        .iter()
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
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            iommu: IommuKind::Generic,
            params: KernelParams::default(),
            linux_quirks: true,
            quirks: BTreeMap::new(),
            not_covered: Vec::new(),
        }
    }
}

impl Platform {
    /// Why the IOMMU driver makes invalidation strict whatever the command
    /// line or the build says, when it does: amd_iommu on an IOMMU caching
    /// non-present entries (NpCache, which only virtual AMD IOMMUs such as
    /// QEMU's report). (intel_iommu does the same on a VT-d in caching
    /// mode, which configuration space cannot show.)
    pub fn forces_strict(&self, functions: &[Function]) -> Option<&'static str> {
        (self.iommu == IommuKind::AmdVi && amd_np_cache(functions)).then_some(
            "amd_iommu makes invalidation strict on an IOMMU that caches non-present entries (NpCache: a virtual AMD IOMMU)",
        )
    }

    /// Whether function `f` gets a group.
    pub fn covers(&self, f: &Function) -> bool {
        self.iommu.covers(f) && !self.not_covered.contains(&f.bdf)
    }
}
