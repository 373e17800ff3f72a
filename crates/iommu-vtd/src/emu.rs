//! The driver on the emulated VT-d (`iommu-vtd-emu`): [`EmuPlatform`]
//! puts guest memory, the emulator and a probed driver together.

extern crate std;

use crate::{ProbeError, Vtd, VtdConfig};
use alloc::sync::Arc;
use iommu_vtd_emu::{Features, Vtd as Hw};

pub use iommu_hw::emu::{EmuLayout, EmuMemory, EmuTables};

/// The driver over the emulator.
pub type EmuDriver = Vtd<Arc<Hw<EmuMemory>>, EmuTables>;
/// A domain of [`EmuDriver`], for downcasts from `Domain::ops().as_any()`.
pub type EmuDomain = crate::VtdDomain<Arc<Hw<EmuMemory>>, EmuTables>;

/// Guest memory, an emulated remapping unit, and the driver probed on it.
pub struct EmuPlatform {
    /// The memory.
    pub memory: Arc<EmuMemory>,
    /// The emulated unit.
    pub hw: Arc<Hw<EmuMemory>>,
    /// The driver.
    pub driver: EmuDriver,
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
        let (memory, tables) = layout.build()?;
        let hw = Arc::new(Hw::new(memory.clone(), features).map_err(EmuError::Features)?);
        let driver = Vtd::probe(hw.clone(), tables, cfg).map_err(EmuError::Probe)?;
        Ok(EmuPlatform { memory, hw, driver })
    }
}
