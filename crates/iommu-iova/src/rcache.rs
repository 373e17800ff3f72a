//! Per-CPU range caches (the "magazine" design of Bonwick and Adams, as
//! Linux's IOVA rcache uses it).
//!
//! Each CPU has, per size class, a *loaded* and a *previous* magazine of
//! free ranges. Frees push to the loaded one (swapping in the previous one
//! when it is full, or parking a full one in the shared depot); allocations
//! pop from it (swapping in the previous one, or taking a full magazine from
//! the depot, when it is empty). The tree is only touched when the depot
//! grows past one magazine per CPU (the oldest goes back to the tree) or when
//! every cache is flushed after the tree ran out.
//!
//! In front of the magazines, a CPU that runs exclusively keeps one "hot"
//! range per class that only it touches, with plain loads and stores: an
//! alloc after a free of the same size takes no lock at all. Other CPUs
//! read it (it counts as cached) but never write it; a flush takes it back
//! only as that CPU, or once the CPU is gone
//! ([`CpuId::with_exclusive`](crate::CpuId::with_exclusive)).
//!
//! A range in a magazine is still allocated in the tree: the caches only
//! decide who gets it next, so a range is in at most one of "with a caller",
//! "in one magazine".

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use spin::Mutex;

/// Ranges per magazine: with the length word, a magazine is 1 KiB.
pub const MAG_SIZE: usize = 127;
/// Size classes: ranges of 1, 2, 4, 8, 16 and 32 granules are cached.
pub const CACHE_CLASSES: usize = 6;

pub(crate) struct Magazine {
    len: usize,
    pfns: [u64; MAG_SIZE],
}

impl Magazine {
    fn new() -> Box<Self> {
        Box::new(Self {
            len: 0,
            pfns: [0; MAG_SIZE],
        })
    }

    fn is_full(&self) -> bool {
        self.len == MAG_SIZE
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pops the newest range starting at or below `max_start`; older ones are
    /// searched only when the newest does not fit, as the tree is the better
    /// place for a request no cached range satisfies.
    #[inline]
    fn pop(&mut self, max_start: u64) -> Option<u64> {
        // The newest fits nearly always (limits rarely differ in a domain).
        if let Some(&top) = self.pfns[..self.len].last() {
            if top <= max_start {
                self.len -= 1;
                return Some(top);
            }
        }
        let i = self.pfns[..self.len]
            .iter()
            .rposition(|&p| p <= max_start)?;
        let pfn = self.pfns[i];
        self.len -= 1;
        self.pfns[i] = self.pfns[self.len];
        Some(pfn)
    }

    fn push(&mut self, pfn: u64) {
        debug_assert!(!self.is_full());
        self.pfns[self.len] = pfn;
        self.len += 1;
    }

    pub(crate) fn pfns(&self) -> &[u64] {
        &self.pfns[..self.len]
    }
}

struct CpuRcache {
    loaded: Box<Magazine>,
    prev: Box<Magazine>,
}

/// An empty hot slot (no frame number is this large: granules are at least
/// 512 bytes).
const NO_RANGE: u64 = u64::MAX;

/// One CPU's caches, on their own cache lines so CPUs never share one.
#[repr(align(128))]
struct PerCpu {
    /// One range per class that only the CPU itself touches, and only while
    /// it runs exclusively ([`CpuId::current_exclusive`](crate::CpuId::current_exclusive)):
    /// plain loads and stores, no lock. Other CPUs read it (to answer
    /// "is it cached?") but never write it.
    hot: [AtomicU64; CACHE_CLASSES],
    classes: [Mutex<CpuRcache>; CACHE_CLASSES],
    /// Ranges each class holds, written under its lock and read without
    /// it, so the slow path's "is it cached?" skips empty caches unlocked.
    held: [AtomicUsize; CACHE_CLASSES],
}

impl CpuRcache {
    fn held(&self) -> usize {
        self.loaded.len + self.prev.len
    }
}

/// Full magazines, each with the CPU that filled it, oldest first.
type Depot = Vec<(usize, Box<Magazine>)>;

pub(crate) struct Rcaches {
    cpus: Box<[PerCpu]>,
    // Boxed so a magazine moves between a CPU and the depot as a pointer,
    // not as a 1 KiB copy under the locks. Each full magazine carries the
    // CPU that filled it: a CPU takes its own back first, so that after a
    // flush queue frees a burst of ranges they return to the CPU that used
    // them, and two CPUs do not end up mapping into the same cache lines of
    // the page table (nor sharing the cache lines of the DMA layer's handle records).
    depots: [Mutex<Depot>; CACHE_CLASSES],
    /// Magazines each depot holds, as `PerCpu::held`.
    depot_held: [AtomicUsize; CACHE_CLASSES],
    max_depot: usize,
}

impl Rcaches {
    pub(crate) fn new(nr_cpus: usize) -> Self {
        let cpus = (0..nr_cpus.max(1))
            .map(|_| PerCpu {
                hot: core::array::from_fn(|_| AtomicU64::new(NO_RANGE)),
                classes: core::array::from_fn(|_| {
                    Mutex::new(CpuRcache {
                        loaded: Magazine::new(),
                        prev: Magazine::new(),
                    })
                }),
                held: core::array::from_fn(|_| AtomicUsize::new(0)),
            })
            .collect();
        Self {
            cpus,
            depots: core::array::from_fn(|_| Mutex::new(Vec::new())),
            depot_held: core::array::from_fn(|_| AtomicUsize::new(0)),
            max_depot: nr_cpus.max(1),
        }
    }

    /// `cpu` reduced to a shard index: no division on the hot path (a
    /// `CpuId` out of range is sloppy, and rare).
    #[inline]
    fn index(&self, cpu: usize) -> usize {
        if cpu < self.cpus.len() {
            cpu
        } else {
            cpu % self.cpus.len()
        }
    }

    /// Takes the hot range of `class` of CPU `cpu` if it starts at or below
    /// `max_start`. Only the CPU itself may call it, running exclusively.
    #[inline]
    pub(crate) fn take_hot(&self, cpu: usize, class: usize, max_start: u64) -> Option<u64> {
        let slot = &self.cpus.get(cpu)?.hot[class];
        let pfn = slot.load(Ordering::Relaxed);
        if pfn == NO_RANGE || pfn > max_start {
            return None;
        }
        slot.store(NO_RANGE, Ordering::Relaxed);
        Some(pfn)
    }

    /// Makes `pfn` the hot range of `class` of CPU `cpu` if that slot is
    /// empty. Only the CPU itself may call it, running exclusively.
    #[inline]
    pub(crate) fn put_hot(&self, cpu: usize, class: usize, pfn: u64) -> bool {
        let Some(this) = self.cpus.get(cpu) else {
            return false;
        };
        let slot = &this.hot[class];
        if slot.load(Ordering::Relaxed) != NO_RANGE {
            return false;
        }
        slot.store(pfn, Ordering::Relaxed);
        true
    }

    /// A cached range of `class` starting at or below `max_start`: from the
    /// CPU's magazines, else from a full magazine of the depot that this
    /// CPU filled, or any CPU's with `foreign`.
    ///
    /// Taking another CPU's magazine is left to when the tree has no room:
    /// its ranges sit next to ranges that CPU still maps, so two CPUs would
    /// write the same cache lines of the leaf table (and of the DMA layer's
    /// handle records). A refill from the tree gives this CPU lines of its
    /// own; the foreign magazine ages out of the depot back to the tree.
    #[inline]
    pub(crate) fn get(
        &self,
        cpu: usize,
        class: usize,
        max_start: u64,
        foreign: bool,
    ) -> Option<u64> {
        let cpu = self.index(cpu);
        let this = &self.cpus[cpu];
        let mut c = this.classes[class].lock();
        if c.loaded.is_empty() {
            if !c.prev.is_empty() {
                let c = &mut *c;
                core::mem::swap(&mut c.loaded, &mut c.prev);
            } else {
                let mut depot = self.depots[class].lock();
                // This CPU's newest, else (if allowed) anyone's newest.
                let i = depot
                    .iter()
                    .rposition(|(owner, _)| *owner == cpu)
                    .or_else(|| foreign.then(|| depot.len().checked_sub(1)).flatten())?;
                let (_, full) = depot.remove(i);
                self.depot_held[class].store(depot.len(), Ordering::Relaxed);
                drop(depot);
                c.loaded = full;
            }
        }
        let got = c.loaded.pop(max_start);
        this.held[class].store(c.held(), Ordering::Relaxed);
        got
    }

    /// Caches a freed range. Returns a full magazine the depot no longer
    /// wants; its ranges must go back to the tree.
    #[inline]
    pub(crate) fn insert(&self, cpu: usize, class: usize, pfn: u64) -> Option<Box<Magazine>> {
        let mut trimmed = None;
        let cpu = self.index(cpu);
        let this = &self.cpus[cpu];
        let mut c = this.classes[class].lock();
        if c.loaded.is_full() {
            let c = &mut *c;
            if c.prev.is_full() {
                let full = core::mem::replace(&mut c.loaded, Magazine::new());
                let mut depot = self.depots[class].lock();
                depot.push((cpu, full));
                if depot.len() > self.max_depot {
                    trimmed = Some(depot.remove(0).1);
                }
                self.depot_held[class].store(depot.len(), Ordering::Relaxed);
            } else {
                core::mem::swap(&mut c.loaded, &mut c.prev);
            }
        }
        c.loaded.push(pfn);
        this.held[class].store(c.held(), Ordering::Relaxed);
        trimmed
    }

    /// Whether `pfn` waits in any cache of `class` (every CPU's and the
    /// depot's). Linear in what the class caches: for the slow path.
    /// Caches that hold nothing are skipped without taking their locks.
    pub(crate) fn contains(&self, class: usize, pfn: u64) -> bool {
        let in_cpus = self.cpus.iter().any(|cpu| {
            if cpu.hot[class].load(Ordering::Relaxed) == pfn {
                return true;
            }
            if cpu.held[class].load(Ordering::Relaxed) == 0 {
                return false;
            }
            let c = cpu.classes[class].lock();
            c.loaded.pfns().contains(&pfn) || c.prev.pfns().contains(&pfn)
        });
        in_cpus
            || (self.depot_held[class].load(Ordering::Relaxed) != 0
                && self.depots[class]
                    .lock()
                    .iter()
                    .any(|(_, m)| m.pfns().contains(&pfn)))
    }

    /// Empties every cache, handing each cached range to `free`. A CPU's
    /// hot ranges are taken only where `as_cpu(cpu, f)` runs `f` as that
    /// CPU, exclusively ([`CpuId::with_exclusive`](crate::CpuId::with_exclusive)); a CPU
    /// running elsewhere keeps them.
    pub(crate) fn drain(
        &self,
        mut as_cpu: impl FnMut(usize, &mut dyn FnMut()) -> bool,
        mut free: impl FnMut(u64),
    ) {
        for (i, this) in self.cpus.iter().enumerate() {
            if this
                .hot
                .iter()
                .all(|h| h.load(Ordering::Relaxed) == NO_RANGE)
            {
                continue;
            }
            as_cpu(i, &mut || {
                for slot in &this.hot {
                    let pfn = slot.load(Ordering::Relaxed);
                    if pfn != NO_RANGE {
                        slot.store(NO_RANGE, Ordering::Relaxed);
                        free(pfn);
                    }
                }
            });
        }
        for class in 0..CACHE_CLASSES {
            for cpu in self.cpus.iter() {
                let mut guard = cpu.classes[class].lock();
                let c = &mut *guard;
                for mag in [&mut c.loaded, &mut c.prev] {
                    mag.pfns().iter().for_each(|&p| free(p));
                    mag.len = 0;
                }
                cpu.held[class].store(0, Ordering::Relaxed);
            }
            let depot = {
                let mut d = self.depots[class].lock();
                self.depot_held[class].store(0, Ordering::Relaxed);
                core::mem::take(&mut *d)
            };
            for (_, mag) in depot {
                mag.pfns().iter().for_each(|&p| free(p));
            }
        }
    }

    /// Ranges currently cached, for statistics and tests.
    pub(crate) fn cached(&self) -> usize {
        let mut n = 0;
        for class in 0..CACHE_CLASSES {
            for cpu in self.cpus.iter() {
                let c = cpu.classes[class].lock();
                n += c.loaded.len + c.prev.len;
                n += usize::from(cpu.hot[class].load(Ordering::Relaxed) != NO_RANGE);
            }
            n += self.depots[class].lock().len() * MAG_SIZE;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_magazine_pops_only_ranges_under_the_limit() {
        let mut m = Magazine::new();
        m.push(10);
        m.push(500);
        assert_eq!(m.pop(100), Some(10));
        assert_eq!(m.pop(100), None);
        assert_eq!(m.pop(1000), Some(500));
    }

    #[test]
    fn full_magazines_go_to_the_depot_and_the_oldest_is_trimmed() {
        let r = Rcaches::new(1);
        let mut trimmed = Vec::new();
        // loaded and prev fill, one full magazine goes to the depot (its
        // limit for one CPU), then the next push trims the oldest.
        let n = MAG_SIZE * 3 + 1;
        for pfn in 0..n as u64 {
            if let Some(m) = r.insert(0, 0, pfn) {
                trimmed.extend_from_slice(m.pfns());
            }
        }
        assert_eq!(trimmed.len(), MAG_SIZE);
        assert_eq!(r.cached() + trimmed.len(), n);
        let mut drained = 0;
        r.drain(|_, _| false, |_| drained += 1);
        assert_eq!(drained + trimmed.len(), n);
        assert_eq!(r.cached(), 0);
    }

    #[test]
    fn a_cpu_takes_its_own_magazines_from_the_depot_and_others_only_when_allowed() {
        let r = Rcaches::new(2);
        // CPU 0 fills loaded and prev and parks a third magazine in the depot.
        for pfn in 0..(MAG_SIZE * 3) as u64 {
            assert!(r.insert(0, 0, pfn).is_none());
        }
        // CPU 1 has nothing of its own: it does not take CPU 0's magazine...
        assert_eq!(r.get(1, 0, u64::MAX, false), None);
        // ...unless the tree has no room, and then it may.
        assert!(r.get(1, 0, u64::MAX, true).is_some());
        // CPU 0 still has its own loaded and prev magazines.
        assert!(r.get(0, 0, u64::MAX, false).is_some());
    }
}
