//! A small PCI platform for the DMA tests, behind the soft IOMMU or, with
//! `IOMMU_TEST_DRIVER=smmuv3` or `vtd`, behind the SMMUv3 or VT-d driver
//! on its emulated hardware: the suite is the same, only the hardware
//! changes.
#![allow(dead_code)]

use iommu_core::{Bus, Device, DeviceBuilder, Iommu, IommuConfig, Prot, ReservedRegion, ResvType};
use iommu_dma::{DmaDevice, DmaOptions};
use iommu_platform::DmaHardware;
use std::sync::Arc;

pub struct World {
    pub iommu: Iommu,
    pub bus: Bus,
    pub hw: Arc<dyn DmaHardware>,
    pub devs: Vec<Arc<Device>>,
}

/// Whether the suite runs on emulated hardware (its tables live in
/// simulated memory rather than on the heap).
pub fn on_smmuv3() -> bool {
    matches!(
        std::env::var("IOMMU_TEST_DRIVER").as_deref(),
        Ok("smmuv3" | "vtd" | "vtd-sm")
    )
}

/// The driver the suite runs on (`IOMMU_TEST_DRIVER`, `soft` when unset).
pub fn driver() -> String {
    std::env::var("IOMMU_TEST_DRIVER").unwrap_or_else(|_| "soft".into())
}

/// Every leaf of `domain`'s table, `(iova, size, pa, prot)`, whichever
/// driver made it.
pub fn leaves(
    domain: &iommu_core::Domain,
) -> Vec<(iommu_core::Iova, u64, iommu_core::PhysAddr, Prot)> {
    let any = domain.ops().as_any().expect("a driver domain");
    if let Some(d) = any.downcast_ref::<iommu_soft::SoftDomain>() {
        return d.dump();
    }
    if let Some(d) = any.downcast_ref::<iommu_vtd::emu::EmuDomain>() {
        return d.dump();
    }
    any.downcast_ref::<iommu_smmuv3::emu::EmuDomain>()
        .expect("a soft, SMMUv3 or VT-d domain")
        .dump()
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
    let hw = iommu_platform::testing::hardware_from_env(None, table_budget);
    iommu.bus_set_iommu(&bus, hw.ops()).unwrap();
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

    /// Bound without handle checks (`DmaOptions::check_handles` off).
    pub fn bind_unchecked(&self, i: usize) -> DmaDevice {
        self.bind_with(
            i,
            DmaOptions {
                check_handles: false,
                ..DmaOptions::default()
            },
        )
    }
}
