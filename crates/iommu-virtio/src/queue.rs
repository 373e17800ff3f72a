//! The device's two virtqueues over guest memory, through rust-vmm's
//! `virtio-queue`: the request queue (queue 0), whose chains carry a
//! request in their device-readable part and receive its tail (and a
//! PROBE's properties) in their device-writable part, and the event queue
//! (queue 1), whose buffers receive fault reports.
//!
//! A chain is checked in full before its request runs: every descriptor
//! must lie in guest memory, and the device-readable descriptors must come
//! before the device-writable ones. A chain that breaks either rule is
//! returned with a used length of 0 and changes nothing, as an unparsable
//! request does.

extern crate std;

use crate::spec::{req, size};
use crate::vmm::VirtioIommu;
use alloc::vec::Vec;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{
    Address, AtomicAccess, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion,
    MemoryRegionAddress, Permissions,
};

/// The request queue's index.
pub const REQUEST_QUEUE: u16 = 0;
/// The event queue's index.
pub const EVENT_QUEUE: u16 = 1;

/// The most device-readable bytes a request needs (PROBE's, with its
/// reserved bytes); what a chain holds past this is not read.
const READABLE_MAX: usize = 128;

/// What serving a queue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Chains returned to the driver.
    pub used: u32,
    /// Whether the driver asked to be notified of them (the VMM then
    /// raises the queue's interrupt).
    pub notify: bool,
}

/// Why a queue could not be served. Chains returned before the error stay
/// returned.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue itself is unusable (not ready, rings outside guest memory,
    /// an available index more than a queue ahead).
    #[error("virtqueue: {0}")]
    Queue(virtio_queue::Error),
}

impl From<virtio_queue::Error> for QueueError {
    fn from(e: virtio_queue::Error) -> QueueError {
        QueueError::Queue(e)
    }
}

/// The device-readable bytes of a chain (up to [`READABLE_MAX`]) and its
/// device-writable descriptors.
struct Chain {
    readable: [u8; READABLE_MAX],
    readable_len: usize,
    writable: Writable,
    writable_len: u64,
}

/// Device-writable descriptors: the first few inline (a request's tail
/// takes one), the rest on the heap.
#[derive(Default)]
struct Writable {
    inline: [Descriptor; 4],
    inline_len: usize,
    more: Vec<Descriptor>,
}

impl Writable {
    fn push(&mut self, d: Descriptor) {
        if self.inline_len < self.inline.len() {
            self.inline[self.inline_len] = d;
            self.inline_len += 1;
        } else {
            self.more.push(d);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Descriptor> {
        self.inline[..self.inline_len].iter().chain(&self.more)
    }
}

/// The region holding all of `[at, at + len)`, when `mem` is physical
/// memory and one region holds it.
fn one_region<M: GuestMemory + ?Sized>(
    mem: &M,
    at: GuestAddress,
    len: usize,
) -> Option<(
    &<M::PhysicalMemory as GuestMemoryBackend>::R,
    MemoryRegionAddress,
)> {
    let (r, ra) = mem.physical_memory()?.to_region_addr(at)?;
    let end = ra.raw_value().checked_add(len as u64)?;
    (end <= r.len()).then_some((r, ra))
}

/// `mem.read_slice`, straight from the region when one holds the range:
/// vm-memory's general path walks an iterator of slices for every access,
/// which costs more than the request itself. Guest memory behind an
/// IOMMU, or a range across regions, takes the general path.
pub(crate) fn read_fast<M: GuestMemory + ?Sized>(
    mem: &M,
    buf: &mut [u8],
    at: GuestAddress,
) -> bool {
    match one_region(mem, at, buf.len()) {
        Some((r, ra)) => r.read_slice(buf, ra).is_ok(),
        None => mem.read_slice(buf, at).is_ok(),
    }
}

/// `mem.write_slice`, straight to the region as [`read_fast`] reads.
pub(crate) fn write_fast<M: GuestMemory + ?Sized>(mem: &M, buf: &[u8], at: GuestAddress) -> bool {
    match one_region(mem, at, buf.len()) {
        Some((r, ra)) => r.write_slice(buf, ra).is_ok(),
        None => mem.write_slice(buf, at).is_ok(),
    }
}

/// `mem.store`, to the region as [`read_fast`] reads.
fn store_fast<M: GuestMemory + ?Sized, T: AtomicAccess>(
    mem: &M,
    val: T,
    at: GuestAddress,
    order: core::sync::atomic::Ordering,
) -> bool {
    match one_region(mem, at, core::mem::size_of::<T>()) {
        Some((r, ra)) => r.store(val, ra, order).is_ok(),
        None => mem.store(val, at, order).is_ok(),
    }
}

/// `mem.load`, from the region as [`read_fast`] reads.
fn load_fast<M: GuestMemory + ?Sized, T: AtomicAccess>(
    mem: &M,
    at: GuestAddress,
    order: core::sync::atomic::Ordering,
) -> Option<T> {
    match one_region(mem, at, core::mem::size_of::<T>()) {
        Some((r, ra)) => r.load(ra, order).ok(),
        None => mem.load(at, order).ok(),
    }
}

fn in_memory<M: GuestMemory + ?Sized>(mem: &M, d: &Descriptor) -> bool {
    let access = if d.is_write_only() {
        Permissions::Write
    } else {
        Permissions::Read
    };
    d.len() == 0
        || one_region(mem, d.addr(), d.len() as usize).is_some()
        || mem.check_range(d.addr(), d.len() as usize, access)
}

/// Reads `chain`, keeping writable descriptors only until they hold `want`
/// bytes (a hostile chain may hold many more).
fn read_chain<M: GuestMemory>(mem: &M, chain: DescriptorChain<&M>, want: u64) -> Option<Chain> {
    let mut c = Chain {
        readable: [0; READABLE_MAX],
        readable_len: 0,
        writable: Writable::default(),
        writable_len: 0,
    };
    let mut seen_writable = false;
    for d in chain {
        if d.is_write_only() {
            seen_writable = true;
            if !in_memory(mem, &d) {
                return None;
            }
            if c.writable_len < want {
                c.writable_len = c.writable_len.saturating_add(u64::from(d.len()));
                c.writable.push(d);
            }
        } else {
            if seen_writable {
                return None;
            }
            // The bytes read are checked by reading them; the rest of a
            // long descriptor is checked on its own.
            let n = (d.len() as usize).min(READABLE_MAX - c.readable_len);
            if n > 0 {
                let dst = &mut c.readable[c.readable_len..c.readable_len + n];
                if !read_fast(mem, dst, d.addr()) {
                    return None;
                }
                c.readable_len += n;
            }
            if n < d.len() as usize && !in_memory(mem, &d) {
                return None;
            }
        }
    }
    Some(c)
}

/// Writes `data` across `descs` in order, from byte `skip` of the buffers
/// they make.
fn scatter<M: GuestMemory + ?Sized>(
    mem: &M,
    descs: &Writable,
    mut skip: usize,
    mut data: &[u8],
) -> bool {
    for d in descs.iter() {
        if data.is_empty() {
            break;
        }
        let len = d.len() as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(data.len());
        let at = GuestAddress(d.addr().0 + skip as u64);
        if !write_fast(mem, &data[..n], at) {
            return false;
        }
        skip = 0;
        data = &data[n..];
    }
    data.is_empty()
}

impl VirtioIommu {
    /// Serves every request the driver made available on the request
    /// queue: each is executed (and what it took away invalidated) before
    /// its chain is returned.
    ///
    /// # Errors
    /// [`QueueError`] when the queue cannot be read at all.
    pub fn process_requests<M: GuestMemory>(
        &self,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<Served, QueueError> {
        let probe_size = self.device().config().probe_size as usize;
        let mut served = Served::default();
        // Notifications are not suppressed while serving: the VMM calls
        // again on the next kick, so a chain added after the last pop is
        // not missed.
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let used = self.serve_request(mem, chain, probe_size);
            queue.add_used(mem, head, used)?;
            served.used += 1;
        }
        if served.used == 0 {
            // Popping hides a broken available ring; asking for it again
            // does not.
            queue.iter(mem)?;
            return Ok(served);
        }
        served.notify = queue.needs_notification(mem)?;
        Ok(served)
    }

    fn serve_request<M: GuestMemory>(
        &self,
        mem: &M,
        chain: DescriptorChain<&M>,
        probe_size: usize,
    ) -> u32 {
        let want = (probe_size + size::TAIL) as u64;
        let Some(c) = read_chain(mem, chain, want) else {
            return 0;
        };
        let readable = &c.readable[..c.readable_len];
        let is_probe = readable.first() == Some(&req::PROBE);
        let cap = if is_probe {
            probe_size + size::TAIL
        } else {
            size::TAIL
        };
        let len = usize::try_from(c.writable_len)
            .unwrap_or(usize::MAX)
            .min(cap);
        // Only a PROBE reply needs the heap.
        let mut small = [0u8; size::TAIL];
        let mut big = Vec::new();
        let out: &mut [u8] = if is_probe {
            big.resize(len, 0);
            &mut big
        } else {
            &mut small[..len]
        };
        let used = self.handle(readable, out);
        // A PROBE whose buffer is short of probe_size gets only its tail
        // written (the device writes no property); anything else gets
        // every byte up to the used length.
        let skip = if is_probe && len < probe_size + size::TAIL {
            used.saturating_sub(size::TAIL)
        } else {
            0
        };
        if used == 0 || !scatter(mem, &c.writable, skip, &out[skip..used]) {
            return 0;
        }
        u32::try_from(used).unwrap_or(0)
    }

    /// Completes event-queue buffers with pending fault reports, one report
    /// per buffer, while both last. A buffer too small for a report is
    /// returned unused and the report kept.
    ///
    /// # Errors
    /// [`QueueError`] when the queue cannot be read at all.
    pub fn process_events<M: GuestMemory>(
        &self,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<Served, QueueError> {
        let mut served = Served::default();
        if self.pending_events() == 0 {
            return Ok(served);
        }
        queue.iter(mem)?;
        while self.pending_events() > 0 {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let used = match read_chain(mem, chain, size::FAULT as u64) {
                Some(c) if c.writable_len >= size::FAULT as u64 => match self.next_event() {
                    Some(f) if scatter(mem, &c.writable, 0, &f.encode()) => size::FAULT as u32,
                    _ => 0,
                },
                _ => 0,
            };
            queue.add_used(mem, head, used)?;
            served.used += 1;
        }
        served.notify = served.used > 0 && queue.needs_notification(mem)?;
        Ok(served)
    }
}

/// A queue at `desc`, `avail` and `used` in guest memory with `size`
/// entries, ready: what a transport builds from the driver's writes.
///
/// # Errors
/// The queue's own error for a size or an address it refuses.
pub fn ready_queue(
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
) -> Result<Queue, QueueError> {
    let mut q = Queue::new(size)?;
    q.try_set_size(size)?;
    q.try_set_desc_table_address(desc)?;
    q.try_set_avail_ring_address(avail)?;
    q.try_set_used_ring_address(used)?;
    q.set_ready(true);
    Ok(q)
}

/// Where a split virtqueue's three rings are, and its size: what a
/// driver writes into the transport's queue registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLayout {
    /// Entries.
    pub size: u16,
    /// The descriptor table.
    pub desc: GuestAddress,
    /// The available ring.
    pub avail: GuestAddress,
    /// The used ring.
    pub used: GuestAddress,
}

/// Why the driver side of a queue refused a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DriverQueueError {
    /// Not enough free descriptors for the chain.
    #[error("{needed} descriptors needed, {free} free")]
    Full {
        /// Descriptors the chain needs.
        needed: usize,
        /// Descriptors free.
        free: usize,
    },
    /// A chain with no buffer.
    #[error("a chain needs at least one buffer")]
    BadChain,
    /// The rings do not fit in guest memory, or the size is not a power
    /// of two from 1 to 32768.
    #[error("the queue does not fit in guest memory or its size is wrong")]
    Layout,
    /// The device returned a head the driver did not make available.
    #[error("the device used descriptor {0}, which the driver did not make available")]
    BadUsed(u32),
}

/// The driver's side of a split virtqueue (virtio 1.2, 2.7): it writes
/// descriptor chains and the available ring into guest memory and reads the
/// used ring, as a guest kernel's virtio ring does. The guest side of this
/// crate's tests and of the guest driver speaks to the device through it.
#[derive(Debug)]
pub struct DriverQueue {
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    /// Free descriptors, a stack.
    free: Vec<u16>,
    /// Each descriptor's successor in its chain, as the driver wrote it
    /// (the device may have overwritten the table; the driver trusts only
    /// its own copy).
    next: Vec<u16>,
    /// Descriptors in the chain at each head, 0 when the device does not
    /// hold a chain there.
    chain_len: Vec<u16>,
    next_avail: u16,
    last_used: u16,
}

const DESC_SIZE: u64 = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

impl DriverQueue {
    /// Bytes the three rings of a queue of `size` entries take from the
    /// start of its area, with their alignments (16, 2 and 4).
    pub fn area_size(size: u16) -> u64 {
        let (_, _, used) = Self::offsets(size);
        used + 6 + 8 * u64::from(size)
    }

    fn offsets(size: u16) -> (u64, u64, u64) {
        let n = u64::from(size);
        let avail = DESC_SIZE * n;
        let used = (avail + 6 + 2 * n).next_multiple_of(4);
        (0, avail, used)
    }

    /// A queue of `size` entries whose rings take [`area_size`] bytes at
    /// `base` (16-byte aligned) in `mem`; the rings are zeroed.
    ///
    /// [`area_size`]: Self::area_size
    ///
    /// # Errors
    /// [`DriverQueueError::Layout`] for a size that is not a power of two
    /// up to 32768, a misaligned base, or an area outside `mem`.
    pub fn new<M: GuestMemory>(
        mem: &M,
        size: u16,
        base: GuestAddress,
    ) -> Result<DriverQueue, DriverQueueError> {
        if !size.is_power_of_two() || size > 32768 || !base.0.is_multiple_of(16) {
            return Err(DriverQueueError::Layout);
        }
        let len = Self::area_size(size);
        base.0.checked_add(len).ok_or(DriverQueueError::Layout)?;
        mem.write_slice(&alloc::vec![0u8; len as usize], base)
            .map_err(|_| DriverQueueError::Layout)?;
        let (_, avail, used) = Self::offsets(size);
        Ok(DriverQueue {
            size,
            desc: base,
            avail: GuestAddress(base.0 + avail),
            used: GuestAddress(base.0 + used),
            free: (0..size).rev().collect(),
            next: alloc::vec![0; usize::from(size)],
            chain_len: alloc::vec![0; usize::from(size)],
            next_avail: 0,
            last_used: 0,
        })
    }

    /// The device's side of this queue, as a transport would build it.
    ///
    /// # Errors
    /// The queue's own error.
    pub fn device_queue(&self) -> Result<Queue, QueueError> {
        ready_queue(self.size, self.desc, self.avail, self.used)
    }

    /// Where the rings are.
    pub fn layout(&self) -> QueueLayout {
        QueueLayout {
            size: self.size,
            desc: self.desc,
            avail: self.avail,
            used: self.used,
        }
    }

    /// Descriptors free for new chains.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Makes available a chain of `readable` then `writable` buffers
    /// (guest address, length) and returns its head.
    ///
    /// # Errors
    /// [`DriverQueueError::Full`] without enough free descriptors,
    /// [`DriverQueueError::BadChain`] for an empty chain.
    pub fn add<M: GuestMemory>(
        &mut self,
        mem: &M,
        readable: &[(GuestAddress, u32)],
        writable: &[(GuestAddress, u32)],
    ) -> Result<u16, DriverQueueError> {
        let needed = readable.len() + writable.len();
        if needed == 0 {
            return Err(DriverQueueError::BadChain);
        }
        if needed > self.free.len() {
            return Err(DriverQueueError::Full {
                needed,
                free: self.free.len(),
            });
        }
        let bufs = readable
            .iter()
            .map(|&b| (b, 0))
            .chain(writable.iter().map(|&b| (b, F_WRITE)));
        // Each descriptor is written once its successor is known.
        let mut pending: Option<(u16, (GuestAddress, u32), u16)> = None;
        let mut head = None;
        for (buf, write) in bufs {
            let id = self.free.pop().ok_or(DriverQueueError::Layout)?;
            head.get_or_insert(id);
            if let Some((prev, b, w)) = pending.replace((id, buf, write)) {
                self.write_desc(mem, prev, b, w | F_NEXT, id)?;
            }
        }
        let head = head.ok_or(DriverQueueError::BadChain)?;
        if let Some((last, b, w)) = pending {
            self.write_desc(mem, last, b, w, 0)?;
        }
        // `needed` fits: the queue has at most 32768 descriptors.
        self.chain_len[usize::from(head)] = needed as u16;
        let slot = u64::from(self.next_avail % self.size);
        if !write_fast(
            mem,
            &head.to_le_bytes(),
            GuestAddress(self.avail.0 + 4 + 2 * slot),
        ) {
            return Err(DriverQueueError::Layout);
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        // The index is published after the entry it covers.
        if !store_fast(
            mem,
            self.next_avail.to_le(),
            GuestAddress(self.avail.0 + 2),
            core::sync::atomic::Ordering::Release,
        ) {
            return Err(DriverQueueError::Layout);
        }
        Ok(head)
    }

    fn write_desc<M: GuestMemory>(
        &mut self,
        mem: &M,
        id: u16,
        (addr, len): (GuestAddress, u32),
        flags: u16,
        next: u16,
    ) -> Result<(), DriverQueueError> {
        let mut d = [0u8; DESC_SIZE as usize];
        d[0..8].copy_from_slice(&addr.0.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.next[usize::from(id)] = next;
        let at = GuestAddress(self.desc.0 + DESC_SIZE * u64::from(id));
        if write_fast(mem, &d, at) {
            Ok(())
        } else {
            Err(DriverQueueError::Layout)
        }
    }

    /// The next chain the device returned, with the length it wrote; its
    /// descriptors are free again.
    ///
    /// # Errors
    /// [`DriverQueueError::BadUsed`] when the device returned a head that
    /// it does not hold (the entry is consumed).
    pub fn pop_used<M: GuestMemory>(
        &mut self,
        mem: &M,
    ) -> Result<Option<(u16, u32)>, DriverQueueError> {
        let idx: u16 = load_fast(
            mem,
            GuestAddress(self.used.0 + 2),
            core::sync::atomic::Ordering::Acquire,
        )
        .ok_or(DriverQueueError::Layout)?;
        if u16::from_le(idx) == self.last_used {
            return Ok(None);
        }
        let slot = u64::from(self.last_used % self.size);
        let mut e = [0u8; 8];
        if !read_fast(mem, &mut e, GuestAddress(self.used.0 + 4 + 8 * slot)) {
            return Err(DriverQueueError::Layout);
        }
        self.last_used = self.last_used.wrapping_add(1);
        let id = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
        let len = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let held = u16::try_from(id)
            .ok()
            .filter(|&h| h < self.size && self.chain_len[usize::from(h)] != 0);
        let Some(head) = held else {
            return Err(DriverQueueError::BadUsed(id));
        };
        let n = core::mem::take(&mut self.chain_len[usize::from(head)]);
        let mut at = head;
        for _ in 0..n {
            self.free.push(at);
            at = self.next[usize::from(at)];
        }
        Ok(Some((head, len)))
    }
}
