//! Dirty tracking, the same for every format with a dirty bit: writable
//! leaves start clean, a device write marks them, read-and-clear reports each
//! dirty leaf once.

use iommu_pgtable::amd::AmdV1;
use iommu_pgtable::lpae::{Granule, Lpae, LpaeConfig, Stage};
use iommu_pgtable::riscv::{Riscv, RiscvStage};
use iommu_pgtable::vtd::VtdSl;
use iommu_pgtable::{DirtyBitmap, Format, HeapMemory, IoPageTable, PgtableError};
use iommu_types::{Iova, PhysAddr, Prot, SZ_2M, SZ_4K};

fn dirty_cycle<F: Format>(fmt: F) {
    let name = fmt.name();
    let pt = IoPageTable::new(fmt, HeapMemory::new()).unwrap();
    // One writable page mapped before tracking starts: it counts as dirty
    // until the first harvest, then is clean.
    pt.map_pages(
        Iova::new(0x1000),
        PhysAddr::new(0x10_0000),
        SZ_4K,
        1,
        Prot::RW,
    )
    .unwrap();
    pt.set_dirty_tracking(true).unwrap();
    pt.map_pages(
        Iova::new(0x2000),
        PhysAddr::new(0x20_0000),
        SZ_4K,
        3,
        Prot::RW,
    )
    .unwrap();
    pt.map_pages(Iova::new(SZ_2M), PhysAddr::new(SZ_2M), SZ_2M, 1, Prot::RW)
        .unwrap();
    pt.map_pages(
        Iova::new(0x8000),
        PhysAddr::new(0x30_0000),
        SZ_4K,
        1,
        Prot::READ,
    )
    .unwrap();

    let mut bm = DirtyBitmap::new(Iova::ZERO, 4 * SZ_2M, SZ_4K).unwrap();
    assert_eq!(
        pt.read_and_clear_dirty(Iova::ZERO, 4 * SZ_2M, &mut bm, true),
        0,
        "{name}: all clean"
    );

    // The device writes: two pages and the block.
    assert_eq!(
        pt.hw_write(Iova::new(0x3010)),
        Some(PhysAddr::new(0x20_1010))
    );
    assert_eq!(
        pt.hw_write(Iova::new(0x1000)),
        Some(PhysAddr::new(0x10_0000))
    );
    assert!(pt.hw_write(Iova::new(SZ_2M + 0x5_0000)).is_some());
    assert_eq!(
        pt.hw_write(Iova::new(0x8000)),
        None,
        "{name}: a read-only page faults on write"
    );
    // Translation is unchanged by the dirty state.
    assert_eq!(
        pt.iova_to_phys(Iova::new(0x3010)),
        Some(PhysAddr::new(0x20_1010))
    );
    assert!(
        pt.lookup(Iova::new(0x2000))
            .unwrap()
            .prot
            .contains(Prot::WRITE),
        "{name}: clean is still writable"
    );

    // Peek without clearing, then harvest.
    let mut peek = DirtyBitmap::new(Iova::ZERO, 4 * SZ_2M, SZ_4K).unwrap();
    assert_eq!(
        pt.read_and_clear_dirty(Iova::ZERO, 4 * SZ_2M, &mut peek, false),
        3,
        "{name}"
    );
    let mut bm = DirtyBitmap::new(Iova::ZERO, 4 * SZ_2M, SZ_4K).unwrap();
    assert_eq!(
        pt.read_and_clear_dirty(Iova::ZERO, 4 * SZ_2M, &mut bm, true),
        3,
        "{name}"
    );
    assert_eq!(bm, peek);
    assert!(
        bm.is_set(Iova::new(0x3000))
            && bm.is_set(Iova::new(0x1000))
            && !bm.is_set(Iova::new(0x2000))
    );
    assert_eq!(
        bm.count(),
        2 + 512,
        "{name}: two pages and every page of the block"
    );
    // Cleared: a second harvest finds nothing.
    let mut again = DirtyBitmap::new(Iova::ZERO, 4 * SZ_2M, SZ_4K).unwrap();
    assert_eq!(
        pt.read_and_clear_dirty(Iova::ZERO, 4 * SZ_2M, &mut again, true),
        0,
        "{name}"
    );
    // A harvest limited to a range leaves dirty leaves outside it alone.
    pt.hw_write(Iova::new(0x2000)).unwrap();
    pt.hw_write(Iova::new(0x4000)).unwrap();
    let mut part = DirtyBitmap::new(Iova::ZERO, 4 * SZ_2M, SZ_4K).unwrap();
    assert_eq!(
        pt.read_and_clear_dirty(Iova::new(0x2000), SZ_4K, &mut part, true),
        1
    );
    assert_eq!(
        pt.read_and_clear_dirty(Iova::ZERO, 4 * SZ_2M, &mut part, true),
        1
    );
}

#[test]
fn dirty_tracking_works_for_every_format() {
    for stage in [Stage::S1, Stage::S2] {
        dirty_cycle(
            Lpae::new(LpaeConfig {
                stage,
                granule: Granule::G4K,
                ias: 48,
                oas: 48,
            })
            .unwrap(),
        );
    }
    dirty_cycle(VtdSl::new(4, 48).unwrap());
    dirty_cycle(AmdV1::new(4).unwrap());
    dirty_cycle(Riscv::new(3, RiscvStage::First).unwrap());
    dirty_cycle(Riscv::new(4, RiscvStage::Second).unwrap());
}

#[test]
fn without_tracking_hardware_does_not_mark_leaves() {
    let pt = IoPageTable::new(VtdSl::new(4, 48).unwrap(), HeapMemory::new()).unwrap();
    pt.map_pages(Iova::new(0x1000), PhysAddr::new(0x1000), SZ_4K, 1, Prot::RW)
        .unwrap();
    pt.hw_write(Iova::new(0x1000)).unwrap();
    let mut bm = DirtyBitmap::new(Iova::ZERO, SZ_2M, SZ_4K).unwrap();
    assert_eq!(pt.read_and_clear_dirty(Iova::ZERO, SZ_2M, &mut bm, true), 0);
    assert!(!pt.dirty_tracking());
}

#[test]
fn dirty_bitmap_clips_to_its_range() {
    let mut bm = DirtyBitmap::new(Iova::new(0x10_0000), 0x4000, SZ_4K).unwrap();
    bm.set_range(0, 0x10_2000);
    bm.set_range(0x10_3000, 0x10_0000);
    assert_eq!(bm.count(), 3);
    assert!(
        !bm.is_set(Iova::new(0x10_2000))
            && bm.is_set(Iova::new(0x10_3fff))
            && !bm.is_set(Iova::new(0x10_4000))
    );
    assert!(!bm.is_set(Iova::new(0)));
}

/// A format without a dirty bit, to check the refusal.
struct NoDirty(Lpae);
// SAFETY: every codec method forwards to LPAE, which keeps the contract.
unsafe impl Format for NoDirty {
    fn geometry(&self) -> &iommu_pgtable::Geometry {
        self.0.geometry()
    }
    fn decode(&self, pte: u64, level: usize) -> iommu_pgtable::Pte {
        self.0.decode(pte, level)
    }
    fn encode_table(&self, table: PhysAddr, level: usize) -> u64 {
        self.0.encode_table(table, level)
    }
    fn encode_leaf(&self, pa: PhysAddr, level: usize, prot: Prot) -> u64 {
        self.0.encode_leaf(pa, level, prot)
    }
    fn name(&self) -> &'static str {
        "no-dirty"
    }
}

#[test]
fn dirty_tracking_on_a_format_without_a_dirty_bit_is_eopnotsupp() {
    let pt =
        IoPageTable::new(NoDirty(Lpae::stage1_4k(48, 48).unwrap()), HeapMemory::new()).unwrap();
    let e = pt.set_dirty_tracking(true).unwrap_err();
    assert_eq!(
        (e, e.errno()),
        (PgtableError::NotSupported, iommu_types::Errno::EOPNOTSUPP)
    );
}
