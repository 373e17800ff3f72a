//! The driver on the emulated VT-d (`iommu-vtd-emu`): [`EmuPlatform`]
//! puts guest memory, one or more emulated units and a probed driver
//! together.

extern crate std;

use crate::{ProbeError, UnitLookup, Vtd, VtdConfig};
use alloc::sync::Arc;
use alloc::vec::Vec;
use iommu_vtd_emu::{Features, Vtd as Hw};

pub use iommu_hw::emu::{EmuLayout, EmuMemory, EmuTables};

/// The driver over the emulator.
pub type EmuDriver = Vtd<Arc<Hw<EmuMemory>>, EmuTables>;
/// A domain of [`EmuDriver`], for downcasts from `Domain::ops().as_any()`.
pub type EmuDomain = crate::VtdDomain<Arc<Hw<EmuMemory>>, EmuTables>;

/// Guest memory, emulated remapping units over it, and the driver probed
/// on them.
pub struct EmuPlatform {
    /// The memory.
    pub memory: Arc<EmuMemory>,
    /// The first emulated unit (the only one, unless made with
    /// [`with_units`](Self::with_units)).
    pub hw: Arc<Hw<EmuMemory>>,
    /// Every emulated unit, in the driver's order.
    pub units: Vec<Arc<Hw<EmuMemory>>>,
    /// The driver.
    pub driver: EmuDriver,
    /// Which unit translates a requester id (`None`: the first).
    pub lookup: Option<UnitLookup>,
}

/// Why [`EmuPlatform::new`] failed.
pub type EmuError = iommu_hw::emu::EmuError<iommu_vtd_emu::FeatureError, ProbeError>;

impl EmuPlatform {
    /// A platform with `layout`, a unit with `features`, and the driver
    /// probed with `cfg`.
    ///
    /// # Errors
    /// [`EmuError`].
    pub fn new(layout: EmuLayout, features: Features, cfg: VtdConfig) -> Result<Self, EmuError> {
        Self::with_units(layout, &[features], cfg, None)
    }

    /// A platform with `layout` and a unit per entry of `features`, each
    /// with its own registers over the one memory (as the DRHDs of one
    /// machine), and the driver probed on all of them with `lookup`
    /// saying which unit translates a requester id.
    ///
    /// # Errors
    /// [`EmuError`] (no features: the driver's
    /// [`ProbeError::NoUnits`]).
    pub fn with_units(
        layout: EmuLayout,
        features: &[Features],
        cfg: VtdConfig,
        lookup: Option<UnitLookup>,
    ) -> Result<Self, EmuError> {
        let iommu_hw::emu::EmuParts {
            memory,
            tables,
            window,
        } = layout.build()?;
        let units = features
            .iter()
            .map(|f| Hw::in_window(window.clone(), f.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(EmuError::Features)?;
        let driver = Vtd::probe_units(units.clone(), tables, cfg, lookup.clone())
            .map_err(|(_, e)| EmuError::Probe(e))?;
        Ok(EmuPlatform {
            memory,
            hw: units[0].clone(),
            units,
            driver,
            lookup,
        })
    }

    /// The unit the firmware's scope puts requester id `sid`
    /// (`segment << 16 | rid`) behind: where a device with that id as its
    /// own sends its DMA, whatever the driver programmed.
    pub fn scope_unit(&self, sid: u32) -> Option<&Arc<Hw<EmuMemory>>> {
        match &self.lookup {
            None if sid >> 16 == 0 => self.units.first(),
            None => None,
            Some(f) => self.units.get(f(sid)?),
        }
    }

    /// The unit requester id `sid`'s DMA reaches (`segment << 16 | rid`):
    /// the one the driver programmed it on, else the one the firmware's
    /// scope gives it.
    pub fn unit_for(&self, sid: u32) -> Option<&Arc<Hw<EmuMemory>>> {
        self.units.get(self.driver.unit_for_source(sid)?)
    }
}
