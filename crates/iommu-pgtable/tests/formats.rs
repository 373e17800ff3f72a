//! Intel VT-d second-level, AMD v1, RISC-V and x86-64: golden descriptors
//! worked out by hand from each specification, the self-test scenario, and
//! model tests.

mod common;

use iommu_pgtable::amd::{AmdV1, AmdV1Selftest};
use iommu_pgtable::riscv::{Riscv, RiscvStage};
use iommu_pgtable::vtd::VtdSl;
use iommu_pgtable::x86::X86_64;
use iommu_pgtable::{Format, HeapMemory, IoPageTable, Pte, TableMemory};
use iommu_types::{Iova, PhysAddr, Prot, SZ_1G, SZ_2M, SZ_4K};
use proptest::prelude::*;

/// Follows the table pointer at `idx` of `t` (at `level`) and returns it, after
/// checking the descriptor equals `addr | flags`.
fn next<F: Format>(
    pt: &IoPageTable<F, HeapMemory>,
    level: usize,
    t: PhysAddr,
    idx: usize,
    flags: u64,
) -> PhysAddr {
    let pte = pt.read_descriptor(level, t, idx).expect("reachable table");
    let addr = pte & ((1 << 52) - 1) & !0xfff;
    assert_eq!(
        pte & !addr,
        flags,
        "table descriptor flags at level {level}: {pte:#x}"
    );
    PhysAddr::new(addr)
}

// ---- VT-d (VT-d spec 9.8: R[0] W[1] PS[7] D[9] SNP[11], address [51:12]) ----

#[test]
fn vtd_sl_4level_page_and_superpages() {
    let pt = IoPageTable::new(VtdSl::new(4, 48).unwrap(), HeapMemory::new()).unwrap();
    assert_eq!(pt.pgsize_bitmap(), SZ_4K | SZ_2M | SZ_1G);
    pt.map_pages(
        Iova::new(0x4000_1000),
        PhysAddr::new(0x8_1234_5000),
        SZ_4K,
        1,
        Prot::RW | Prot::CACHE,
    )
    .unwrap();
    pt.map_pages(
        Iova::new(0x20_0000),
        PhysAddr::new(0x4000_0000),
        SZ_2M,
        1,
        Prot::READ,
    )
    .unwrap();
    pt.map_pages(
        Iova::new(3 * SZ_1G),
        PhysAddr::new(5 * SZ_1G),
        SZ_1G,
        1,
        Prot::WRITE,
    )
    .unwrap();
    // Table entries: address | R | W.
    let l1 = next(&pt, 0, pt.root(), 0, 0b11);
    let l2 = next(&pt, 1, l1, 1, 0b11);
    let l3 = next(&pt, 2, l2, 0, 0b11);
    // page: address | R | W | SNP (0x800)
    assert_eq!(pt.read_descriptor(3, l3, 1), Some(0x0000_0008_1234_5803));
    // 2 MiB superpage in the SL-PDE: address | R | PS (0x80)
    let l2_0 = next(&pt, 1, l1, 0, 0b11);
    assert_eq!(pt.read_descriptor(2, l2_0, 1), Some(0x0000_0000_4000_0081));
    // 1 GiB superpage in the SL-PDPE: address | W | PS
    assert_eq!(pt.read_descriptor(1, l1, 3), Some(0x0000_0001_4000_0082));
}

#[test]
fn vtd_sl_5level_walks_57_bits() {
    let f = VtdSl::new(5, 52).unwrap();
    assert_eq!(f.geometry().ias, 57);
    let pt = IoPageTable::new(f, HeapMemory::new()).unwrap();
    pt.map_pages(
        Iova::new(1 << 56),
        PhysAddr::new(0x1000),
        SZ_4K,
        1,
        Prot::RW,
    )
    .unwrap();
    // Bit 56 selects root index 256 in a 5-level walk.
    next(&pt, 0, pt.root(), 256, 0b11);
    assert_eq!(
        pt.iova_to_phys(Iova::new((1 << 56) + 7)),
        Some(PhysAddr::new(0x1007))
    );
    assert!(VtdSl::new(6, 48).is_err() && VtdSl::new(4, 53).is_err());
}

#[test]
fn vtd_sl_dirty_bit_is_bit_9() {
    let f = VtdSl::new(4, 48).unwrap();
    let leaf = f.encode_leaf(PhysAddr::new(0x5000), 3, Prot::RW);
    assert_eq!(f.dirty_state(leaf, 3), Some(false));
    assert_eq!(f.make_dirty(leaf), leaf | (1 << 9));
    assert_eq!(f.dirty_state(f.make_dirty(leaf), 3), Some(true));
    assert_eq!(
        f.dirty_state(f.encode_leaf(PhysAddr::new(0x5000), 3, Prot::READ), 3),
        None
    );
    // PS in the last level is not a superpage: the entry is a page; PS at the
    // root of a 4-level table (512 GiB) is reserved.
    assert_eq!(f.decode(0x4000_0083, 0), Pte::Invalid);
}

// ---- AMD v1 (AMD IOMMU spec 2.2.3: PR[0] HD[6] NextLevel[11:9] FC[60] IR[61] IW[62]) ----

#[test]
fn amd_v1_mode4_directory_and_leaf_entries() {
    let pt = IoPageTable::new(AmdV1::new(4).unwrap(), HeapMemory::new()).unwrap();
    assert_eq!(pt.pgsize_bitmap(), SZ_4K | SZ_2M | SZ_1G);
    // A fresh table starts in mode 3, as Linux's does: its root is AMD level 3.
    let amd = pt.format().clone();
    assert_eq!(amd.amd_level(pt.root_level()), 3);
    let first_root = pt.root();
    pt.map_pages(
        Iova::new(0x4000_1000),
        PhysAddr::new(0x8_1234_5000),
        SZ_4K,
        1,
        Prot::RW,
    )
    .unwrap();
    pt.map_pages(
        Iova::new(0x20_0000),
        PhysAddr::new(0x4000_0000),
        SZ_2M,
        1,
        Prot::READ,
    )
    .unwrap();
    assert_eq!(
        pt.root(),
        first_root,
        "39-bit addresses need no fourth level"
    );
    // Directory entries: address | IR | IW | NextLevel << 9 | PR, NextLevel = AMD level pointed to.
    let ir_iw = (1u64 << 61) | (1 << 62);
    let l3 = pt.root();
    let l2 = next(&pt, 1, l3, 1, ir_iw | (2 << 9) | 1);
    let l1 = next(&pt, 2, l2, 0, ir_iw | (1 << 9) | 1);
    // 4 KiB leaf: address | IW | IR | FC | PR, NextLevel 0
    assert_eq!(pt.read_descriptor(3, l1, 1), Some(0x7000_0008_1234_5001));
    // 2 MiB leaf at AMD level 2: address | IR | FC | PR
    let l2_0 = next(&pt, 1, l3, 0, ir_iw | (2 << 9) | 1);
    assert_eq!(pt.read_descriptor(2, l2_0, 1), Some(0x3000_0000_4000_0001));

    // 512 GiB and up needs mode 4: a new root whose entry 0 is the old one.
    pt.map_pages(
        Iova::new(0x80_0000_0000),
        PhysAddr::new(0x9000),
        SZ_4K,
        1,
        Prot::READ,
    )
    .unwrap();
    assert_eq!(amd.amd_level(pt.root_level()), 4);
    assert_eq!(next(&pt, 0, pt.root(), 0, ir_iw | (3 << 9) | 1), first_root);
    let high = next(&pt, 0, pt.root(), 1, ir_iw | (3 << 9) | 1);
    assert_ne!(high, first_root);
    // Everything mapped before still translates, through either root.
    assert_eq!(
        pt.iova_to_phys(Iova::new(0x4000_1042)),
        Some(PhysAddr::new(0x8_1234_5042))
    );
    assert_eq!(
        pt.iova_to_phys(Iova::new(0x80_0000_0123)),
        Some(PhysAddr::new(0x9123))
    );
    // Beyond mode 4 (48 bits) is out of range, and grows nothing.
    assert!(pt
        .map_pages(Iova::new(1 << 48), PhysAddr::new(0), SZ_4K, 1, Prot::READ)
        .is_err());
    assert_eq!(amd.amd_level(pt.root_level()), 4);
}

#[test]
fn amd_v1_selftest_layout_has_2k_pages_stored_one_bit_up() {
    let pt = IoPageTable::new(AmdV1Selftest::new(5).unwrap(), HeapMemory::new()).unwrap();
    let g = *pt.format().geometry();
    assert_eq!((g.granule_shift, g.ias, g.oas), (11, 56, 51));
    assert_eq!(pt.pgsize_bitmap(), 0x800 | 0x10_0000 | 0x2000_0000);
    assert_eq!(pt.format().name(), "amd-v1-selftest");
    // A 2 KiB page at an odd 2 KiB address: bit 11 of the address must
    // not land in the NextLevel field.
    pt.map_pages(
        Iova::new(0x100_0800),
        PhysAddr::new(0x7f12_3456_7800),
        0x800,
        2,
        Prot::RW,
    )
    .unwrap();
    assert_eq!(
        pt.iova_to_phys(Iova::new(0x100_0810)),
        Some(PhysAddr::new(0x7f12_3456_7810))
    );
    assert_eq!(
        pt.iova_to_phys(Iova::new(0x100_1000)),
        Some(PhysAddr::new(0x7f12_3456_8000)),
        "the second page follows the first"
    );
    assert_eq!(pt.iova_to_phys(Iova::new(0x100_0000)), None);
    // The leaf: the address shifted up one bit, NextLevel 0.
    let leaf = pt.format().encode_leaf(PhysAddr::new(0x7800), 4, Prot::RW);
    assert_eq!(leaf & 0xe00, 0, "NextLevel 0");
    assert_eq!(leaf & ((1 << 52) - 1) & !0xfff, 0x7800 << 1);
    assert_eq!(
        pt.format().decode(leaf, 4),
        Pte::Leaf {
            pa: PhysAddr::new(0x7800),
            prot: Prot::RW
        }
    );
    // 1 MiB leaves at the next level; the output ends at 51 bits.
    pt.map_pages(
        Iova::new(0x4000_0000),
        PhysAddr::new(0x10_0000),
        0x10_0000,
        1,
        Prot::READ,
    )
    .unwrap();
    assert_eq!(
        pt.iova_to_phys(Iova::new(0x4008_0000)),
        Some(PhysAddr::new(0x18_0000))
    );
    assert!(pt
        .map_pages(
            Iova::new(0x20_0000),
            PhysAddr::new(1 << 51),
            0x800,
            1,
            Prot::READ
        )
        .is_err());
    let mut gather = iommu_types::IotlbGather::new();
    let unmapped = pt.unmap_pages(Iova::new(0x100_0800), 0x800, 2, &mut gather);
    assert_eq!(unmapped, 0x1000);
    assert_eq!(pt.iova_to_phys(Iova::new(0x100_0810)), None);
    assert!(AmdV1Selftest::new(6).is_ok() && AmdV1Selftest::new(7).is_err());
}

#[test]
fn amd_v1_modes_1_to_6() {
    let ias: Vec<u32> = (1..=6)
        .map(|m| AmdV1::new(m).unwrap().geometry().ias)
        .collect();
    assert_eq!(ias, vec![21, 30, 39, 48, 57, 64]);
    assert_eq!(AmdV1::new(1).unwrap().geometry().pgsize_bitmap(), SZ_4K);
    assert_eq!(
        AmdV1::new(2).unwrap().geometry().pgsize_bitmap(),
        SZ_4K | SZ_2M
    );
    assert_eq!(AmdV1::new(6).unwrap().geometry().entries(0), 128);
    assert!(AmdV1::new(0).is_err() && AmdV1::new(7).is_err());
    // A directory entry that skips a level, or NextLevel 7, decodes as invalid.
    let f = AmdV1::new(4).unwrap();
    assert_eq!(f.decode(0x1000 | (2 << 9) | 1, 0), Pte::Invalid);
    assert_eq!(f.decode(0x1000 | (7 << 9) | 1, 2), Pte::Invalid);
    assert_eq!(
        f.decode(0x1000 | (3 << 9) | 1, 0),
        Pte::Table(PhysAddr::new(0x1000))
    );
    // Host dirty is bit 6, on writable leaves.
    let leaf = f.encode_leaf(PhysAddr::new(0x5000), 3, Prot::RW);
    assert_eq!(f.dirty_state(leaf, 3), Some(false));
    assert_eq!(f.make_dirty(leaf), leaf | (1 << 6));
}

fn riscv_next(
    pt: &IoPageTable<Riscv, HeapMemory>,
    level: usize,
    t: PhysAddr,
    idx: usize,
) -> PhysAddr {
    let pte = pt.read_descriptor(level, t, idx).expect("reachable table");
    assert_eq!(pte & 0x3ff, 1, "only V in a pointer: {pte:#x}");
    PhysAddr::new((pte >> 10) << 12)
}

// ---- RISC-V (privileged spec Sv39/48/57: V R W X U G A D, PPN [53:10], PBMT [62:61]) ----

#[test]
fn riscv_sv48_leaf_bits() {
    let pt =
        IoPageTable::new(Riscv::new(4, RiscvStage::First).unwrap(), HeapMemory::new()).unwrap();
    assert_eq!(pt.pgsize_bitmap(), SZ_4K | SZ_2M | SZ_1G | (1 << 39));
    pt.map_pages(
        Iova::new(0x4000_1000),
        PhysAddr::new(0x8_1234_5000),
        SZ_4K,
        1,
        Prot::RW,
    )
    .unwrap();
    pt.map_pages(
        Iova::new(0x20_0000),
        PhysAddr::new(0x4000_0000),
        SZ_2M,
        1,
        Prot::READ | Prot::NOEXEC | Prot::PRIV,
    )
    .unwrap();
    // Non-leaf entries: PPN << 10 | V, nothing else.
    let l1 = riscv_next(&pt, 0, pt.root(), 0);
    let l2 = riscv_next(&pt, 1, l1, 1);
    let l3 = riscv_next(&pt, 2, l2, 0);
    // 4 KiB leaf: PPN 0x812345 << 10 | D A U X W R V (0xdf)
    assert_eq!(pt.read_descriptor(3, l3, 1), Some(0x0000_0002_048d_14df));
    // 2 MiB megapage, read-only, no execute, privileged: PPN 0x40000 << 10 | A R V
    let l2_0 = riscv_next(&pt, 1, l1, 0);
    assert_eq!(pt.read_descriptor(2, l2_0, 1), Some(0x0000_0000_1000_0043));
}

#[test]
fn riscv_sv39x4_root_has_2048_entries_and_sets_u() {
    let f = Riscv::new(3, RiscvStage::Second).unwrap();
    assert_eq!((f.geometry().ias, f.geometry().entries(0)), (41, 2048));
    let pt = IoPageTable::new(f, HeapMemory::new()).unwrap();
    // 0x80_4000_0000 >> 30 = 513: beyond what Sv39 could index.
    pt.map_pages(
        Iova::new(0x80_4000_0000),
        PhysAddr::new(0x1_4000_0000),
        SZ_1G,
        1,
        Prot::RW | Prot::PRIV,
    )
    .unwrap();
    // Gigapage: PPN 0x140000 << 10 | D A U X W R V; U is required at the G stage.
    assert_eq!(
        pt.read_descriptor(0, pt.root(), 513),
        Some(0x0000_0000_5000_00df)
    );
}

#[test]
fn riscv_reserved_and_misaligned_encodings_are_invalid() {
    let f = Riscv::new(3, RiscvStage::First).unwrap();
    // W without R.
    assert_eq!(f.decode(0x1000_0000 | 0b101, 2), Pte::Invalid);
    // A pointer at the last level.
    assert_eq!(f.decode(0x1000_0000 | 0b1, 2), Pte::Invalid);
    // A megapage whose PPN is not 2 MiB aligned.
    assert_eq!(
        f.decode(((0x20_1000u64 >> 12) << 10) | 0b11, 1),
        Pte::Invalid
    );
    // MMIO selects PBMT=IO (2 << 61).
    let io = f.encode_leaf(PhysAddr::new(0x1000), 2, Prot::RW | Prot::MMIO);
    assert_eq!(io >> 61, 2);
    assert!(matches!(f.decode(io, 2), Pte::Leaf { prot, .. } if prot.contains(Prot::MMIO)));
    // Dirty is D (bit 7).
    let rw = f.encode_leaf(PhysAddr::new(0x1000), 2, Prot::RW);
    assert_eq!(f.dirty_state(rw, 2), Some(true));
    assert_eq!(f.dirty_state(f.make_clean(rw), 2), Some(false));
}

// ---- x86-64 (VT-d spec 9.7 / SDM 4.5: P[0] R/W[1] U/S[2] A[5] D[6] PS[7], address [51:12], XD[63]) ----

#[test]
fn x86_64_4level_page_and_large_pages() {
    let pt = IoPageTable::new(X86_64::new(4, 48).unwrap(), HeapMemory::new()).unwrap();
    assert_eq!(pt.pgsize_bitmap(), SZ_4K | SZ_2M | SZ_1G);
    assert_eq!(pt.format().name(), "x86-64-4level");
    pt.map_pages(
        Iova::new(0x4000_1000),
        PhysAddr::new(0x8_1234_5000),
        SZ_4K,
        1,
        Prot::RW | Prot::CACHE | Prot::NOEXEC,
    )
    .unwrap();
    pt.map_pages(
        Iova::new(0x20_0000),
        PhysAddr::new(0x4000_0000),
        SZ_2M,
        1,
        Prot::READ,
    )
    .unwrap();
    pt.map_pages(
        Iova::new(3 * SZ_1G),
        PhysAddr::new(5 * SZ_1G),
        SZ_1G,
        1,
        Prot::WRITE,
    )
    .unwrap();
    // Table entries: address | P | R/W | U | A (0x27).
    let pdpt = next(&pt, 0, pt.root(), 0, 0x27);
    let pd = next(&pt, 1, pdpt, 1, 0x27);
    let ptab = next(&pt, 2, pd, 0, 0x27);
    // 4 KiB page: address | P | R/W | U | A | D; no XD, no cache bits.
    assert_eq!(pt.read_descriptor(3, ptab, 1), Some(0x0000_0008_1234_5067));
    // 2 MiB page in the PDE, read-only: address | P | U | A | PS.
    let pd0 = next(&pt, 1, pdpt, 0, 0x27);
    assert_eq!(pt.read_descriptor(2, pd0, 1), Some(0x0000_0000_4000_00a5));
    // 1 GiB page in the PDPTE, write-only maps read-write (present is readable).
    assert_eq!(pt.read_descriptor(1, pdpt, 3), Some(0x0000_0001_4000_00e7));
    assert_eq!(
        pt.iova_to_phys(Iova::new(3 * SZ_1G + 0x123)),
        Some(PhysAddr::new(5 * SZ_1G + 0x123))
    );
}

#[test]
fn x86_64_input_is_the_lower_canonical_half() {
    // Linux 7.3's format would also map the upper half through a bare
    // `iommu_map` (its domain's aperture is the lower half, which
    // dma-iommu keeps to); the walker refuses anything past the input
    // range instead.
    let f4 = X86_64::new(4, 48).unwrap();
    assert_eq!(f4.geometry().ias, 47);
    assert!(f4.is_canonical(0x7fff_ffff_ffff) && f4.is_canonical(0xffff_8000_0000_0000));
    assert!(!f4.is_canonical(0x8000_0000_0000) && !f4.is_canonical(0x7fff_8000_0000_0000));
    let pt = IoPageTable::new(f4, HeapMemory::new()).unwrap();
    // The top of the lower half maps; its first address above does not.
    let top = (1u64 << 47) - SZ_4K;
    assert_eq!(
        pt.map_pages(Iova::new(top), PhysAddr::new(0x1000), SZ_4K, 1, Prot::READ),
        Ok(SZ_4K)
    );
    assert!(pt
        .map_pages(
            Iova::new(1 << 47),
            PhysAddr::new(0x1000),
            SZ_4K,
            1,
            Prot::READ
        )
        .is_err());
    next(&pt, 0, pt.root(), 255, 0x27);

    let f5 = X86_64::new(5, 52).unwrap();
    assert_eq!(f5.geometry().ias, 56);
    assert_eq!(f5.name(), "x86-64-5level");
    assert!(f5.is_canonical(0xff00_0000_0000_0000) && !f5.is_canonical(1 << 56));
    assert!(X86_64::new(3, 48).is_err() && X86_64::new(6, 48).is_err());
    assert!(X86_64::new(4, 31).is_err() && X86_64::new(4, 53).is_err());
}

#[test]
fn x86_64_leaves_depend_only_on_write_as_linux_7_3_writes_them() {
    // Every combination of READ/WRITE with CACHE, NOEXEC, MMIO and PRIV, on
    // each leaf size: P | U | A, R/W | D when writable, PS above the PTE.
    let f = X86_64::new(4, 52).unwrap();
    for bits in 0..64u32 {
        let prot = Prot::from_bits_truncate(bits);
        if !prot.is_accessible() {
            continue;
        }
        for (level, ps) in [(3, 0), (2, 0x80), (1, 0x80)] {
            let pa = 0x000a_b000_4000_0000u64;
            let want = pa | 0x25 | ps | if prot.contains(Prot::WRITE) { 0x42 } else { 0 };
            assert_eq!(
                f.encode_leaf(PhysAddr::new(pa), level, prot),
                want,
                "{prot:?} level {level}"
            );
        }
    }
}

#[test]
fn x86_64_reserved_encodings_are_not_followed() {
    let f = X86_64::new(4, 52).unwrap();
    // PS in a PML4E is reserved.
    assert_eq!(f.decode(0x8000_0000_00a7, 0), Pte::Invalid);
    // A 2 MiB page whose address has bits below 2 MiB set (bit 12 is PAT
    // there, the rest reserved) is not taken as a leaf.
    assert_eq!(f.decode(0x4010_00a7, 2), Pte::Invalid);
    // Without P nothing else matters; PS in a PTE is PAT, still a page.
    assert_eq!(f.decode(0xffff_ffff_ffff_fffe, 1), Pte::Invalid);
    assert!(matches!(f.decode(0x5000 | 0xa5, 3), Pte::Leaf { prot, .. } if prot == Prot::READ));
    // XD and the cache bits do not change what a leaf grants.
    assert!(matches!(
        f.decode((1 << 63) | 0x5000 | 0x1f, 3),
        Pte::Leaf { pa, prot } if pa == PhysAddr::new(0x5000) && prot == Prot::RW
    ));
}

// ---- every format: the self-test scenario and the model test ----

#[test]
fn selftest_scenario_holds_for_vtd_amd_riscv_and_x86_64() {
    for levels in 3..=5 {
        common::selftest(VtdSl::new(levels, 48).unwrap());
        common::selftest(Riscv::new(levels, RiscvStage::First).unwrap());
        common::selftest(Riscv::new(levels, RiscvStage::Second).unwrap());
    }
    for levels in 4..=5 {
        common::selftest(X86_64::new(levels, 52).unwrap());
    }
    for mode in 1..=6 {
        common::selftest(AmdV1::new(mode).unwrap());
    }
}

macro_rules! model_test {
    ($name:ident, $make:expr) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 2 } else { 32 }))]
            #[test]
            fn $name(ops in proptest::collection::vec(common::op(common::window(&$make)), 1..if cfg!(miri) { 30 } else { 100 })) {
                common::model_check($make, &ops)?;
            }
        }
    };
}

model_test!(
    vtd_sl_agrees_with_an_interval_map,
    VtdSl::new(4, 48).unwrap()
);
model_test!(amd_v1_agrees_with_an_interval_map, AmdV1::new(3).unwrap());
model_test!(
    x86_64_agrees_with_an_interval_map,
    X86_64::new(4, 48).unwrap()
);
model_test!(
    riscv_sv39_agrees_with_an_interval_map,
    Riscv::new(3, RiscvStage::First).unwrap()
);
model_test!(
    riscv_sv48x4_agrees_with_an_interval_map,
    Riscv::new(4, RiscvStage::Second).unwrap()
);

#[test]
fn amd_v1_grows_only_for_what_a_call_maps_so_a_collision_is_reported_as_such() {
    // A run starting on a mapped page just below 512 GiB and ending above
    // it: the page in the way is the answer, not a root level that the
    // table memory cannot give.
    let mem = HeapMemory::new();
    let pt = IoPageTable::new(AmdV1::new(4).unwrap(), &mem).unwrap();
    let top = 1u64 << 39;
    pt.map_pages(Iova::new(top - SZ_4K), PhysAddr::new(0), SZ_4K, 1, Prot::RW)
        .unwrap();
    mem.set_limit(Some(mem.table_pages()));
    assert_eq!(
        pt.map_pages(Iova::new(top - SZ_4K), PhysAddr::new(0), SZ_4K, 2, Prot::RW),
        Err(iommu_pgtable::PgtableError::Exists)
    );
    assert_eq!(pt.format().amd_level(pt.root_level()), 3, "nothing grew");
    // With memory, the part above 512 GiB grows the table.
    mem.set_limit(None);
    assert_eq!(
        pt.map_pages(Iova::new(top), PhysAddr::new(0), SZ_4K, 1, Prot::RW),
        Ok(SZ_4K)
    );
    assert_eq!(pt.format().amd_level(pt.root_level()), 4);
}
