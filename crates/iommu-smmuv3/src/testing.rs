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
    /// A small platform (16 MiB of memory) with one SMMU with every
    /// feature. The emulator runs commands as `CMDQ_PROD` is written, so a
    /// short poll limit costs nothing but makes a wedged SMMU time out
    /// quickly.
    pub fn small() -> Self {
        Self::with_smmus(1)
    }

    /// The same with `smmus` SMMUs (1 to 6): the oracle's ids 0-5 are
    /// spread over them in runs (with two, 0-2 reach the first and 3-5 the
    /// second), each with stream id 16 + its id there, so stream ids are
    /// not the devices' ids. A group's domain binds to the SMMU of its
    /// first device; attaching it to a group behind another is refused.
    ///
    /// # Panics
    /// If `smmus` is not in 1..=6.
    pub fn with_smmus(smmus: usize) -> Self {
        assert!((1..=6).contains(&smmus), "1 to 6 SMMUs, not {smmus}");
        let lookup: crate::StreamLookup =
            Arc::new(move |id: u32| Some((iommu_soft::testing::instance_of(id, smmus), 16 + id)));
        EmuHardware(
            EmuPlatform::with_smmus(
                EmuLayout {
                    memory: 16 << 20,
                    tables: 0x10_0000,
                    tables_size: 15 << 20,
                },
                &alloc::vec![Features::default(); smmus],
                Smmuv3Config {
                    poll_limit: 256,
                    ..Smmuv3Config::default()
                },
                (smmus > 1).then_some(lookup),
            )
            .expect("a platform the driver probes"),
        )
    }
}

impl Hardware for EmuHardware {
    fn ops(&self) -> Arc<dyn IommuOps> {
        Arc::new(self.0.driver.clone())
    }

    fn translate(&self, id: u32, iova: Iova) -> Option<PhysAddr> {
        let (hw, sid) = self.0.smmu_for(id)?;
        hw.translate(sid, iova.raw(), Access::Read)
            .ok()
            .map(|s| PhysAddr::new(s.pa))
    }

    /// Pauses the SMMU's command processing; coming back, it runs what
    /// was queued and the driver completes what it owes (`Smmuv3::sync`).
    fn set_wedged(&self, wedged: bool) {
        for hw in &self.0.smmus {
            hw.pause_commands(wedged);
        }
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
    run_with_smmus(data, 1);
}

/// [`run`] on `smmus` SMMUs ([`EmuHardware::with_smmus`]).
pub fn run_with_smmus(data: &[u8], smmus: usize) {
    run_hardware(
        &Input::decode(data),
        Box::new(EmuHardware::with_smmus(smmus)),
    );
}

/// A guest's side of nested translation on the emulated platform: its
/// stage-1 table and the CD naming it, carved from `[base, base + size)`
/// of the platform's memory (guest-physical addresses there, which the
/// host's nest parent must map for the SMMU to walk them).
pub struct NestedGuest {
    /// The guest's stage-1 table (output: guest-physical addresses).
    pub s1: iommu_pgtable::IoPageTable<iommu_pgtable::lpae::Lpae, Arc<crate::emu::EmuTables>>,
    /// The guest-physical address of its CD.
    pub cd: PhysAddr,
}

impl NestedGuest {
    /// A guest with an empty 4 KiB-granule stage-1 table tagged `asid`.
    ///
    /// # Panics
    /// When `[base, base + size)` is not in the platform's memory or too small.
    pub fn new(plat: &EmuPlatform, base: u64, size: u64, asid: u16) -> Self {
        use iommu_pgtable::lpae::{Granule, Lpae, LpaeConfig, Stage};
        use vm_memory::{Bytes, GuestAddress};
        let mem = Arc::new(crate::emu::EmuTables::new(plat.memory.clone(), base, size));
        let fmt = Lpae::new(LpaeConfig {
            stage: Stage::S1,
            granule: Granule::G4K,
            ias: 48,
            oas: 40,
        })
        .expect("a stage-1 format");
        let cd = iommu_pgtable::TableMemory::alloc_table(&*mem, 64).expect("room for the CD");
        let s1 = iommu_pgtable::IoPageTable::new(fmt.clone(), mem).expect("room for the table");
        for (i, w) in crate::ste::cd(&fmt, s1.root(), asid).iter().enumerate() {
            plat.memory
                .write_obj(*w, GuestAddress(cd.raw() + 8 * i as u64))
                .expect("the CD is in memory");
        }
        NestedGuest { s1, cd }
    }

    /// The guest's vSTE: stage 1 through its CD, write-back inner-shareable walks.
    pub fn vste(&self) -> [u64; 2] {
        [
            1 | (0b101 << 1) | self.cd.raw(),
            (1 << 2) | (1 << 4) | (3 << 6),
        ]
    }
}

/// Double words as the uAPI lays them out (little-endian bytes).
pub fn le_bytes(words: &[u64]) -> alloc::vec::Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}
