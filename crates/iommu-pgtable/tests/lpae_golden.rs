//! Exact LPAE stage-1 4 KiB descriptors, worked out by hand from the Arm ARM
//! (D8.3 "Translation table descriptor formats", D8.4 "Memory attribute
//! fields"): bits[1:0] type, AttrIndx[4:2], AP[2:1] at [7:6], SH[9:8], AF[10],
//! nG[11], output address [47:12], PXN[53], UXN[54].

use iommu_pgtable::{lpae::Lpae, Format, HeapMemory, IoPageTable, TableMemory};
use iommu_types::{Iova, PhysAddr, Prot, SZ_1G, SZ_2M, SZ_4K};

fn table_48() -> IoPageTable<Lpae, HeapMemory> {
    IoPageTable::new(Lpae::stage1_4k(48, 48).unwrap(), HeapMemory::new()).unwrap()
}

/// Follows one table descriptor and checks it is `addr | 0b11`.
fn next_table(pt: &IoPageTable<Lpae, HeapMemory>, table: PhysAddr, idx: usize) -> PhysAddr {
    let pte = pt.memory().read(table, idx);
    assert_eq!(pte & 0b11, 0b11, "table descriptor type bits");
    assert_eq!(
        pte & !0x0000_ffff_ffff_f000,
        0b11,
        "no attribute bits in a table descriptor"
    );
    PhysAddr::new(pte & 0x0000_ffff_ffff_f000)
}

#[test]
fn lpae_s1_4k_geometry_matches_arm_levels() {
    let g = *Lpae::stage1_4k(48, 48).unwrap().geometry();
    assert_eq!((g.levels, g.root_bits), (4, 9));
    assert_eq!(g.pgsize_bitmap(), SZ_4K | SZ_2M | SZ_1G);
    let g = *Lpae::stage1_4k(39, 40).unwrap().geometry();
    assert_eq!((g.levels, g.root_bits), (3, 9));
    let g = *Lpae::stage1_4k(32, 40).unwrap().geometry();
    // 20 index bits: 3 levels, the root resolving only IA[31:30] (2 bits).
    assert_eq!((g.levels, g.root_bits), (3, 2));
    assert!(Lpae::stage1_4k(31, 40).is_err());
    assert!(Lpae::stage1_4k(48, 49).is_err());
}

#[test]
fn lpae_s1_4k_cached_rw_page_descriptor() {
    let mut pt = table_48();
    // IOVA 0x4000_1000: L0 index 0, L1 index 1, L2 index 0, L3 index 1.
    pt.map_pages(
        Iova::new(0x4000_1000),
        PhysAddr::new(0x8_1234_5000),
        SZ_4K,
        1,
        Prot::RW | Prot::CACHE,
    )
    .unwrap();
    let l1 = next_table(&pt, pt.root(), 0);
    let l2 = next_table(&pt, l1, 1);
    let l3 = next_table(&pt, l2, 0);
    // page 0b11 | AttrIndx=1 (0x4) | AP[1]=unpriv (0x40) | SH=inner (0x300) | AF (0x400) | nG (0x800)
    assert_eq!(pt.memory().read(l3, 1), 0x0000_0008_1234_5f47);
    assert_eq!(pt.memory().read(l3, 0), 0, "neighbours stay invalid");
}

#[test]
fn lpae_s1_4k_readonly_noexec_block_descriptor() {
    let mut pt = table_48();
    pt.map_pages(
        Iova::new(0x20_0000),
        PhysAddr::new(0x4000_0000),
        SZ_2M,
        1,
        Prot::READ | Prot::NOEXEC,
    )
    .unwrap();
    let l1 = next_table(&pt, pt.root(), 0);
    let l2 = next_table(&pt, l1, 0);
    // block 0b01 | AttrIndx=0 | AP=unpriv+rdonly (0xc0) | SH=outer (0x200) | AF | nG | PXN+UXN (3<<53)
    assert_eq!(pt.memory().read(l2, 1), 0x0060_0000_4000_0ec1);
}

#[test]
fn lpae_s1_4k_privileged_mmio_page_and_1g_block() {
    let mut pt = table_48();
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
    let l1 = next_table(&pt, pt.root(), 0);
    let l3 = next_table(&pt, next_table(&pt, l1, 0), 0);
    // page 0b11 | AttrIndx=2 (0x8) | AP=privileged RW (0) | SH=outer | AF | nG
    assert_eq!(pt.memory().read(l3, 1), 0x0000_0000_0900_0e0b);
    // Write-only cannot be expressed at stage 1: it maps read-write, unprivileged.
    // block 0b01 | AP unpriv (0x40) | SH outer | AF | nG at L1 index 3
    assert_eq!(pt.memory().read(l1, 3), 0x0000_0001_4000_0e41);
}

#[test]
fn lpae_s1_4k_decodes_what_it_encodes() {
    let fmt = Lpae::stage1_4k(48, 48).unwrap();
    for prot in [
        Prot::READ,
        Prot::RW,
        Prot::RW | Prot::CACHE,
        Prot::READ | Prot::NOEXEC | Prot::PRIV,
        Prot::RW | Prot::MMIO,
    ] {
        let pte = fmt.encode_leaf(PhysAddr::new(0x1234_5000), 3, prot);
        match fmt.decode(pte, 3) {
            iommu_pgtable::Pte::Leaf { pa, prot: got } => {
                assert_eq!(pa, PhysAddr::new(0x1234_5000));
                assert_eq!(got, prot, "round trip of {prot}");
            }
            other => panic!("decoded {other:?}"),
        }
    }
}
