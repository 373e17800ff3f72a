//! Test doubles and oracles (feature `test-utils`).
//!
//! [`run`] replays a fuzz input of the core's isolation oracle
//! (`iommu_soft::testing`) on this driver and the emulated SMMUv3: after
//! every step, each stream's DMA through the emulator must reach exactly
//! what its group's current domain maps. The emulator reads only what the
//! driver wrote, so a missing CFGI or TLBI, a wrong STE or CD, or a table
//! the SMMU cannot walk all show up as a disagreement.

extern crate std;

use crate::emu::{EmuLayout, EmuPlatform};
use crate::Smmuv3Config;
use alloc::boxed::Box;
use alloc::sync::Arc;
use iommu_core::{IommuOps, Iova, PhysAddr};
use iommu_smmuv3_emu::{Access, Features};
use iommu_soft::testing::{run_hardware, Hardware, Input};

/// The emulated platform as the oracle sees it.
pub struct EmuHardware(pub EmuPlatform);

impl EmuHardware {
    /// A small platform (16 MiB of memory) with every feature. The
    /// emulator runs commands as `CMDQ_PROD` is written, so a short poll
    /// limit costs nothing but makes a wedged SMMU time out quickly.
    pub fn small() -> Self {
        EmuHardware(
            EmuPlatform::new(
                EmuLayout {
                    memory: 16 << 20,
                    tables: 0x10_0000,
                    tables_size: 15 << 20,
                },
                Features::default(),
                Smmuv3Config {
                    poll_limit: 256,
                    ..Smmuv3Config::default()
                },
            )
            .expect("a platform the driver probes"),
        )
    }
}

impl Hardware for EmuHardware {
    fn ops(&self) -> Arc<dyn IommuOps> {
        Arc::new(self.0.driver.clone())
    }

    fn translate(&self, sid: u32, iova: Iova) -> Option<PhysAddr> {
        self.0
            .hw
            .translate(sid, iova.raw(), Access::Read)
            .ok()
            .map(|s| PhysAddr::new(s.pa))
    }

    /// Pauses the SMMU's command processing; coming back, it runs what
    /// was queued and the driver completes what it owes (`Smmuv3::sync`).
    fn set_wedged(&self, wedged: bool) {
        self.0.hw.pause_commands(wedged);
        if !wedged {
            self.0
                .driver
                .sync()
                .expect("a CMD_SYNC completes once the SMMU is back");
        }
    }
}

/// Replays `data` (decoded as the core oracle's input) on the driver and
/// the emulator, panicking at the first translation that disagrees.
pub fn run(data: &[u8]) {
    run_hardware(&Input::decode(data), Box::new(EmuHardware::small()));
}
