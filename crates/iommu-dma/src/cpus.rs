//! Where the DMA layer learns the current CPU.

use alloc::sync::Arc;
#[cfg(feature = "std")]
use iommu_iova::ThreadCpu;
use iommu_iova::{CpuId, SingleCpu};

/// The CPU ids behind a domain's per-CPU state: its IOVA caches, its flush
/// queue's rings and the handle checker's shards (Linux reads
/// `smp_processor_id()` for all three).
///
/// An enum rather than a type parameter, so that [`DmaDevice`](crate::DmaDevice)
/// stays one type for every embedder; the hosted source is a variant of
/// its own so its calls inline on the map and unmap paths.
#[derive(Clone)]
pub enum DmaCpus {
    /// Threads take fixed shards (the std default: one per CPU the
    /// process may run on).
    #[cfg(feature = "std")]
    Threads(ThreadCpu),
    /// Every caller shares one CPU's state (the no_std default; a
    /// single-CPU kernel).
    Single,
    /// A kernel's own source (a per-CPU register read with preemption off).
    Kernel(Arc<dyn CpuId>),
}

impl Default for DmaCpus {
    /// `Threads` with one shard per available CPU under
    /// `std`, else [`Single`](Self::Single).
    fn default() -> Self {
        #[cfg(feature = "std")]
        return DmaCpus::Threads(ThreadCpu::available());
        #[cfg(not(feature = "std"))]
        return DmaCpus::Single;
    }
}

impl core::fmt::Debug for DmaCpus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            #[cfg(feature = "std")]
            DmaCpus::Threads(t) => f.debug_tuple("Threads").field(t).finish(),
            DmaCpus::Single => f.write_str("Single"),
            DmaCpus::Kernel(k) => write!(f, "Kernel({} CPUs)", k.nr_cpus()),
        }
    }
}

#[cfg(feature = "std")]
impl From<ThreadCpu> for DmaCpus {
    fn from(t: ThreadCpu) -> Self {
        DmaCpus::Threads(t)
    }
}

impl From<Arc<dyn CpuId>> for DmaCpus {
    fn from(k: Arc<dyn CpuId>) -> Self {
        DmaCpus::Kernel(k)
    }
}

impl CpuId for DmaCpus {
    #[inline]
    fn nr_cpus(&self) -> usize {
        match self {
            #[cfg(feature = "std")]
            DmaCpus::Threads(t) => t.nr_cpus(),
            DmaCpus::Single => SingleCpu.nr_cpus(),
            DmaCpus::Kernel(k) => k.nr_cpus().max(1),
        }
    }

    #[inline]
    fn current(&self) -> usize {
        match self {
            #[cfg(feature = "std")]
            DmaCpus::Threads(t) => t.current(),
            DmaCpus::Single => SingleCpu.current(),
            DmaCpus::Kernel(k) => k.current(),
        }
    }

    #[inline]
    fn current_exclusive(&self) -> Option<usize> {
        match self {
            #[cfg(feature = "std")]
            DmaCpus::Threads(t) => t.current_exclusive(),
            DmaCpus::Single => SingleCpu.current_exclusive(),
            DmaCpus::Kernel(k) => k.current_exclusive(),
        }
    }

    fn with_exclusive(&self, cpu: usize, f: &mut dyn FnMut()) -> bool {
        match self {
            #[cfg(feature = "std")]
            DmaCpus::Threads(t) => t.with_exclusive(cpu, f),
            DmaCpus::Single => SingleCpu.with_exclusive(cpu, f),
            DmaCpus::Kernel(k) => k.with_exclusive(cpu, f),
        }
    }
}
