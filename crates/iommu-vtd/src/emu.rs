//! The driver on the emulated VT-d (`iommu-vtd-emu`): [`EmuPlatform`]
//! puts guest memory, the emulator and a probed driver together.

extern crate std;

use crate::{ProbeError, Vtd, VtdConfig};
use alloc::string::String;
use alloc::sync::Arc;
use iommu_core::{Device, Errno, IommuOps, Iova, PhysAddr};
use iommu_soft::platform::DmaHardware;
use iommu_soft::{Access, TranslateError};
use iommu_vtd_emu::{reason, DmaError, Features, Vtd as Hw};

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

/// The emulated platform as what a PCI platform's devices DMA through: an
/// access goes through the emulated unit, and a fault it records is read
/// from the fault recording registers by the driver, which reports it to
/// the domain's handler (the answer is in the error).
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
        let sid = u16::try_from(sid).map_err(|_| TranslateError::NoStream)?;
        let hw_access = match access {
            Access::Read => iommu_vtd_emu::Access::Read,
            Access::Write => iommu_vtd_emu::Access::Write,
        };
        let (why, permission) = match self.hw.translate(sid, iova.raw(), hw_access) {
            Ok(seg) => return Ok(PhysAddr::new(seg.pa)),
            Err(DmaError::Fault {
                reason, permission, ..
            }) => (reason, permission),
            Err(DmaError::Bus(_)) => return Err(TranslateError::NoStream),
        };
        let page = iova.raw() & !0xfff;
        let report = self
            .driver
            .handle_faults()
            .iter()
            .rev()
            .find(|f| f.source_id == sid && f.address == page)
            .and_then(|f| f.report)
            .unwrap_or(Err(Errno::ENOSYS));
        Err(match why {
            // No context entry, or in scalable mode no usable PASID entry
            // (the driver clears it whole for a blocked device).
            reason::CONTEXT_NOT_PRESENT
            | reason::ROOT_NOT_PRESENT
            | reason::PASID_DIR_NOT_PRESENT
            | reason::PASID_NOT_PRESENT
            | reason::PASID_INVALID => TranslateError::Blocked { report },
            _ if permission => TranslateError::Permission { report },
            reason::SM_WRITE => TranslateError::Permission { report },
            reason::READ
            | reason::WRITE
            | reason::ADDRESS_BEYOND_AGAW
            | reason::FS_NOT_PRESENT
            | reason::FS_NON_CANONICAL => TranslateError::Translation { report },
            _ => TranslateError::NoStream,
        })
    }

    fn stream_domain(&self, sid: u32) -> Option<iommu_core::Domain> {
        self.driver.source_domain(u16::try_from(sid).ok()?)
    }

    fn as_any(&self) -> &dyn core::any::Any {
        self
    }

    /// The unit stops completing invalidations: every wait times out.
    fn set_wedged(&self, wedged: bool) {
        self.hw.pause_invalidations(wedged);
    }

    fn describe(&self) -> String {
        "an emulated Intel VT-d unit (root and context tables, second-level tables, invalidation queue and fault records in memory and registers)"
            .into()
    }
}
