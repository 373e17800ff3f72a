//! The driver on the emulated SMMUv3 (whose register file is an
//! [`iommu_hw::Mmio`]): [`EmuPlatform`], which puts guest memory, the
//! emulator and a probed driver together.

extern crate std;

use crate::{ProbeError, Smmuv3, Smmuv3Config};
use alloc::string::String;
use alloc::sync::Arc;
use iommu_core::{Device, Errno, IommuOps, Iova, PhysAddr};
use iommu_pgtable::GuestTableMemory;
use iommu_smmuv3_emu::{DmaError, EventId, Features, Smmuv3 as Hw};
use iommu_soft::platform::DmaHardware;
use iommu_soft::{Access, TranslateError};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest memory of the emulated platform.
pub type EmuMemory = GuestMemoryMmap;
/// The driver's DMA memory on it.
pub type EmuTables = GuestTableMemory<EmuMemory>;
/// The driver over the emulator.
pub type EmuDriver = Smmuv3<Arc<Hw<EmuMemory>>, EmuTables>;

/// Where the platform's memory goes.
#[derive(Clone, Copy, Debug)]
pub struct EmuLayout {
    /// Bytes of guest memory, from address 0.
    pub memory: u64,
    /// Start of the region the driver allocates tables and queues from.
    pub tables: u64,
    /// Its size; the rest is for data.
    pub tables_size: u64,
}

impl Default for EmuLayout {
    /// 256 MiB of memory, the driver's tables in the first 64 MiB.
    fn default() -> Self {
        EmuLayout {
            memory: 256 << 20,
            tables: 0x10_0000,
            tables_size: (64 << 20) - 0x10_0000,
        }
    }
}

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
#[derive(Debug)]
pub enum EmuError {
    /// The memory layout.
    Memory,
    /// The emulator refused the features.
    Features(iommu_smmuv3_emu::FeatureError),
    /// The driver refused the SMMU.
    Probe(ProbeError),
}

impl core::fmt::Display for EmuError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EmuError::Memory => f.write_str("guest memory could not be created"),
            EmuError::Features(e) => write!(f, "emulated SMMU: {e}"),
            EmuError::Probe(e) => write!(f, "probe: {e}"),
        }
    }
}

impl std::error::Error for EmuError {}

impl EmuPlatform {
    /// A platform with `layout`, an SMMU with `features`, and the driver
    /// probed with `cfg`.
    ///
    /// # Errors
    /// [`EmuError`].
    pub fn new(layout: EmuLayout, features: Features, cfg: Smmuv3Config) -> Result<Self, EmuError> {
        let memory = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), layout.memory as usize)])
                .map_err(|_| EmuError::Memory)?,
        );
        let hw = Arc::new(Hw::new(memory.clone(), features).map_err(EmuError::Features)?);
        let tables = Arc::new(GuestTableMemory::new(
            memory.clone(),
            layout.tables,
            layout.tables_size,
        ));
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
