//! The built-in default platform: one PCI-like bus behind a [`SoftIommu`].
//!
//! Ten functions in seven groups: a host bridge, a root port, a GPU whose
//! audio function shares its requester id (one group), a USB controller with
//! a firmware-reserved direct region (an RMRR-like identity map), a
//! chipset group of three functions behind one alias, a NIC, an NVMe drive,
//! and a management controller not behind the IOMMU at all.

use crate::{SoftConfig, SoftIommu};
use iommu_core::{
    Bus, Device, DeviceBuilder, Errno, Iommu, IommuConfig, Prot, ReservedRegion, ResvType,
};
use std::sync::Arc;

/// One device of the platform.
#[derive(Clone, Copy, Debug)]
pub struct DeviceSpec {
    /// PCI address.
    pub name: &'static str,
    /// Parent directory under `devices/` (the bridge it sits behind).
    pub parent: &'static str,
    /// What `lspci -nn` would print after the address.
    pub description: &'static str,
    /// Requester/stream ids (empty: not behind the IOMMU).
    pub stream_ids: &'static [u32],
}

/// The USB controller's firmware-reserved buffer, identity-mapped.
pub const USB_RMRR: ReservedRegion =
    ReservedRegion::new(0x7d00_0000, 0x2_0000, Prot::RW, ResvType::Direct);

/// The software MSI window the driver reserves for every device.
pub const SW_MSI: (u64, u64) = (0x0800_0000, 0x10_0000);

/// The devices, in bus order.
pub const DEVICES: &[DeviceSpec] = &[
    DeviceSpec {
        name: "0000:00:00.0",
        parent: "pci0000:00",
        description: "Host bridge [0600]: iommu-rs Simulated Root Complex [0de5:0001]",
        stream_ids: &[0x0000],
    },
    DeviceSpec {
        name: "0000:00:01.0",
        parent: "pci0000:00",
        description: "PCI bridge [0604]: iommu-rs Simulated Root Port [0de5:0002]",
        stream_ids: &[0x0008],
    },
    DeviceSpec {
        name: "0000:01:00.0",
        parent: "pci0000:00/0000:00:01.0",
        description: "VGA compatible controller [0300]: iommu-rs Simulated GPU [0de5:0100]",
        stream_ids: &[0x0100],
    },
    DeviceSpec {
        name: "0000:01:00.1",
        parent: "pci0000:00/0000:00:01.0",
        description: "Audio device [0403]: iommu-rs Simulated GPU Audio [0de5:0101]",
        stream_ids: &[0x0101, 0x0100],
    },
    DeviceSpec {
        name: "0000:00:14.0",
        parent: "pci0000:00",
        description: "USB controller [0c03]: iommu-rs Simulated xHCI [0de5:0014]",
        stream_ids: &[0x00a0],
    },
    DeviceSpec {
        name: "0000:00:1f.0",
        parent: "pci0000:00",
        description: "ISA bridge [0601]: iommu-rs Simulated LPC [0de5:001f]",
        stream_ids: &[0x00f8],
    },
    DeviceSpec {
        name: "0000:00:1f.3",
        parent: "pci0000:00",
        description: "Audio device [0403]: iommu-rs Simulated HD Audio [0de5:0020]",
        stream_ids: &[0x00fb, 0x00f8],
    },
    DeviceSpec {
        name: "0000:00:1f.4",
        parent: "pci0000:00",
        description: "SMBus [0c05]: iommu-rs Simulated SMBus [0de5:0021]",
        stream_ids: &[0x00fc, 0x00f8],
    },
    DeviceSpec {
        name: "0000:02:00.0",
        parent: "pci0000:00",
        description: "Ethernet controller [0200]: iommu-rs Simulated NIC [0de5:0200]",
        stream_ids: &[0x0200],
    },
    DeviceSpec {
        name: "0000:03:00.0",
        parent: "pci0000:00",
        description: "Non-Volatile memory controller [0108]: iommu-rs Simulated NVMe [0de5:0300]",
        stream_ids: &[0x0300],
    },
    DeviceSpec {
        name: "0000:04:00.0",
        parent: "pci0000:00",
        description:
            "Signal processing controller [1180]: iommu-rs Simulated BMC (no IOMMU) [0de5:0400]",
        stream_ids: &[],
    },
];

/// The platform once built: the subsystem, its bus and its driver.
pub struct DefaultPlatform {
    /// The subsystem.
    pub iommu: Iommu,
    /// The PCI bus.
    pub bus: Bus,
    /// The driver (and its emulated hardware).
    pub soft: SoftIommu,
}

impl DefaultPlatform {
    /// Builds the platform with the default policy (translated, strict).
    ///
    /// # Errors
    /// Any error from the core while adding devices or setting the ops.
    pub fn build() -> Result<Self, Errno> {
        Self::build_with(IommuConfig::default())
    }

    /// Builds the platform with `config`: devices first, then the IOMMU ops
    /// are set on the bus, which walks them into groups.
    ///
    /// # Errors
    /// Any error from the core while adding devices or setting the ops.
    pub fn build_with(config: IommuConfig) -> Result<Self, Errno> {
        let iommu = Iommu::new(config);
        let bus = Bus::new(&iommu, "pci")?;
        for spec in DEVICES {
            let mut b = DeviceBuilder::new(spec.name)
                .sysfs_dir(format!("devices/{}/{}", spec.parent, spec.name))
                .description(spec.description)
                .stream_ids(spec.stream_ids.iter().copied())
                .pci(true);
            if spec.name == "0000:00:14.0" {
                b = b.resv_region(USB_RMRR);
            }
            bus.add_device(b)?;
        }
        let soft = SoftIommu::new(SoftConfig {
            sw_msi: Some(SW_MSI),
            ..SoftConfig::default()
        });
        iommu.bus_set_iommu(&bus, Arc::new(soft.clone()))?;
        Ok(Self { iommu, bus, soft })
    }

    /// The device at PCI address `name`.
    pub fn device(&self, name: &str) -> Option<Arc<Device>> {
        self.bus.find_device(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_platform_has_several_groups_and_a_direct_region() {
        let p = DefaultPlatform::build().unwrap();
        assert_eq!(p.bus.devices().len(), 11);
        assert_eq!(p.iommu.group_ids(), (0..7).collect::<Vec<u32>>());
        let gpu = p.device("0000:01:00.0").unwrap().iommu_group().unwrap();
        assert_eq!(gpu.device_count(), 2);
        let pch = p.device("0000:00:1f.0").unwrap().iommu_group().unwrap();
        assert_eq!(pch.device_count(), 3);
        assert!(p.device("0000:04:00.0").unwrap().iommu_group().is_none());
        let usb = p.device("0000:00:14.0").unwrap();
        let regions = p
            .iommu
            .sysfs()
            .read(&format!(
                "kernel/iommu_groups/{}/reserved_regions",
                usb.iommu_group().unwrap().id()
            ))
            .unwrap();
        assert_eq!(regions, "0x0000000008000000 0x00000000080fffff msi\n0x000000007d000000 0x000000007d01ffff direct\n");
        let dd = usb.iommu_group().unwrap().default_domain().unwrap();
        assert_eq!(
            dd.iova_to_phys(iommu_core::Iova::new(0x7d01_0000)),
            Some(iommu_core::PhysAddr::new(0x7d01_0000))
        );
    }
}
