//! The driver on the emulated SMMUv3 (whose register file is an
//! [`iommu_hw::Mmio`]): [`EmuPlatform`], which puts guest memory, the
//! emulator and a probed driver together.

extern crate std;

use crate::{ProbeError, Smmuv3, Smmuv3Config, StreamLookup};
use alloc::sync::Arc;
use alloc::vec::Vec;
use iommu_smmuv3_emu::{Features, Smmuv3 as Hw};

pub use iommu_hw::emu::{EmuLayout, EmuMemory, EmuTables};

/// The driver over the emulator.
pub type EmuDriver = Smmuv3<Arc<Hw<EmuMemory>>, EmuTables>;

/// Guest memory, emulated SMMUv3s and the driver probed on them.
pub struct EmuPlatform {
    /// The memory.
    pub memory: Arc<EmuMemory>,
    /// The first emulated SMMU (the only one unless made with
    /// [`with_smmus`](Self::with_smmus)).
    pub hw: Arc<Hw<EmuMemory>>,
    /// Every emulated SMMU, in the driver's order.
    pub smmus: Vec<Arc<Hw<EmuMemory>>>,
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
        Self::with_smmus(layout, &[features], cfg, None)
    }

    /// A platform with `layout` and an SMMU per entry of `features`, each
    /// with its own registers over the one memory, and the driver probed on
    /// all of them with `lookup` saying which SMMU and stream id a device
    /// id reaches.
    ///
    /// # Errors
    /// [`EmuError`] (no features: the driver's [`ProbeError::Smmus`]).
    pub fn with_smmus(
        layout: EmuLayout,
        features: &[Features],
        cfg: Smmuv3Config,
        lookup: Option<StreamLookup>,
    ) -> Result<Self, EmuError> {
        let iommu_hw::emu::EmuParts {
            memory,
            tables,
            window,
        } = layout.build()?;
        let smmus = features
            .iter()
            .map(|f| Hw::in_window(window.clone(), f.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(EmuError::Features)?;
        let driver = Smmuv3::probe_units(smmus.clone(), tables, cfg, lookup)
            .map_err(|(_, e)| EmuError::Probe(e))?;
        Ok(EmuPlatform {
            memory,
            hw: smmus[0].clone(),
            smmus,
            driver,
        })
    }

    /// The SMMU device id `id` reaches and its stream id there, as the
    /// firmware maps it.
    pub fn smmu_for(&self, id: u32) -> Option<(&Arc<Hw<EmuMemory>>, u32)> {
        let (unit, sid) = self.driver.stream_of(id)?;
        Some((self.smmus.get(unit)?, sid))
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
