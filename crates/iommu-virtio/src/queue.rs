//! The device's two virtqueues over guest memory: the request queue
//! (queue 0), whose chains carry a request in their device-readable part
//! and receive its tail (and a PROBE's properties) in their device-writable
//! part, and the event queue (queue 1), whose buffers receive fault
//! reports. Each queue's state (size, ring addresses, indexes) is rust-vmm's
//! `virtio_queue::Queue`, which the transport owns; the rings themselves
//! are read and written by this crate (`split.rs`), under virtio-queue's
//! rules for a broken ring.
//!
//! A chain is checked in full before its request runs: every descriptor
//! must lie in guest memory, and the device-readable descriptors must come
//! before the device-writable ones. A chain that breaks either rule is
//! returned with a used length of 0 and changes nothing, as an unparsable
//! request does.

extern crate std;

use crate::spec::{req, size};
use crate::split::{Desc, SplitRing};
use crate::vmm::VirtioIommu;
use alloc::vec::Vec;
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Address, AtomicAccess, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion,
    MemoryRegionAddress,
};

pub use crate::ring::{
    DriverMemory, DriverQueue, DriverQueueError, QueueLayout, EVENT_QUEUE, REQUEST_QUEUE,
};

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
    inline: [Desc; 4],
    inline_len: usize,
    more: Vec<Desc>,
}

impl Writable {
    fn push(&mut self, d: Desc) {
        if self.inline_len < self.inline.len() {
            self.inline[self.inline_len] = d;
            self.inline_len += 1;
        } else {
            self.more.push(d);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Desc> {
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
pub(crate) fn store_fast<M: GuestMemory + ?Sized, T: AtomicAccess>(
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
pub(crate) fn load_fast<M: GuestMemory + ?Sized, T: AtomicAccess>(
    mem: &M,
    at: GuestAddress,
    order: core::sync::atomic::Ordering,
) -> Option<T> {
    match one_region(mem, at, core::mem::size_of::<T>()) {
        Some((r, ra)) => r.load(ra, order).ok(),
        None => mem.load(at, order).ok(),
    }
}

impl Chain {
    fn new() -> Chain {
        Chain {
            readable: [0; READABLE_MAX],
            readable_len: 0,
            writable: Writable::default(),
            writable_len: 0,
        }
    }

    /// Reads `chain`, keeping writable descriptors only until they hold
    /// `want` bytes (a hostile chain may hold many more); `false` for a
    /// chain that breaks the rules (see the module).
    fn fill<M: GuestMemory>(
        &mut self,
        ring: &SplitRing<'_, M>,
        chain: impl Iterator<Item = Desc>,
        want: u64,
    ) -> bool {
        let mut seen_writable = false;
        for d in chain {
            if d.is_write_only() {
                seen_writable = true;
                if !ring.holds(&d) {
                    return false;
                }
                if self.writable_len < want {
                    self.writable_len = self.writable_len.saturating_add(u64::from(d.len));
                    self.writable.push(d);
                }
            } else {
                if seen_writable {
                    return false;
                }
                // The bytes read are checked by reading them; the rest of
                // a long descriptor is checked on its own.
                let n = (d.len as usize).min(READABLE_MAX - self.readable_len);
                if n > 0 {
                    let dst = &mut self.readable[self.readable_len..self.readable_len + n];
                    if !ring.read(dst, GuestAddress(d.addr)) {
                        return false;
                    }
                    self.readable_len += n;
                }
                if n < d.len as usize && !ring.holds(&d) {
                    return false;
                }
            }
        }
        true
    }
}

/// Writes `data` across `descs` in order, from byte `skip` of the buffers
/// they make.
fn scatter<M: GuestMemory>(
    ring: &SplitRing<'_, M>,
    descs: &Writable,
    mut skip: usize,
    mut data: &[u8],
) -> bool {
    for d in descs.iter() {
        if data.is_empty() {
            break;
        }
        let len = d.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(data.len());
        let at = GuestAddress(d.addr + skip as u64);
        if !ring.write(&data[..n], at) {
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
        let mut ring = SplitRing::take(queue, mem)?;
        // Notifications are not suppressed while serving: the VMM calls
        // again on the next kick, so a chain added after the available
        // index was last read is not missed. The index is read again
        // only once the chains it announced are served.
        let r = serve(
            &mut ring,
            || true,
            |ring, head| self.serve_request(ring, head, probe_size),
        );
        ring.put_back(queue);
        r
    }

    fn serve_request<M: GuestMemory>(
        &self,
        ring: &SplitRing<'_, M>,
        head: u16,
        probe_size: usize,
    ) -> u32 {
        let want = (probe_size + size::TAIL) as u64;
        // Filled where it stays: a returned chain would be copied.
        let mut c = Chain::new();
        if !c.fill(ring, ring.chain(head), want) {
            return 0;
        }
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
        if used == 0 || !scatter(ring, &c.writable, skip, &out[skip..used]) {
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
        if self.pending_events() == 0 {
            return Ok(Served::default());
        }
        let mut ring = SplitRing::take(queue, mem)?;
        let r = serve(
            &mut ring,
            || self.pending_events() > 0,
            |ring, head| {
                let mut c = Chain::new();
                // A buffer too small keeps the report for the next one.
                if !c.fill(ring, ring.chain(head), size::FAULT as u64)
                    || c.writable_len < size::FAULT as u64
                {
                    return 0;
                }
                match self.next_event() {
                    Some(f) if scatter(ring, &c.writable, 0, &f.encode()) => size::FAULT as u32,
                    _ => 0,
                }
            },
        );
        ring.put_back(queue);
        r
    }
}

/// Returns chains from `ring` while `more` says so, each with the length
/// `serve_chain` wrote into it, and says whether the driver wants to hear.
/// A broken available ring is an error only when nothing was served: the
/// chains served are returned, and the next pass meets it again.
fn serve<'m, M: GuestMemory>(
    ring: &mut SplitRing<'m, M>,
    mut more: impl FnMut() -> bool,
    mut serve_chain: impl FnMut(&SplitRing<'m, M>, u16) -> u32,
) -> Result<Served, QueueError> {
    let mut served = Served::default();
    while more() {
        let head = match ring.pop() {
            Ok(Some(head)) => head,
            Ok(None) => break,
            Err(e) if served.used == 0 => return Err(e.into()),
            Err(_) => break,
        };
        let used = serve_chain(ring, head);
        ring.add_used(head, used)?;
        served.used += 1;
    }
    served.notify = served.used > 0 && ring.needs_notification()?;
    Ok(served)
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

impl DriverQueue {
    /// The device's side of this queue, as a transport would build it.
    ///
    /// # Errors
    /// The queue's own error.
    pub fn device_queue(&self) -> Result<Queue, QueueError> {
        let l = self.layout();
        ready_queue(
            l.size,
            GuestAddress(l.desc),
            GuestAddress(l.avail),
            GuestAddress(l.used),
        )
    }
}

/// Guest memory as the driver side of a queue reaches it, for a driver in
/// the same process as the device (tests, `driver::Loopback`): through
/// vm-memory, straight to the region that holds an access.
impl<M: GuestMemory + Send + Sync + ?Sized> DriverMemory for M {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        read_fast(self, buf, GuestAddress(addr))
    }
    fn write(&self, addr: u64, data: &[u8]) -> bool {
        write_fast(self, data, GuestAddress(addr))
    }
    fn store_u16_release(&self, addr: u64, v: u16) -> bool {
        store_fast(
            self,
            v.to_le(),
            GuestAddress(addr),
            core::sync::atomic::Ordering::Release,
        )
    }
    fn load_u16_acquire(&self, addr: u64) -> Option<u16> {
        load_fast::<_, u16>(
            self,
            GuestAddress(addr),
            core::sync::atomic::Ordering::Acquire,
        )
        .map(u16::from_le)
    }
}
