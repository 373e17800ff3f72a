//! Where the per-CPU caches get the current CPU from.
//!
//! A kernel plugs in its own [`CpuId`] (reading a per-CPU register, with
//! preemption handled by the caller). Hosted builds use [`ThreadCpu`], which
//! gives each thread a fixed shard round-robin: correct with any number of
//! threads (shards are locked), fastest with at most one thread per shard.

/// The current CPU, as an index below [`nr_cpus`](CpuId::nr_cpus).
pub trait CpuId: Send + Sync {
    /// How many CPUs (shards) there are; at least 1.
    fn nr_cpus(&self) -> usize;
    /// The CPU the caller runs on. Values at or above `nr_cpus` are reduced
    /// modulo it, so a sloppy source costs speed, never correctness.
    fn current(&self) -> usize;

    /// The caller's CPU when nobody else can be running as that CPU until
    /// the caller's current call returns (a kernel with preemption off; a
    /// thread holding a slot of its own), else `None`, the default.
    ///
    /// It lets the allocator keep one range per CPU and size class that
    /// only that CPU touches, with plain loads and stores instead of a lock
    /// (as SLUB's per-CPU free lists skip the bus lock). Claiming
    /// exclusivity that does not hold is a logic error that can hand one
    /// range out twice; it cannot break memory safety (the slots are
    /// atomics).
    fn current_exclusive(&self) -> Option<usize> {
        None
    }

    /// Runs `f` as CPU `cpu`, exclusively, if that can be arranged now: the
    /// caller is `cpu` ([`current_exclusive`](Self::current_exclusive)), or
    /// nobody runs as `cpu` and nobody can start to until `f` returns (an
    /// offline CPU; a thread slot nobody holds). Returns whether `f` ran.
    /// The allocator uses it to take back the hot ranges of CPUs that are
    /// gone. The default runs `f` only for the caller's own CPU.
    fn with_exclusive(&self, cpu: usize, f: &mut dyn FnMut()) -> bool {
        if self.current_exclusive() == Some(cpu) {
            f();
            return true;
        }
        false
    }
}

/// One CPU: every caller shares shard 0 (single-threaded kernels, tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleCpu;

impl CpuId for SingleCpu {
    fn nr_cpus(&self) -> usize {
        1
    }
    fn current(&self) -> usize {
        0
    }
}

#[cfg(feature = "std")]
mod thread {
    use super::CpuId;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Slots handed out to live threads. Fixed, so that taking one never
    /// allocates: a thread's first allocator call may come on a path that
    /// is handling an out-of-memory failure.
    const SLOTS: usize = 1024;
    static TAKEN: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];
    /// Past `SLOTS` live threads, ids keep counting (and are not reused).
    static OVERFLOW: AtomicUsize = AtomicUsize::new(SLOTS);

    /// A thread's slot, given back when the thread exits.
    struct Slot(usize);

    impl Slot {
        fn take() -> Slot {
            for (i, t) in TAKEN.iter().enumerate() {
                if !t.load(Ordering::Relaxed)
                    && t.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                {
                    return Slot(i);
                }
            }
            Slot(OVERFLOW.fetch_add(1, Ordering::Relaxed))
        }
    }

    impl Drop for Slot {
        fn drop(&mut self) {
            if let Some(t) = TAKEN.get(self.0) {
                t.store(false, Ordering::Release);
            }
        }
    }

    std::thread_local! {
        static SLOT: Slot = Slot::take();
    }

    /// Thread-sharded CPU ids: the first time a thread asks, it takes the
    /// lowest slot no live thread holds (as CPU ids are dense), and keeps
    /// it until it exits; the shard is the slot modulo the count.
    #[derive(Clone, Copy, Debug)]
    pub struct ThreadCpu {
        nr: usize,
    }

    impl ThreadCpu {
        /// `nr` shards (at least 1).
        pub fn new(nr: usize) -> Self {
            Self { nr: nr.max(1) }
        }

        /// One shard per CPU the process may run on.
        pub fn available() -> Self {
            Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
        }
    }

    impl Default for ThreadCpu {
        fn default() -> Self {
            Self::available()
        }
    }

    impl CpuId for ThreadCpu {
        fn nr_cpus(&self) -> usize {
            self.nr
        }
        /// A thread's slot is its own while it lives (slots are taken with
        /// a compare-and-exchange and given back at exit), so a thread whose
        /// slot is below the shard count is the only one on that shard.
        #[inline]
        fn current_exclusive(&self) -> Option<usize> {
            let slot = SLOT.with(|s| s.0);
            // Overflow ids are never given back, so their shards could not
            // be taken over when the thread is gone: they use the locks.
            (slot < self.nr && slot < SLOTS).then_some(slot)
        }

        /// A slot nobody holds is taken for the duration of `f`, so no
        /// thread can start running as it meanwhile.
        fn with_exclusive(&self, cpu: usize, f: &mut dyn FnMut()) -> bool {
            if self.current_exclusive() == Some(cpu) {
                f();
                return true;
            }
            if cpu >= self.nr {
                return false;
            }
            let Some(taken) = TAKEN.get(cpu) else {
                return false;
            };
            if taken
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                return false;
            }
            f();
            taken.store(false, Ordering::Release);
            true
        }

        #[inline]
        fn current(&self) -> usize {
            let slot = SLOT.with(|s| s.0);
            // Slots are dense, so the division is for the rare thread past
            // the shard count.
            if slot < self.nr {
                slot
            } else {
                slot % self.nr
            }
        }
    }
}

#[cfg(feature = "std")]
pub use thread::ThreadCpu;

impl<T: CpuId + ?Sized> CpuId for &T {
    fn nr_cpus(&self) -> usize {
        (**self).nr_cpus()
    }
    fn current(&self) -> usize {
        (**self).current()
    }
    fn current_exclusive(&self) -> Option<usize> {
        (**self).current_exclusive()
    }
    fn with_exclusive(&self, cpu: usize, f: &mut dyn FnMut()) -> bool {
        (**self).with_exclusive(cpu, f)
    }
}

impl<T: CpuId + ?Sized> CpuId for alloc::sync::Arc<T> {
    fn nr_cpus(&self) -> usize {
        (**self).nr_cpus()
    }
    fn current(&self) -> usize {
        (**self).current()
    }
    fn current_exclusive(&self) -> Option<usize> {
        (**self).current_exclusive()
    }
    fn with_exclusive(&self, cpu: usize, f: &mut dyn FnMut()) -> bool {
        (**self).with_exclusive(cpu, f)
    }
}
