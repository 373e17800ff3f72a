//! The emulated unit's rules, one test each, with hand-written root and
//! context entries, page tables and descriptors: what the VT-d
//! specification (Intel, "Virtualization Technology for Directed I/O",
//! revision 4.x; section numbers below) says the hardware does.

mod common;

use common::{fault_of, unit, w64, Mem};
use iommu_vtd_emu::{reason, regs, Access, Features, Vtd};
use vm_memory::{Bytes, GuestAddress};

const ROOT: u64 = 0x1_0000;
const CTX: u64 = 0x2_0000;
/// A 4-level second-level table: PML4, PDPT, PD, PT.
const SL: [u64; 4] = [0x3_0000, 0x3_1000, 0x3_2000, 0x3_3000];
const QUEUE: u64 = 0x4_0000;
const STATUS: u64 = 0x5_0000;
const PAGE: u64 = 0x10_0000;
const SID: u16 = 0x18;
const DID: u16 = 3;

/// Root entry for bus 0, a context entry for `SID` (`lo`, `hi`), and a
/// 4-level table mapping IOVA 0 to `PAGE` read-only; root pointer set and
/// translation on.
fn translating(v: &Vtd<Mem>, lo: u64, hi: u64) {
    w64(v, ROOT, CTX | 1);
    w64(v, CTX + u64::from(SID) * 16, lo);
    w64(v, CTX + u64::from(SID) * 16 + 8, hi);
    for i in 0..3 {
        w64(v, SL[i], SL[i + 1] | 3);
    }
    w64(v, SL[3], PAGE | 1);
    v.write64(regs::RTADDR, ROOT);
    v.write32(regs::GCMD, 1 << 30);
    v.write32(regs::GCMD, 1 << 31);
}

fn second_level() -> (u64, u64) {
    (SL[0] | 1, 2 | u64::from(DID) << 8)
}

#[test]
fn with_translation_off_requests_pass_unchanged() {
    // 10.4.4 GCMD_REG.TE: with translation disabled, DMA is not remapped.
    let v = unit(Features::default());
    assert_eq!(
        v.translate(SID, 0x1234_5678, Access::Write).unwrap().pa,
        0x1234_5678
    );
}

#[test]
fn a_present_context_translates_through_the_second_level_table() {
    // 9.3 (context entry), 9.8 (second-level entries), 3.6 (walk).
    let v = unit(Features::default());
    let (lo, hi) = second_level();
    translating(&v, lo, hi);
    let seg = v.translate(SID, 0x123, Access::Read).unwrap();
    assert_eq!((seg.pa, seg.len), (PAGE + 0x123, 0x1000 - 0x123));
    // Read-only: a write is "write not permitted" (7.2, reason 5h).
    assert_eq!(
        fault_of(v.translate(SID, 0, Access::Write)),
        Some(reason::WRITE)
    );
    // Nothing mapped there: reason 6h for a read.
    assert_eq!(
        fault_of(v.translate(SID, 0x20_0000, Access::Read)),
        Some(reason::READ)
    );
}

#[test]
fn missing_root_and_context_entries_are_their_own_faults() {
    // 7.2: 1h root entry not present, 2h context entry not present.
    let v = unit(Features::default());
    translating(&v, 0, 0);
    assert_eq!(
        fault_of(v.translate(SID, 0, Access::Read)),
        Some(reason::CONTEXT_NOT_PRESENT)
    );
    assert_eq!(
        fault_of(v.translate(0x0100, 0, Access::Read)),
        Some(reason::ROOT_NOT_PRESENT),
        "bus 1 has no root entry"
    );
}

#[test]
fn pass_through_needs_ecap_pt() {
    // 9.3 TT = 10b is reserved without ECAP.PT: reason Dh.
    let v = unit(Features {
        pass_through: false,
        ..Features::default()
    });
    translating(&v, 0b1001, 2 | 1 << 8);
    assert_eq!(
        fault_of(v.translate(SID, 0x4000, Access::Read)),
        Some(reason::TRANSLATION_TYPE)
    );
    let v = unit(Features::default());
    translating(&v, 0b1001, 2 | 1 << 8);
    assert_eq!(v.translate(SID, 0x4000, Access::Read).unwrap().pa, 0x4000);
}

#[test]
fn an_address_width_sagaw_lacks_is_an_invalid_context() {
    // 9.3 AW must be a width SAGAW reports: reason 3h.
    let v = unit(Features {
        sagaw: 0b010,
        ..Features::default()
    });
    let (lo, hi) = second_level();
    translating(&v, lo, hi);
    assert_eq!(
        fault_of(v.translate(SID, 0, Access::Read)),
        Some(reason::CONTEXT_INVALID)
    );
}

#[test]
fn the_iotlb_keeps_a_translation_until_it_is_invalidated() {
    // 6.5.1: IOTLB entries live until an invalidation removes them.
    let v = unit(Features::default());
    let (lo, hi) = second_level();
    translating(&v, lo, hi);
    v.translate(SID, 0, Access::Read).unwrap();
    w64(&v, SL[3], 0);
    assert_eq!(v.translate(SID, 0, Access::Read).unwrap().pa, PAGE, "stale");
    // 11.4.8: a page-selective IOTLB invalidation through the registers.
    v.write64(regs::IOTLB, 0);
    v.write64(regs::IOTLB + 8, 1 << 63 | 3 << 60 | u64::from(DID) << 32);
    let r = v.read64(regs::IOTLB + 8);
    assert_eq!(r >> 63, 0, "IVT clears when done");
    assert_eq!((r >> 57) & 3, 3, "done at page granularity (IAIG)");
    assert_eq!(
        fault_of(v.translate(SID, 0, Access::Read)),
        Some(reason::READ)
    );
}

#[test]
fn the_queue_runs_descriptors_and_writes_the_wait_status() {
    // 6.5.2: queued invalidation; 6.5.2.8 the wait descriptor's status write.
    let v = unit(Features::default());
    let (lo, hi) = second_level();
    translating(&v, lo, hi);
    v.translate(SID, 0, Access::Read).unwrap();
    w64(&v, SL[3], 0);
    v.write64(regs::IQA, QUEUE);
    v.write32(regs::GCMD, 1 << 31 | 1 << 26);
    assert_ne!(v.read32(regs::GSTS) & (1 << 26), 0, "QIES");
    // IOTLB domain-selective, then a wait writing 0x77.
    w64(&v, QUEUE, 0x2 | 2 << 4 | u64::from(DID) << 16);
    w64(&v, QUEUE + 8, 0);
    w64(&v, QUEUE + 16, 0x5 | 1 << 5 | 0x77 << 32);
    w64(&v, QUEUE + 24, STATUS);
    v.write64(regs::IQT, 2 << 4);
    assert_eq!(v.read64(regs::IQH), 2 << 4, "the head caught up");
    assert_eq!(
        v.memory().read_obj::<u32>(GuestAddress(STATUS)).unwrap(),
        0x77
    );
    assert_eq!(
        fault_of(v.translate(SID, 0, Access::Read)),
        Some(reason::READ)
    );
    // 6.5.2: register-based invalidation is not for a running queue.
    v.write64(regs::CCMD, 1 << 63 | 1 << 61);
    assert_eq!((v.read64(regs::CCMD) >> 59) & 3, 0, "CAIG 0: not done");
}

#[test]
fn a_malformed_descriptor_stops_the_queue_with_iqe() {
    // 6.5.2.10: an invalid descriptor sets FSTS.IQE; IQH points at it and
    // nothing after it runs until software fixes it and clears IQE.
    let v = unit(Features::default());
    v.write64(regs::IQA, QUEUE);
    v.write32(regs::GCMD, 1 << 26);
    w64(&v, QUEUE, 0xf); // no such type
    w64(&v, QUEUE + 16, 0x5 | 1 << 5 | 0x55 << 32);
    w64(&v, QUEUE + 24, STATUS);
    v.write64(regs::IQT, 2 << 4);
    assert_ne!(v.read32(regs::FSTS) & (1 << 4), 0);
    assert_eq!(v.read64(regs::IQH), 0);
    assert_eq!(v.memory().read_obj::<u32>(GuestAddress(STATUS)).unwrap(), 0);
    // Replaced by a wait and IQE cleared, the queue moves on.
    w64(&v, QUEUE, 0x5);
    v.write32(regs::FSTS, 1 << 4);
    v.write64(regs::IQT, 2 << 4);
    assert_eq!(v.read64(regs::IQH), 2 << 4);
    assert_eq!(
        v.memory().read_obj::<u32>(GuestAddress(STATUS)).unwrap(),
        0x55
    );
    // An address mask over MAMV is malformed too (6.5.2.3).
    w64(&v, QUEUE + 32, 0x2 | 3 << 4 | 1 << 16);
    w64(&v, QUEUE + 40, 40);
    v.write64(regs::IQT, 3 << 4);
    assert_ne!(v.read32(regs::FSTS) & (1 << 4), 0);
}

#[test]
fn fault_records_fill_in_turn_overflow_and_clear_by_writing_f() {
    // 7.2.1 primary fault logging, 11.4.14 FRCD_REG, 11.4.9 FSTS_REG.
    let v = unit(Features {
        fault_records: 2,
        ..Features::default()
    });
    translating(&v, 0, 0);
    for _ in 0..3 {
        let _ = v.translate(SID, 0x7000, Access::Write);
    }
    let fsts = v.read32(regs::FSTS);
    assert_ne!(fsts & 2, 0, "PPF");
    assert_ne!(fsts & 1, 0, "PFO: the third had no record");
    let hi = v.read64(regs::FRCD + 8);
    assert_eq!(hi >> 63, 1);
    assert_eq!((hi >> 62) & 1, 0, "T = 0: a write");
    assert_eq!(((hi >> 32) & 0xff) as u8, reason::CONTEXT_NOT_PRESENT);
    assert_eq!(hi as u16, SID);
    assert_eq!(v.read64(regs::FRCD), 0x7000);
    v.write32(regs::FRCD + 12, 1 << 31);
    v.write32(regs::FRCD + 16 + 12, 1 << 31);
    v.write32(regs::FSTS, 1);
    assert_eq!(v.read32(regs::FSTS) & 3, 0, "no fault pending, no overflow");
}

#[test]
fn qemu_compresses_a_sources_faults_and_the_specification_unit_does_not() {
    let compressing = unit(Features::qemu());
    translating(&compressing, 0, 0);
    for _ in 0..3 {
        let _ = compressing.translate(SID, 0x7000, Access::Write);
    }
    assert_eq!(compressing.stats().faults_recorded, 1);
    assert_eq!(compressing.stats().faults_compressed, 2);
    assert_eq!(compressing.read32(regs::FSTS) & 1, 0, "no overflow either");
}

#[test]
fn capability_registers_report_the_features() {
    // 11.4.2, 11.4.3: QEMU 10's intel-iommu reads these (its judge).
    let q = unit(Features::qemu());
    assert_eq!(q.read64(regs::CAP), 0x00d2_008c_222f_0606);
    assert_eq!(q.read64(regs::ECAP), 0xf42);
}

/// Seeds for `fuzz/fuzz_targets/vtd_emu.rs` (written to
/// `$IOMMU_FUZZ_SEEDS/vtd_emu` when set): a root and context entry, the
/// root pointer and translation on, then DMA; and the queue started with
/// a wait descriptor.
#[test]
fn vtd_emu_fuzz_seeds_are_written() {
    let mem_write = |at: u64, val: u64| {
        let mut v = vec![2u8];
        v.extend_from_slice(&(at >> 3).to_le_bytes()[..3]);
        v.extend_from_slice(&val.to_le_bytes());
        v
    };
    let reg64 = |at: u16, val: u64| {
        let mut v = vec![1u8];
        v.extend_from_slice(&at.to_le_bytes());
        v.extend_from_slice(&val.to_le_bytes());
        v
    };
    let reg32 = |at: u16, val: u32| {
        let mut v = vec![0u8];
        v.extend_from_slice(&at.to_le_bytes());
        v.extend_from_slice(&val.to_le_bytes());
        v
    };
    let dma = |sid: u16, iova: u32| {
        let mut v = vec![5u8];
        v.extend_from_slice(&sid.to_le_bytes());
        v.extend_from_slice(&iova.to_le_bytes());
        v
    };
    let translate_seed = [
        vec![0u8],
        mem_write(ROOT, CTX | 1),
        mem_write(CTX + 0x180, SL[0] | 1),
        mem_write(CTX + 0x188, 2 | 1 << 8),
        mem_write(SL[0], SL[1] | 3),
        reg64(regs::RTADDR as u16, ROOT),
        reg32(regs::GCMD as u16, 1 << 30),
        reg32(regs::GCMD as u16, 1 << 31),
        dma(SID, 0x1000),
    ]
    .concat();
    let queue_seed = [
        vec![1u8],
        reg64(regs::IQA as u16, QUEUE),
        reg32(regs::GCMD as u16, 1 << 26),
        mem_write(QUEUE, 0x5 | 1 << 5 | 0x77 << 32),
        mem_write(QUEUE + 8, STATUS),
        reg64(regs::IQT as u16, 1 << 4),
    ]
    .concat();
    if let Some(dir) = std::env::var_os("IOMMU_FUZZ_SEEDS") {
        let d = std::path::PathBuf::from(dir).join("vtd_emu");
        std::fs::create_dir_all(&d).unwrap();
        for (i, s) in [translate_seed, queue_seed].iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i}")), s).unwrap();
        }
    }
}

#[test]
fn the_iotlb_holds_at_most_its_capacity_and_evicts_by_emptying() {
    // 6.5: the hardware may evict any cached translation at any time, so
    // a bounded IOTLB is allowed; a device touching every page of a 2 MiB
    // table cannot make the unit hold more than `iotlb_entries`.
    let v = unit(Features {
        iotlb_entries: 8,
        ..Features::default()
    });
    let (lo, hi) = second_level();
    translating(&v, lo, hi);
    for i in 0..512 {
        w64(&v, SL[3] + i * 8, (PAGE + i * 0x1000) | 1);
    }
    for i in 0..512u64 {
        let seg = v.translate(SID, i * 0x1000, Access::Read).unwrap();
        assert_eq!(seg.pa, PAGE + i * 0x1000);
        assert!(v.iotlb_entries() <= 8, "{} entries", v.iotlb_entries());
    }
    let before = v.stats();
    // The last page is cached; an evicted one is walked again.
    v.translate(SID, 511 * 0x1000, Access::Read).unwrap();
    v.translate(SID, 0, Access::Read).unwrap();
    let after = v.stats();
    assert_eq!(after.iotlb_hits - before.iotlb_hits, 1);
    assert_eq!(after.walks - before.walks, 1);
    assert_eq!(Features::qemu().iotlb_entries, 1024);
}
