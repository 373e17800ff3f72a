//! Inputs at the edges: geometries the walker cannot use, bitmaps at the top
//! of the address space, refused table sizes, and where an unmap that cuts a
//! block really started.

use iommu_pgtable::{
    lpae::Lpae, DirtyBitmap, Format, Geometry, HeapMemory, IoPageTable, PgtableError, Pte,
    TableMemory,
};
use iommu_types::{IotlbGather, Iova, PhysAddr, Prot, SZ_1G, SZ_2M, SZ_4K};

/// LPAE's codec under a geometry of the test's choosing.
struct Reshaped(Lpae, Geometry);

// SAFETY: the codec is LPAE's; only the geometry differs, and the walker
// refuses the geometries under test before it touches a table.
unsafe impl Format for Reshaped {
    fn geometry(&self) -> &Geometry {
        &self.1
    }
    fn decode(&self, pte: u64, level: usize) -> Pte {
        self.0.decode(pte, level)
    }
    fn encode_table(&self, table: PhysAddr, level: usize) -> u64 {
        self.0.encode_table(table, level)
    }
    fn encode_leaf(&self, pa: PhysAddr, level: usize, prot: Prot) -> u64 {
        self.0.encode_leaf(pa, level, prot)
    }
    fn name(&self) -> &'static str {
        "reshaped"
    }
}

#[test]
fn a_geometry_the_walker_cannot_use_is_refused_before_any_table_exists() {
    let lpae = Lpae::stage1_4k(48, 48).unwrap();
    let good = *lpae.geometry();
    let bad = [
        Geometry { levels: 0, ..good },
        Geometry { levels: 7, ..good },
        Geometry {
            root_bits: 40,
            ..good
        },
        Geometry {
            bits_per_level: 0,
            ..good
        },
        Geometry {
            bits_per_level: 20,
            levels: 5,
            ..good
        },
        Geometry {
            granule_shift: 63,
            ..good
        },
        Geometry {
            leaf_levels: 0,
            ..good
        },
        Geometry {
            leaf_levels: 1 << 4,
            ..good
        },
        Geometry { ias: 65, ..good },
    ];
    for geo in bad {
        let mem = HeapMemory::new();
        let r = IoPageTable::new(Reshaped(lpae.clone(), geo), &mem);
        assert_eq!(r.err(), Some(PgtableError::InvalidArgument), "{geo:?}");
        assert_eq!(mem.table_pages(), 0);
    }
    assert!(good.is_valid());
    assert!(IoPageTable::new(Reshaped(lpae, good), HeapMemory::new()).is_ok());
}

#[test]
fn an_unmap_that_cuts_a_block_reports_where_the_block_started() {
    let pt = IoPageTable::new(Lpae::stage1_4k(48, 48).unwrap(), HeapMemory::new()).unwrap();
    pt.map_pages(Iova::new(SZ_2M), PhysAddr::new(SZ_1G), SZ_2M, 1, Prot::RW)
        .unwrap();
    let mut g = IotlbGather::new();
    let u = pt.unmap_leaves(Iova::new(SZ_2M + 5 * SZ_4K), SZ_4K, 3, &mut g);
    assert_eq!((u.iova, u.size), (Iova::new(SZ_2M), SZ_2M));
    assert_eq!(u.end(), Some(Iova::new(2 * SZ_2M)));
    assert_eq!(
        g.range(),
        Some((Iova::new(SZ_2M), Iova::new(2 * SZ_2M - 1)))
    );
    // The Linux-shaped call reports the same bytes.
    pt.map_pages(Iova::new(SZ_2M), PhysAddr::new(SZ_1G), SZ_2M, 1, Prot::RW)
        .unwrap();
    let mut g = IotlbGather::new();
    assert_eq!(
        pt.unmap_pages(Iova::new(SZ_2M + SZ_4K), SZ_4K, 1, &mut g),
        SZ_2M
    );
}

#[test]
fn first_leaf_finds_mappings_across_the_whole_input_space() {
    let pt = IoPageTable::new(Lpae::stage1_4k(48, 48).unwrap(), HeapMemory::new()).unwrap();
    let top = (1u64 << 48) - SZ_4K;
    assert_eq!(pt.first_leaf(Iova::ZERO, Iova::new(u64::MAX)), None);
    pt.map_pages(Iova::new(top), PhysAddr::new(0x5000), SZ_4K, 1, Prot::READ)
        .unwrap();
    pt.map_pages(Iova::new(SZ_1G), PhysAddr::new(SZ_1G), SZ_2M, 1, Prot::RW)
        .unwrap();
    let first = pt.first_leaf(Iova::ZERO, Iova::new(u64::MAX)).unwrap();
    assert_eq!((first.iova, first.size), (Iova::new(SZ_1G), SZ_2M));
    // A range starting inside the block still finds the block.
    let inside = pt
        .first_leaf(Iova::new(SZ_1G + 0x1234), Iova::new(top))
        .unwrap();
    assert_eq!(inside.iova, Iova::new(SZ_1G));
    let last = pt
        .first_leaf(Iova::new(SZ_1G + SZ_2M), Iova::new(u64::MAX))
        .unwrap();
    assert_eq!(
        (last.iova, last.pa),
        (Iova::new(top), PhysAddr::new(0x5000))
    );
    assert_eq!(
        pt.first_leaf(Iova::new(SZ_1G + SZ_2M), Iova::new(top - 1)),
        None
    );
    assert_eq!(pt.first_leaf(Iova::new(5), Iova::new(4)), None);
}

#[test]
fn dirty_bitmaps_refuse_what_they_cannot_represent() {
    for pgsize in [0, 3, 0x1800] {
        assert_eq!(
            DirtyBitmap::new(Iova::ZERO, SZ_2M, pgsize),
            Err(PgtableError::InvalidArgument),
            "page size {pgsize:#x}"
        );
    }
    assert_eq!(
        DirtyBitmap::new(Iova::new(0x800), SZ_2M, SZ_4K),
        Err(PgtableError::InvalidArgument),
        "unaligned base"
    );
    assert_eq!(
        DirtyBitmap::new(Iova::new(u64::MAX - 0xfff), 0x2000, SZ_4K),
        Err(PgtableError::InvalidArgument),
        "wraps past the top"
    );
    // Every page of a 64-bit space at 4 KiB would be 512 TiB of bits.
    // (Miri stops at an allocation that large instead of refusing it.)
    if !cfg!(miri) {
        assert_eq!(
            DirtyBitmap::new(Iova::ZERO, u64::MAX, SZ_4K),
            Err(PgtableError::NoMemory)
        );
    }
}

#[test]
fn a_dirty_bitmap_may_end_at_the_top_of_the_address_space() {
    let base = u64::MAX - 4 * SZ_4K + 1;
    let mut bm = DirtyBitmap::new(Iova::new(base), 4 * SZ_4K, SZ_4K).unwrap();
    bm.set_range(u64::MAX - SZ_4K + 1, SZ_4K);
    bm.set_range(u64::MAX - SZ_2M, u64::MAX); // runs past the end: clipped
    assert_eq!(bm.count(), 4);
    assert!(bm.is_set(Iova::new(u64::MAX)));
    let mut one = DirtyBitmap::new(Iova::new(base), 4 * SZ_4K, SZ_4K).unwrap();
    one.set_range(u64::MAX, 1);
    assert_eq!(one.count(), 1);
    assert!(!one.is_set(Iova::new(base)));
}

#[test]
fn a_refused_table_size_is_not_counted_as_a_live_page() {
    let mem = HeapMemory::new();
    // 192 bytes: not a power of two, so no aligned layout exists.
    assert_eq!(mem.alloc_table(192), None);
    assert_eq!(mem.table_pages(), 0);
    let limited = HeapMemory::with_limit(1);
    assert_eq!(limited.alloc_table(192), None);
    let t = limited.alloc_table(4096).expect("the limit still has room");
    assert_eq!(limited.table_pages(), 1);
    // SAFETY: allocated just above with this size, never used.
    unsafe { limited.free_table(t, 4096) };
}
