//! The device in a VMM: another virtio device's DMA reaches guest memory
//! through `vm_memory::IommuMemory` and this device's translation.

use iommu_virtio::spec::{fault, map, Status};
use iommu_virtio::{Device, DeviceConfig, Request, VirtioIommu};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory};

const EP: u32 = 3;
type Mem = IommuMemory<GuestMemoryMmap<()>, iommu_virtio::EndpointIommu>;

/// A device with endpoint 3, guest memory at 0-16 MiB, and an
/// `IommuMemory` for the endpoint's DMA.
fn setup() -> (Arc<VirtioIommu>, Mem, GuestMemoryMmap<()>) {
    let mut d = Device::new(DeviceConfig::default()).unwrap();
    d.add_endpoint(EP, &[]).unwrap();
    d.negotiate(d.offered()).unwrap();
    let iommu = VirtioIommu::new(d);
    let phys = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    let mem = IommuMemory::new(phys.clone(), iommu.endpoint(EP), true, ());
    (iommu, mem, phys)
}

fn send(iommu: &VirtioIommu, r: Request) -> Status {
    let mut tail = [0xaa; 4];
    assert_eq!(iommu.handle(&r.encode(), &mut tail), 4);
    Status::from_u8(tail[0]).unwrap()
}

fn map(domain: u32, virt_start: u64, virt_end: u64, phys_start: u64, flags: u32) -> Request {
    Request::Map {
        domain,
        virt_start,
        virt_end,
        phys_start,
        flags,
    }
}

fn attach(domain: u32) -> Request {
    Request::Attach {
        domain,
        endpoint: EP,
        flags: 0,
        reserved: 0,
    }
}

#[test]
fn dma_reaches_guest_memory_through_the_mapping() {
    let (iommu, mem, phys) = setup();
    assert_eq!(send(&iommu, attach(1)), Status::Ok);
    let rw = map::READ | map::WRITE;
    assert_eq!(
        send(&iommu, map(1, 0x10_0000, 0x10_ffff, 0x40_0000, rw)),
        Status::Ok
    );
    mem.write_obj(0x1122_3344_5566_7788u64, GuestAddress(0x10_0010))
        .unwrap();
    assert_eq!(
        phys.read_obj::<u64>(GuestAddress(0x40_0010)).unwrap(),
        0x1122_3344_5566_7788
    );
    assert_eq!(
        mem.read_obj::<u64>(GuestAddress(0x10_0010)).unwrap(),
        0x1122_3344_5566_7788
    );
}

#[test]
fn a_range_across_adjacent_mappings_translates_as_several_segments() {
    // Two adjacent IOVA mappings to scattered physical pages: one access
    // that crosses them lands in both.
    let (iommu, mem, phys) = setup();
    assert_eq!(send(&iommu, attach(1)), Status::Ok);
    let rw = map::READ | map::WRITE;
    assert_eq!(send(&iommu, map(1, 0x2000, 0x2fff, 0x9000, rw)), Status::Ok);
    assert_eq!(send(&iommu, map(1, 0x3000, 0x3fff, 0x5000, rw)), Status::Ok);
    let data: Vec<u8> = (0..64).collect();
    mem.write_slice(&data, GuestAddress(0x2fe0)).unwrap();
    let mut lo = [0u8; 32];
    let mut hi = [0u8; 32];
    phys.read_slice(&mut lo, GuestAddress(0x9fe0)).unwrap();
    phys.read_slice(&mut hi, GuestAddress(0x5000)).unwrap();
    assert_eq!(lo[..], data[..32]);
    assert_eq!(hi[..], data[32..]);
    let mut back = vec![0u8; 64];
    mem.read_slice(&mut back, GuestAddress(0x2fe0)).unwrap();
    assert_eq!(back, data);
}

#[test]
fn an_access_without_translation_fails_and_is_reported() {
    let (iommu, mem, _) = setup();
    assert!(mem.read_obj::<u32>(GuestAddress(0x1000)).is_err());
    let f = iommu.next_event().expect("a fault event");
    assert_eq!(
        (f.reason, f.endpoint, f.address),
        (fault::R_DOMAIN, EP, 0x1000)
    );
    assert_eq!(send(&iommu, attach(1)), Status::Ok);
    assert_eq!(
        send(&iommu, map(1, 0, 0xfff, 0x1000, map::READ)),
        Status::Ok
    );
    assert!(mem.read_obj::<u32>(GuestAddress(0x10)).is_ok());
    assert!(
        mem.write_obj(1u32, GuestAddress(0x10)).is_err(),
        "read-only"
    );
    let f = iommu.next_event().unwrap();
    assert_eq!(
        (f.reason, f.flags & fault::F_WRITE),
        (fault::R_MAPPING, fault::F_WRITE)
    );
}

#[test]
fn bypass_translates_by_the_identity_until_attached() {
    let (iommu, mem, phys) = setup();
    iommu.with_device(|d| d.write_config(36, &[1]));
    mem.write_obj(0xabu8, GuestAddress(0x7000)).unwrap();
    assert_eq!(phys.read_obj::<u8>(GuestAddress(0x7000)).unwrap(), 0xab);
    assert_eq!(send(&iommu, attach(1)), Status::Ok);
    assert!(
        mem.read_obj::<u8>(GuestAddress(0x7000)).is_err(),
        "attached: the cached identity is gone"
    );
}

#[test]
fn detach_and_unmap_take_the_cached_translation_away() {
    let (iommu, mem, _) = setup();
    assert_eq!(send(&iommu, attach(1)), Status::Ok);
    let rw = map::READ | map::WRITE;
    assert_eq!(send(&iommu, map(1, 0, 0xffff, 0x10000, rw)), Status::Ok);
    assert!(mem.read_obj::<u8>(GuestAddress(0x100)).is_ok());
    let unmap = Request::Unmap {
        domain: 1,
        virt_start: 0,
        virt_end: 0xffff,
        reserved: 0,
    };
    assert_eq!(send(&iommu, unmap), Status::Ok);
    assert!(mem.read_obj::<u8>(GuestAddress(0x100)).is_err());
    assert_eq!(send(&iommu, map(1, 0, 0xffff, 0x10000, rw)), Status::Ok);
    assert!(mem.read_obj::<u8>(GuestAddress(0x100)).is_ok());
    let detach = Request::Detach {
        domain: 1,
        endpoint: EP,
    };
    assert_eq!(send(&iommu, detach), Status::Ok);
    assert!(mem.read_obj::<u8>(GuestAddress(0x100)).is_err());
}

#[test]
fn nothing_reaches_an_unmapped_range_once_unmap_completes() {
    // A thread keeps reading through the IOMMU while the guest maps and
    // unmaps: a read that starts when every MAP begun so far has been
    // unmapped, with no MAP begun while it runs, must fail.
    let (iommu, mem, _) = setup();
    assert_eq!(send(&iommu, attach(1)), Status::Ok);
    let rw = map::READ | map::WRITE;
    let mem = Arc::new(mem);
    let maps_begun = Arc::new(AtomicU64::new(0));
    let unmaps_done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (hits, misses) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader = {
        let (mem, begun, done, stop) = (
            Arc::clone(&mem),
            Arc::clone(&maps_begun),
            Arc::clone(&unmaps_done),
            Arc::clone(&stop),
        );
        let (hits, misses) = (Arc::clone(&hits), Arc::clone(&misses));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let done_before = done.load(Ordering::SeqCst);
                let ok = mem.read_obj::<u64>(GuestAddress(0x8008)).is_ok();
                let begun_after = begun.load(Ordering::SeqCst);
                assert!(
                    !(ok && done_before == begun_after),
                    "a read after UNMAP completed got through"
                );
                if ok { &hits } else { &misses }.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    for round in 0..300u64 {
        maps_begun.fetch_add(1, Ordering::SeqCst);
        let phys = 0x100000 + (round % 16) * 0x10000;
        assert_eq!(send(&iommu, map(1, 0x8000, 0x8fff, phys, rw)), Status::Ok);
        for _ in 0..20 {
            std::thread::yield_now();
        }
        let unmap = Request::Unmap {
            domain: 1,
            virt_start: 0x8000,
            virt_end: 0x8fff,
            reserved: 0,
        };
        assert_eq!(send(&iommu, unmap), Status::Ok);
        unmaps_done.fetch_add(1, Ordering::SeqCst);
        for _ in 0..20 {
            std::thread::yield_now();
        }
    }
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    assert!(misses.load(Ordering::Relaxed) > 0);
}

#[test]
fn unplugging_an_endpoint_stops_its_dma() {
    let (iommu, mem, _) = setup();
    assert_eq!(send(&iommu, attach(1)), Status::Ok);
    assert_eq!(
        send(&iommu, map(1, 0, 0xfff, 0x2000, map::READ)),
        Status::Ok
    );
    assert!(mem.read_obj::<u8>(GuestAddress(0)).is_ok());
    iommu.with_device(|d| d.remove_endpoint(EP)).unwrap();
    assert!(mem.read_obj::<u8>(GuestAddress(0)).is_err());
}

#[test]
fn an_observer_sees_every_parsed_request_with_its_status() {
    use std::sync::Mutex;
    let (iommu, _, _) = setup();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    assert!(iommu.observe(move |r, status| s.lock().unwrap().push(format!("{r} -> {status}"))));
    assert!(!iommu.observe(|_, _| ()), "one observer");
    assert_eq!(send(&iommu, attach(1)), Status::Ok);
    assert_eq!(
        send(&iommu, map(1, 0x1000, 0x1fff, 0x8000, map::READ)),
        Status::Ok
    );
    assert_eq!(
        send(&iommu, map(1, 0x1000, 0x1fff, 0x8000, map::READ)),
        Status::Inval
    );
    // Unparsable bytes are not a request: nothing to observe.
    let mut tail = [0u8; 4];
    assert_eq!(iommu.handle(&[9, 0, 0, 0], &mut tail), 0);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "ATTACH endpoint 0x3 to domain 1 -> OK",
            "MAP domain 1 [0x1000-0x1fff] -> 0x8000 R -> OK",
            "MAP domain 1 [0x1000-0x1fff] -> 0x8000 R -> INVAL",
        ]
    );
}

/// What the hammer counted.
struct Hammered {
    accesses: u64,
    hits: u64,
    /// Accesses that got through although every grant begun before they
    /// ended had been taken away before they began.
    after_removal: u64,
}

/// Device threads read through `IommuMemory` while the request thread
/// grants endpoint `EP` access to one address and takes it away again,
/// `rounds` times, cycling through the four ways: MAP then UNMAP; MAP then
/// DETACH; ATTACH to a bypass domain then back; the `bypass` field on then
/// off. A grant is counted before its request, a removal after its
/// request completed.
fn hammer(rounds: u64, skip_invalidation: bool) -> Hammered {
    use iommu_virtio::spec::{attach as attach_flags, feature};
    let mut d = Device::new(DeviceConfig {
        features: DeviceConfig::default().features | feature::BYPASS_CONFIG,
        ..DeviceConfig::default()
    })
    .unwrap();
    d.add_endpoint(EP, &[]).unwrap();
    d.negotiate(d.offered()).unwrap();
    let iommu = VirtioIommu::new(d);
    let phys = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    iommu.skip_invalidations(skip_invalidation);
    const X: u64 = 0x8000;
    let rw = map::READ | map::WRITE;
    assert_eq!(send(&iommu, attach(1)), Status::Ok);
    let granted = Arc::new(AtomicU64::new(0));
    let removed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let mem = IommuMemory::new(phys.clone(), iommu.endpoint(EP), true, ());
            let (granted, removed, stop) = (granted.clone(), removed.clone(), stop.clone());
            let progress = progress.clone();
            std::thread::spawn(move || {
                let mut h = Hammered {
                    accesses: 0,
                    hits: 0,
                    after_removal: 0,
                };
                while !stop.load(Ordering::Relaxed) {
                    let removed_before = removed.load(Ordering::SeqCst);
                    let ok = mem.read_obj::<u64>(GuestAddress(X + 8)).is_ok();
                    let granted_after = granted.load(Ordering::SeqCst);
                    h.accesses += 1;
                    h.hits += u64::from(ok);
                    h.after_removal += u64::from(ok && removed_before == granted_after);
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                h
            })
        })
        .collect();
    let detach = Request::Detach {
        domain: 1,
        endpoint: EP,
    };
    let bypass_domain = Request::Attach {
        domain: 2,
        endpoint: EP,
        flags: attach_flags::BYPASS,
        reserved: 0,
    };
    let unmap = Request::Unmap {
        domain: 1,
        virt_start: X,
        virt_end: X + 0xfff,
        reserved: 0,
    };
    let bypass_field = |on: bool| {
        iommu.with_device(|d| d.write_config(iommu_virtio::config::offset::BYPASS, &[u8::from(on)]))
    };
    // Lets the readers make an access or two (bounded, so a stuck reader
    // cannot hang the test): every window between requests gets accesses.
    let let_readers_in = || {
        let from = progress.load(Ordering::Relaxed);
        for spin in 0..20_000 {
            if progress.load(Ordering::Relaxed) > from {
                break;
            }
            if spin < 200 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    };
    for round in 0..rounds {
        let phys_page = 0x10_0000 + (round % 16) * 0x1000;
        granted.fetch_add(1, Ordering::SeqCst);
        let revoke = match round % 4 {
            0 => {
                assert_eq!(
                    send(&iommu, map(1, X, X + 0xfff, phys_page, rw)),
                    Status::Ok
                );
                let_readers_in();
                unmap
            }
            1 => {
                assert_eq!(
                    send(&iommu, map(1, X, X + 0xfff, phys_page, rw)),
                    Status::Ok
                );
                let_readers_in();
                detach
            }
            2 => {
                assert_eq!(send(&iommu, bypass_domain), Status::Ok);
                let_readers_in();
                attach(1)
            }
            _ => {
                assert_eq!(send(&iommu, detach), Status::Ok);
                bypass_field(true);
                let_readers_in();
                bypass_field(false);
                removed.fetch_add(1, Ordering::SeqCst);
                let_readers_in();
                assert_eq!(send(&iommu, attach(1)), Status::Ok);
                continue;
            }
        };
        assert_eq!(send(&iommu, revoke), Status::Ok);
        removed.fetch_add(1, Ordering::SeqCst);
        let_readers_in();
        if round % 4 == 1 {
            assert_eq!(send(&iommu, attach(1)), Status::Ok);
        }
    }
    stop.store(true, Ordering::Relaxed);
    readers.into_iter().map(|r| r.join().unwrap()).fold(
        Hammered {
            accesses: 0,
            hits: 0,
            after_removal: 0,
        },
        |a, b| Hammered {
            accesses: a.accesses + b.accesses,
            hits: a.hits + b.hits,
            after_removal: a.after_removal + b.after_removal,
        },
    )
}

/// Once the request that took a translation away (UNMAP, DETACH, a move
/// out of a bypass domain, the bypass field off) completes, no access
/// gets through it: over a million rounds, with two device threads.
#[test]
fn no_access_gets_through_once_the_request_that_removed_it_completed() {
    let rounds = if cfg!(miri) { 200 } else { 1_000_000 };
    let h = hammer(rounds, false);
    println!(
        "{rounds} rounds: {} accesses, {} got through, {} after removal",
        h.accesses, h.hits, h.after_removal
    );
    assert_eq!(h.after_removal, 0, "{} stale accesses", h.after_removal);
    // The readers did race with the grants (else the test proves nothing).
    assert!(
        h.hits > 0 && h.accesses > h.hits,
        "{} of {}",
        h.hits,
        h.accesses
    );
}

/// The control: with IOTLB invalidation skipped, the same hammer counts
/// accesses through translations already taken away.
#[test]
fn the_hammer_sees_stale_accesses_when_invalidation_is_skipped() {
    let h = hammer(100_000, true);
    println!(
        "100000 rounds without invalidation: {} accesses, {} after removal",
        h.accesses, h.after_removal
    );
    assert!(h.after_removal > 0, "{} accesses, none stale", h.accesses);
}

#[test]
fn translate_contiguous_gives_one_mappings_address_until_it_goes() {
    use vm_memory::Permissions;
    let (iommu, _, _) = setup();
    let ep = iommu.endpoint(EP);
    let phys = |iova: u64, len: usize, p| {
        ep.translate_contiguous(GuestAddress(iova), len, p)
            .map(|c| c.phys().0)
    };
    assert!(phys(0x1000, 8, Permissions::Read).is_err(), "not attached");
    assert_eq!(send(&iommu, attach(1)), Status::Ok);
    assert_eq!(
        send(&iommu, map(1, 0x1000, 0x2fff, 0x40000, map::READ)),
        Status::Ok
    );
    assert_eq!(
        send(
            &iommu,
            map(1, 0x3000, 0x3fff, 0x90000, map::READ | map::WRITE)
        ),
        Status::Ok
    );
    // A miss fills, then the same segment serves other addresses.
    assert_eq!(phys(0x1010, 8, Permissions::Read).unwrap(), 0x40010);
    assert_eq!(phys(0x2ff8, 8, Permissions::Read).unwrap(), 0x41ff8);
    assert_eq!(
        phys(0x3000, 0x1000, Permissions::ReadWrite).unwrap(),
        0x90000
    );
    // No write permission; not across two mappings; no empty or wrapping range.
    assert!(phys(0x1010, 8, Permissions::Write).is_err());
    assert!(phys(0x2ff8, 16, Permissions::Read).is_err());
    assert!(phys(0x1000, 0, Permissions::Read).is_err());
    assert!(phys(u64::MAX, 2, Permissions::Read).is_err());
    // UNMAP takes the segment away; a remap elsewhere is seen.
    let unmap = Request::Unmap {
        domain: 1,
        virt_start: 0x1000,
        virt_end: 0x2fff,
        reserved: 0,
    };
    assert_eq!(send(&iommu, unmap), Status::Ok);
    assert!(phys(0x1010, 8, Permissions::Read).is_err());
    assert_eq!(
        send(&iommu, map(1, 0x1000, 0x1fff, 0x70000, map::READ)),
        Status::Ok
    );
    assert_eq!(phys(0x1010, 8, Permissions::Read).unwrap(), 0x70010);
    // DETACH too.
    let detach = Request::Detach {
        domain: 1,
        endpoint: EP,
    };
    assert_eq!(send(&iommu, detach), Status::Ok);
    assert!(phys(0x3000, 8, Permissions::Read).is_err());
}

#[test]
fn an_unmap_waits_for_a_held_contiguous_translation() {
    use vm_memory::Permissions;
    let (iommu, _, _) = setup();
    assert_eq!(send(&iommu, attach(1)), Status::Ok);
    let rw = map::READ | map::WRITE;
    assert_eq!(
        send(&iommu, map(1, 0x8000, 0x8fff, 0x10000, rw)),
        Status::Ok
    );
    let ep = iommu.endpoint(EP);
    let held = ep
        .translate_contiguous(GuestAddress(0x8000), 8, Permissions::Write)
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let unmapper = {
        let (iommu, done) = (Arc::clone(&iommu), Arc::clone(&done));
        std::thread::spawn(move || {
            let unmap = Request::Unmap {
                domain: 1,
                virt_start: 0x8000,
                virt_end: 0x8fff,
                reserved: 0,
            };
            assert_eq!(send(&iommu, unmap), Status::Ok);
            done.store(true, Ordering::SeqCst);
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        !done.load(Ordering::SeqCst),
        "the UNMAP completed while a translation was in use"
    );
    assert_eq!(held.phys(), GuestAddress(0x10000));
    drop(held);
    unmapper.join().unwrap();
    assert!(done.load(Ordering::SeqCst));
    assert!(ep
        .translate_contiguous(GuestAddress(0x8000), 8, Permissions::Read)
        .is_err());
}
