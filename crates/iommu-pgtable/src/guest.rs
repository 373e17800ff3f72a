//! Table memory inside rust-vmm guest memory.
//!
//! [`GuestTableMemory`] hands out tables from a region of a VM's physical
//! memory (any `vm_memory::GuestMemoryBackend`), so a driver's tables are
//! ordinary guest bytes that an emulated IOMMU walks itself. Every access is
//! bounds-checked: an address outside guest memory reads as an invalid
//! descriptor and writes to it are dropped, never a panic.
//!
//! Every access goes through vm-memory's region lookup, unless the memory's
//! maker vouched for its host mapping ([`GuestWindow::with_host_mapping`]):
//! then a word inside the window is reached at its host address directly
//! (one bounds test, no lookup), and anything outside the window still goes
//! the checked way.

use crate::TableMemory;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use iommu_types::PhysAddr;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, VolatileMemory};

#[derive(Debug, Default)]
struct Alloc {
    next: u64,
    /// Freed blocks by size, reused first.
    free: BTreeMap<usize, Vec<u64>>,
}

/// Guest memory `M` with one window of it, `[base, base + size)`, that
/// may be reached at its host address: a word inside it is one bounds test
/// and a pointer away, where vm-memory looks the region up on every access.
/// Outside the window, or without a host mapping, every access is looked up
/// and bounds-checked by vm-memory as usual. Emulated hardware reads its
/// queues and tables through it; [`GuestTableMemory`] keeps its tables in
/// one.
#[derive(Clone, Debug)]
pub struct GuestWindow<M: GuestMemoryBackend> {
    mem: Arc<M>,
    base: u64,
    /// Bytes from `base` to the window's end (0 without a window): kept
    /// as a length, so an access tests it without a subtraction.
    len: u64,
    /// Host address of `base`, when the maker vouched for it.
    host: Option<HostPtr>,
}

/// The host address of a window's first byte (see
/// [`GuestWindow::with_host_mapping`]).
#[derive(Clone, Copy, Debug)]
struct HostPtr(NonNull<u8>);

// SAFETY: the window is guest memory shared by design: the pointer is only
// turned into references to atomics for atomic accesses, as vm-memory's own
// `get_atomic_ref` does from any thread.
unsafe impl Send for HostPtr {}
// SAFETY: as for `Send`.
unsafe impl Sync for HostPtr {}

impl<M: GuestMemoryBackend> GuestWindow<M> {
    /// `mem` without a host window: every access is looked up.
    pub fn new(mem: impl Into<Arc<M>>) -> Self {
        GuestWindow {
            mem: mem.into(),
            base: 0,
            len: 0,
            host: None,
        }
    }

    /// `mem`, with `[base, base + size)` reached at its host address. When
    /// the window is not inside one region, or vm-memory gives no host
    /// address for it, this is [`new`](Self::new).
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
        let mut w = GuestWindow {
            mem: mem.into(),
            base,
            len: size.min(u64::MAX - base),
            host: None,
        };
        w.host = w.host_ptr();
        if w.host.is_none() {
            (w.base, w.len) = (0, 0);
        }
        w
    }

    /// The host address of the window, if one region holds all of it and
    /// that address can hold `AtomicU64`s.
    fn host_ptr(&self) -> Option<HostPtr> {
        if self.len < 8 {
            return None;
        }
        let region = self.mem.find_region(GuestAddress(self.base))?;
        if region.last_addr().0 < self.base + (self.len - 1) {
            return None;
        }
        let host = self.mem.get_host_address(GuestAddress(self.base)).ok()?;
        if !(host as usize).is_multiple_of(core::mem::align_of::<AtomicU64>()) {
            return None;
        }
        NonNull::new(host).map(HostPtr)
    }

    /// Whether accesses inside the window skip vm-memory's lookup.
    pub fn is_host_mapped(&self) -> bool {
        self.host.is_some()
    }

    /// The guest memory.
    pub fn memory(&self) -> &Arc<M> {
        &self.mem
    }

    /// The 8-aligned word at `addr` inside the window's host mapping, if it
    /// is there.
    #[inline]
    pub(crate) fn host_u64(&self, addr: u64) -> Option<&AtomicU64> {
        self.direct(addr)
    }

    /// The `T` at `addr` inside the window, `size_of::<T>()`-aligned.
    #[inline]
    fn direct<T>(&self, addr: u64) -> Option<&T> {
        let HostPtr(host) = self.host?;
        let size = core::mem::size_of::<T>() as u64;
        let off = addr.wrapping_sub(self.base);
        // Inside the window (and so not wrapped), and aligned as the
        // window's start is.
        if off > self.len - size || !off.is_multiple_of(size) {
            return None;
        }
        // SAFETY: `with_host_mapping`'s caller promised `host` maps
        // `[base, base + len)` while `self.mem` lives, which it does as long
        // as `self`; `off + size <= len`, and `host + off` is aligned for
        // the atomics `T` is (their alignment is their size, at most 8, and
        // `host` is 8-aligned). Guest memory is shared: it is only ever
        // reached through atomics here, as vm-memory's `get_atomic_ref` does.
        Some(unsafe { &*host.as_ptr().add(off as usize).cast::<T>() })
    }

    /// Runs `f` on the 8-aligned word at `addr`; `None` when vm-memory
    /// refuses the address (outside guest memory, or misaligned). Inside
    /// the window this is a bounds test and a pointer; the lookup is out of
    /// line.
    #[inline]
    pub fn with_u64<R>(&self, addr: u64, f: impl FnOnce(&AtomicU64) -> R) -> Option<R> {
        if let Some(slot) = self.direct::<AtomicU64>(addr) {
            return Some(f(slot));
        }
        self.looked_up(addr, f)
    }

    /// `with_u64` through vm-memory's region lookup.
    #[inline(never)]
    fn looked_up<R>(&self, addr: u64, f: impl FnOnce(&AtomicU64) -> R) -> Option<R> {
        let slice = self.mem.get_slice(GuestAddress(addr), 8).ok()?;
        let slot = slice.get_atomic_ref::<AtomicU64>(0).ok()?;
        Some(f(slot))
    }

    /// Writes the little-endian `u32` `value` at `addr`, as a device's
    /// 4-byte write; `false` when vm-memory refuses the address.
    #[inline]
    pub fn write_u32(&self, addr: u64, value: u32) -> bool {
        if let Some(slot) = self.direct::<AtomicU32>(addr) {
            slot.store(value.to_le(), Ordering::Release);
            return true;
        }
        self.mem
            .write_obj(value.to_le(), GuestAddress(addr))
            .is_ok()
    }
}

/// Tables allocated from `[base, base + size)` of guest memory `M`.
///
/// The memory is shared (`Arc`), so the emulated hardware that walks the
/// tables can hold the same memory.
#[derive(Debug)]
pub struct GuestTableMemory<M: GuestMemoryBackend> {
    window: GuestWindow<M>,
    base: u64,
    end: u64,
    alloc: spin::Mutex<Alloc>,
    live: AtomicUsize,
}

impl<M: GuestMemoryBackend> GuestTableMemory<M> {
    /// Table memory carved from `[base, base + size)` of `mem`.
    pub fn new(mem: impl Into<Arc<M>>, base: u64, size: u64) -> Self {
        Self::in_window(GuestWindow::new(mem), base, size)
    }

    /// [`new`](Self::new), and descriptors inside `[base, base + size)`
    /// are then reached at their host address without vm-memory's region
    /// lookup on every access (the lookup was most of the cost of a table
    /// access). When the window is not inside one region, or vm-memory
    /// gives no host address for it, this is `new`: every access is
    /// looked up, as before.
    ///
    /// # Safety
    /// As [`GuestWindow::with_host_mapping`], for `[base, base + size)`.
    pub unsafe fn with_host_mapping(mem: impl Into<Arc<M>>, base: u64, size: u64) -> Self {
        // SAFETY: the caller's promise, passed on.
        let window = unsafe { GuestWindow::with_host_mapping(mem, base, size) };
        Self::in_window(window, base, size)
    }

    /// Table memory carved from `[base, base + size)` of the window's
    /// memory; accesses inside the window's host mapping (if it has one)
    /// skip vm-memory's lookup.
    pub fn in_window(window: GuestWindow<M>, base: u64, size: u64) -> Self {
        Self {
            window,
            base,
            end: base.saturating_add(size),
            alloc: spin::Mutex::new(Alloc {
                next: base,
                free: BTreeMap::new(),
            }),
            live: AtomicUsize::new(0),
        }
    }

    /// Whether some accesses skip vm-memory's lookup (see
    /// [`with_host_mapping`](Self::with_host_mapping)).
    pub fn is_host_mapped(&self) -> bool {
        self.window.is_host_mapped()
    }

    /// The guest memory.
    pub fn guest_memory(&self) -> &M {
        self.window.memory()
    }

    /// The shared handle to the guest memory.
    pub fn shared_memory(&self) -> &Arc<M> {
        self.window.memory()
    }

    /// The window the tables are reached through.
    pub fn window(&self) -> &GuestWindow<M> {
        &self.window
    }

    /// Runs `f` on descriptor `index` of `table`; `None` when vm-memory
    /// refuses the address (outside guest memory, or misaligned).
    #[inline]
    fn with_slot<R>(
        &self,
        table: PhysAddr,
        index: usize,
        f: impl FnOnce(&AtomicU64) -> R,
    ) -> Option<R> {
        let addr = table.raw().checked_add((index as u64).checked_mul(8)?)?;
        self.window.with_u64(addr, f)
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
            .window
            .memory()
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
