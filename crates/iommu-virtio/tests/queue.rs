//! The request and event virtqueues in guest memory: the driver side
//! (`DriverQueue`) writes chains as a guest kernel would, the device side
//! (rust-vmm's `Queue`) is served by `VirtioIommu`.

use iommu_virtio::queue::{DriverQueue, DriverQueueError, QueueError, Served};
use iommu_virtio::spec::{fault, map, probe, resv, size, Status};
use iommu_virtio::{Device, DeviceConfig, Request, ResvMem, VirtioIommu};
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::iommu::Iommu;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, Permissions};

const EP: u32 = 5;
const MEM: u64 = 1 << 20;
/// Where the tests put request bytes, tails and event buffers.
const BUF: u64 = 0x8_0000;

struct Guest {
    mem: GuestMemoryMmap<()>,
    iommu: Arc<VirtioIommu>,
    requests: DriverQueue,
    request_queue: Queue,
    events: DriverQueue,
    event_queue: Queue,
}

fn guest_with(resv: &[ResvMem]) -> Guest {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let mut d = Device::new(DeviceConfig::default()).unwrap();
    d.add_endpoint(EP, resv).unwrap();
    d.negotiate(d.offered()).unwrap();
    let requests = DriverQueue::new(&mem, 16, 0x1000).unwrap();
    let events = DriverQueue::new(&mem, 8, 0x3000).unwrap();
    Guest {
        request_queue: requests.device_queue().unwrap(),
        event_queue: events.device_queue().unwrap(),
        iommu: VirtioIommu::new(d),
        mem,
        requests,
        events,
    }
}

fn guest() -> Guest {
    guest_with(&[])
}

impl Guest {
    /// Puts `r` at BUF, its tail after it, sends it as one chain of two
    /// descriptors, serves the queue and returns the status and used length.
    fn send(&mut self, r: &Request) -> (Status, u32) {
        let bytes = r.encode();
        let tail = GuestAddress(BUF + 0x100);
        self.mem.write_slice(&bytes, GuestAddress(BUF)).unwrap();
        self.mem.write_slice(&[0xee; 4], tail).unwrap();
        self.requests
            .add(&self.mem, &[(BUF, bytes.len() as u32)], &[(tail.0, 4)])
            .unwrap();
        let served = self.serve();
        assert_eq!(served.used, 1);
        let (_, len) = self.requests.pop_used(&self.mem).unwrap().unwrap();
        let mut t = [0u8; 4];
        self.mem.read_slice(&mut t, tail).unwrap();
        (Status::from_u8(t[0]).unwrap_or(Status::DevErr), len)
    }

    fn serve(&mut self) -> Served {
        self.iommu
            .process_requests(&mut self.request_queue, &self.mem)
            .unwrap()
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

fn map_req(virt_start: u64, virt_end: u64, phys_start: u64) -> Request {
    Request::Map {
        domain: 1,
        virt_start,
        virt_end,
        phys_start,
        flags: map::READ | map::WRITE,
    }
}

#[test]
fn requests_complete_through_the_request_queue_with_their_tail() {
    let mut g = guest();
    assert_eq!(g.send(&attach(1)), (Status::Ok, 4));
    assert_eq!(g.send(&map_req(0x1000, 0x1fff, 0x4000)), (Status::Ok, 4));
    assert_eq!(g.send(&map_req(0x1000, 0x1fff, 0x4000)), (Status::Inval, 4));
    let unmap = Request::Unmap {
        domain: 1,
        virt_start: 0x1000,
        virt_end: 0x1fff,
        reserved: 0,
    };
    assert_eq!(g.send(&unmap), (Status::Ok, 4));
    assert_eq!(g.iommu.with_device(|d| d.mapping_count()), 0);
    // Every chain came back: all descriptors are free again.
    assert_eq!(g.requests.free(), 16);
}

#[test]
fn the_driver_is_notified_when_it_did_not_suppress_interrupts() {
    let mut g = guest();
    g.send(&attach(1));
    // Nothing made available: nothing used, nobody to notify.
    assert_eq!(
        g.serve(),
        Served {
            used: 0,
            notify: false
        }
    );
    let bytes = attach(1).encode();
    g.mem.write_slice(&bytes, GuestAddress(BUF)).unwrap();
    g.requests
        .add(&g.mem, &[(BUF, bytes.len() as u32)], &[(BUF + 0x100, 4)])
        .unwrap();
    assert_eq!(
        g.serve(),
        Served {
            used: 1,
            notify: true
        }
    );
}

#[test]
fn a_request_split_over_many_descriptors_is_read_whole() {
    let mut g = guest();
    g.send(&attach(1));
    let bytes = map_req(0x2000, 0x2fff, 0x8000).encode();
    // One descriptor per byte of the request, then a tail in two parts.
    let mut readable = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        let at = GuestAddress(BUF + 0x40 * i as u64);
        g.mem.write_obj(*b, at).unwrap();
        readable.push((at, 1));
    }
    let tail = [(GuestAddress(0x7_0000), 1), (GuestAddress(0x7_0100), 3)];
    g.mem.write_slice(&[0xee; 4], tail[0].0).unwrap();
    // 36 descriptors do not fit in 16: use a larger queue.
    g.requests = DriverQueue::new(&g.mem, 64, 0x1000).unwrap();
    g.request_queue = g.requests.device_queue().unwrap();
    g.requests
        .add(&g.mem, &raw(&readable), &raw(&tail))
        .unwrap();
    assert_eq!(g.serve().used, 1);
    assert_eq!(g.requests.pop_used(&g.mem).unwrap().unwrap().1, 4);
    assert_eq!(g.mem.read_obj::<u8>(tail[0].0).unwrap(), Status::Ok as u8);
    assert_eq!(g.mem.read_obj::<u8>(tail[1].0).unwrap(), 0);
    assert_eq!(g.iommu.with_device(|d| d.mapping_count()), 1);
}

#[test]
fn probe_fills_properties_across_writable_descriptors() {
    let msi = ResvMem {
        subtype: resv::MSI,
        start: 0xfee0_0000,
        end: 0xfeef_ffff,
    };
    let mut g = guest_with(&[msi]);
    let ps = g.iommu.with_device(|d| d.config().probe_size) as usize;
    let bytes = Request::Probe { endpoint: EP }.encode();
    g.mem.write_slice(&bytes, GuestAddress(BUF)).unwrap();
    let first = GuestAddress(0x6_0000);
    let second = GuestAddress(0x7_0000);
    g.mem.write_slice(&vec![0xcc; ps + 4], first).unwrap();
    g.mem.write_slice(&vec![0xcc; ps + 4], second).unwrap();
    // The properties and tail split at byte 10 of the first property.
    g.requests
        .add(
            &g.mem,
            &[(BUF, bytes.len() as u32)],
            &[(first.0, 10), (second.0, (ps + 4 - 10) as u32)],
        )
        .unwrap();
    assert_eq!(g.serve().used, 1);
    let (_, len) = g.requests.pop_used(&g.mem).unwrap().unwrap();
    assert_eq!(len as usize, ps + size::TAIL);
    let mut out = vec![0u8; ps + 4];
    g.mem.read_slice(&mut out[..10], first).unwrap();
    g.mem.read_slice(&mut out[10..], second).unwrap();
    let mut want = vec![0u8; ps];
    assert_eq!(g.iommu.with_device(|d| d.probe(EP, &mut want)), Status::Ok);
    assert_eq!(&out[..ps], &want[..]);
    assert_eq!(&out[ps..], &[Status::Ok as u8, 0, 0, 0]);
    assert_eq!(u16::from_le_bytes([out[0], out[1]]), probe::RESV_MEM);
}

#[test]
fn a_probe_buffer_shorter_than_probe_size_gets_inval_in_its_last_bytes() {
    let mut g = guest();
    let bytes = Request::Probe { endpoint: EP }.encode();
    g.mem.write_slice(&bytes, GuestAddress(BUF)).unwrap();
    let out = GuestAddress(0x6_0000);
    g.mem.write_slice(&[0xcc; 64], out).unwrap();
    g.requests
        .add(&g.mem, &[(BUF, bytes.len() as u32)], &[(out.0, 64)])
        .unwrap();
    g.serve();
    let (_, len) = g.requests.pop_used(&g.mem).unwrap().unwrap();
    assert_eq!(len, 64);
    let mut b = [0u8; 64];
    g.mem.read_slice(&mut b, out).unwrap();
    assert_eq!(&b[..60], &[0xcc; 60][..], "no property written");
    assert_eq!(&b[60..], &[Status::Inval as u8, 0, 0, 0]);
}

/// Sends a chain the way a broken or hostile driver might and checks that
/// it comes back with used length 0 and nothing changed.
fn refused(g: &mut Guest, readable: &[(GuestAddress, u32)], writable: &[(GuestAddress, u32)]) {
    let before = g.iommu.with_device(|d| d.clone());
    g.requests
        .add(&g.mem, &raw(readable), &raw(writable))
        .unwrap();
    assert_eq!(g.serve().used, 1);
    assert_eq!(g.requests.pop_used(&g.mem).unwrap().unwrap().1, 0);
    assert_eq!(g.iommu.with_device(|d| d.clone()), before);
}

#[test]
fn malformed_chains_are_returned_unused_and_change_nothing() {
    let mut g = guest();
    g.send(&attach(1));
    let bytes = map_req(0x1000, 0x1fff, 0x4000).encode();
    g.mem.write_slice(&bytes, GuestAddress(BUF)).unwrap();
    let req = (GuestAddress(BUF), bytes.len() as u32);
    let tail = (GuestAddress(BUF + 0x100), 4);
    // A request too short for its type.
    refused(&mut g, &[(GuestAddress(BUF), 20)], &[tail]);
    // No device-writable part, or one too short for the tail.
    refused(&mut g, &[req], &[]);
    refused(&mut g, &[req], &[(tail.0, 3)]);
    // A tail outside guest memory: the request must not run.
    refused(&mut g, &[req], &[(GuestAddress(MEM - 2), 4)]);
    refused(&mut g, &[req], &[(GuestAddress(u64::MAX - 1), 4)]);
    // A request outside guest memory.
    refused(&mut g, &[(GuestAddress(MEM), 40)], &[tail]);
    // An unknown request type.
    g.mem.write_obj(0x77u8, GuestAddress(BUF + 0x200)).unwrap();
    refused(&mut g, &[(GuestAddress(BUF + 0x200), 40)], &[tail]);
    // The well-formed request still works afterwards.
    assert_eq!(g.send(&map_req(0x1000, 0x1fff, 0x4000)).0, Status::Ok);
}

#[test]
fn a_readable_descriptor_after_a_writable_one_is_refused() {
    let mut g = guest();
    g.send(&attach(1));
    let bytes = map_req(0x1000, 0x1fff, 0x4000).encode();
    g.mem.write_slice(&bytes, GuestAddress(BUF)).unwrap();
    // Build the chain by hand: readable, writable, readable.
    let desc = 0x1000u64;
    let write_desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        g.mem.write_slice(&d, GuestAddress(desc + 16 * i)).unwrap();
    };
    write_desc(0, BUF, 20, 1, 1);
    write_desc(1, BUF + 0x100, 4, 3, 2);
    write_desc(2, BUF + 20, bytes.len() as u32 - 20, 0, 0);
    // The ATTACH took available slot 0: slot 1 = head 0, idx = 2.
    let avail = 0x1000 + 16 * 16;
    g.mem.write_obj(0u16, GuestAddress(avail + 4 + 2)).unwrap();
    g.mem.write_obj(2u16, GuestAddress(avail + 2)).unwrap();
    let before = g.iommu.with_device(|d| d.clone());
    assert_eq!(g.serve().used, 1);
    assert_eq!(g.iommu.with_device(|d| d.clone()), before);
    // Used slot 1's length.
    let used: u64 = (0x1000u64 + 16 * 16 + 6 + 2 * 16).next_multiple_of(4);
    assert_eq!(
        g.mem
            .read_obj::<u32>(GuestAddress(used + 4 + 8 + 4))
            .unwrap(),
        0
    );
    assert_eq!(g.mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap(), 2);
}

#[test]
fn a_descriptor_loop_ends() {
    let mut g = guest();
    // Descriptor 0 points to itself with NEXT: the chain is cut at the
    // queue size, its bytes are garbage, nothing runs.
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&BUF.to_le_bytes());
    d[8..12].copy_from_slice(&4u32.to_le_bytes());
    d[12..14].copy_from_slice(&1u16.to_le_bytes());
    g.mem.write_slice(&d, GuestAddress(0x1000)).unwrap();
    g.mem.write_slice(&[0xff; 4], GuestAddress(BUF)).unwrap();
    let avail = 0x1000 + 16 * 16;
    g.mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap();
    g.mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
    assert_eq!(g.serve().used, 1);
}

#[test]
fn an_available_index_a_queue_ahead_is_an_error() {
    let mut g = guest();
    let avail = 0x1000 + 16 * 16;
    g.mem.write_obj(17u16, GuestAddress(avail + 2)).unwrap();
    let e = g
        .iommu
        .process_requests(&mut g.request_queue, &g.mem)
        .unwrap_err();
    assert!(matches!(e, QueueError::Queue(_)), "{e}");
}

#[test]
fn a_queue_that_is_not_ready_is_an_error() {
    let mut g = guest();
    g.request_queue.set_ready(false);
    assert!(g
        .iommu
        .process_requests(&mut g.request_queue, &g.mem)
        .is_err());
}

#[test]
fn fault_reports_go_to_event_buffers_in_order() {
    let mut g = guest();
    g.send(&attach(1));
    let ep = g.iommu.endpoint(EP);
    assert!(ep
        .translate(GuestAddress(0x5000), 8, Permissions::Write)
        .is_err());
    assert!(ep
        .translate(GuestAddress(0x9000), 8, Permissions::Read)
        .is_err());
    assert_eq!(g.iommu.pending_events(), 2);
    // No buffer posted: the reports wait.
    let served = g.iommu.process_events(&mut g.event_queue, &g.mem).unwrap();
    assert_eq!(served.used, 0);
    let bufs = [GuestAddress(0x7_0000), GuestAddress(0x7_1000)];
    for b in bufs {
        g.events
            .add(&g.mem, &[], &[(b.0, size::FAULT as u32)])
            .unwrap();
    }
    let served = g.iommu.process_events(&mut g.event_queue, &g.mem).unwrap();
    assert_eq!(
        served,
        Served {
            used: 2,
            notify: true
        }
    );
    for (b, (addr, write)) in bufs.iter().zip([(0x5000u64, true), (0x9000, false)]) {
        let (_, len) = g.events.pop_used(&g.mem).unwrap().unwrap();
        assert_eq!(len as usize, size::FAULT);
        let mut f = [0u8; size::FAULT];
        g.mem.read_slice(&mut f, *b).unwrap();
        assert_eq!(f[0], fault::R_MAPPING, "attached, nothing mapped");
        let flags = u32::from_le_bytes(f[4..8].try_into().unwrap());
        let want_dir = if write { fault::F_WRITE } else { fault::F_READ };
        assert_eq!(flags & (fault::F_READ | fault::F_WRITE), want_dir);
        assert_ne!(flags & fault::F_ADDRESS, 0);
        let endpoint = u32::from_le_bytes(f[8..12].try_into().unwrap());
        assert_eq!(endpoint, EP);
        let address = u64::from_le_bytes(f[16..24].try_into().unwrap());
        assert_eq!(address, addr);
    }
    assert_eq!(g.iommu.pending_events(), 0);
}

#[test]
fn an_event_buffer_too_small_is_returned_unused_and_the_report_kept() {
    let mut g = guest();
    g.send(&attach(1));
    let ep = g.iommu.endpoint(EP);
    assert!(ep
        .translate(GuestAddress(0x5000), 8, Permissions::Read)
        .is_err());
    g.events.add(&g.mem, &[], &[(0x7_0000, 8)]).unwrap();
    g.events
        .add(&g.mem, &[], &[(0x7_1000, size::FAULT as u32)])
        .unwrap();
    let served = g.iommu.process_events(&mut g.event_queue, &g.mem).unwrap();
    assert_eq!(served.used, 2);
    assert_eq!(g.events.pop_used(&g.mem).unwrap().unwrap().1, 0);
    assert_eq!(
        g.events.pop_used(&g.mem).unwrap().unwrap().1,
        size::FAULT as u32
    );
}

#[test]
fn the_driver_queue_refuses_what_does_not_fit() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
    assert_eq!(
        DriverQueue::new(&mem, 3, 0).unwrap_err(),
        DriverQueueError::Layout
    );
    assert_eq!(
        DriverQueue::new(&mem, 1024, 0).unwrap_err(),
        DriverQueueError::Layout
    );
    assert_eq!(
        DriverQueue::new(&mem, 4, 8).unwrap_err(),
        DriverQueueError::Layout
    );
    let mut q = DriverQueue::new(&mem, 4, 0).unwrap();
    let b = (0x2000, 4);
    assert_eq!(q.add(&mem, &[], &[]), Err(DriverQueueError::BadChain));
    assert_eq!(
        q.add(&mem, &[b; 5], &[]),
        Err(DriverQueueError::Full { needed: 5, free: 4 })
    );
    q.add(&mem, &[b; 3], &[]).unwrap();
    assert_eq!(
        q.add(&mem, &[b, b], &[]),
        Err(DriverQueueError::Full { needed: 2, free: 1 })
    );
    assert_eq!(q.pop_used(&mem), Ok(None));
}

/// Buffers as the driver side of a queue takes them: raw addresses.
fn raw(bufs: &[(GuestAddress, u32)]) -> Vec<(u64, u32)> {
    bufs.iter().map(|&(a, l)| (a.0, l)).collect()
}

/// The `virtio_queue` fuzz target's seeds (written to
/// `$IOMMU_FUZZ_SEEDS/virtio_queue` when set): well-formed queues of
/// requests in the oracle's memory, one of them with its rings across the
/// two adjacent regions, and the same queues broken in a few ways.
#[test]
fn the_queue_seeds_hold() {
    use iommu_virtio::testing::{run_queue, QUEUE_HEADER, QUEUE_MEMORY};
    let requests = [
        Request::Attach {
            domain: 1,
            endpoint: 1,
            flags: 0,
            reserved: 0,
        },
        Request::Map {
            domain: 1,
            virt_start: 0x1000,
            virt_end: 0x1fff,
            phys_start: 0x8000,
            flags: map::READ | map::WRITE,
        },
        Request::Unmap {
            domain: 1,
            virt_start: 0x1000,
            virt_end: 0x1fff,
            reserved: 0,
        },
        Request::Probe { endpoint: 0 },
    ];
    let mut seeds = Vec::new();
    for (size, base) in [(8u16, 0x1000u64), (16, 0x8000 - 0x100), (2, 0x2000)] {
        let ranges: Vec<_> = QUEUE_MEMORY
            .iter()
            .map(|&(a, l)| (GuestAddress(a), l))
            .collect();
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
        let mut q = DriverQueue::new(&mem, size, base).unwrap();
        // Two descriptors a chain.
        for (i, r) in requests.iter().take(usize::from(size / 2)).enumerate() {
            let at = 0x4000 + 0x100 * i as u64;
            let bytes = r.encode();
            mem.write_slice(&bytes, GuestAddress(at)).unwrap();
            let tail = (at + 0x80, 0x80);
            q.add(&mem, &[(at, bytes.len() as u32)], &[tail]).unwrap();
        }
        let l = q.layout();
        let mut header = vec![size.trailing_zeros() as u8];
        for w in [l.desc as u16, l.avail as u16, l.used as u16, 0, 0] {
            header.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(header.len(), QUEUE_HEADER);
        let mut image = vec![0u8; 0x1_0000];
        mem.read_slice(&mut image, GuestAddress(0)).unwrap();
        let seed = [header, image].concat();
        assert_eq!(run_queue(&seed), Some(u32::from(size / 2).min(4)));
        // Broken: the available index far ahead; a descriptor pointing
        // past memory; the event index on.
        let mut ahead = seed.clone();
        let at = QUEUE_HEADER + l.avail as usize + 2;
        ahead[at..at + 2].copy_from_slice(&0x7777u16.to_le_bytes());
        let mut wild = seed.clone();
        let at = QUEUE_HEADER + l.desc as usize;
        wild[at..at + 8].copy_from_slice(&0x2_8000u64.to_le_bytes());
        let mut event = seed.clone();
        event[0] |= 0x80;
        assert_eq!(run_queue(&ahead), None);
        assert_eq!(run_queue(&wild), Some(u32::from(size / 2).min(4)));
        assert_eq!(run_queue(&event), Some(u32::from(size / 2).min(4)));
        seeds.extend([seed, ahead, wild, event]);
    }
    iommu_virtio::testing::write_seeds("virtio_queue", &seeds);
}

/// A driver whose used ring lies over its available ring: each chain the
/// device returns moves the available index too, announcing another. The
/// pass stops after a queue's worth (found by the fuzzer: it ran forever).
#[test]
fn a_used_ring_over_the_available_ring_ends_the_pass() {
    use iommu_virtio::testing::run_queue;
    // Two entries; descriptors at 0xfff0, both rings at 0xff00; next
    // available 0xffff, next used 1.
    let header = [
        1u8, 0xf0, 0xff, 0x00, 0xff, 0x00, 0xff, 0xff, 0xff, 0x01, 0x00,
    ];
    assert_eq!(run_queue(&header), Some(2));
}
