//! `walk_root`: a walk from a root address over tables nobody vouches for,
//! as an emulated IOMMU does it.

use iommu_pgtable::amd::AmdV1;
use iommu_pgtable::lpae::{Granule, Lpae, LpaeConfig, Stage};
use iommu_pgtable::walk::GuestRead;
use iommu_pgtable::{walk_root, Format, GuestTableMemory, IoPageTable, WalkFault};
use iommu_types::{Iova, PhysAddr, Prot, SZ_1G, SZ_2M, SZ_4K};
use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const TABLES_AT: u64 = 0x10_0000;
const MEM: u64 = 0x100_0000;

fn gm_reader(gm: &GuestMemoryMmap) -> GuestRead<'_, GuestMemoryMmap> {
    GuestRead(gm)
}

fn guest() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
}

fn poke(mem: &GuestMemoryMmap, addr: u64, value: u64) {
    mem.write_obj(value, GuestAddress(addr)).unwrap();
}

/// Walks every mapped and unmapped address both ways: through the table
/// object and from its root through guest memory only.
fn agrees<F: Format + Clone>(fmt: F, maps: &[(u64, u64, u64)]) {
    let mem = GuestTableMemory::new(guest(), TABLES_AT, 0x80_0000);
    let pt = IoPageTable::new(fmt.clone(), &mem).unwrap();
    for &(iova, pa, size) in maps {
        let _ = pt.map_pages(Iova::new(iova), PhysAddr::new(pa), size, 1, Prot::RW);
    }
    let (root, level) = pt.top();
    for &(iova, _, size) in maps {
        for probe in [iova, iova + size / 2 + 8, iova + size - 1, iova + size] {
            let want = pt.lookup(Iova::new(probe));
            let got = walk_root(&fmt, root, level, Iova::new(probe), &mem);
            match (want, got) {
                (Some(m), Ok(w)) => {
                    assert_eq!(m.iova, w.iova, "leaf start of {probe:#x}");
                    assert_eq!(m.size, w.size, "leaf size of {probe:#x}");
                    assert_eq!(m.prot, w.prot, "leaf prot of {probe:#x}");
                    assert_eq!(
                        w.pa.raw(),
                        m.pa.raw() + (probe - m.iova.raw()),
                        "output of {probe:#x}"
                    );
                }
                (None, Err(WalkFault::Translation { .. })) => {}
                other => panic!(
                    "{probe:#x}: table says {:?}, walk says {:?}",
                    other.0, other.1
                ),
            }
        }
    }
}

#[test]
fn root_walk_agrees_with_the_table_that_built_it_lpae_s1() {
    agrees(
        Lpae::stage1_4k(48, 48).unwrap(),
        &[
            (0x1000, 0x20_0000, SZ_4K),
            (SZ_2M * 3, 0x40_0000, SZ_2M),
            (SZ_1G, 0x4000_0000, SZ_1G),
            (0xffff_ffff_f000, 0x1000, SZ_4K),
        ],
    );
}

#[test]
fn root_walk_agrees_with_the_table_that_built_it_lpae_s2_concatenated() {
    let fmt = Lpae::new(LpaeConfig {
        stage: Stage::S2,
        granule: Granule::G4K,
        ias: 40,
        oas: 40,
    })
    .unwrap();
    assert!(fmt.concatenated_tables() > 1, "the case under test");
    agrees(
        fmt,
        &[(0x1000, 0x20_0000, SZ_4K), (0xff_ffe0_0000, 0, SZ_2M)],
    );
}

#[test]
fn root_walk_agrees_with_a_table_that_grew_amd_v1() {
    agrees(
        AmdV1::new(6).unwrap(),
        &[(0x1000, 0x20_0000, SZ_4K), (1 << 40, 0x30_0000, SZ_4K)],
    );
}

#[test]
fn root_walk_refuses_an_input_above_the_input_size() {
    let fmt = Lpae::stage1_4k(39, 48).unwrap();
    let mem = GuestTableMemory::new(guest(), TABLES_AT, 0x10_0000);
    let pt = IoPageTable::new(fmt.clone(), &mem).unwrap();
    assert_eq!(
        walk_root(&fmt, pt.root(), 0, Iova::new(1 << 39), &mem),
        Err(WalkFault::Translation { level: 0 })
    );
}

#[test]
fn root_walk_reports_an_address_size_fault_for_a_table_above_the_output_size() {
    let fmt = Lpae::stage1_4k(48, 32).unwrap();
    let gm = guest();
    // Root at 0x1000; its first entry names a table at 4 GiB (bit 32).
    poke(&gm, 0x1000, (1 << 32) | 0b11);
    assert_eq!(
        walk_root(
            &fmt,
            PhysAddr::new(0x1000),
            0,
            Iova::new(0x42),
            &gm_reader(&gm)
        ),
        Err(WalkFault::AddressSize { level: 0 })
    );
    // So does a root that is itself out of range.
    assert_eq!(
        walk_root(
            &fmt,
            PhysAddr::new(1 << 33),
            0,
            Iova::new(0x42),
            &gm_reader(&gm)
        ),
        Err(WalkFault::AddressSize { level: 0 })
    );
}

#[test]
fn root_walk_reports_an_external_abort_for_a_table_outside_memory() {
    let fmt = Lpae::stage1_4k(48, 48).unwrap();
    let gm = guest();
    poke(&gm, 0x1000, (MEM + 0x1000) | 0b11);
    assert_eq!(
        walk_root(
            &fmt,
            PhysAddr::new(0x1000),
            0,
            Iova::new(0x42),
            &gm_reader(&gm)
        ),
        Err(WalkFault::External {
            level: 1,
            addr: PhysAddr::new(MEM + 0x1000)
        })
    );
}

#[test]
fn root_walk_of_a_table_pointing_at_itself_ends_after_one_read_per_level() {
    let fmt = Lpae::stage1_4k(48, 48).unwrap();
    let gm = guest();
    poke(&gm, 0x1000, 0x1000 | 0b11);
    let r = walk_root(
        &fmt,
        PhysAddr::new(0x1000),
        0,
        Iova::new(0),
        &gm_reader(&gm),
    );
    // Level 3 reads the same word as a page descriptor: a 4 KiB page at 0x1000.
    let w = r.unwrap();
    assert_eq!((w.level, w.size, w.reads), (3, SZ_4K, 4));
    assert_eq!(w.pa, PhysAddr::new(0x1000));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 256 }))]
    /// Any bytes at all in the tables: the walk ends with a leaf inside the
    /// output size or a fault, having read at most one word per level.
    #[test]
    fn root_walk_of_random_bytes_is_bounded(words in proptest::collection::vec(any::<u64>(), 8), iova in any::<u64>()) {
        let fmt = Lpae::stage1_4k(48, 48).unwrap();
        let gm = guest();
        // Every table the walk can reach from root 0 lands somewhere random;
        // fill the words it will read at each level's index.
        for (i, w) in words.iter().enumerate() {
            poke(&gm, (i as u64) * 8, *w);
        }
        if let Ok(w) = walk_root(&fmt, PhysAddr::new(0), 0, Iova::new(iova), &gm_reader(&gm)) {
            prop_assert!(w.reads <= 4);
            prop_assert!(w.pa.raw() < 1 << 48);
            prop_assert_eq!(w.pa.raw() & (w.size - 1), iova & (w.size - 1));
        }
    }
}
