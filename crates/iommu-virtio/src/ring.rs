//! The driver's side of a split virtqueue (virtio 1.2, 2.7), `no_std`:
//! descriptor chains and the available ring written into memory the
//! device reads, the used ring read back. What memory is, the driver's
//! embedder says through [`DriverMemory`]: a kernel's DMA-able memory, or
//! (with feature `vmm`) any vm-memory `GuestMemory` in the same process.

use alloc::vec::Vec;

/// The request queue's index.
pub const REQUEST_QUEUE: u16 = 0;
/// The event queue's index.
pub const EVENT_QUEUE: u16 = 1;

/// Memory the driver's rings and buffers live in, by the addresses the
/// device uses for them (guest-physical, or bus addresses behind another
/// IOMMU). Accesses that fall outside it return `false` / `None`.
pub trait DriverMemory: Send + Sync {
    /// Reads `buf.len()` bytes at `addr`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
    /// Writes `data` at `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> bool;
    /// Stores a little-endian `u16` at `addr` after every earlier write
    /// (the available ring's index, published after its entries).
    fn store_u16_release(&self, addr: u64, v: u16) -> bool;
    /// Loads a little-endian `u16` at `addr` before every later read (the
    /// used ring's index, read before its entries).
    fn load_u16_acquire(&self, addr: u64) -> Option<u16>;
}

/// Where a split virtqueue's three rings are, and its size: what a
/// driver writes into the transport's queue registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLayout {
    /// Entries.
    pub size: u16,
    /// The descriptor table.
    pub desc: u64,
    /// The available ring.
    pub avail: u64,
    /// The used ring.
    pub used: u64,
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
    desc: u64,
    avail: u64,
    used: u64,
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
    pub fn new<M: DriverMemory + ?Sized>(
        mem: &M,
        size: u16,
        base: u64,
    ) -> Result<DriverQueue, DriverQueueError> {
        if !size.is_power_of_two() || size > 32768 || !base.is_multiple_of(16) {
            return Err(DriverQueueError::Layout);
        }
        let len = Self::area_size(size);
        base.checked_add(len).ok_or(DriverQueueError::Layout)?;
        if !mem.write(base, &alloc::vec![0u8; len as usize]) {
            return Err(DriverQueueError::Layout);
        }
        let (_, avail, used) = Self::offsets(size);
        Ok(DriverQueue {
            size,
            desc: base,
            avail: base + avail,
            used: base + used,
            free: (0..size).rev().collect(),
            next: alloc::vec![0; usize::from(size)],
            chain_len: alloc::vec![0; usize::from(size)],
            next_avail: 0,
            last_used: 0,
        })
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
    pub fn add<M: DriverMemory + ?Sized>(
        &mut self,
        mem: &M,
        readable: &[(u64, u32)],
        writable: &[(u64, u32)],
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
        let mut pending: Option<(u16, (u64, u32), u16)> = None;
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
        if !mem.write(self.avail + 4 + 2 * slot, &head.to_le_bytes()) {
            return Err(DriverQueueError::Layout);
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        // The index is published after the entry it covers.
        if !mem.store_u16_release(self.avail + 2, self.next_avail) {
            return Err(DriverQueueError::Layout);
        }
        Ok(head)
    }

    fn write_desc<M: DriverMemory + ?Sized>(
        &mut self,
        mem: &M,
        id: u16,
        (addr, len): (u64, u32),
        flags: u16,
        next: u16,
    ) -> Result<(), DriverQueueError> {
        let mut d = [0u8; DESC_SIZE as usize];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.next[usize::from(id)] = next;
        let at = self.desc + DESC_SIZE * u64::from(id);
        if mem.write(at, &d) {
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
    pub fn pop_used<M: DriverMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<Option<(u16, u32)>, DriverQueueError> {
        let idx = mem
            .load_u16_acquire(self.used + 2)
            .ok_or(DriverQueueError::Layout)?;
        if idx == self.last_used {
            return Ok(None);
        }
        let slot = u64::from(self.last_used % self.size);
        let mut e = [0u8; 8];
        if !mem.read(self.used + 4 + 8 * slot, &mut e) {
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
