//! What a platform's devices DMA through: [`DmaHardware`], a driver and
//! its (emulated) hardware, for the soft IOMMU, the SMMUv3 pair and the
//! VT-d pair alike. The drivers know nothing of it: this layer puts each
//! on a platform through their own public types.

use iommu_core::{Device, Errno, IommuOps, Iova, PhysAddr};
use iommu_smmuv3::emu as smmuv3;
use iommu_soft::{Access, SoftIommu, TranslateError};
use iommu_vtd::emu as vtd;
use std::sync::Arc;

/// What a platform's devices DMA through: a driver and its hardware.
pub trait DmaHardware: Send + Sync {
    /// The driver, set on the platform's bus.
    fn ops(&self) -> Arc<dyn IommuOps>;
    /// One access of `dev` at `iova`, as the hardware translates it; a
    /// fault is reported to the domain's handler, whose answer the error
    /// carries.
    ///
    /// # Errors
    /// See [`TranslateError`].
    fn translate(
        &self,
        dev: &Device,
        iova: Iova,
        access: Access,
    ) -> Result<PhysAddr, TranslateError>;
    /// What the IOMMU is, for a narrative's heading.
    fn describe(&self) -> String;
    /// The domain the hardware's entry for stream `sid` translates
    /// through, if the stream has one.
    fn stream_domain(&self, sid: u32) -> Option<iommu_core::Domain>;
    /// The hardware's own type, for callers that need to reach it.
    fn as_any(&self) -> &dyn std::any::Any;
    /// Stops (or resumes) the hardware completing invalidations, as an
    /// IOMMU that stopped answering would: for failure tests.
    fn set_wedged(&self, wedged: bool);
}

impl DmaHardware for SoftIommu {
    fn ops(&self) -> Arc<dyn IommuOps> {
        Arc::new(self.clone())
    }
    fn translate(
        &self,
        dev: &Device,
        iova: Iova,
        access: Access,
    ) -> Result<PhysAddr, TranslateError> {
        SoftIommu::translate(self, dev, iova, access)
    }
    fn describe(&self) -> String {
        "a software IOMMU (ARM LPAE stage-1 tables)".into()
    }
    fn stream_domain(&self, sid: u32) -> Option<iommu_core::Domain> {
        SoftIommu::stream_domain(self, sid)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn set_wedged(&self, wedged: bool) {
        SoftIommu::set_wedged(self, wedged);
    }
}

/// The emulated platform as what a PCI platform's devices DMA through:
/// an access goes through the emulated SMMU, and a fault it records is
/// read from the event queue by the driver, which reports it to the
/// domain's handler (the answer is in the error).
impl DmaHardware for smmuv3::EmuPlatform {
    fn ops(&self) -> Arc<dyn IommuOps> {
        Arc::new(self.driver.clone())
    }

    fn translate(
        &self,
        dev: &Device,
        iova: Iova,
        access: Access,
    ) -> Result<PhysAddr, TranslateError> {
        let id = *dev.stream_ids().first().ok_or(TranslateError::NoStream)?;
        let access = match access {
            Access::Read => iommu_smmuv3_emu::Access::Read,
            Access::Write => iommu_smmuv3_emu::Access::Write,
        };
        // The SMMU and stream id the firmware maps the device to.
        let (hw, sid) = self.smmu_for(id).ok_or(TranslateError::NoStream)?;
        let unit = self.smmus.iter().position(|h| Arc::ptr_eq(h, hw));
        let fault = match hw.translate(sid, iova.raw(), access) {
            Ok(seg) => return Ok(PhysAddr::new(seg.pa)),
            Err(iommu_smmuv3_emu::DmaError::Terminated { fault, .. }) => fault,
            Err(iommu_smmuv3_emu::DmaError::Bus(_)) => return Err(TranslateError::NoStream),
        };
        let report = self
            .driver
            .handle_irq()
            .iter()
            .rev()
            .find(|e| e.sid == sid && e.iova == iova.raw() && Some(e.unit) == unit)
            .and_then(|e| e.report)
            .unwrap_or(Err(Errno::ENOSYS));
        Err(match fault {
            None => TranslateError::Aborted,
            Some(iommu_smmuv3_emu::EventId::Permission) => TranslateError::Permission { report },
            Some(
                iommu_smmuv3_emu::EventId::Translation
                | iommu_smmuv3_emu::EventId::AddrSize
                | iommu_smmuv3_emu::EventId::Access
                | iommu_smmuv3_emu::EventId::WalkEabt,
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

    /// The SMMUs stop consuming commands: every CMD_SYNC times out.
    fn set_wedged(&self, wedged: bool) {
        for hw in &self.smmus {
            hw.pause_commands(wedged);
        }
    }

    fn describe(&self) -> String {
        "an emulated Arm SMMUv3 (stream table, CDs, LPAE stage-1 tables, command and event queues in memory)"
            .into()
    }
}

/// The emulated platform as what a PCI platform's devices DMA through: an
/// access goes through the emulated unit, and a fault it records is read
/// from the fault recording registers by the driver, which reports it to
/// the domain's handler (the answer is in the error).
impl DmaHardware for vtd::EmuPlatform {
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
        let hw_access = match access {
            Access::Read => iommu_vtd_emu::Access::Read,
            Access::Write => iommu_vtd_emu::Access::Write,
        };
        // The device's DMA goes to the unit the firmware puts it behind,
        // with its requester id within its segment.
        let hw = self.scope_unit(sid).ok_or(TranslateError::NoStream)?;
        let unit = self.units.iter().position(|u| Arc::ptr_eq(u, hw));
        let sid = sid as u16;
        let (why, permission) = match hw.translate(sid, iova.raw(), hw_access) {
            Ok(seg) => return Ok(PhysAddr::new(seg.pa)),
            Err(iommu_vtd_emu::DmaError::Fault {
                reason, permission, ..
            }) => (reason, permission),
            Err(iommu_vtd_emu::DmaError::Bus(_)) => return Err(TranslateError::NoStream),
        };
        let page = iova.raw() & !0xfff;
        let report = self
            .driver
            .handle_faults()
            .iter()
            .rev()
            .find(|f| f.source_id == sid && f.address == page && Some(f.unit) == unit)
            .and_then(|f| f.report)
            .unwrap_or(Err(Errno::ENOSYS));
        Err(match why {
            // No context entry, or in scalable mode no usable PASID entry
            // (the driver clears it whole for a blocked device).
            iommu_vtd_emu::reason::CONTEXT_NOT_PRESENT
            | iommu_vtd_emu::reason::ROOT_NOT_PRESENT
            | iommu_vtd_emu::reason::PASID_DIR_NOT_PRESENT
            | iommu_vtd_emu::reason::PASID_NOT_PRESENT
            | iommu_vtd_emu::reason::PASID_INVALID => TranslateError::Blocked { report },
            _ if permission => TranslateError::Permission { report },
            iommu_vtd_emu::reason::SM_WRITE => TranslateError::Permission { report },
            iommu_vtd_emu::reason::READ
            | iommu_vtd_emu::reason::WRITE
            | iommu_vtd_emu::reason::ADDRESS_BEYOND_AGAW
            | iommu_vtd_emu::reason::FS_NOT_PRESENT
            | iommu_vtd_emu::reason::FS_NON_CANONICAL => TranslateError::Translation { report },
            _ => TranslateError::NoStream,
        })
    }

    fn stream_domain(&self, sid: u32) -> Option<iommu_core::Domain> {
        self.driver.source_domain(sid)
    }

    fn as_any(&self) -> &dyn core::any::Any {
        self
    }

    /// The units stop completing invalidations: every wait times out.
    fn set_wedged(&self, wedged: bool) {
        for u in &self.units {
            u.pause_invalidations(wedged);
        }
    }

    fn describe(&self) -> String {
        let (what, each) = match self.units.len() {
            1 => ("an emulated Intel VT-d unit".to_string(), ""),
            n => (
                format!("{n} emulated Intel VT-d units from the DMAR"),
                "each with ",
            ),
        };
        match self.driver.mode() {
            iommu_vtd::TableMode::Legacy => format!("{what} ({each}root and context tables, second-level tables, invalidation queue and fault records in memory and registers)"),
            m => format!(
                "{what} in scalable mode ({each}root, context and PASID tables, {} tables, 256-bit invalidation queue and fault records in memory and registers)",
                if m == iommu_vtd::TableMode::ScalableFirstStage { "first-stage" } else { "second-stage" }
            ),
        }
    }
}
