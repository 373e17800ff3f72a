//! The device's side of a split virtqueue (virtio 1.2, 2.7): the available
//! ring's heads, the chains they start in the descriptor table, and the
//! used ring the device returns them on.
//!
//! The queue's state (size, ring addresses, next available and used
//! indexes) stays in rust-vmm's `virtio_queue::Queue`, which the transport
//! owns; only the reading and writing of the rings is done here. Why not
//! through virtio-queue's own iterators: they look every access up in
//! guest memory (a region search, a bounds check and a byte copy per
//! descriptor, per ring entry, per index), which was more than half of a
//! request served through the queue. Here each of the three rings is
//! looked up once per call and held as one bounds-checked slice of guest
//! memory (vm-memory's `VolatileSlice`, dirty-logged on write) while the
//! call lasts. A ring that one region of physical memory does not hold
//! (it crosses two, or the queue is behind an IOMMU) is looked up at each
//! access instead, as before.
//!
//! The rules are virtio-queue's, so that a hostile driver gets the same
//! answer either way (`tests/split_ring.rs` checks them side by side):
//! - an available index more than a queue ahead of the device's is an
//!   error (`InvalidAvailRingIndex`); an unreadable ring entry ends the
//!   pass, and the entry is read again next time;
//! - a pass takes at most a queue's worth of chains (virtio-queue has no
//!   such bound; a ring whose used index overlaps its available index
//!   would otherwise announce a new chain with each one returned);
//! - a chain follows `NEXT` for at most the queue's size descriptors, ends
//!   at a descriptor it cannot read or an index past the table, and ends
//!   when its lengths add up past `u32::MAX`;
//! - an `INDIRECT` descriptor (a multiple of 16 bytes, at most 65535
//!   entries) switches the chain to its table once; another one inside it
//!   ends the chain;
//! - a head past the queue's size cannot be returned
//!   (`InvalidDescriptorIndex`), which stops the queue;
//! - without `VIRTIO_RING_F_EVENT_IDX` the driver is always notified.

use core::num::Wrapping;
use core::sync::atomic::{fence, Ordering};
use virtio_queue::{Error, Queue, QueueT};
use vm_memory::bitmap::MS;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryError,
    GuestMemoryRegion, MemoryRegionAddress, Permissions, VolatileMemory, VolatileSlice,
};

use crate::queue::{load_fast, read_fast, store_fast, write_fast};

/// `VIRTQ_DESC_F_NEXT`.
const F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`.
const F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`.
const F_INDIRECT: u16 = 4;
/// Bytes of a descriptor.
const DESC_SIZE: u64 = 16;

/// One descriptor as read from the table (virtio 1.2, 2.7.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Desc {
    /// Guest address of the buffer.
    pub addr: u64,
    /// Its length in bytes.
    pub len: u32,
    /// `NEXT`, `WRITE`, `INDIRECT`.
    pub flags: u16,
    /// The next descriptor, with `NEXT`.
    pub next: u16,
}

impl Desc {
    /// The descriptor whose two little-endian words are `lo`, `hi`
    /// (already in host order).
    fn from_words(lo: u64, hi: u64) -> Desc {
        Desc {
            addr: lo,
            len: hi as u32,
            flags: (hi >> 32) as u16,
            next: (hi >> 48) as u16,
        }
    }

    /// A buffer the device writes (else it reads it).
    pub fn is_write_only(&self) -> bool {
        self.flags & F_WRITE != 0
    }
}

/// A slice of physical guest memory as `M` holds it.
type Slice<'m, M> = VolatileSlice<'m, MS<'m, <M as GuestMemory>::PhysicalMemory>>;

/// One of the rings: its guest address, and the slice of memory holding
/// all of it when one region of physical memory does (else each access
/// is looked up).
struct Area<'m, M: GuestMemory> {
    at: GuestAddress,
    held: Option<Slice<'m, M>>,
}

impl<'m, M: GuestMemory> Area<'m, M> {
    fn new(mem: &'m M, at: GuestAddress, len: u64) -> Self {
        let held = mem
            .physical_memory()
            .and_then(|p| p.get_slice(at, usize::try_from(len).ok()?).ok());
        Area { at, held }
    }

    /// The error for an access at `off` that failed.
    fn error(&self, off: u64) -> Error {
        let at = GuestAddress(self.at.0.wrapping_add(off));
        Error::GuestMemory(GuestMemoryError::InvalidGuestAddress(at))
    }
}

/// A split virtqueue taken from its `Queue` for one pass of the device:
/// its rings, and the indexes the pass moves (given back by
/// [`put_back`](Self::put_back)).
pub(crate) struct SplitRing<'m, M: GuestMemory> {
    mem: &'m M,
    size: u16,
    event_idx: bool,
    desc: Area<'m, M>,
    avail: Area<'m, M>,
    used: Area<'m, M>,
    /// The region holding the descriptor table, where a driver's buffers
    /// most often are too: held for the call, with its guest address.
    home: Option<(GuestAddress, Slice<'m, M>)>,
    next_avail: Wrapping<u16>,
    next_used: Wrapping<u16>,
    /// The available index as last read.
    avail_idx: Wrapping<u16>,
    /// Chains returned in this pass, for the notification.
    added: Wrapping<u16>,
    /// Heads taken in this pass: at most the queue's size.
    taken: u16,
}

impl<'m, M: GuestMemory> SplitRing<'m, M> {
    /// The rings of `queue` in `mem`.
    ///
    /// # Errors
    /// `QueueNotReady` for a queue not ready or without an available ring.
    pub fn take(queue: &Queue, mem: &'m M) -> Result<Self, Error> {
        if !queue.ready() || queue.avail_ring() == 0 {
            return Err(Error::QueueNotReady);
        }
        let size = queue.size();
        let n = u64::from(size);
        let desc = GuestAddress(queue.desc_table());
        let home = mem.physical_memory().and_then(|p| {
            let r = p.find_region(desc)?;
            let len = usize::try_from(r.len()).ok()?;
            Some((
                r.start_addr(),
                r.get_slice(MemoryRegionAddress(0), len).ok()?,
            ))
        });
        // Each ring with its event word (`used_event`, `avail_event`).
        Ok(SplitRing {
            mem,
            size,
            event_idx: queue.event_idx_enabled(),
            desc: Area::new(mem, desc, DESC_SIZE * n),
            avail: Area::new(mem, GuestAddress(queue.avail_ring()), 6 + 2 * n),
            used: Area::new(mem, GuestAddress(queue.used_ring()), 6 + 8 * n),
            home,
            next_avail: Wrapping(queue.next_avail()),
            next_used: Wrapping(queue.next_used()),
            avail_idx: Wrapping(queue.next_avail()),
            added: Wrapping(0),
            taken: 0,
        })
    }

    /// Gives the indexes this pass moved back to `queue`.
    pub fn put_back(&self, queue: &mut Queue) {
        queue.set_next_avail(self.next_avail.0);
        queue.set_next_used(self.next_used.0);
    }

    fn load_u16(&self, area: &Area<'m, M>, off: u64, order: Ordering) -> Option<u16> {
        let v = match &area.held {
            Some(s) => s.load::<u16>(usize::try_from(off).ok()?, order).ok()?,
            None => load_fast::<M, u16>(self.mem, area.at.checked_add(off)?, order)?,
        };
        Some(u16::from_le(v))
    }

    /// The next available head, reading the available index again only
    /// once the device has caught up with the last one read; `None` when
    /// the driver has made nothing more available, when its entry cannot
    /// be read (it is read again next pass), or after a queue's worth of
    /// heads in this pass. That bound keeps a pass finite when the driver
    /// puts its used ring over its available ring, so that each chain
    /// returned announces another; a driver that does not has at most a
    /// queue of chains outstanding, and notifies again for any it adds
    /// while the pass runs.
    ///
    /// # Errors
    /// The available index cannot be read, or is more than a queue ahead.
    pub fn pop(&mut self) -> Result<Option<u16>, Error> {
        if self.taken == self.size {
            return Ok(None);
        }
        if self.next_avail == self.avail_idx {
            let idx = self
                .load_u16(&self.avail, 2, Ordering::Acquire)
                .ok_or_else(|| self.avail.error(2))?;
            let idx = Wrapping(idx);
            if (idx - self.next_avail).0 > self.size {
                return Err(Error::InvalidAvailRingIndex);
            }
            self.avail_idx = idx;
            if idx == self.next_avail {
                return Ok(None);
            }
        }
        let Some(slot) = self.next_avail.0.checked_rem(self.size) else {
            return Ok(None);
        };
        let head = self.load_u16(&self.avail, 4 + 2 * u64::from(slot), Ordering::Acquire);
        if head.is_some() {
            self.next_avail += 1;
            self.taken += 1;
        }
        Ok(head)
    }

    /// The chain starting at descriptor `head`.
    pub fn chain(&self, head: u16) -> Chain<'_, 'm, M> {
        Chain {
            ring: self,
            indirect: None,
            table_size: self.size,
            next_index: head,
            ttl: self.size,
            yielded: 0,
        }
    }

    /// Returns chain `head` with `len` bytes written, and publishes it.
    ///
    /// # Errors
    /// `InvalidDescriptorIndex` for a head past the queue; the used ring
    /// cannot be written.
    pub fn add_used(&mut self, head: u16, len: u32) -> Result<(), Error> {
        if head >= self.size {
            return Err(Error::InvalidDescriptorIndex);
        }
        let slot = u64::from(self.next_used.0 % self.size);
        let elem = u64::from(head) | u64::from(len) << 32;
        let off = 4 + 8 * slot;
        let written = match &self.used.held {
            Some(s) => usize::try_from(off)
                .ok()
                .and_then(|o| s.get_ref::<u64>(o).ok())
                .map(|r| r.store(elem.to_le()))
                .is_some(),
            None => (self.used.at.checked_add(off))
                .is_some_and(|at| write_fast(self.mem, &elem.to_le_bytes(), at)),
        };
        if !written {
            return Err(self.used.error(off));
        }
        self.next_used += 1;
        self.added += 1;
        let idx = self.next_used.0.to_le();
        let published = match &self.used.held {
            Some(s) => s.store(idx, 2, Ordering::Release).is_ok(),
            None => (self.used.at.checked_add(2))
                .is_some_and(|at| store_fast(self.mem, idx, at, Ordering::Release)),
        };
        if published {
            Ok(())
        } else {
            Err(self.used.error(2))
        }
    }

    /// Whether the driver wants to hear of the chains returned in this pass.
    ///
    /// # Errors
    /// `used_event` cannot be read.
    pub fn needs_notification(&mut self) -> Result<bool, Error> {
        // The used index is visible before the driver's wish is read.
        fence(Ordering::SeqCst);
        if !self.event_idx {
            return Ok(true);
        }
        let off = 4 + 2 * u64::from(self.size);
        let used_event = self
            .load_u16(&self.avail, off, Ordering::Relaxed)
            .ok_or_else(|| self.avail.error(off))?;
        let (new, old) = (self.next_used, self.next_used - self.added);
        self.added = Wrapping(0);
        // virtio 1.2, 2.7.10: notify when used_event lies in [old, new).
        Ok(new - Wrapping(used_event) - Wrapping(1) < new - old)
    }

    /// `[at, at + len)` in the home region, when it holds all of it.
    fn at_home(&self, at: GuestAddress, len: usize) -> Option<Slice<'m, M>> {
        let (base, region) = self.home.as_ref()?;
        let off = usize::try_from(at.0.checked_sub(base.0)?).ok()?;
        region.subslice(off, len).ok()
    }

    /// Reads a buffer's bytes at `at`; `false` when guest memory does not
    /// hold them all.
    pub fn read(&self, buf: &mut [u8], at: GuestAddress) -> bool {
        match self.at_home(at, buf.len()) {
            Some(s) => s.copy_to(buf) == buf.len(),
            None => read_fast(self.mem, buf, at),
        }
    }

    /// Writes `data` into a buffer at `at`; `false` when guest memory does
    /// not hold it all.
    pub fn write(&self, data: &[u8], at: GuestAddress) -> bool {
        match self.at_home(at, data.len()) {
            // A request's tail (4 bytes, what nearly every chain gets
            // back): one store instead of vm-memory's general copy.
            Some(s) => match <[u8; 4]>::try_from(data) {
                Ok(tail) => s.get_ref::<[u8; 4]>(0).map(|r| r.store(tail)).is_ok(),
                Err(_) => {
                    s.copy_from(data);
                    true
                }
            },
            None => write_fast(self.mem, data, at),
        }
    }

    /// Whether guest memory holds all of `d`'s buffer, for the access the
    /// device makes to it.
    pub fn holds(&self, d: &Desc) -> bool {
        let (at, len) = (GuestAddress(d.addr), d.len as usize);
        let access = if d.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        len == 0 || self.at_home(at, len).is_some() || self.mem.check_range(at, len, access)
    }

    /// Descriptor `i` of the queue's own table.
    fn desc(&self, i: u16) -> Option<Desc> {
        let off = DESC_SIZE * u64::from(i);
        match &self.desc.held {
            Some(s) => {
                let o = usize::try_from(off).ok()?;
                let lo = u64::from_le(s.get_ref::<u64>(o).ok()?.load());
                let hi = u64::from_le(s.get_ref::<u64>(o + 8).ok()?.load());
                Some(Desc::from_words(lo, hi))
            }
            None => self.desc_at(self.desc.at.checked_add(off)?),
        }
    }

    /// The descriptor at `at`, looked up.
    fn desc_at(&self, at: GuestAddress) -> Option<Desc> {
        let mut b = [0u8; 16];
        if !self.read(&mut b, at) {
            return None;
        }
        let (lo, hi) = b.split_at(8);
        Some(Desc::from_words(
            u64::from_le_bytes(lo.try_into().ok()?),
            u64::from_le_bytes(hi.try_into().ok()?),
        ))
    }
}

/// One chain, descriptor by descriptor (see the module's rules).
pub(crate) struct Chain<'r, 'm, M: GuestMemory> {
    ring: &'r SplitRing<'m, M>,
    /// The indirect table the chain switched to.
    indirect: Option<GuestAddress>,
    table_size: u16,
    next_index: u16,
    /// Descriptors the chain may still yield.
    ttl: u16,
    /// Bytes yielded so far.
    yielded: u32,
}

impl<M: GuestMemory> Iterator for Chain<'_, '_, M> {
    type Item = Desc;

    fn next(&mut self) -> Option<Desc> {
        loop {
            if self.ttl == 0 || self.next_index >= self.table_size {
                return None;
            }
            let d = match self.indirect {
                None => self.ring.desc(self.next_index)?,
                Some(t) => self
                    .ring
                    .desc_at(t.checked_add(DESC_SIZE * u64::from(self.next_index))?)?,
            };
            if d.flags & F_INDIRECT != 0 {
                if self.indirect.is_some() || u64::from(d.len) % DESC_SIZE != 0 {
                    return None;
                }
                // A table of more than 65535 entries ends the chain.
                let entries = u16::try_from(u64::from(d.len) / DESC_SIZE).ok()?;
                self.indirect = Some(GuestAddress(d.addr));
                self.table_size = entries;
                self.next_index = 0;
                self.ttl = entries;
                continue;
            }
            self.yielded = self.yielded.checked_add(d.len)?;
            if d.flags & F_NEXT != 0 {
                self.next_index = d.next;
                self.ttl -= 1;
            } else {
                self.ttl = 0;
            }
            return Some(d);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The ring read here against rust-vmm's virtio-queue reading the same
    //! bytes: random tables, rings and indexes, some of them crossing two
    //! regions (so reached by lookups) or outside memory.
    extern crate std;

    use super::*;
    use proptest::prelude::*;
    use std::format;
    use std::string::String;
    use std::vec::Vec;
    use virtio_queue::{QueueOwnedT, QueueT};
    use vm_memory::GuestMemoryMmap;

    /// Two adjacent regions, a gap, and a third.
    fn memory() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1_0000),
            (GuestAddress(0x1_0000), 0x1_0000),
            (GuestAddress(0x3_0000), 0x1000),
        ])
        .unwrap()
    }

    /// Where rings may be: inside a region, across the two adjacent ones,
    /// at the end of memory, outside it.
    const PLACES: [u64; 5] = [0x1000, 0x1_0000 - 0x40, 0x3_0000, 0x3_1000 - 0x20, 0x2_8000];

    #[derive(Debug, Clone)]
    struct Case {
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
        /// Bytes written from each ring's start (desc, avail, used).
        bytes: [Vec<u8>; 3],
        /// Indirect tables written at 0x8000 and across the boundary.
        indirect: Vec<u8>,
        next_avail: u16,
        next_used: u16,
        event_idx: bool,
        /// (head, len) returned after the chains are read.
        used_adds: Vec<(u16, u32)>,
    }

    /// A descriptor biased towards short chains of real buffers.
    fn desc_bytes(size: u16) -> impl Strategy<Value = Vec<u8>> {
        let addr = prop_oneof![
            Just(0x2000u64),
            Just(0x1_0000 - 8),
            Just(0x3_0000),
            Just(0x2_0000),
            Just(0x8000),
            Just(0xffff_ffff_ffff_fff0),
        ];
        let len = prop_oneof![
            Just(0u32),
            1u32..64,
            Just(16),
            Just(48),
            Just(0x2_0000),
            Just(u32::MAX),
        ];
        let flags = prop_oneof![0u16..8, any::<u16>()];
        let next = prop_oneof![0..size.saturating_add(2), any::<u16>()];
        (addr, len, flags, next).prop_map(|(a, l, f, n)| {
            let mut b = Vec::with_capacity(16);
            b.extend_from_slice(&a.to_le_bytes());
            b.extend_from_slice(&l.to_le_bytes());
            b.extend_from_slice(&f.to_le_bytes());
            b.extend_from_slice(&n.to_le_bytes());
            b
        })
    }

    fn case() -> impl Strategy<Value = Case> {
        prop_oneof![Just(1u16), Just(2), Just(4), Just(8), Just(16)].prop_flat_map(|size| {
            let place = proptest::sample::select(PLACES.to_vec());
            let descs =
                proptest::collection::vec(desc_bytes(size), size as usize).prop_map(|v| v.concat());
            let avail = proptest::collection::vec(
                prop_oneof![0..size.saturating_add(1), any::<u16>()],
                size as usize + 3,
            )
            .prop_map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect());
            let used = proptest::collection::vec(any::<u8>(), 6 + 8 * size as usize);
            let indirect = proptest::collection::vec(desc_bytes(4), 4).prop_map(|v| v.concat());
            let adds = proptest::collection::vec((0..size.saturating_add(1), any::<u32>()), 0..4);
            (
                (place.clone(), place.clone(), place),
                (descs, avail, used, indirect),
                (
                    any::<u16>(),
                    0..size.saturating_add(3),
                    any::<u16>(),
                    any::<bool>(),
                ),
                adds,
            )
                .prop_map(
                    move |(
                        (d, a, u),
                        (descs, avail, used, indirect),
                        (na, ahead, nu, ev),
                        adds,
                    )| {
                        let mut avail: Vec<u8> = avail;
                        // The available index, a little ahead of the device.
                        let idx = na.wrapping_add(ahead);
                        avail[2..4].copy_from_slice(&idx.to_le_bytes());
                        Case {
                            size,
                            // Rings apart from each other within a place.
                            desc: d,
                            avail: a + 0x400,
                            used: u + 0x800,
                            bytes: [descs, avail, used],
                            indirect,
                            next_avail: na,
                            next_used: nu,
                            event_idx: ev,
                            used_adds: adds,
                        }
                    },
                )
        })
    }

    /// Memory holding the case's bytes, and its queue.
    fn setup(c: &Case) -> (GuestMemoryMmap<()>, Queue) {
        let mem = memory();
        let put = |at: u64, b: &[u8]| {
            // Byte by byte: whatever falls outside memory is dropped.
            for (i, x) in b.iter().enumerate() {
                let _ = mem.write_obj(*x, GuestAddress(at + i as u64));
            }
        };
        put(c.desc, &c.bytes[0]);
        put(c.avail, &c.bytes[1]);
        put(c.used, &c.bytes[2]);
        put(0x8000, &c.indirect);
        put(0x1_0000 - 8, &c.indirect);
        let mut q = Queue::new(c.size).unwrap();
        // Addresses the queue refuses keep its defaults, in both runs.
        let _ = q.try_set_desc_table_address(GuestAddress(c.desc));
        let _ = q.try_set_avail_ring_address(GuestAddress(c.avail));
        let _ = q.try_set_used_ring_address(GuestAddress(c.used));
        q.set_next_avail(c.next_avail);
        q.set_next_used(c.next_used);
        q.set_event_idx(c.event_idx);
        q.set_ready(true);
        (mem, q)
    }

    fn kind(e: &Error) -> String {
        match e {
            Error::GuestMemory(_) => String::from("memory"),
            e => format!("{e}"),
        }
    }

    type Seen = (
        Result<Vec<(u16, Vec<Desc>)>, String>,
        u16,
        Vec<Result<(), String>>,
        Result<bool, String>,
        Vec<u8>,
    );

    /// What virtio-queue reads and writes.
    fn theirs(c: &Case) -> Seen {
        let (mem, mut q) = setup(c);
        let chains = match q.iter(&mem) {
            Ok(iter) => Ok(iter
                .map(|ch| {
                    let head = ch.head_index();
                    let descs = ch
                        .map(|d| Desc {
                            addr: d.addr().0,
                            len: d.len(),
                            flags: d.flags(),
                            next: d.next(),
                        })
                        .collect();
                    (head, descs)
                })
                .collect()),
            Err(e) => Err(kind(&e)),
        };
        let adds = c
            .used_adds
            .iter()
            .map(|&(h, l)| q.add_used(&mem, h, l).map_err(|e| kind(&e)))
            .collect();
        let notify = q.needs_notification(&mem).map_err(|e| kind(&e));
        (chains, q.next_avail(), adds, notify, used_bytes(&mem, c))
    }

    /// What this module reads and writes.
    fn ours(c: &Case) -> Seen {
        let (mem, mut q) = setup(c);
        let mut ring = SplitRing::take(&q, &mem).unwrap();
        let mut chains = Vec::new();
        let chains = loop {
            match ring.pop() {
                Ok(Some(head)) => chains.push((head, ring.chain(head).collect())),
                Ok(None) => break Ok(chains),
                Err(e) => break Err(kind(&e)),
            }
        };
        let adds = c
            .used_adds
            .iter()
            .map(|&(h, l)| ring.add_used(h, l).map_err(|e| kind(&e)))
            .collect();
        let notify = ring.needs_notification().map_err(|e| kind(&e));
        ring.put_back(&mut q);
        (chains, q.next_avail(), adds, notify, used_bytes(&mem, c))
    }

    fn used_bytes(mem: &GuestMemoryMmap<()>, c: &Case) -> Vec<u8> {
        (0..6 + 8 * u64::from(c.size))
            .map(|i| mem.read_obj(GuestAddress(c.used + i)).unwrap_or(0xee))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 20 } else { 3000 }))]

        #[test]
        fn the_ring_reads_as_virtio_queue_reads_it(c in case()) {
            prop_assert_eq!(ours(&c), theirs(&c));
        }
    }

    #[test]
    fn a_queue_not_ready_is_refused() {
        let mem = memory();
        let q = Queue::new(4).unwrap();
        assert!(matches!(
            SplitRing::take(&q, &mem),
            Err(Error::QueueNotReady)
        ));
    }
}
