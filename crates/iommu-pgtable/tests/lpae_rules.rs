//! The map/unmap rules of the walker, each with its error.

use iommu_pgtable::{lpae::Lpae, HeapMemory, IoPageTable, PgtableError, TableMemory};
use iommu_types::{Errno, IotlbGather, Iova, PhysAddr, Prot, SZ_1G, SZ_2M, SZ_4K};

type Pt = IoPageTable<Lpae, HeapMemory>;

fn new_pt() -> Pt {
    IoPageTable::new(Lpae::stage1_4k(48, 40).unwrap(), HeapMemory::new()).unwrap()
}

fn map(pt: &Pt, iova: u64, pa: u64, size: u64, count: usize) -> Result<u64, PgtableError> {
    pt.map_pages(Iova::new(iova), PhysAddr::new(pa), size, count, Prot::RW)
}

#[test]
fn map_refuses_a_page_size_the_format_lacks() {
    let pt = new_pt();
    let e = map(&pt, 0, 0, 0x8000, 1).unwrap_err();
    assert_eq!(
        (e, e.errno()),
        (PgtableError::InvalidPageSize, Errno::EINVAL)
    );
}

#[test]
fn map_refuses_misaligned_addresses() {
    let pt = new_pt();
    assert_eq!(
        map(&pt, 0x1000, 0, SZ_2M, 1),
        Err(PgtableError::InvalidPageSize)
    );
    assert_eq!(
        map(&pt, 0, 0x1000, SZ_2M, 1),
        Err(PgtableError::InvalidPageSize)
    );
}

#[test]
fn map_without_read_or_write_is_einval() {
    let pt = new_pt();
    let e = pt
        .map_pages(Iova::new(0), PhysAddr::new(0), SZ_4K, 1, Prot::CACHE)
        .unwrap_err();
    assert_eq!(e.errno(), Errno::EINVAL);
    assert_eq!(pt.table_pages(), 1, "nothing allocated for a refused map");
}

#[test]
fn map_outside_ias_or_oas_is_erange() {
    let pt = new_pt();
    assert_eq!(
        map(&pt, 1 << 48, 0, SZ_4K, 1).unwrap_err().errno(),
        Errno::ERANGE
    );
    assert_eq!(
        map(&pt, 0, 1 << 40, SZ_4K, 1).unwrap_err().errno(),
        Errno::ERANGE
    );
    assert_eq!(
        map(&pt, (1 << 48) - SZ_4K, 0, SZ_4K, 2)
            .unwrap_err()
            .errno(),
        Errno::ERANGE
    );
    assert_eq!(
        map(&pt, !0xfff, 0, SZ_4K, 1).unwrap_err().errno(),
        Errno::ERANGE
    );
}

#[test]
fn map_over_a_leaf_is_eexist_and_writes_nothing() {
    let pt = new_pt();
    map(&pt, 0x2000, 0x2000, SZ_4K, 1).unwrap();
    // A batch whose third page collides: refused whole.
    assert_eq!(
        map(&pt, 0, 0x10_0000, SZ_4K, 4).unwrap_err().errno(),
        Errno::EEXIST
    );
    assert_eq!(pt.iova_to_phys(Iova::new(0)), None);
    assert_eq!(
        pt.iova_to_phys(Iova::new(0x2000)),
        Some(PhysAddr::new(0x2000))
    );
    // A block over a table holding a page, and a page inside a block.
    assert_eq!(map(&pt, 0, 0, SZ_2M, 1).unwrap_err().errno(), Errno::EEXIST);
    map(&pt, SZ_1G, SZ_1G, SZ_2M, 1).unwrap();
    assert_eq!(
        map(&pt, SZ_1G + SZ_4K, 0, SZ_4K, 1).unwrap_err().errno(),
        Errno::EEXIST
    );
}

#[test]
fn map_stops_at_the_end_of_a_table_and_reports_bytes() {
    let pt = new_pt();
    // Starting at index 510 of a last-level table, only 2 of 4 pages fit in it.
    let iova = 510 * SZ_4K;
    assert_eq!(map(&pt, iova, 0, SZ_4K, 4), Ok(2 * SZ_4K));
    assert_eq!(
        map(&pt, iova + 2 * SZ_4K, 2 * SZ_4K, SZ_4K, 2),
        Ok(2 * SZ_4K)
    );
}

#[test]
fn map_out_of_table_memory_is_enomem_and_frees_what_it_took() {
    let pt = new_pt();
    pt.memory().set_limit(Some(3)); // root + 2 of the 3 tables a 4K map needs
    assert_eq!(map(&pt, 0, 0, SZ_4K, 1).unwrap_err().errno(), Errno::ENOMEM);
    assert_eq!(pt.table_pages(), 1);
    assert_eq!(pt.iova_to_phys(Iova::new(0)), None);
    pt.memory().set_limit(None);
    assert_eq!(map(&pt, 0, 0, SZ_4K, 1), Ok(SZ_4K));
    assert_eq!(pt.table_pages(), 4);
}

#[test]
fn map_a_block_over_an_emptied_table_replaces_it() {
    let mut pt = new_pt();
    map(&pt, 0, 0, SZ_4K, 1).unwrap();
    let mut g = IotlbGather::new();
    assert_eq!(pt.unmap_pages(Iova::new(0), SZ_4K, 1, &mut g), SZ_4K);
    let before = pt.table_pages();
    assert_eq!(map(&pt, 0, 0, SZ_2M, 1), Ok(SZ_2M));
    assert_eq!(
        pt.iova_to_phys(Iova::new(0x1234)),
        Some(PhysAddr::new(0x1234))
    );
    // The displaced table waits for exclusive access: hardware may cache it.
    assert_eq!(pt.table_pages(), before);
    pt.trim();
    assert_eq!(
        pt.table_pages(),
        before - 1,
        "the empty last-level table was freed"
    );
}

#[test]
fn unmap_of_part_of_a_block_removes_the_whole_block() {
    let pt = new_pt();
    map(&pt, SZ_2M, 0x4000_0000, SZ_2M, 1).unwrap();
    let mut g = IotlbGather::new();
    assert_eq!(
        pt.unmap_pages(Iova::new(SZ_2M + 0x5000), SZ_4K, 1, &mut g),
        SZ_2M
    );
    assert_eq!(pt.iova_to_phys(Iova::new(SZ_2M)), None);
    assert_eq!(
        g.range(),
        Some((Iova::new(SZ_2M), Iova::new(2 * SZ_2M - 1)))
    );
}

#[test]
fn unmap_stops_at_the_first_hole() {
    let pt = new_pt();
    map(&pt, 0, 0, SZ_4K, 2).unwrap();
    map(&pt, 3 * SZ_4K, 0, SZ_4K, 1).unwrap();
    let mut g = IotlbGather::new();
    assert_eq!(pt.unmap_pages(Iova::new(0), SZ_4K, 4, &mut g), 2 * SZ_4K);
    assert_eq!(pt.unmap_pages(Iova::new(2 * SZ_4K), SZ_4K, 2, &mut g), 0);
    assert_eq!(
        pt.iova_to_phys(Iova::new(3 * SZ_4K)),
        Some(PhysAddr::new(0))
    );
}

#[test]
fn unmap_with_a_block_size_tears_down_the_table_below() {
    let mut pt = new_pt();
    map(&pt, 0, 0, SZ_4K, 8).unwrap();
    let before = pt.table_pages();
    let mut g = IotlbGather::new();
    assert_eq!(pt.unmap_pages(Iova::new(0), SZ_2M, 1, &mut g), SZ_2M);
    assert_eq!(pt.iova_to_phys(Iova::new(0x3000)), None);
    assert_eq!(
        g.freed_tables(),
        1,
        "the detached table waits on the gather"
    );
    // Reusable after the sync: the next map takes it instead of new memory.
    pt.release_gathered(&g);
    map(&pt, SZ_1G, 0, SZ_4K, 1).unwrap();
    assert_eq!(
        pt.table_pages(),
        before + 1,
        "one new level-2 table, the level-3 one reused"
    );
    pt.trim();
}

#[test]
fn reclaim_policy_frees_a_table_one_unmap_emptied() {
    let mem = HeapMemory::new();
    let pt = IoPageTable::new(Lpae::stage1_4k(48, 40).unwrap(), &mem)
        .unwrap()
        .reclaim_empty_tables(true);
    pt.map_pages(Iova::new(0), PhysAddr::new(0), SZ_4K, 512, Prot::RW)
        .unwrap();
    assert_eq!(mem.table_pages(), 4);
    let mut g = IotlbGather::new();
    // Part of the table: kept.
    assert_eq!(
        pt.unmap_pages(Iova::new(0), SZ_4K, 100, &mut g),
        100 * SZ_4K
    );
    assert_eq!(g.freed_tables(), 0);
    // The rest in one call that covers... only 412 entries: still kept.
    assert_eq!(
        pt.unmap_pages(Iova::new(100 * SZ_4K), SZ_4K, 412, &mut g),
        412 * SZ_4K
    );
    assert_eq!(g.freed_tables(), 0);
    // A call covering all 512 entries reclaims the table.
    pt.map_pages(Iova::new(0), PhysAddr::new(0), SZ_4K, 512, Prot::RW)
        .unwrap();
    let mut g = IotlbGather::new();
    assert_eq!(pt.unmap_pages(Iova::new(0), SZ_4K, 512, &mut g), SZ_2M);
    assert_eq!(g.freed_tables(), 1);
    assert_eq!(pt.iova_to_phys(Iova::new(0)), None);
    drop(pt);
    assert_eq!(mem.table_pages(), 0, "parked pages are freed on drop");
}

#[test]
fn unmap_with_bad_arguments_unmaps_nothing() {
    let pt = new_pt();
    map(&pt, 0, 0, SZ_4K, 1).unwrap();
    let mut g = IotlbGather::new();
    assert_eq!(pt.unmap_pages(Iova::new(0), 0x3000, 1, &mut g), 0);
    assert_eq!(pt.unmap_pages(Iova::new(0x800), SZ_4K, 1, &mut g), 0);
    assert_eq!(pt.unmap_pages(Iova::new(0), SZ_4K, 0, &mut g), 0);
    assert_eq!(pt.unmap_pages(Iova::new(1 << 48), SZ_4K, 1, &mut g), 0);
    assert!(g.is_empty());
    assert_eq!(pt.iova_to_phys(Iova::new(0)), Some(PhysAddr::new(0)));
}

#[test]
fn drop_frees_every_table_page() {
    let mem = HeapMemory::new();
    let pt = IoPageTable::new(Lpae::stage1_4k(48, 48).unwrap(), &mem).unwrap();
    for i in 0..64u64 {
        pt.map_pages(
            Iova::new(i * SZ_1G / 4),
            PhysAddr::new(0),
            SZ_4K,
            3,
            Prot::READ,
        )
        .unwrap();
    }
    assert!(mem.table_pages() > 64);
    drop(pt);
    assert_eq!(mem.table_pages(), 0);
}

#[test]
fn walk_reports_every_leaf_in_order() {
    let pt = new_pt();
    map(&pt, SZ_1G, 0x1000_0000, SZ_2M, 1).unwrap();
    map(&pt, 0x5000, 0x7000, SZ_4K, 2).unwrap();
    let all = pt.walk(Iova::new(0), 1 << 48);
    let got: Vec<(u64, u64, u64, usize)> = all
        .iter()
        .map(|m| (m.iova.raw(), m.size, m.pa.raw(), m.level))
        .collect();
    assert_eq!(
        got,
        vec![
            (0x5000, SZ_4K, 0x7000, 3),
            (0x6000, SZ_4K, 0x8000, 3),
            (SZ_1G, SZ_2M, 0x1000_0000, 2)
        ]
    );
    assert_eq!(pt.walk(Iova::new(0x6000), 1).len(), 1);
}
