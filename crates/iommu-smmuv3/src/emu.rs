//! The driver on the emulated SMMUv3 (whose register file is an
//! [`iommu_hw::Mmio`]): [`EmuPlatform`], which puts guest memory, the
//! emulator and a probed driver together.

extern crate std;

use crate::{ProbeError, Smmuv3, Smmuv3Config};
use alloc::sync::Arc;
use iommu_smmuv3_emu::{Features, Smmuv3 as Hw};

pub use iommu_hw::emu::{EmuLayout, EmuMemory, EmuTables};

/// The driver over the emulator.
pub type EmuDriver = Smmuv3<Arc<Hw<EmuMemory>>, EmuTables>;

/// Guest memory, an emulated SMMUv3 and the driver probed on it.
pub struct EmuPlatform {
    /// The memory.
    pub memory: Arc<EmuMemory>,
    /// The emulated SMMU (devices DMA through it).
    pub hw: Arc<Hw<EmuMemory>>,
    /// The driver.
    pub driver: EmuDriver,
}

/// Why [`EmuPlatform::new`] failed.
pub type EmuError = iommu_hw::emu::EmuError<iommu_smmuv3_emu::FeatureError, ProbeError>;

impl EmuPlatform {
    /// A platform with `layout`, an SMMU with `features`, and the driver
    /// probed with `cfg`.
    ///
    /// # Errors
    /// [`EmuError`].
    pub fn new(layout: EmuLayout, features: Features, cfg: Smmuv3Config) -> Result<Self, EmuError> {
        let (memory, tables) = layout.build()?;
        let hw = Arc::new(Hw::new(memory.clone(), features).map_err(EmuError::Features)?);
        let driver = Smmuv3::probe(hw.clone(), tables, cfg).map_err(EmuError::Probe)?;
        Ok(EmuPlatform { memory, hw, driver })
    }

    /// The default platform: every feature, default driver options.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn default_platform() -> Result<Self, EmuError> {
        Self::new(
            EmuLayout::default(),
            Features::default(),
            Smmuv3Config::default(),
        )
    }
}

/// A domain of [`EmuDriver`], for downcasts from `Domain::ops().as_any()`.
pub type EmuDomain = crate::Smmuv3Domain<Arc<Hw<EmuMemory>>, EmuTables>;
