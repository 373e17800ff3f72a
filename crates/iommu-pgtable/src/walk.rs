//! Walking a table this crate did not build.
//!
//! [`IoPageTable`](crate::IoPageTable) only follows descriptors it wrote
//! itself. Hardware, and a hypervisor reading a guest's tables, must walk
//! from a root address someone else programmed, through memory that may
//! hold anything. [`walk_root`] does that: every descriptor is untrusted
//! input, every address is checked against the output size before it is
//! read, memory is read through the safe [`PhysRead`] trait (a read that
//! misses memory is an external abort, not undefined behaviour), and the
//! walk reads at most one descriptor per level, so a hostile table cannot
//! make it loop.

use crate::Format;
use iommu_types::{Iova, PhysAddr, Prot};

/// Physical memory as a table walker sees it: aligned 64-bit reads that
/// may fail.
pub trait PhysRead {
    /// The little-endian 64-bit word at `pa` (8-byte aligned), or `None`
    /// when nothing answers there (the walk reports an external abort).
    fn read_u64(&self, pa: PhysAddr) -> Option<u64>;
}

impl<T: PhysRead + ?Sized> PhysRead for &T {
    fn read_u64(&self, pa: PhysAddr) -> Option<u64> {
        (**self).read_u64(pa)
    }
}

#[cfg(feature = "vm-memory")]
impl<M: vm_memory::GuestMemoryBackend> PhysRead for crate::GuestTableMemory<M> {
    fn read_u64(&self, pa: PhysAddr) -> Option<u64> {
        self.window().read_u64(pa)
    }
}

/// A word inside the window's host mapping is one atomic load; elsewhere
/// as [`GuestRead`].
#[cfg(feature = "vm-memory")]
impl<M: vm_memory::GuestMemoryBackend> PhysRead for crate::GuestWindow<M> {
    #[inline]
    fn read_u64(&self, pa: PhysAddr) -> Option<u64> {
        if !pa.raw().is_multiple_of(8) {
            return None;
        }
        match self.host_u64(pa.raw()) {
            Some(w) => Some(u64::from_le(w.load(core::sync::atomic::Ordering::Acquire))),
            None => GuestRead(&**self.memory()).read_u64(pa),
        }
    }
}

/// Any rust-vmm guest memory as [`PhysRead`]: a word outside it, or
/// misaligned, reads as `None`.
#[cfg(feature = "vm-memory")]
#[derive(Clone, Copy, Debug)]
pub struct GuestRead<'a, M: ?Sized>(pub &'a M);

#[cfg(feature = "vm-memory")]
impl<M: vm_memory::GuestMemoryBackend + ?Sized> PhysRead for GuestRead<'_, M> {
    fn read_u64(&self, pa: PhysAddr) -> Option<u64> {
        use vm_memory::{Bytes, GuestAddress, VolatileMemory};
        if !pa.raw().is_multiple_of(8) {
            return None;
        }
        // One atomic load where the word is plain memory in one region (a
        // descriptor the driver is rewriting is never seen torn); vm-memory's
        // byte copy otherwise.
        if let Some(w) = self
            .0
            .get_slice(GuestAddress(pa.raw()), 8)
            .ok()
            .and_then(|s| {
                s.get_atomic_ref::<core::sync::atomic::AtomicU64>(0)
                    .ok()
                    .map(|a| a.load(core::sync::atomic::Ordering::Acquire))
            })
        {
            return Some(u64::from_le(w));
        }
        let mut b = [0u8; 8];
        self.0.read_slice(&mut b, GuestAddress(pa.raw())).ok()?;
        Some(u64::from_le_bytes(b))
    }
}

/// Why a walk stopped, with the level (0 = root) it stopped at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkFault {
    /// The input address is outside the table's input range, or an
    /// invalid descriptor was found.
    Translation {
        /// Level of the invalid descriptor (0 for an input out of range).
        level: usize,
    },
    /// A table or output address does not fit the output address size.
    AddressSize {
        /// Level of the descriptor that named it (0 for the root itself).
        level: usize,
    },
    /// Reading a descriptor failed (Arm's "external abort on walk").
    External {
        /// Level of the table being read.
        level: usize,
        /// The descriptor's address.
        addr: PhysAddr,
    },
}

/// Where a walk ended: the leaf that maps the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walked {
    /// The output address of the input address walked.
    pub pa: PhysAddr,
    /// The first input address the leaf maps.
    pub iova: Iova,
    /// Bytes the leaf maps.
    pub size: u64,
    /// Level of the leaf (0 = root).
    pub level: usize,
    /// The raw leaf descriptor, for attribute checks the format's decode
    /// does not make (access flag, hardware dirty state).
    pub pte: u64,
    /// The permissions the format decodes from it.
    pub prot: Prot,
    /// Descriptors read on the way, leaf included.
    pub reads: usize,
}

/// Walks `fmt`'s table rooted at `root`, starting at `start_level` (0 for
/// a table of the full geometry), for `iova`, reading memory through `mem`.
///
/// # Errors
/// The [`WalkFault`] hardware would report.
pub fn walk_root<F: Format + ?Sized>(
    fmt: &F,
    root: PhysAddr,
    start_level: usize,
    iova: Iova,
    mem: &impl PhysRead,
) -> Result<Walked, WalkFault> {
    let geo = fmt.geometry();
    let va = iova.raw();
    if start_level >= geo.levels || !geo.input_fits(va, 1) {
        return Err(WalkFault::Translation { level: 0 });
    }
    // A shorter walk covers only what its root's entries span.
    if start_level > 0 {
        let covered = geo.entry_shift(start_level) + geo.bits_per_level;
        if covered < 64 && va >> covered != 0 {
            return Err(WalkFault::Translation { level: start_level });
        }
    }
    let mut table = root.raw();
    if !geo.output_fits(table, geo.table_bytes(start_level) as u64) {
        return Err(WalkFault::AddressSize { level: start_level });
    }
    for (reads, level) in (1..).zip(start_level..geo.levels) {
        let index = geo.index(va, level);
        let addr = table
            .checked_add(index as u64 * 8)
            .ok_or(WalkFault::AddressSize { level })?;
        let pte = mem
            .read_u64(PhysAddr::new(addr))
            .ok_or(WalkFault::External {
                level,
                addr: PhysAddr::new(addr),
            })?;
        match fmt.decode(pte, level) {
            crate::Pte::Invalid => return Err(WalkFault::Translation { level }),
            crate::Pte::Table(next) => {
                if level + 1 >= geo.levels {
                    return Err(WalkFault::Translation { level });
                }
                if !geo.output_fits(next.raw(), geo.table_bytes(level + 1) as u64) {
                    return Err(WalkFault::AddressSize { level });
                }
                table = next.raw();
            }
            crate::Pte::Leaf { pa, prot } => {
                let size = geo.entry_size(level);
                if !geo.output_fits(pa.raw(), size) {
                    return Err(WalkFault::AddressSize { level });
                }
                // Output bits below the leaf's size are RES0; ignore them.
                let base = pa.raw() & !(size - 1);
                return Ok(Walked {
                    pa: PhysAddr::new(base | (va & (size - 1))),
                    iova: Iova::new(va & !(size - 1)),
                    size,
                    level,
                    pte,
                    prot,
                    reads,
                });
            }
        }
    }
    Err(WalkFault::Translation {
        level: geo.levels - 1,
    })
}
