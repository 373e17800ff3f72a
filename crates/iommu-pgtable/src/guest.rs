//! Table memory inside rust-vmm guest memory.
//!
//! [`GuestTableMemory`] hands out tables from a region of a VM's physical
//! memory (any `vm_memory::GuestMemoryBackend`), so a driver's tables are
//! ordinary guest bytes that an emulated IOMMU walks itself. Every access is
//! bounds-checked by vm-memory: an address outside guest memory reads as an
//! invalid descriptor and writes to it are dropped, never a panic.

use crate::TableMemory;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use iommu_types::PhysAddr;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileMemory};

#[derive(Debug, Default)]
struct Alloc {
    next: u64,
    /// Freed blocks by size, reused first.
    free: BTreeMap<usize, Vec<u64>>,
}

/// Tables allocated from `[base, base + size)` of guest memory `M`.
///
/// The memory is shared (`Arc`), so the emulated hardware that walks the
/// tables can hold the same memory.
#[derive(Debug)]
pub struct GuestTableMemory<M: GuestMemoryBackend> {
    mem: Arc<M>,
    base: u64,
    end: u64,
    alloc: spin::Mutex<Alloc>,
    live: AtomicUsize,
}

impl<M: GuestMemoryBackend> GuestTableMemory<M> {
    /// Table memory carved from `[base, base + size)` of `mem`.
    pub fn new(mem: impl Into<Arc<M>>, base: u64, size: u64) -> Self {
        Self {
            mem: mem.into(),
            base,
            end: base.saturating_add(size),
            alloc: spin::Mutex::new(Alloc {
                next: base,
                free: BTreeMap::new(),
            }),
            live: AtomicUsize::new(0),
        }
    }

    /// The guest memory.
    pub fn guest_memory(&self) -> &M {
        &self.mem
    }

    /// The shared handle to the guest memory.
    pub fn shared_memory(&self) -> &Arc<M> {
        &self.mem
    }

    /// Runs `f` on descriptor `index` of `table`; `None` when vm-memory
    /// refuses the address (outside guest memory, or misaligned).
    fn with_slot<R>(
        &self,
        table: PhysAddr,
        index: usize,
        f: impl FnOnce(&AtomicU64) -> R,
    ) -> Option<R> {
        let addr = table.raw().checked_add((index as u64).checked_mul(8)?)?;
        let slice = self.mem.get_slice(GuestAddress(addr), 8).ok()?;
        let slot = slice.get_atomic_ref::<AtomicU64>(0).ok()?;
        Some(f(slot))
    }
}

impl<M: GuestMemoryBackend + Send + Sync> TableMemory for GuestTableMemory<M> {
    fn alloc_table(&self, bytes: usize) -> Option<PhysAddr> {
        let bytes = bytes.max(64);
        let addr = {
            let mut a = self.alloc.lock();
            match a.free.get_mut(&bytes).and_then(Vec::pop) {
                Some(addr) => addr,
                None => {
                    let start = a.next.checked_next_multiple_of(bytes as u64)?;
                    let end = start.checked_add(bytes as u64)?;
                    if end > self.end {
                        return None;
                    }
                    a.next = end;
                    start
                }
            }
        };
        if self
            .mem
            .write_slice(&vec![0u8; bytes], GuestAddress(addr))
            .is_err()
        {
            self.alloc.lock().free.entry(bytes).or_default().push(addr);
            return None;
        }
        self.live.fetch_add(1, Ordering::AcqRel);
        Some(PhysAddr::new(addr))
    }

    unsafe fn free_table(&self, table: PhysAddr, bytes: usize) {
        if table.raw() < self.base || table.raw() >= self.end {
            return;
        }
        self.alloc
            .lock()
            .free
            .entry(bytes.max(64))
            .or_default()
            .push(table.raw());
        self.live.fetch_sub(1, Ordering::AcqRel);
    }

    unsafe fn load(&self, table: PhysAddr, index: usize) -> u64 {
        self.with_slot(table, index, |s| s.load(Ordering::Acquire))
            .unwrap_or(0)
    }

    unsafe fn store(&self, table: PhysAddr, index: usize, value: u64) {
        self.with_slot(table, index, |s| s.store(value, Ordering::Release));
    }

    unsafe fn compare_exchange(
        &self,
        table: PhysAddr,
        index: usize,
        current: u64,
        new: u64,
    ) -> Result<u64, u64> {
        self.with_slot(table, index, |s| {
            s.compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
        })
        .unwrap_or(Err(0))
    }

    fn table_pages(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
}
