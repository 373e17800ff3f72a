//! The driver on the emulated SMMUv3 (whose register file is an
//! [`iommu_hw::Mmio`]): [`EmuPlatform`], which puts guest memory, the
//! emulator and a probed driver together.

extern crate std;

use crate::{ProbeError, Smmuv3, Smmuv3Config};
use alloc::string::String;
use alloc::sync::Arc;
use iommu_core::{Device, Errno, IommuOps, Iova, PhysAddr};
use iommu_smmuv3_emu::{DmaError, EventId, Features, Smmuv3 as Hw};
use iommu_soft::platform::DmaHardware;
use iommu_soft::{Access, TranslateError};

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

/// The emulated platform as what a PCI platform's devices DMA through:
/// an access goes through the emulated SMMU, and a fault it records is
/// read from the event queue by the driver, which reports it to the
/// domain's handler (the answer is in the error).
impl DmaHardware for EmuPlatform {
    fn ops(&self) -> Arc<dyn IommuOps> {
        Arc::new(self.driver.clone())
    }

    fn translate(
        &self,
        dev: &Device,
        iova: Iova,
        access: Access,
    ) -> Result<PhysAddr, TranslateError> {
        let sid = *dev.stream_ids().first().ok_or(TranslateError::NoStream)?;
        let access = match access {
            Access::Read => iommu_smmuv3_emu::Access::Read,
            Access::Write => iommu_smmuv3_emu::Access::Write,
        };
        let fault = match self.hw.translate(sid, iova.raw(), access) {
            Ok(seg) => return Ok(PhysAddr::new(seg.pa)),
            Err(DmaError::Terminated { fault, .. }) => fault,
            Err(DmaError::Bus(_)) => return Err(TranslateError::NoStream),
        };
        let report = self
            .driver
            .handle_irq()
            .iter()
            .rev()
            .find(|e| e.sid == sid && e.iova == iova.raw())
            .and_then(|e| e.report)
            .unwrap_or(Err(Errno::ENOSYS));
        Err(match fault {
            None => TranslateError::Aborted,
            Some(EventId::Permission) => TranslateError::Permission { report },
            Some(
                EventId::Translation | EventId::AddrSize | EventId::Access | EventId::WalkEabt,
            ) => TranslateError::Translation { report },
            Some(_) => TranslateError::NoStream,
        })
    }

    fn stream_domain(&self, sid: u32) -> Option<iommu_core::Domain> {
        self.driver.stream_domain(sid)
    }

    fn as_any(&self) -> &dyn core::any::Any {
        self
    }

    /// The SMMU stops consuming commands: every CMD_SYNC times out.
    fn set_wedged(&self, wedged: bool) {
        self.hw.pause_commands(wedged);
    }

    fn describe(&self) -> String {
        "an emulated Arm SMMUv3 (stream table, CDs, LPAE stage-1 tables, command and event queues in memory)"
            .into()
    }
}
