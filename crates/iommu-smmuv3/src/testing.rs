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

    /// The guest maps its 4 KiB page at `va` to guest-physical `ipa`, read-write.
    ///
    /// # Errors
    /// As the table's map (`EEXIST` over a mapping, `ENOMEM`).
    pub fn map(&self, va: u64, ipa: u64) -> Result<(), iommu_core::Errno> {
        self.s1
            .map_pages(
                Iova::new(va),
                PhysAddr::new(ipa),
                0x1000,
                1,
                iommu_core::Prot::RW,
            )
            .map(|_| ())
            .map_err(|e| e.errno())
    }

    /// The guest unmaps the 4 KiB page at `va` (no invalidation: that is
    /// the guest's command to send).
    pub fn unmap(&self, va: u64) {
        let mut gather = iommu_core::IotlbGather::new();
        iommu_core::PagingOps::unmap_pages(&self.s1, Iova::new(va), 0x1000, 1, &mut gather);
    }

    /// The guest's vSTE: stage 1 through its CD, write-back inner-shareable walks.
    pub fn vste(&self) -> [u64; 2] {
        [
            1 | (0b101 << 1) | self.cd.raw(),
            (1 << 2) | (1 << 4) | (3 << 6),
        ]
    }
}

/// A nested domain of `viommu` from the guest's vSTE `vste`.
///
/// # Errors
/// As [`Viommu::alloc_domain_nested`](iommu_core::Viommu::alloc_domain_nested).
pub fn alloc_nested(
    viommu: &iommu_core::Viommu,
    vste: [u64; 2],
) -> Result<iommu_core::Domain, iommu_core::Errno> {
    let bytes = le_bytes(&vste);
    viommu.alloc_domain_nested(
        0,
        &iommu_core::UserData {
            ty: crate::nested::HWPT_DATA_ARM_SMMUV3,
            data: &bytes,
        },
    )
}

/// The guest's invalidation commands, sent through `viommu`.
///
/// # Errors
/// As [`Viommu::cache_invalidate`](iommu_core::Viommu::cache_invalidate).
pub fn guest_invalidate(
    viommu: &iommu_core::Viommu,
    cmds: &[[u64; 2]],
) -> Result<(), iommu_core::InvalidateError> {
    let bytes = le_bytes(&cmds.concat());
    viommu.cache_invalidate(&iommu_core::UserDataArray {
        ty: crate::nested::VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
        data: &bytes,
        entry_len: 16,
        entry_num: u32::try_from(cmds.len()).unwrap_or(u32::MAX),
    })
}

/// Double words as the uAPI lays them out (little-endian bytes).
pub fn le_bytes(words: &[u64]) -> alloc::vec::Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// A hostile guest against nesting: replays `data` as a guest's writes
/// to its own memory (CDs, stage-1 tables, anything), vSTEs, invalidation
/// commands, vDEVICE changes, and the host's stage-2 map and unmap, and
/// after every step checks the property nesting exists for: whatever the
/// guest wrote, DMA through its stream reaches only host memory the nest
/// parent maps right now (so nothing after a strict stage-2 unmap).
///
/// Returns what the run exercised, so tests can tell a run that reached
/// nothing from one that was checked.
///
/// # Panics
/// At the first DMA that reaches anything else, and on any panic of the
/// driver or the core.
pub fn run_nested(data: &[u8]) -> NestedRun {
    use crate::nested::VIOMMU_TYPE_ARM_SMMUV3;
    use iommu_core::{Bus, DeviceBuilder, DmaOwner, Iommu, PagingFlags, Prot};
    use vm_memory::{Bytes, GuestAddress};

    /// Guest RAM, mapped 1:1 by the parent: the guest's tables live here.
    const RAM: (u64, u64) = (0x80_0000, 0x4_0000);
    /// Guest pages above RAM and the host pages behind them.
    const PAGES: [(u64, u64); 2] = [(0x4000_0000, 0xa0_0000), (0x4000_1000, 0xa0_1000)];
    const SID: u32 = 16;
    const VSID: u64 = 3;

    let plat = EmuPlatform::with_smmus(
        EmuLayout {
            memory: 16 << 20,
            tables: 0x10_0000,
            tables_size: 7 << 20,
        },
        &[Features {
            tlb_entries: 64,
            ..Features::default()
        }],
        Smmuv3Config {
            poll_limit: 256,
            ..Smmuv3Config::default()
        },
        None,
    )
    .expect("a platform the driver probes");
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").expect("a bus");
    let dev = bus
        .add_device(DeviceBuilder::new("vf").stream_ids([SID]).pci(true))
        .expect("a device");
    iommu
        .bus_set_iommu(&bus, Arc::new(plat.driver.clone()))
        .expect("the driver takes the bus");
    let group = dev.iommu_group().expect("a group");
    iommu
        .group_claim_dma_owner(&group, DmaOwner::new())
        .expect("owned");
    let parent = iommu
        .domain_alloc_paging_flags(&dev, PagingFlags::NEST_PARENT, None)
        .expect("a nest parent");
    parent
        .map(Iova::new(RAM.0), PhysAddr::new(RAM.0), RAM.1, Prot::RW)
        .expect("guest RAM");
    let mut mapped = [false; PAGES.len()];
    let viommu = iommu
        .viommu_alloc(&dev, &parent, VIOMMU_TYPE_ARM_SMMUV3, None)
        .expect("a vSMMU");
    viommu.vdevice_alloc(&dev, VSID).expect("a vDEVICE");
    let guest = NestedGuest::new(&plat, RAM.0, RAM.1 / 2, 5);
    let mut attached: Option<iommu_core::Domain> = None;
    let mut run = NestedRun::default();
    let mut wild = false;

    let reachable = |pa: u64, mapped: &[bool]| {
        (RAM.0..RAM.0 + RAM.1).contains(&pa)
            || PAGES
                .iter()
                .zip(mapped)
                .any(|(&(_, host), &m)| m && (host..host + 0x1000).contains(&pa))
    };
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        let n = b.len().min(8);
        w[..n].copy_from_slice(&b[..n]);
        u64::from_le_bytes(w)
    };
    let mut steps = data.chunks(17).take(256);
    let mut probe_at = alloc::vec::Vec::new();
    for step in steps.by_ref() {
        let (op, arg) = (step[0], &step[1..]);
        let a = word(arg);
        let b = word(arg.get(8..).unwrap_or(&[]));
        match op % 9 {
            // The guest scribbles over its own RAM (its CD, its tables).
            // Once it has written over the half its table code keeps
            // (`NestedGuest`), that code is done with: a real guest's
            // driver would be as confused; it maps no more through it.
            0 => {
                let at = (RAM.0 + a % (RAM.1 - 8)) & !7;
                let _ = plat.memory.write_obj(b, GuestAddress(at));
                wild |= at < RAM.0 + RAM.1 / 2;
            }
            // The guest maps a VA of its choice to an IPA of its choice.
            1 => {
                let va = (a & 0xff) << 12;
                let ipa = match b % 4 {
                    0 | 1 => PAGES[(b >> 8) as usize % PAGES.len()].0,
                    2 => RAM.0 + (((b >> 8) % RAM.1) & !0xfff),
                    _ => (b >> 8) & 0xff_ffff_f000,
                };
                if !wild {
                    let _ = guest.map(va, ipa);
                }
                if !probe_at.contains(&va) {
                    probe_at.push(va);
                }
            }
            // A vSTE: the guest's own, or anything.
            2 | 3 => {
                let vste = if op % 9 == 2 {
                    let mut v = guest.vste();
                    v[1] |= b & (3 << 28);
                    v
                } else {
                    [a, b]
                };
                if let Ok(d) = alloc_nested(&viommu, vste) {
                    if let Some(old) = attached.take() {
                        iommu.detach_group(&old, &group);
                    }
                    if iommu.attach_group(&d, &group).is_ok() {
                        attached = Some(d);
                    }
                }
            }
            // Invalidations: well-formed ones of the guest's ASID, or anything.
            4 => {
                let cmds: [[u64; 2]; 2] = [
                    [0x11 | (5 << 48), 0],
                    [
                        [0x10, 0x12, 0x13, 0x05, 0x06, 0x30][a as usize % 6] | (a & !0xff),
                        b,
                    ],
                ];
                let _ = guest_invalidate(&viommu, &cmds);
            }
            // The host maps or unmaps a guest page at stage 2.
            5 => {
                let i = a as usize % PAGES.len();
                let (ipa, host) = PAGES[i];
                if mapped[i] {
                    let r = parent.unmap(Iova::new(ipa), 0x1000);
                    assert_eq!(r, Ok(0x1000), "a strict unmap completes on a live SMMU");
                    mapped[i] = false;
                } else if parent
                    .map(Iova::new(ipa), PhysAddr::new(host), 0x1000, Prot::RW)
                    .is_ok()
                {
                    mapped[i] = true;
                }
            }
            // vDEVICE churn: without its vSID a stage-1 vSTE cannot attach.
            6 => {
                let _ = viommu
                    .vdevice_destroy(VSID)
                    .or_else(|_| viommu.vdevice_alloc(&dev, VSID));
            }
            // Back to blocked.
            7 => {
                if let Some(old) = attached.take() {
                    iommu.detach_group(&old, &group);
                }
            }
            // The guest unmaps a VA.
            _ if !wild => guest.unmap((a & 0xff) << 12),
            _ => {}
        }
        // The property, at every VA the guest mapped and a few it did not.
        let hw = &plat.hw;
        for &va in probe_at.iter().chain(&[0, 0x1000, a & 0xf_ffff_f000]) {
            for access in [Access::Read, Access::Write] {
                if let Ok(seg) = hw.translate(SID, va, access) {
                    run.translated += 1;
                    if PAGES
                        .iter()
                        .any(|&(_, h)| (h..h + 0x1000).contains(&seg.pa))
                    {
                        run.reached_guest_pages += 1;
                    }
                    assert!(
                        reachable(seg.pa, &mapped),
                        "the guest reached {:#x} through VA {va:#x}; the parent maps RAM and {mapped:?}",
                        seg.pa
                    );
                }
            }
        }
        run.steps += 1;
        run.nested_steps += usize::from(attached.is_some());
        run.faults += plat.driver.handle_irq().len();
    }
    if let Some(old) = attached.take() {
        iommu.detach_group(&old, &group);
    }
    iommu.group_release_dma_owner(&group);
    run
}

/// What [`run_nested`] exercised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NestedRun {
    /// Steps replayed.
    pub steps: usize,
    /// Steps after which a nested domain was attached.
    pub nested_steps: usize,
    /// Probes that translated (each was checked).
    pub translated: usize,
    /// Of those, the ones that reached a guest page behind stage 2.
    pub reached_guest_pages: usize,
    /// Events the SMMU recorded.
    pub faults: usize,
}
