//! A small PCI platform behind the soft IOMMU, for the DMA tests.
#![allow(dead_code)]

use iommu_core::{Bus, Device, DeviceBuilder, Iommu, IommuConfig, Prot, ReservedRegion, ResvType};
use iommu_dma::{DmaDevice, DmaOptions};
use iommu_soft::{SoftConfig, SoftIommu};
use std::sync::Arc;

pub struct World {
    pub iommu: Iommu,
    pub bus: Bus,
    pub hw: SoftIommu,
    pub devs: Vec<Arc<Device>>,
}

/// `n` PCI functions, each in its own group; the first has a firmware
/// reserved region at 0xfee0_0000 (an MSI window) of 1 MiB.
pub fn world(n: u32, strict: bool) -> World {
    world_with_budget(n, strict, Some(iommu_soft::DEFAULT_TABLE_BUDGET))
}

/// [`world`] with a table-page budget per domain (`None`: unlimited).
pub fn world_with_budget(n: u32, strict: bool, table_budget: Option<usize>) -> World {
    let iommu = Iommu::new(IommuConfig {
        passthrough: false,
        strict,
    });
    let bus = Bus::new(&iommu, "pci").unwrap();
    let devs = (0..n)
        .map(|i| {
            let mut b = DeviceBuilder::new(format!("0000:00:{:02x}.0", i + 1))
                .stream_ids([i + 1])
                .pci(true);
            if i == 0 {
                b = b.resv_region(ReservedRegion::new(
                    0xfee0_0000,
                    0x10_0000,
                    Prot::RW | Prot::MMIO,
                    ResvType::Msi,
                ));
            }
            bus.add_device(b).unwrap()
        })
        .collect();
    let hw = SoftIommu::new(SoftConfig {
        sw_msi: Some((0x0800_0000, 0x10_0000)),
        table_budget,
        ..SoftConfig::default()
    });
    iommu.bus_set_iommu(&bus, Arc::new(hw.clone())).unwrap();
    World {
        iommu,
        bus,
        hw,
        devs,
    }
}

impl World {
    pub fn bind(&self, i: usize) -> DmaDevice {
        DmaDevice::bind(&self.iommu, &self.devs[i], DmaOptions::default()).unwrap()
    }

    pub fn bind_with(&self, i: usize, opts: DmaOptions) -> DmaDevice {
        DmaDevice::bind(&self.iommu, &self.devs[i], opts).unwrap()
    }
}
