//! The hardware a shared test suite runs on (feature `test-utils`).

extern crate std;

use crate::emu::{EmuLayout, EmuPlatform};
use crate::VtdConfig;
use alloc::sync::Arc;
use iommu_core::GroupKeys;
use iommu_soft::platform::DmaHardware;
use iommu_vtd_emu::Features;

/// The VT-d driver on an emulated unit with every feature and eight fault
/// records, in 64 MiB of memory, grouping by `pci` when given and bounding
/// each domain's table pages by `table_budget`; a short poll limit lets a
/// wedged-hardware test time out in microseconds. Legacy mode.
pub fn platform(pci: Option<Arc<GroupKeys>>, table_budget: Option<usize>) -> Arc<dyn DmaHardware> {
    platform_with(pci, table_budget, Features::default())
}

/// [`platform`] on a unit with scalable mode too: the driver runs
/// first-stage tables, as Linux picks them.
pub fn scalable_platform(
    pci: Option<Arc<GroupKeys>>,
    table_budget: Option<usize>,
) -> Arc<dyn DmaHardware> {
    platform_with(pci, table_budget, Features::scalable())
}

fn platform_with(
    pci: Option<Arc<GroupKeys>>,
    table_budget: Option<usize>,
    features: Features,
) -> Arc<dyn DmaHardware> {
    let cfg = VtdConfig {
        groups: pci,
        table_budget,
        host_address_width: 48,
        poll_limit: 1000,
        ..VtdConfig::default()
    };
    let layout = EmuLayout {
        memory: 64 << 20,
        tables: 0x10_0000,
        tables_size: 63 << 20,
    };
    Arc::new(EmuPlatform::new(layout, features, cfg).expect("a platform"))
}

/// The hardware `IOMMU_TEST_DRIVER` names: `vtd` (legacy mode) and
/// `vtd-sm` (scalable mode, first-stage tables) here, `soft` (the default)
/// and `smmuv3` as `iommu_smmuv3::testing::hardware_from_env` makes them.
///
/// # Panics
/// On any other value of `IOMMU_TEST_DRIVER`.
pub fn hardware_from_env(
    pci: Option<Arc<GroupKeys>>,
    table_budget: Option<usize>,
) -> Arc<dyn DmaHardware> {
    match std::env::var("IOMMU_TEST_DRIVER").as_deref() {
        Ok("vtd") => platform(pci, table_budget),
        Ok("vtd-sm") => scalable_platform(pci, table_budget),
        _ => iommu_smmuv3::testing::hardware_from_env(pci, table_budget),
    }
}
