//! Tables inside guest memory: an emulated IOMMU reads the very bytes the
//! driver wrote, straight out of the VM's memory.

use iommu_pgtable::lpae::Lpae;
use iommu_pgtable::{GuestTableMemory, IoPageTable, PgtableError, TableMemory};
use iommu_types::{IotlbGather, Iova, PhysAddr, Prot, SZ_2M, SZ_4K};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const TABLES_AT: u64 = 0x10_0000;

fn guest() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

/// A 4-level LPAE stage-1 walk done only with guest-memory reads, as a device would.
fn device_walk(mem: &GuestMemoryMmap, root: u64, iova: u64) -> Option<u64> {
    let mut table = root;
    for level in 0..4u32 {
        let shift = 39 - 9 * level;
        let idx = (iova >> shift) & 0x1ff;
        let pte: u64 = mem.read_obj(GuestAddress(table + idx * 8)).ok()?;
        if pte & 1 == 0 {
            return None;
        }
        let addr = pte & 0x0000_ffff_ffff_f000;
        let is_table = pte & 2 != 0 && level < 3;
        if !is_table {
            let size = 1u64 << shift;
            return Some(addr + (iova & (size - 1)));
        }
        table = addr;
    }
    None
}

/// Table memory whose window is reached at its host address.
fn host_mapped(mem: GuestMemoryMmap, base: u64, size: u64) -> GuestTableMemory<GuestMemoryMmap> {
    // SAFETY: `mem` is vm-memory's mmap backend over anonymous ranges,
    // without a dirty bitmap, made by the caller and handed over whole.
    unsafe { GuestTableMemory::with_host_mapping(mem, base, size) }
}

#[test]
fn tables_in_guest_memory_are_walked_byte_for_byte() {
    let looked_up = GuestTableMemory::new(guest(), TABLES_AT, 0x10_0000);
    assert!(!looked_up.is_host_mapped());
    walked_byte_for_byte(&looked_up);
    let direct = host_mapped(guest(), TABLES_AT, 0x10_0000);
    assert!(direct.is_host_mapped());
    walked_byte_for_byte(&direct);
}

fn walked_byte_for_byte(mem: &GuestTableMemory<GuestMemoryMmap>) {
    let pt = IoPageTable::new(Lpae::stage1_4k(48, 48).unwrap(), mem).unwrap();
    assert!(
        (TABLES_AT..TABLES_AT + 0x10_0000).contains(&pt.root().raw()),
        "the root is guest memory"
    );
    pt.map_pages(
        Iova::new(0x4000_1000),
        PhysAddr::new(0x8_1234_5000),
        SZ_4K,
        1,
        Prot::RW | Prot::CACHE,
    )
    .unwrap();
    pt.map_pages(
        Iova::new(SZ_2M),
        PhysAddr::new(0x4000_0000),
        SZ_2M,
        1,
        Prot::READ,
    )
    .unwrap();
    let gm = mem.guest_memory();
    assert_eq!(
        device_walk(gm, pt.root().raw(), 0x4000_1042),
        Some(0x8_1234_5042)
    );
    assert_eq!(
        device_walk(gm, pt.root().raw(), SZ_2M + 0x1234),
        Some(0x4000_1234)
    );
    assert_eq!(device_walk(gm, pt.root().raw(), 0x5000), None);
    // The exact leaf bits sit in guest memory (see the golden LPAE tests).
    let mut g = IotlbGather::new();
    assert_eq!(
        pt.unmap_pages(Iova::new(0x4000_1000), SZ_4K, 1, &mut g),
        SZ_4K
    );
    assert_eq!(device_walk(gm, pt.root().raw(), 0x4000_1042), None);
    assert_eq!(mem.table_pages(), 1 + 3 + 1);
    drop(pt);
    assert_eq!(mem.table_pages(), 0);
}

#[test]
fn a_full_table_region_is_enomem_and_writes_nothing() {
    // Room for the root and two more tables only.
    let mem = GuestTableMemory::new(guest(), TABLES_AT, 3 * 4096);
    let pt = IoPageTable::new(Lpae::stage1_4k(48, 48).unwrap(), &mem).unwrap();
    let e = pt
        .map_pages(Iova::new(0), PhysAddr::new(0), SZ_4K, 1, Prot::RW)
        .unwrap_err();
    assert_eq!(e, PgtableError::NoMemory);
    assert_eq!(mem.table_pages(), 1);
    // A 1 GiB block needs no table below the root's child: it fits.
    pt.map_pages(Iova::new(1 << 30), PhysAddr::new(0), 1 << 30, 1, Prot::RW)
        .unwrap();
    assert_eq!(
        pt.iova_to_phys(Iova::new((1 << 30) + 5)),
        Some(PhysAddr::new(5))
    );
}

#[test]
fn a_region_outside_guest_memory_allocates_nothing() {
    let mem = GuestTableMemory::new(guest(), 0x200_0000, 0x10_0000);
    assert_eq!(
        IoPageTable::new(Lpae::stage1_4k(48, 48).unwrap(), &mem).unwrap_err(),
        PgtableError::NoMemory
    );
}

#[test]
fn a_table_address_no_descriptor_can_hold_is_out_of_memory() {
    // Table memory above 2^48: LPAE's 4 KiB-granule descriptors hold only
    // bits [47:12], so a table there could never be pointed at. The root
    // is never written into a descriptor; the first table below it would be.
    const HIGH: u64 = 1 << 48;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(HIGH), 0x10_0000)]).unwrap();
    let tables = GuestTableMemory::new(mem, HIGH, 0x10_0000);
    let pt = IoPageTable::new(Lpae::stage1_4k(48, 48).unwrap(), &tables).unwrap();
    let before = tables.table_pages();
    assert_eq!(
        pt.map_pages(Iova::new(0x1000), PhysAddr::new(0x8000), SZ_4K, 1, Prot::RW),
        Err(PgtableError::NoMemory)
    );
    assert_eq!(pt.iova_to_phys(Iova::new(0x1000)), None);
    assert!(pt.walk(Iova::ZERO, u64::MAX).is_empty());
    // The tables it allocated for the walk went back.
    assert_eq!(tables.table_pages(), before);
}

/// A table descriptor someone else wrote, pointing outside the memory:
/// the missing table below it cannot be installed (the memory refuses
/// the write), and the map says so instead of trying again for ever.
#[test]
fn a_table_outside_the_memory_is_an_error_not_a_spin() {
    let mem = GuestTableMemory::new(guest(), TABLES_AT, 0x10_0000);
    let pt = IoPageTable::new(Lpae::stage1_4k(48, 48).unwrap(), &mem).unwrap();
    // Level 0 entry 0: a table at 64 GiB, far past the 16 MiB of memory.
    let desc: u64 = 0x10_0000_0000 | 0b11;
    mem.guest_memory()
        .write_obj(desc, GuestAddress(pt.root().raw()))
        .unwrap();
    let r = pt.map_pages(
        Iova::new(0x1000),
        PhysAddr::new(0x20_0000),
        SZ_4K,
        1,
        Prot::RW,
    );
    assert_eq!(r.map(|_| ()), Err(PgtableError::NoMemory));
    assert_eq!(pt.iova_to_phys(Iova::new(0x1000)), None);
}

/// The host window is taken only where one region holds all of it; every
/// access outside it still goes through vm-memory, with the same answers.
#[test]
fn the_host_window_covers_exactly_the_table_region() {
    let two = || {
        GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x20_0000),
            (GuestAddress(0x20_0000), 0x20_0000),
        ])
        .unwrap()
    };
    // Across the two regions, past the end of memory, or too small to
    // hold a descriptor: looked up, as `new` would.
    assert!(!host_mapped(two(), 0x10_0000, 0x20_0000).is_host_mapped());
    assert!(!host_mapped(guest(), 0xff_0000, 0x2_0000).is_host_mapped());
    assert!(!host_mapped(guest(), 0x200_0000, 0x1000).is_host_mapped());
    assert!(!host_mapped(guest(), TABLES_AT, 4).is_host_mapped());
    assert!(host_mapped(two(), 0x20_0000, 0x20_0000).is_host_mapped());

    let mem = host_mapped(guest(), TABLES_AT, 0x1000);
    assert!(mem.is_host_mapped());
    let gm = mem.guest_memory();
    for (at, v) in [
        (TABLES_AT, 0x1111u64),
        (TABLES_AT + 0xff8, 0x2222),
        (TABLES_AT - 8, 0x3333),
        (TABLES_AT + 0x1000, 0x4444),
    ] {
        gm.write_obj(v, GuestAddress(at)).unwrap();
        // SAFETY: the accessors are bounds-checked against guest memory;
        // these addresses are 8-aligned words in or next to the window.
        unsafe {
            assert_eq!(mem.load(PhysAddr::new(at), 0), v, "{at:#x}");
            mem.store(PhysAddr::new(at), 0, v + 1);
            assert_eq!(
                mem.compare_exchange(PhysAddr::new(at), 0, v + 1, v + 2),
                Ok(v + 1)
            );
        }
        assert_eq!(gm.read_obj::<u64>(GuestAddress(at)).unwrap(), v + 2);
    }
    // Outside guest memory: reads as an invalid descriptor, writes dropped.
    // SAFETY: as above; the address is refused, never dereferenced.
    unsafe {
        assert_eq!(mem.load(PhysAddr::new(0x200_0000), 0), 0);
        mem.store(PhysAddr::new(0x200_0000), 0, 1);
        assert_eq!(mem.load(PhysAddr::new(u64::MAX - 7), 1), 0);
    }
}

/// A window reads and writes the same words as vm-memory does, inside its
/// host mapping and out of it, and refuses what vm-memory refuses.
#[test]
fn a_window_reaches_the_same_words_as_vm_memory() {
    use iommu_pgtable::walk::PhysRead;
    use iommu_pgtable::GuestWindow;
    // SAFETY: as in `host_mapped`.
    let mapped = unsafe { GuestWindow::with_host_mapping(guest(), 0x1000, 0x1000) };
    assert!(mapped.is_host_mapped());
    let looked_up = GuestWindow::new(guest());
    assert!(!looked_up.is_host_mapped());
    // SAFETY: as in `host_mapped`; past the end of memory, no window.
    let outside = unsafe { GuestWindow::with_host_mapping(guest(), 0x100_0000, 0x1000) };
    assert!(!outside.is_host_mapped());
    for w in [&mapped, &looked_up, &outside] {
        let gm = w.memory();
        for at in [0x0ff8u64, 0x1000, 0x1ff8, 0x2000] {
            gm.write_obj(0x1122_3344_5566_7788u64 ^ at, GuestAddress(at))
                .unwrap();
            assert_eq!(
                w.read_u64(PhysAddr::new(at)),
                Some(0x1122_3344_5566_7788 ^ at)
            );
            assert!(w.write_u32(at + 4, 0xdead_beef));
            assert_eq!(
                gm.read_obj::<u32>(GuestAddress(at + 4)).unwrap(),
                0xdead_beef
            );
        }
        // Misaligned reads are refused; outside memory nothing is read or
        // written.
        assert_eq!(w.read_u64(PhysAddr::new(0x1004)), None);
        assert_eq!(w.read_u64(PhysAddr::new(0x100_0000)), None);
        assert!(!w.write_u32(0x100_0000, 1));
        assert_eq!(w.read_u64(PhysAddr::new(u64::MAX - 7)), None);
    }
}
