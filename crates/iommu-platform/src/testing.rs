//! The hardware a shared test suite runs on (feature `test-utils`), and
//! the VT-d pair under the core's isolation oracle ([`VtdHardware`],
//! [`run_vtd`]).

use crate::{DmaHardware, SW_MSI};
use iommu_core::GroupKeys;
use iommu_hw::emu::EmuLayout;
use iommu_smmuv3::Smmuv3Config;
use iommu_soft::{SoftConfig, SoftIommu};
use iommu_vtd::VtdConfig;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// The VT-d driver on the built-in platform's two emulated units
/// ([`dmar::default_vtd_units`](crate::dmar::default_vtd_units): a unit
/// for the graphics' root port 00:01.0 and what lies below it, one for
/// every other requester id), each with every feature and eight fault
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
    let units = crate::dmar::default_vtd_units();
    Arc::new(
        iommu_vtd::emu::EmuPlatform::with_units(
            layout(),
            &vec![features; units.units()],
            cfg,
            Some(units.lookup()),
        )
        .expect("a platform"),
    )
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
/// `smmuv3`, `vtd` (legacy mode, two units) or `vtd-sm` (scalable mode,
/// first-stage tables, two units). Each groups by `pci` when given and bounds each domain's table
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

/// The VT-d pair as the core's isolation oracle (`iommu_soft::testing`)
/// sees it: the driver on one or two emulated units in 16 MiB of memory,
/// legacy or scalable (first-stage tables). The units read only what the
/// driver wrote, so a missing context-cache, PASID-cache or IOTLB
/// invalidation, one sent to the wrong unit, a wrong entry or a table a
/// unit cannot walk shows up as a disagreement.
/// The second field counts the wedges.
pub struct VtdHardware(pub iommu_vtd::emu::EmuPlatform, AtomicUsize);

impl VtdHardware {
    /// A small platform with one unit; a short poll limit makes a wedged
    /// unit time out quickly (the emulator answers at once otherwise).
    pub fn small(scalable: bool) -> Self {
        Self::with_units(scalable, 1)
    }

    /// A small platform with `units` units (1 to 6): the oracle's
    /// requester ids 0-5 are spread over them in runs (with two units,
    /// 0-2 on the first and 3-5 on the second), so a group's domain may be
    /// attached on several units at once, and a device whose ids span two
    /// runs has its aliases programmed on its own id's unit.
    ///
    /// # Panics
    /// If `units` is not in 1..=6.
    pub fn with_units(scalable: bool, units: usize) -> Self {
        assert!((1..=6).contains(&units), "1 to 6 units, not {units}");
        let features = if scalable {
            iommu_vtd_emu::Features::scalable()
        } else {
            iommu_vtd_emu::Features::default()
        };
        let layout = EmuLayout {
            memory: 16 << 20,
            tables: 0x10_0000,
            tables_size: 15 << 20,
        };
        let cfg = VtdConfig {
            host_address_width: 48,
            poll_limit: 256,
            ..VtdConfig::default()
        };
        let lookup: iommu_vtd::UnitLookup =
            Arc::new(move |sid: u32| Some(iommu_soft::testing::instance_of(sid, units)));
        VtdHardware(
            iommu_vtd::emu::EmuPlatform::with_units(
                layout,
                &vec![features; units],
                cfg,
                (units > 1).then_some(lookup),
            )
            .expect("a platform the driver probes"),
            AtomicUsize::new(0),
        )
    }
}

impl iommu_soft::testing::Hardware for VtdHardware {
    fn ops(&self) -> Arc<dyn iommu_core::IommuOps> {
        Arc::new(self.0.driver.clone())
    }

    fn translate(&self, sid: u32, iova: iommu_core::Iova) -> Option<iommu_core::PhysAddr> {
        let rid = u16::try_from(sid).ok()?;
        self.0
            .unit_for(sid)?
            .translate(rid, iova.raw(), iommu_vtd_emu::Access::Read)
            .ok()
            .map(|s| iommu_core::PhysAddr::new(s.pa))
    }

    /// The units stop completing invalidations; coming back, they run
    /// what was queued. With several units, every other wedge stops only
    /// the odd-numbered ones, so some of a domain's units answer while
    /// others do not.
    fn set_wedged(&self, wedged: bool) {
        let n = self.1.fetch_add(usize::from(wedged), Ordering::Relaxed);
        let some = wedged && self.0.units.len() > 1 && n % 2 == 1;
        for (i, u) in self.0.units.iter().enumerate() {
            u.pause_invalidations(wedged && (!some || i % 2 == 1));
        }
    }
}

/// Replays `data` (decoded as the core oracle's input) on the VT-d driver
/// and `units` emulated units (`scalable`: in scalable mode; see
/// [`VtdHardware::with_units`]), panicking at the first translation that
/// disagrees with what the groups' domains map.
pub fn run_vtd(data: &[u8], scalable: bool, units: usize) {
    iommu_soft::testing::run_hardware(
        &iommu_soft::testing::Input::decode(data),
        Box::new(VtdHardware::with_units(scalable, units)),
    );
}
