//! The hardware a shared test suite runs on (feature `test-utils`).

use crate::{DmaHardware, SW_MSI};
use iommu_core::GroupKeys;
use iommu_hw::emu::EmuLayout;
use iommu_smmuv3::Smmuv3Config;
use iommu_soft::{SoftConfig, SoftIommu};
use iommu_vtd::VtdConfig;
use std::sync::Arc;

/// 64 MiB of emulated memory, the tables in all of it but the first MiB.
fn layout() -> EmuLayout {
    EmuLayout {
        memory: 64 << 20,
        tables: 0x10_0000,
        tables_size: 63 << 20,
    }
}

/// The SMMUv3 driver on an emulated SMMUv3 with every feature; a short
/// poll limit lets a wedged-hardware test time out in microseconds (the
/// emulator answers at once otherwise).
pub fn smmuv3(pci: Option<Arc<GroupKeys>>, table_budget: Option<usize>) -> Arc<dyn DmaHardware> {
    let cfg = Smmuv3Config {
        groups: pci,
        sw_msi: Some(SW_MSI),
        table_budget,
        poll_limit: 1000,
        ..Smmuv3Config::default()
    };
    Arc::new(
        iommu_smmuv3::emu::EmuPlatform::new(layout(), iommu_smmuv3_emu::Features::default(), cfg)
            .expect("a platform"),
    )
}

/// The VT-d driver on an emulated unit with every feature and eight fault
/// records, in legacy mode or, with `scalable`, scalable mode (the driver
/// then runs first-stage tables, as Linux picks them).
pub fn vtd(
    pci: Option<Arc<GroupKeys>>,
    table_budget: Option<usize>,
    scalable: bool,
) -> Arc<dyn DmaHardware> {
    let cfg = VtdConfig {
        groups: pci,
        table_budget,
        host_address_width: 48,
        poll_limit: 1000,
        ..VtdConfig::default()
    };
    let features = if scalable {
        iommu_vtd_emu::Features::scalable()
    } else {
        iommu_vtd_emu::Features::default()
    };
    Arc::new(iommu_vtd::emu::EmuPlatform::new(layout(), features, cfg).expect("a platform"))
}

/// The soft IOMMU. It and the SMMUv3 driver reserve the same software
/// MSI window ([`SW_MSI`]), so a suite written against one runs unchanged
/// on the other.
pub fn soft(pci: Option<Arc<GroupKeys>>, table_budget: Option<usize>) -> Arc<dyn DmaHardware> {
    Arc::new(SoftIommu::new(SoftConfig {
        pci,
        sw_msi: Some(SW_MSI),
        table_budget,
        ..SoftConfig::default()
    }))
}

/// The hardware `IOMMU_TEST_DRIVER` names: `soft` (the default),
/// `smmuv3`, `vtd` (legacy mode) or `vtd-sm` (scalable mode, first-stage
/// tables). Each groups by `pci` when given and bounds each domain's table
/// pages by `table_budget`.
///
/// # Panics
/// On any other value of `IOMMU_TEST_DRIVER`.
pub fn hardware_from_env(
    pci: Option<Arc<GroupKeys>>,
    table_budget: Option<usize>,
) -> Arc<dyn DmaHardware> {
    match std::env::var("IOMMU_TEST_DRIVER").as_deref() {
        Ok("soft") | Err(_) => soft(pci, table_budget),
        Ok("smmuv3") => smmuv3(pci, table_budget),
        Ok("vtd") => vtd(pci, table_budget, false),
        Ok("vtd-sm") => vtd(pci, table_budget, true),
        Ok(other) => panic!("IOMMU_TEST_DRIVER={other}: soft, smmuv3, vtd or vtd-sm"),
    }
}
