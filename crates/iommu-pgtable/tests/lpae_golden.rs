//! Exact LPAE descriptors, worked out by hand from the Arm ARM (D8.3
//! "Translation table descriptor formats", D8.4 "Memory attribute fields"):
//! bits[1:0] type, AttrIndx/MemAttr[5:2], AP/S2AP[7:6], SH[9:8], AF[10],
//! nG[11], output address [47:g], DBM[51], PXN/XN[54:53]; with the 64 KiB
//! granule PA[51:48] sits in bits[15:12].

use iommu_pgtable::lpae::{Granule, Lpae, LpaeConfig, LpaeQuirks, Stage};
use iommu_pgtable::{Format, HeapMemory, IoPageTable, PgtableError};
use iommu_types::{Iova, PhysAddr, Prot, SZ_16K, SZ_1G, SZ_2M, SZ_32M, SZ_4K, SZ_512M, SZ_64K};

fn lpae(stage: Stage, granule: Granule, ias: u32, oas: u32) -> Lpae {
    Lpae::new(LpaeConfig {
        stage,
        granule,
        ias,
        oas,
    })
    .unwrap()
}

fn table(f: Lpae) -> IoPageTable<Lpae, HeapMemory> {
    IoPageTable::new(f, HeapMemory::new()).unwrap()
}

/// Follows the table descriptor at `idx` of `t` (at `level`), checking it is `addr | 0b11`.
fn next(pt: &IoPageTable<Lpae, HeapMemory>, level: usize, t: PhysAddr, idx: usize) -> PhysAddr {
    let pte = pt.read_descriptor(level, t, idx).expect("reachable table");
    let mask = ((1u64 << 48) - 1) & !((1u64 << pt.geometry().granule_shift) - 1);
    assert_eq!(
        pte & !mask,
        0b11,
        "a table descriptor is address | 0b11: {pte:#x}"
    );
    PhysAddr::new(pte & mask)
}

#[test]
fn lpae_geometry_matches_arm_levels_and_page_sizes() {
    // (stage, granule, ias, oas) -> (levels, start level, root entries, page sizes)
    let cases = [
        (
            Stage::S1,
            Granule::G4K,
            48,
            48,
            4,
            0,
            512,
            SZ_4K | SZ_2M | SZ_1G,
        ),
        (
            Stage::S1,
            Granule::G4K,
            39,
            40,
            3,
            1,
            512,
            SZ_4K | SZ_2M | SZ_1G,
        ),
        (
            Stage::S1,
            Granule::G4K,
            32,
            40,
            3,
            1,
            4,
            SZ_4K | SZ_2M | SZ_1G,
        ),
        (Stage::S1, Granule::G16K, 48, 48, 4, 0, 2, SZ_16K | SZ_32M),
        (
            Stage::S1,
            Granule::G16K,
            36,
            48,
            2,
            2,
            2048,
            SZ_16K | SZ_32M,
        ),
        (Stage::S1, Granule::G64K, 48, 48, 3, 1, 64, SZ_64K | SZ_512M),
        (
            Stage::S1,
            Granule::G64K,
            52,
            52,
            3,
            1,
            1024,
            SZ_64K | SZ_512M | (1 << 42),
        ),
        (
            Stage::S1,
            Granule::G64K,
            42,
            48,
            2,
            2,
            8192,
            SZ_64K | SZ_512M,
        ),
        // Stage 2 concatenates a small level-0 table into level-1 tables
        // where a level-0 start is not allowed (a 40- or 42-bit output)...
        (
            Stage::S2,
            Granule::G4K,
            40,
            40,
            3,
            1,
            1024,
            SZ_4K | SZ_2M | SZ_1G,
        ),
        (
            Stage::S2,
            Granule::G4K,
            42,
            42,
            3,
            1,
            4096,
            SZ_4K | SZ_2M | SZ_1G,
        ),
        // ...and only there (Linux 7.3; 6.12 concatenated here too).
        (
            Stage::S2,
            Granule::G4K,
            42,
            48,
            4,
            0,
            8,
            SZ_4K | SZ_2M | SZ_1G,
        ),
        // 16 KiB with a 40-bit output: no level-1 start either.
        (
            Stage::S2,
            Granule::G16K,
            37,
            40,
            2,
            2,
            4096,
            SZ_16K | SZ_32M,
        ),
        (
            Stage::S2,
            Granule::G4K,
            44,
            48,
            4,
            0,
            32,
            SZ_4K | SZ_2M | SZ_1G,
        ),
        (
            Stage::S2,
            Granule::G16K,
            48,
            48,
            3,
            1,
            4096,
            SZ_16K | SZ_32M,
        ),
        (Stage::S2, Granule::G64K, 48, 48, 3, 1, 64, SZ_64K | SZ_512M),
    ];
    for (stage, granule, ias, oas, levels, start, root, sizes) in cases {
        let f = lpae(stage, granule, ias, oas);
        let g = f.geometry();
        assert_eq!(
            (g.levels, f.start_level(), g.entries(0), g.pgsize_bitmap()),
            (levels, start, root, sizes),
            "{stage:?} {granule:?} ias {ias}"
        );
    }
    // The smallest input TxSZ allows (39): two levels of 4 KiB tables.
    let small = lpae(Stage::S1, Granule::G4K, 25, 40);
    assert_eq!((small.geometry().levels, small.start_level()), (2, 2));
    assert_eq!(
        lpae(Stage::S2, Granule::G4K, 40, 40).concatenated_tables(),
        2
    );
    assert_eq!(
        lpae(Stage::S2, Granule::G4K, 42, 40).concatenated_tables(),
        8
    );
    for bad in [
        (Granule::G4K, 24, 40),
        (Granule::G4K, 48, 49),
        (Granule::G16K, 52, 48),
        (Granule::G4K, 40, 52),
        (Granule::G64K, 53, 48),
    ] {
        assert!(
            Lpae::new(LpaeConfig {
                stage: Stage::S1,
                granule: bad.0,
                ias: bad.1,
                oas: bad.2
            })
            .is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn s1_4k_cached_rw_page_descriptor() {
    let pt = table(Lpae::stage1_4k(48, 48).unwrap());
    // IOVA 0x4000_1000: L0 index 0, L1 index 1, L2 index 0, L3 index 1.
    pt.map_pages(
        Iova::new(0x4000_1000),
        PhysAddr::new(0x8_1234_5000),
        SZ_4K,
        1,
        Prot::RW | Prot::CACHE,
    )
    .unwrap();
    let l1 = next(&pt, 0, pt.root(), 0);
    let l2 = next(&pt, 1, l1, 1);
    let l3 = next(&pt, 2, l2, 0);
    // page 0b11 | AttrIndx=1 (0x4) | AP[1]=unpriv (0x40) | SH=inner (0x300) | AF (0x400) | nG (0x800)
    assert_eq!(pt.read_descriptor(3, l3, 1), Some(0x0000_0008_1234_5f47));
    assert_eq!(
        pt.read_descriptor(3, l3, 0),
        Some(0),
        "neighbours stay invalid"
    );
}

#[test]
fn s1_4k_readonly_noexec_block_descriptor() {
    let pt = table(Lpae::stage1_4k(48, 48).unwrap());
    pt.map_pages(
        Iova::new(0x20_0000),
        PhysAddr::new(0x4000_0000),
        SZ_2M,
        1,
        Prot::READ | Prot::NOEXEC,
    )
    .unwrap();
    let l2 = next(&pt, 1, next(&pt, 0, pt.root(), 0), 0);
    // block 0b01 | AttrIndx=0 | AP=unpriv+rdonly (0xc0) | SH=outer (0x200) | AF | nG | PXN+UXN (3<<53)
    assert_eq!(pt.read_descriptor(2, l2, 1), Some(0x0060_0000_4000_0ec1));
}

#[test]
fn s1_4k_privileged_mmio_page_and_1g_block() {
    let pt = table(Lpae::stage1_4k(48, 48).unwrap());
    pt.map_pages(
        Iova::new(0x1000),
        PhysAddr::new(0x0900_0000),
        SZ_4K,
        1,
        Prot::RW | Prot::MMIO | Prot::PRIV,
    )
    .unwrap();
    pt.map_pages(
        Iova::new(SZ_1G * 3),
        PhysAddr::new(SZ_1G * 5),
        SZ_1G,
        1,
        Prot::WRITE,
    )
    .unwrap();
    let l1 = next(&pt, 0, pt.root(), 0);
    let l3 = next(&pt, 2, next(&pt, 1, l1, 0), 0);
    // page 0b11 | AttrIndx=2 (0x8) | AP=privileged RW (0) | SH=outer | AF | nG
    assert_eq!(pt.read_descriptor(3, l3, 1), Some(0x0000_0000_0900_0e0b));
    // Write-only is not expressible at stage 1: read-write, unprivileged.
    // block 0b01 | AP unpriv (0x40) | SH outer | AF | nG at L1 index 3
    assert_eq!(pt.read_descriptor(1, l1, 3), Some(0x0000_0001_4000_0e41));
}

#[test]
fn s2_4k_descriptors_use_s2ap_and_memattr() {
    // IAS 40 concatenates two level-1 tables: the root has 1024 entries.
    let pt = table(lpae(Stage::S2, Granule::G4K, 40, 40));
    pt.map_pages(
        Iova::new(0x80_4000_0000),
        PhysAddr::new(0x40_0000),
        SZ_2M,
        1,
        Prot::RW | Prot::CACHE,
    )
    .unwrap();
    pt.map_pages(
        Iova::new(0x1000),
        PhysAddr::new(0x0900_0000),
        SZ_4K,
        1,
        Prot::WRITE | Prot::MMIO | Prot::NOEXEC,
    )
    .unwrap();
    // 0x80_4000_0000 >> 30 = 513: the second concatenated table.
    let l2 = next(&pt, 0, pt.root(), 513);
    // block 0b01 | MemAttr=0xf (0x3c) | S2AP=RW (0xc0) | SH=inner (0x300) | AF (0x400); no nG at stage 2
    assert_eq!(pt.read_descriptor(1, l2, 0), Some(0x0000_0000_0040_07fd));
    let l3 = next(&pt, 1, next(&pt, 0, pt.root(), 0), 0);
    // page 0b11 | MemAttr=0x1 (0x4) | S2AP=W only (0x80) | SH=outer | AF | XN (3<<53)
    assert_eq!(pt.read_descriptor(2, l3, 1), Some(0x0060_0000_0900_0687));
}

#[test]
fn granule_16k_and_64k_place_the_address_at_their_granule() {
    let pt = table(lpae(Stage::S1, Granule::G16K, 48, 48));
    pt.map_pages(
        Iova::new(SZ_32M),
        PhysAddr::new(0x1234_4000),
        SZ_16K,
        1,
        Prot::READ,
    )
    .unwrap();
    // 16K: L0 (1 bit), L1, L2, L3 (11 bits each); IOVA 32M -> L2 index 1, L3 index 0
    let l3 = next(&pt, 2, next(&pt, 1, next(&pt, 0, pt.root(), 0), 0), 1);
    // page 0b11 | AP unpriv+rdonly (0xc0) | SH outer (0x200) | AF | nG
    assert_eq!(pt.read_descriptor(3, l3, 0), Some(0x0000_0000_1234_4ec3));

    let pt = table(lpae(Stage::S1, Granule::G64K, 48, 48));
    pt.map_pages(
        Iova::new(SZ_512M),
        PhysAddr::new(0x7_e000_0000),
        SZ_512M,
        1,
        Prot::RW,
    )
    .unwrap();
    let l2 = next(&pt, 0, pt.root(), 0);
    // 64K: block at Arm level 2, index 1 | AP unpriv (0x40) | SH outer | AF | nG
    assert_eq!(pt.read_descriptor(1, l2, 1), Some(0x0000_0007_e000_0e41));
}

#[test]
fn granule_64k_with_52bit_oas_encodes_pa_51_48_in_bits_15_12() {
    let pt = table(lpae(Stage::S1, Granule::G64K, 48, 52));
    let pa = 0x000a_1234_5678_0000u64; // PA[51:48] = 0xa
    pt.map_pages(Iova::new(0x1_0000), PhysAddr::new(pa), SZ_64K, 1, Prot::RW)
        .unwrap();
    let l3 = next(&pt, 1, next(&pt, 0, pt.root(), 0), 0);
    // page: PA[47:16] in place, 0xa in bits[15:12] | 0b11 | AP unpriv | SH outer | AF | nG
    assert_eq!(pt.read_descriptor(2, l3, 1), Some(0x0000_1234_5678_ae43));
    assert_eq!(
        pt.iova_to_phys(Iova::new(0x1_0042)),
        Some(PhysAddr::new(pa + 0x42))
    );
    // And the 4 TiB block exists only at 52 bits.
    assert_eq!(pt.pgsize_bitmap() & (1 << 42), 1 << 42);
}

#[test]
fn lpae_decodes_what_it_encodes() {
    for stage in [Stage::S1, Stage::S2] {
        let f = lpae(stage, Granule::G4K, 48, 48);
        let prots: &[Prot] = match stage {
            Stage::S1 => &[
                Prot::READ,
                Prot::RW,
                Prot::RW | Prot::CACHE,
                Prot::READ | Prot::NOEXEC | Prot::PRIV,
                Prot::RW | Prot::MMIO,
            ],
            Stage::S2 => &[
                Prot::READ,
                Prot::WRITE,
                Prot::RW | Prot::CACHE,
                Prot::READ | Prot::NOEXEC,
                Prot::RW | Prot::MMIO,
            ],
        };
        for &prot in prots {
            let pte = f.encode_leaf(PhysAddr::new(0x1234_5000), 3, prot);
            match f.decode(pte, 3) {
                iommu_pgtable::Pte::Leaf { pa, prot: got } => {
                    assert_eq!(pa, PhysAddr::new(0x1234_5000));
                    assert_eq!(got, prot, "{stage:?} round trip of {prot}");
                }
                other => panic!("decoded {other:?}"),
            }
        }
        // 0b01 at the last level is reserved: invalid.
        assert_eq!(f.decode(0x1234_5001, 3), iommu_pgtable::Pte::Invalid);
    }
}

#[test]
fn dbm_writable_clean_and_dirty_states() {
    let f = lpae(Stage::S1, Granule::G4K, 48, 48);
    let rw = f.encode_leaf(PhysAddr::new(0x5000), 3, Prot::RW);
    let clean = f.make_clean(rw);
    // DBM (bit 51) with AP[2] (bit 7) set: writable-clean.
    assert_eq!(clean, rw | (1 << 51) | (1 << 7));
    assert_eq!(f.dirty_state(clean, 3), Some(false));
    assert_eq!(f.make_dirty(clean), rw | (1 << 51));
    assert_eq!(f.dirty_state(f.make_dirty(clean), 3), Some(true));
    let ro = f.encode_leaf(PhysAddr::new(0x5000), 3, Prot::READ);
    assert_eq!(f.dirty_state(ro, 3), None);

    let s2 = lpae(Stage::S2, Granule::G4K, 48, 48);
    let rw = s2.encode_leaf(PhysAddr::new(0x5000), 3, Prot::RW);
    // Stage 2 clears S2AP[1] (bit 7) and sets DBM.
    assert_eq!(s2.make_clean(rw), (rw | (1 << 51)) & !(1 << 7));
    assert_eq!(s2.dirty_state(s2.make_clean(rw), 3), Some(false));
}

#[test]
fn ns_quirk_sets_ns_on_leaves_and_nstable_on_tables() {
    let f = Lpae::stage1_4k(48, 48)
        .unwrap()
        .with_quirks(LpaeQuirks { non_secure: true });
    let pt = table(f);
    pt.map_pages(Iova::new(0x1000), PhysAddr::new(0x9000), SZ_4K, 1, Prot::RW)
        .unwrap();
    let root_entry = pt.read_descriptor(0, pt.root(), 0).unwrap();
    assert_eq!(root_entry >> 63, 1, "NSTable (bit 63)");
    let l1 = PhysAddr::new(root_entry & 0x0000_ffff_ffff_f000);
    let l2 = PhysAddr::new(pt.read_descriptor(1, l1, 0).unwrap() & 0x0000_ffff_ffff_f000);
    let l3 = PhysAddr::new(pt.read_descriptor(2, l2, 0).unwrap() & 0x0000_ffff_ffff_f000);
    // page 0b11 | NS (0x20) | AP unpriv (0x40) | SH outer | AF | nG
    assert_eq!(pt.read_descriptor(3, l3, 1), Some(0x0000_0000_0000_9e63));
    assert_eq!(
        pt.iova_to_phys(Iova::new(0x1004)),
        Some(PhysAddr::new(0x9004))
    );
    // Stage 2 has no NS bit: the quirk does not apply.
    let s2 = lpae(Stage::S2, Granule::G4K, 48, 48).with_quirks(LpaeQuirks { non_secure: true });
    assert_eq!(
        s2.encode_leaf(PhysAddr::new(0x9000), 3, Prot::RW) & (1 << 5),
        0
    );
}

/// The start level an STE or VTCR chooses: the one the input size gives,
/// or at stage 2 the level below with the root's tables concatenated, at
/// most 16; concatenation the architecture requires cannot be declined.
#[test]
fn a_stage2_start_level_may_concatenate_where_the_architecture_allows() {
    let cfg = |stage, granule, ias, oas| LpaeConfig {
        stage,
        granule,
        ias,
        oas,
    };
    let s2 = cfg(Stage::S2, Granule::G4K, 42, 48);
    let natural = Lpae::with_start_level(s2, 0).unwrap();
    assert_eq!(natural, Lpae::new(s2).unwrap());
    let concat = Lpae::with_start_level(s2, 1).unwrap();
    assert_eq!((concat.start_level(), concat.concatenated_tables()), (1, 8));
    assert_eq!(concat.geometry().entries(0), 4096);
    for (c, start) in [
        (s2, 2),
        (cfg(Stage::S1, Granule::G4K, 42, 48), 1),
        // 32 tables would be needed.
        (cfg(Stage::S2, Granule::G4K, 44, 48), 1),
    ] {
        assert_eq!(
            Lpae::with_start_level(c, start),
            Err(PgtableError::InvalidArgument),
            "{c:?} at {start}"
        );
    }
    // Required: a 40-bit output cannot start at level 0.
    assert_eq!(
        Lpae::with_start_level(cfg(Stage::S2, Granule::G4K, 40, 40), 0),
        Err(PgtableError::InvalidArgument)
    );
    // Required and impossible: 2048 tables for a 47-bit input at 16 KiB.
    assert_eq!(
        Lpae::new(cfg(Stage::S2, Granule::G16K, 47, 40)),
        Err(PgtableError::InvalidArgument)
    );
}
