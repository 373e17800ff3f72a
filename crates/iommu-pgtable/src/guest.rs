//! Table memory inside rust-vmm guest memory.
//!
//! [`GuestTableMemory`] hands out tables from a region of a VM's physical
//! memory (any `vm_memory::GuestMemoryBackend`), so a driver's tables are
//! ordinary guest bytes that an emulated IOMMU walks itself. Every access is
//! bounds-checked: an address outside guest memory reads as an invalid
//! descriptor and writes to it are dropped, never a panic.
//!
//! Every access goes through vm-memory's region lookup, unless the table
//! memory was made with [`GuestTableMemory::with_host_mapping`]: then a
//! descriptor inside the table window is reached at its host address
//! directly (one bounds test, no lookup), and anything outside the window
//! still goes the checked way.

use crate::TableMemory;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use iommu_types::PhysAddr;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, VolatileMemory};

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
    /// Host address of `base`, when the maker vouched for it.
    host: Option<HostWindow>,
}

/// The host address of the table window's first byte (see
/// [`GuestTableMemory::with_host_mapping`]).
#[derive(Clone, Copy, Debug)]
struct HostWindow(NonNull<u8>);

// SAFETY: the window is guest memory shared by design: the pointer is only
// turned into `&AtomicU64` for atomic accesses, as vm-memory's own
// `get_atomic_ref` does from any thread.
unsafe impl Send for HostWindow {}
// SAFETY: as for `Send`.
unsafe impl Sync for HostWindow {}

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
            host: None,
        }
    }

    /// [`new`](Self::new), and descriptors inside `[base, base + size)`
    /// are then reached at their host address without vm-memory's region
    /// lookup on every access (the lookup was most of the cost of a table
    /// access). When the window is not inside one region, or vm-memory
    /// gives no host address for it, this is `new`: every access is
    /// looked up, as before.
    ///
    /// # Safety
    /// While `mem` lives, the host address vm-memory reports for `base`
    /// (`GuestMemoryBackend::get_host_address`) must stay mapped to the
    /// guest memory `[base, base + size)`, contiguously, and writes there
    /// must need no bookkeeping by vm-memory (no dirty-page bitmap). A
    /// `GuestMemoryMmap<()>` made from anonymous or file ranges keeps
    /// this: its regions never change once made and are unmapped only when
    /// the last handle to them is dropped. A backend that maps guest pages
    /// per access (Xen grants, for one) or logs dirty pages does not.
    pub unsafe fn with_host_mapping(mem: impl Into<Arc<M>>, base: u64, size: u64) -> Self {
        let mut t = Self::new(mem, base, size);
        t.host = t.host_window();
        t
    }

    /// The host address of the window, if one region holds all of it and
    /// that address can hold `AtomicU64`s.
    fn host_window(&self) -> Option<HostWindow> {
        if self.end - self.base < 8 {
            return None;
        }
        let region = self.mem.find_region(GuestAddress(self.base))?;
        if region.last_addr().0 < self.end - 1 {
            return None;
        }
        let host = self.mem.get_host_address(GuestAddress(self.base)).ok()?;
        if !(host as usize).is_multiple_of(core::mem::align_of::<AtomicU64>()) {
            return None;
        }
        NonNull::new(host).map(HostWindow)
    }

    /// Whether accesses inside the window skip vm-memory's lookup.
    pub fn is_host_mapped(&self) -> bool {
        self.host.is_some()
    }

    /// The guest memory.
    pub fn guest_memory(&self) -> &M {
        &self.mem
    }

    /// The shared handle to the guest memory.
    pub fn shared_memory(&self) -> &Arc<M> {
        &self.mem
    }

    /// The word at `pa` (8-aligned), read atomically; `None` where vm-memory
    /// refuses the address.
    pub(crate) fn read_word(&self, pa: PhysAddr) -> Option<u64> {
        self.with_slot(pa, 0, |s| s.load(Ordering::Acquire))
    }

    /// Runs `f` on descriptor `index` of `table`; `None` when vm-memory
    /// refuses the address (outside guest memory, or misaligned). Inside a
    /// host window this is a bounds test and a pointer; the lookup is out of
    /// line.
    #[inline]
    fn with_slot<R>(
        &self,
        table: PhysAddr,
        index: usize,
        f: impl FnOnce(&AtomicU64) -> R,
    ) -> Option<R> {
        let addr = table.raw().checked_add((index as u64).checked_mul(8)?)?;
        if let Some(HostWindow(host)) = self.host {
            let off = addr.wrapping_sub(self.base);
            // Inside the window (and so not wrapped) and 8-aligned, as the
            // window's start is.
            if off <= self.end - self.base - 8 && off.is_multiple_of(8) {
                // SAFETY: `with_host_mapping`'s caller promised `host` maps
                // `[base, end)` while `self.mem` lives, which it does as long
                // as `self`; `off + 8 <= end - base`, and `host + off` is
                // 8-aligned. Guest memory is shared: it is only ever reached
                // through atomics here, as vm-memory's `get_atomic_ref` does.
                let slot = unsafe { &*host.as_ptr().add(off as usize).cast::<AtomicU64>() };
                return Some(f(slot));
            }
        }
        self.looked_up(addr, f)
    }

    /// `with_slot` through vm-memory's region lookup.
    #[inline(never)]
    fn looked_up<R>(&self, addr: u64, f: impl FnOnce(&AtomicU64) -> R) -> Option<R> {
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

    #[inline]
    unsafe fn load(&self, table: PhysAddr, index: usize) -> u64 {
        self.with_slot(table, index, |s| s.load(Ordering::Acquire))
            .unwrap_or(0)
    }

    #[inline]
    unsafe fn store(&self, table: PhysAddr, index: usize, value: u64) {
        self.with_slot(table, index, |s| s.store(value, Ordering::Release));
    }

    #[inline]
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
