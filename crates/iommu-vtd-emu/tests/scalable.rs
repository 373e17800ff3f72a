//! Scalable mode, one rule per test, with hand-written root, context and
//! PASID entries and tables: what the VT-d specification (revision 4.x;
//! section numbers below) says the hardware does, and where QEMU 10 chose
//! differently, what [`Features::qemu_scalable`] does.

mod common;

use common::{fault_of, r64, unit, w64, Mem};
use iommu_vtd_emu::{reason, regs, Access, Features, Vtd};
use vm_memory::{Bytes, GuestAddress};

const ROOT: u64 = 0x1_0000;
/// Context tables for devfn 0-127 and 128-255 of bus 0.
const CTX_LO: u64 = 0x2_0000;
const CTX_HI: u64 = 0x2_1000;
const PASID_DIR: u64 = 0x2_2000;
const PASID_TABLE: u64 = 0x2_3000;
/// A 4-level table: PML4 (or SL-PML4), PDPT, PD, PT.
const PT: [u64; 4] = [0x3_0000, 0x3_1000, 0x3_2000, 0x3_3000];
const QUEUE: u64 = 0x4_0000;
const STATUS: u64 = 0x5_0000;
const PAGE: u64 = 0x10_0000;
const SID: u16 = 0x18;
const DID: u16 = 7;
const RID_PASID: u32 = 0;

/// A first-stage leaf: P | R/W | U/S | A.
const FS_RW: u64 = 0x27;
const FS_RO: u64 = 0x25;

/// Bus 0's root entry (both halves), `sid`'s 256-bit context entry naming
/// the PASID directory, the directory entry for PASIDs 0-63, PASID entry
/// `RID_PASID` (`pe`, three double words), a table mapping IOVA 0 to PAGE
/// with leaf bits `leaf` (tables with `table`); scalable root, then
/// translation on.
fn scalable(v: &Vtd<Mem>, sid: u16, pe: [u64; 3], table: u64, leaf: u64) {
    w64(v, ROOT, CTX_LO | 1);
    w64(v, ROOT + 8, CTX_HI | 1);
    let devfn = u64::from(sid & 0xff);
    let ctx = if devfn >= 0x80 { CTX_HI } else { CTX_LO } + (devfn & 0x7f) * 32;
    w64(v, ctx, PASID_DIR | 1);
    w64(v, ctx + 8, u64::from(RID_PASID));
    w64(v, PASID_DIR, PASID_TABLE | 1);
    for (k, q) in pe.iter().enumerate() {
        w64(
            v,
            PASID_TABLE + u64::from(RID_PASID) * 64 + 8 * k as u64,
            *q,
        );
    }
    for i in 0..3 {
        w64(v, PT[i], PT[i + 1] | table);
    }
    w64(v, PT[3], PAGE | leaf);
    v.write64(regs::RTADDR, ROOT | 1 << 10);
    v.write32(regs::GCMD, 1 << 30);
    v.write32(regs::GCMD, 1 << 31);
}

/// PASID entry: first stage, 4 levels, rooted at PT[0].
fn first_stage() -> [u64; 3] {
    [1 | 1 << 6, u64::from(DID), PT[0]]
}

/// PASID entry: second stage, 4 levels (AW = 2), rooted at PT[0].
fn second_stage() -> [u64; 3] {
    [PT[0] | 1 | 2 << 2 | 2 << 6, u64::from(DID), 0]
}

/// Turns on queued invalidation with 256-bit descriptors.
fn queue_256(v: &Vtd<Mem>) {
    v.write64(regs::IQA, QUEUE | 1 << 11);
    v.write32(regs::GCMD, 1 << 31 | 1 << 26);
}

/// Queues `descs` (256-bit each) and a wait writing `tag`; whether the
/// queue ran them all.
fn run(v: &Vtd<Mem>, descs: &[[u64; 2]], tag: u32) -> bool {
    let head = v.read64(regs::IQH) >> 5;
    let mut at = head;
    for d in descs
        .iter()
        .chain([[0x5 | 1 << 5 | u64::from(tag) << 32, STATUS]].iter())
    {
        let base = QUEUE + at * 32;
        w64(v, base, d[0]);
        w64(v, base + 8, d[1]);
        w64(v, base + 16, 0);
        w64(v, base + 24, 0);
        at += 1;
    }
    v.write64(regs::IQT, at << 5);
    v.memory().read_obj::<u32>(GuestAddress(STATUS)).unwrap() == tag
}

#[test]
fn the_capability_registers_report_scalable_mode_and_its_stages() {
    // 11.4.3 ECAP: SMTS (43), SLTS (46), FLTS (47); 11.4.2 CAP: FS1GP (56).
    let f = Features::scalable();
    assert_eq!(f.ecap() >> 43 & 1, 1);
    assert_eq!(f.ecap() >> 46 & 3, 3);
    assert_eq!(f.cap() >> 56 & 1, 1);
    // QEMU: x-flts=on exposes only the first stage, x-scalable-mode=on only
    // the second.
    let q = Features::qemu_scalable(true);
    assert_eq!(q.ecap() >> 46 & 3, 2);
    assert_eq!(Features::qemu_scalable(false).ecap() >> 46 & 3, 1);
    assert_eq!(Features::default().ecap() >> 43 & 1, 0);
}

#[test]
fn a_first_stage_pasid_entry_translates_through_x86_64_tables_and_sets_a_and_d() {
    // 9.6 PGTT = 001b, 9.7 first-stage entries; the unit sets A on every
    // entry it uses and D on a leaf it writes through (3.6.1).
    let v = unit(Features::scalable());
    scalable(&v, SID, first_stage(), 0x07, 0x07);
    let seg = v.translate(SID, 0x123, Access::Read).unwrap();
    assert_eq!(seg.pa, PAGE + 0x123);
    assert_eq!(r64(&v, PT[0]) & 0x60, 0x20, "A, not D, in the PML4E");
    assert_eq!(r64(&v, PT[3]) & 0x60, 0x20, "a read sets A only");
    // The write hits an entry cached by the read, without D: it walks again.
    v.translate(SID, 0x123, Access::Write).unwrap();
    assert_eq!(r64(&v, PT[3]) & 0x60, 0x60);
    assert_eq!(v.stats().walks, 2);
    v.translate(SID, 0x456, Access::Write).unwrap();
    assert_eq!(v.stats().walks, 2, "a dirty cached entry is used");
}

#[test]
fn first_stage_faults_have_their_own_reasons() {
    // 7.1.3: not present (71h), user access to a supervisor page (81h), a
    // write without R/W at any level (85h), a non-canonical input (80h).
    let v = unit(Features::scalable());
    scalable(&v, SID, first_stage(), FS_RW, FS_RO);
    assert_eq!(
        fault_of(v.translate(SID, 0x20_0000, Access::Read)),
        Some(reason::FS_NOT_PRESENT)
    );
    // A write to nothing is "not present" too, not "write not permitted".
    assert_eq!(
        fault_of(v.translate(SID, 0x20_0000, Access::Write)),
        Some(reason::FS_NOT_PRESENT)
    );
    assert_eq!(
        fault_of(v.translate(SID, 0, Access::Write)),
        Some(reason::SM_WRITE)
    );
    assert_eq!(
        fault_of(v.translate(SID, 0x8000_0000_0000, Access::Read)),
        Some(reason::FS_NON_CANONICAL)
    );
    // Canonical upper half: walked (index 256 of the PML4), not present.
    assert_eq!(
        fault_of(v.translate(SID, 0xffff_8000_0000_0000, Access::Read)),
        Some(reason::FS_NOT_PRESENT)
    );
    let v = unit(Features::scalable());
    scalable(&v, SID, first_stage(), 0x03, FS_RW); // tables without U/S
    assert_eq!(
        fault_of(v.translate(SID, 0, Access::Read)),
        Some(reason::FS_USER)
    );
    // R/W is checked at every level, not only the leaf.
    let v = unit(Features::scalable());
    scalable(&v, SID, first_stage(), FS_RO, FS_RW);
    assert_eq!(
        fault_of(v.translate(SID, 0, Access::Write)),
        Some(reason::SM_WRITE)
    );
    assert!(v.translate(SID, 0, Access::Read).is_ok());
}

#[test]
fn large_first_stage_pages_need_their_capability_and_an_aligned_address() {
    // 9.7: PS in a PDPTE is a 1 GiB page only with CAP.FS1GP; a 2 MiB
    // page's address bits 20:13 are reserved.
    let mut f = Features::scalable();
    f.fs_1g = false;
    let v = unit(f);
    scalable(&v, SID, first_stage(), FS_RW, FS_RW);
    w64(&v, PT[1], 0x4000_0000 | FS_RW | 0x80);
    assert_eq!(
        fault_of(v.translate(SID, 0x10, Access::Read)),
        Some(reason::FS_RESERVED)
    );
    let v = unit(Features::scalable());
    scalable(&v, SID, first_stage(), FS_RW, FS_RW);
    w64(&v, PT[1], 0x4000_0000 | FS_RW | 0x80);
    assert_eq!(
        v.translate(SID, 0x1234_5678, Access::Read).unwrap().pa,
        0x5234_5678
    );
    let v = unit(Features::scalable());
    scalable(&v, SID, first_stage(), FS_RW, FS_RW);
    w64(&v, PT[2], 0x20_4000 | FS_RW | 0x80);
    assert_eq!(
        fault_of(v.translate(SID, 0x10, Access::Read)),
        Some(reason::FS_RESERVED)
    );
}

#[test]
fn a_5_level_first_stage_needs_fl5lp_and_walks_57_bits() {
    // 9.6 FSPM = 01b: 5-level paging, only with CAP.FL5LP; the input is
    // then canonical at bit 56.
    let pml5 = 0x3_4000;
    let pe = [1 | 1 << 6, u64::from(DID), pml5 | 1 << 2];
    let mut f = Features::scalable();
    f.fs_5level = false;
    let v = unit(f);
    scalable(&v, SID, pe, FS_RW, FS_RW);
    assert_eq!(
        fault_of(v.translate(SID, 0, Access::Read)),
        Some(reason::PASID_INVALID)
    );
    let v = unit(Features::scalable());
    scalable(&v, SID, pe, FS_RW, FS_RW);
    // PML5 entry 1 (bit 48 set) leads to the 4-level table of the others.
    w64(&v, pml5 + 8, PT[0] | FS_RW);
    assert_eq!(
        v.translate(SID, (1 << 48) + 0x42, Access::Write)
            .unwrap()
            .pa,
        PAGE + 0x42
    );
    assert_eq!(
        fault_of(v.translate(SID, 0x42, Access::Read)),
        Some(reason::FS_NOT_PRESENT),
        "PML5 entry 0 is empty"
    );
    assert_eq!(
        fault_of(v.translate(SID, 1 << 57, Access::Read)),
        Some(reason::FS_NON_CANONICAL)
    );
    // Bit 48 set is canonical with 5 levels (it is not with 4).
    assert_eq!(Features::scalable().cap() >> 60 & 1, 1);
}

#[test]
fn a_second_stage_pasid_entry_uses_second_stage_tables() {
    // 9.6 PGTT = 010b with AW, 9.8: faults keep the second stage's
    // reasons (as QEMU reports them).
    let v = unit(Features::scalable());
    scalable(&v, SID, second_stage(), 0b11, 0b01);
    assert_eq!(
        v.translate(SID, 0x42, Access::Read).unwrap().pa,
        PAGE + 0x42
    );
    assert_eq!(
        fault_of(v.translate(SID, 0, Access::Write)),
        Some(reason::WRITE)
    );
    assert_eq!(
        fault_of(v.translate(SID, 0x20_0000, Access::Read)),
        Some(reason::READ)
    );
}

#[test]
fn devfns_from_128_use_the_high_half_of_the_root_entry() {
    // 9.2: the scalable-mode root entry's upper context-table pointer.
    let v = unit(Features::scalable());
    let sid = 0x0090;
    scalable(&v, sid, first_stage(), FS_RW, FS_RW);
    assert_eq!(v.translate(sid, 0, Access::Read).unwrap().pa, PAGE);
    w64(&v, ROOT + 8, 0);
    let v2 = unit(Features::scalable());
    scalable(&v2, sid, first_stage(), FS_RW, FS_RW);
    w64(&v2, ROOT + 8, CTX_HI); // upper half not present
    assert_eq!(
        fault_of(v2.translate(sid, 0, Access::Read)),
        Some(reason::ROOT_NOT_PRESENT)
    );
}

#[test]
fn pasid_entries_that_cannot_be_used_fault_with_their_reason() {
    // 7.1.3: directory entry not present (51h), PASID entry not present
    // (59h), a translation type ECAP lacks (5Bh); 9.4 reserved context
    // bits (0Bh).
    let v = unit(Features::qemu_scalable(false));
    scalable(&v, SID, first_stage(), FS_RW, FS_RW);
    assert_eq!(
        fault_of(v.translate(SID, 0, Access::Read)),
        Some(reason::PASID_INVALID)
    );
    let v = unit(Features::scalable());
    scalable(&v, SID, [0, 0, 0], FS_RW, FS_RW);
    assert_eq!(
        fault_of(v.translate(SID, 0, Access::Read)),
        Some(reason::PASID_NOT_PRESENT)
    );
    // QEMU checks the type first: a zeroed entry is "invalid", one with
    // only P clear "not present".
    let q = unit(Features::qemu_scalable(true));
    scalable(&q, SID, [0, 0, 0], FS_RW, FS_RW);
    assert_eq!(
        fault_of(q.translate(SID, 0, Access::Read)),
        Some(reason::PASID_INVALID)
    );
    let q = unit(Features::qemu_scalable(true));
    scalable(&q, SID, [1 << 6, 0, PT[0]], FS_RW, FS_RW);
    assert_eq!(
        fault_of(q.translate(SID, 0, Access::Read)),
        Some(reason::PASID_NOT_PRESENT)
    );
    let v = unit(Features::scalable());
    scalable(&v, SID, first_stage(), FS_RW, FS_RW);
    w64(&v, PASID_DIR, 0);
    assert_eq!(
        fault_of(v.translate(SID, 0, Access::Read)),
        Some(reason::PASID_DIR_NOT_PRESENT)
    );
    let v = unit(Features::scalable());
    scalable(&v, SID, first_stage(), FS_RW, FS_RW);
    w64(&v, CTX_LO + u64::from(SID & 0x7f) * 32 + 16, 1);
    assert_eq!(
        fault_of(v.translate(SID, 0, Access::Read)),
        Some(reason::CONTEXT_RESERVED)
    );
    // Pass-through (100b) needs ECAP.PT.
    let v = unit(Features::scalable());
    scalable(&v, SID, [1 | 4 << 6, u64::from(DID), 0], FS_RW, FS_RW);
    assert_eq!(
        v.translate(SID, 0xabc_d000, Access::Write).unwrap().pa,
        0xabc_d000
    );
}

#[test]
fn the_pasid_cache_keeps_an_entry_until_a_pasid_cache_invalidation() {
    // 6.5.2.5: a changed PASID entry is used only after the PASID cache
    // (and the IOTLB) are invalidated; QEMU caches none.
    let v = unit(Features::scalable());
    scalable(&v, SID, first_stage(), FS_RW, FS_RW);
    queue_256(&v);
    assert!(v.translate(SID, 0, Access::Read).is_ok());
    w64(&v, PASID_TABLE, 0); // not present any more
    assert!(run(&v, &[[0x6 | 2 << 4 | u64::from(DID) << 16, 0]], 1));
    assert!(
        v.translate(SID, 0, Access::Read).is_ok(),
        "the cached PASID entry is used"
    );
    // PASID-selective PASID-cache invalidation (granularity 01b).
    assert!(run(&v, &[[0x7 | 1 << 4 | u64::from(DID) << 16, 0]], 2));
    assert_eq!(
        fault_of(v.translate(SID, 0, Access::Read)),
        Some(reason::PASID_NOT_PRESENT)
    );

    let q = unit(Features::qemu_scalable(true));
    scalable(&q, SID, first_stage(), FS_RW, FS_RW);
    queue_256(&q);
    assert!(q.translate(SID, 0, Access::Read).is_ok());
    w64(&q, PASID_TABLE, 0); // zeroed: QEMU calls it invalid
    assert!(run(&q, &[[0x6 | 2 << 4 | u64::from(DID) << 16, 0]], 1));
    assert_eq!(
        fault_of(q.translate(SID, 0, Access::Read)),
        Some(reason::PASID_INVALID)
    );
}

#[test]
fn pasid_based_iotlb_invalidation_drops_first_stage_pages_only() {
    // 6.5.2.6: page-selective within a PASID (granularity 11b) drops the
    // first-stage entries for those pages; 6.5.2.3: a page-selective IOTLB
    // invalidation without a PASID drops every first-stage entry of the
    // domain, whatever its address.
    let v = unit(Features::scalable());
    scalable(&v, SID, first_stage(), FS_RW, FS_RW);
    w64(&v, PT[3] + 8, (PAGE + 0x1000) | FS_RW);
    queue_256(&v);
    v.translate(SID, 0, Access::Read).unwrap();
    v.translate(SID, 0x1000, Access::Read).unwrap();
    w64(&v, PT[3], 0);
    w64(&v, PT[3] + 8, 0);
    let piotlb = 0x6 | 3 << 4 | u64::from(DID) << 16 | u64::from(RID_PASID) << 32;
    assert!(run(&v, &[[piotlb, 0]], 1));
    assert!(fault_of(v.translate(SID, 0, Access::Read)).is_some());
    assert!(
        v.translate(SID, 0x1000, Access::Read).is_ok(),
        "another page stays"
    );
    let psi = 0x2 | 3 << 4 | u64::from(DID) << 16;
    assert!(run(&v, &[[psi, 0x40_0000]], 2), "an unrelated page");
    assert!(fault_of(v.translate(SID, 0x1000, Access::Read)).is_some());
}

#[test]
fn the_256_bit_queue_refuses_what_the_128_bit_one_cannot_hold() {
    // 10.4.25 IQA.DW: 256-bit descriptors (bits 255:128 reserved for these
    // types); IQT bit 4 is reserved then. A PASID-based IOTLB invalidation
    // in a 128-bit queue is refused (as QEMU does).
    let v = unit(Features::scalable());
    queue_256(&v);
    let base = QUEUE;
    w64(&v, base, 0x5 | 1 << 5 | 9 << 32);
    w64(&v, base + 8, STATUS);
    w64(&v, base + 16, 1);
    v.write64(regs::IQT, 1 << 5);
    assert_ne!(v.read32(regs::FSTS) & 1 << 4, 0, "IQE");
    assert_eq!(v.read64(regs::IQH), 0);

    let v = unit(Features::scalable());
    queue_256(&v);
    v.write64(regs::IQT, 0x10);
    assert_ne!(v.read32(regs::FSTS) & 1 << 4, 0, "IQT bit 4 with DW");

    let v = unit(Features::scalable());
    v.write64(regs::IQA, QUEUE);
    v.write32(regs::GCMD, 1 << 26);
    w64(&v, QUEUE, 0x6 | 2 << 4);
    v.write64(regs::IQT, 1 << 4);
    assert_ne!(v.read32(regs::FSTS) & 1 << 4, 0);

    // Without scalable mode, DW is ignored: 128-bit descriptors.
    let v = unit(Features::default());
    v.write64(regs::IQA, QUEUE | 1 << 11);
    v.write32(regs::GCMD, 1 << 26);
    w64(&v, QUEUE, 0x5 | 1 << 5 | 3 << 32);
    w64(&v, QUEUE + 8, STATUS);
    v.write64(regs::IQT, 1 << 4);
    assert_eq!(v.read32(regs::FSTS) & 1 << 4, 0);
    assert_eq!(v.memory().read_obj::<u32>(GuestAddress(STATUS)).unwrap(), 3);
}

#[test]
fn a_legacy_root_pointer_keeps_legacy_tables_on_a_scalable_unit() {
    // 11.4.5 RTADDR.TTM = 00b: legacy mode even where SMTS is reported.
    let v = unit(Features::scalable());
    w64(&v, ROOT, CTX_LO | 1);
    w64(&v, CTX_LO + u64::from(SID) * 16, PT[0] | 1);
    w64(
        &v,
        CTX_LO + u64::from(SID) * 16 + 8,
        2 | u64::from(DID) << 8,
    );
    for i in 0..3 {
        w64(&v, PT[i], PT[i + 1] | 3);
    }
    w64(&v, PT[3], PAGE | 3);
    v.write64(regs::RTADDR, ROOT);
    v.write32(regs::GCMD, 1 << 30);
    v.write32(regs::GCMD, 1 << 31);
    assert_eq!(v.translate(SID, 8, Access::Write).unwrap().pa, PAGE + 8);
}
