//! Flush queues: lazy invalidation for DMA-FQ domains (Linux's `iova_fq`).
//!
//! A lazy unmap clears the page-table entries but sends no invalidation.
//! The IOVA goes into the unmapping CPU's queue, tagged with the domain's
//! flush ticket ([`Domain::flush_ticket`]). An entry is freed once a
//! flush-all that started after it was queued has *completed*
//! ([`Domain::flushed_through`]): only then can no IOTLB hold its
//! translation, so only then may the IOVA be handed out again.
//!
//! A flush-all that fails frees nothing. The timer tries again after
//! another timeout; a queue that is full when its flush fails hands its
//! entries to the domain's quarantine (see [`quarantine`](crate::quarantine)),
//! which frees them after the flush that covers them, so a wedged IOMMU
//! grows no ring past its size and reuses no IOVA.
//!
//! # The stale window
//!
//! Between a lazy unmap and the next flush-all the device may still reach
//! the unmapped buffer through a stale IOTLB entry. That window is bounded:
//! a flush-all happens when the unmapping CPU's queue is full (at most
//! `fq_size` further unmaps on that CPU, 256 by default) or when the timer
//! set by the first entry queued after the previous timeout expires
//! (`fq_timeout`, 10 ms by default), whichever comes first. The IOVA itself
//! is never reused inside the window, so a stale translation only ever
//! reaches the buffer its owner just unmapped, never someone else's.

use crate::quarantine::{Held, Quarantine};
use crate::DmaCpus;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::{Arc, Weak};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::time::Duration;
use iommu_core::{Domain, IotlbGather};
use iommu_iova::{CpuId, IovaDomain};
#[cfg(feature = "std")]
use std::sync::{Condvar, Mutex};
#[cfg(feature = "std")]
use std::time::Instant;

/// Entries per CPU queue (Linux's `IOVA_DEFAULT_FQ_SIZE`).
pub const DEFAULT_FQ_SIZE: usize = 256;
/// Longest an entry waits for a flush (Linux's `IOVA_DEFAULT_FQ_TIMEOUT`).
pub const DEFAULT_FQ_TIMEOUT: Duration = Duration::from_millis(10);

struct Entry {
    pfn: u64,
    pages: u64,
    /// The domain's flush ticket when queued: freed once a flush with it completed.
    ticket: u64,
    /// Table pages the unmap detached wait on this gather; synced after the
    /// flush so the page table can reuse them.
    gather: Option<IotlbGather>,
}

#[repr(align(128))]
struct Ring {
    entries: spin::Mutex<VecDeque<Entry>>,
}

/// Counts describing a flush queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FqStats {
    /// IOVAs waiting for a flush.
    pub queued: usize,
    /// Flush-alls issued because a queue was full.
    pub full_flushes: u64,
    /// Flush-alls issued by the timer.
    pub timeout_flushes: u64,
    /// Flush-alls that did not complete (nothing they covered was freed).
    pub failed_flushes: u64,
}

pub(crate) struct FlushQueue {
    rings: Box<[Ring]>,
    size: usize,
    timeout: Duration,
    timer_on: AtomicBool,
    timer: Arc<dyn FqTimer>,
    /// The domain the timer calls back (weak: the domain owns this queue).
    target: Weak<dyn FqTimeout>,
    full_flushes: AtomicU64,
    timeout_flushes: AtomicU64,
    failed_flushes: AtomicU64,
}

impl FlushQueue {
    pub(crate) fn new(
        nr_cpus: usize,
        size: usize,
        timeout: Duration,
        timer: Arc<dyn FqTimer>,
        target: Weak<dyn FqTimeout>,
    ) -> Self {
        Self {
            rings: (0..nr_cpus.max(1))
                .map(|_| Ring {
                    entries: spin::Mutex::new(VecDeque::with_capacity(size)),
                })
                .collect(),
            size: size.max(1),
            timeout,
            timer_on: AtomicBool::new(false),
            timer,
            target,
            full_flushes: AtomicU64::new(0),
            timeout_flushes: AtomicU64::new(0),
            failed_flushes: AtomicU64::new(0),
        }
    }

    /// Frees the ring's entries a completed flush covers (Linux's `fq_ring_free_locked`).
    fn free_done(
        &self,
        cpu: usize,
        ring: &mut VecDeque<Entry>,
        iovad: &IovaDomain<DmaCpus>,
        domain: &Domain,
    ) {
        while ring
            .front()
            .is_some_and(|e| domain.flushed_through(e.ticket))
        {
            let Some(e) = ring.pop_front() else { break };
            if let Some(g) = e.gather {
                // The flush covered the detached tables too; a sync that
                // fails keeps them parked in the driver.
                if let Err(err) = domain.iotlb_sync(&g) {
                    tracing::debug!(errno = err.name(), "table pages stay parked");
                }
            }
            crate::cookie::free_iova_on(iovad, Some(cpu), e.pfn, e.pages);
        }
    }

    /// Queues an unmapped IOVA range whose page-table entries are already
    /// cleared (Linux's `queue_iova`).
    pub(crate) fn queue(
        &self,
        iovad: &IovaDomain<DmaCpus>,
        domain: &Domain,
        quarantine: &Quarantine,
        pfn: u64,
        pages: u64,
        gather: IotlbGather,
    ) {
        let cpu = iovad.cpu_id().current() % self.rings.len();
        let mut ring = self.rings[cpu].entries.lock();
        // Entries another CPU's flush already covered make room first.
        self.free_done(cpu, &mut ring, iovad, domain);
        if ring.len() >= self.size {
            self.full_flushes.fetch_add(1, Ordering::Relaxed);
            if domain.flush_iotlb_all().is_ok() {
                self.free_done(cpu, &mut ring, iovad, domain);
                quarantine.release(iovad, domain);
            } else {
                // Nothing was invalidated: the ring's IOVAs wait in the
                // quarantine, which has no size to keep.
                self.failed_flushes.fetch_add(1, Ordering::Relaxed);
                quarantine.hold_entries(ring.drain(..).map(|e| Held {
                    pfn: e.pfn,
                    pages: e.pages,
                    ticket: e.ticket,
                    gather: e.gather,
                    cpu: Some(cpu),
                    memory: None,
                }));
            }
        }
        ring.push_back(Entry {
            pfn,
            pages,
            ticket: domain.flush_ticket(),
            gather: (gather.freed_tables() > 0).then_some(gather),
        });
        drop(ring);
        self.arm_timer();
    }

    fn arm_timer(&self) {
        if !self.timer_on.load(Ordering::Relaxed) && !self.timer_on.swap(true, Ordering::AcqRel) {
            self.timer.schedule(self.timeout, self.target.clone());
        }
    }

    /// What the timer does (Linux's `fq_flush_timeout`): one flush-all,
    /// then the entries it covers are freed, each ring's into the cache of
    /// the CPU that used them, and the quarantine's too.
    ///
    /// A ring its CPU is queueing into at that moment is left to that CPU,
    /// which frees what a finished flush covers at the start of every
    /// `queue`: the timer thread never waits for a busy CPU's ring (with
    /// more threads than cores it would spin on a lock whose holder it had
    /// preempted). Such a ring has the timer armed again, so its entries are
    /// freed even if its CPU stops unmapping now; so does a flush that
    /// failed while entries wait. `all` waits for every ring (a caller that
    /// needs the space back at once).
    pub(crate) fn timeout(
        &self,
        iovad: &IovaDomain<DmaCpus>,
        domain: &Domain,
        quarantine: &Quarantine,
        all: bool,
    ) {
        self.timer_on.store(false, Ordering::Release);
        self.timeout_flushes.fetch_add(1, Ordering::Relaxed);
        let flushed = domain.flush_iotlb_all().is_ok();
        if !flushed {
            self.failed_flushes.fetch_add(1, Ordering::Relaxed);
        }
        let mut left = false;
        for (cpu, ring) in self.rings.iter().enumerate() {
            let entries = if all {
                Some(ring.entries.lock())
            } else {
                ring.entries.try_lock()
            };
            match entries {
                Some(mut e) => {
                    self.free_done(cpu, &mut e, iovad, domain);
                    // After a good flush, what is left was queued since and
                    // armed the timer itself.
                    left |= !flushed && !e.is_empty();
                }
                None => left = true,
            }
        }
        if flushed {
            quarantine.release(iovad, domain);
        } else {
            left |= !quarantine.is_empty();
        }
        if left {
            self.arm_timer();
        }
    }

    pub(crate) fn has_queued(&self) -> bool {
        self.rings.iter().any(|r| !r.entries.lock().is_empty())
    }

    pub(crate) fn stats(&self) -> FqStats {
        FqStats {
            queued: self.rings.iter().map(|r| r.entries.lock().len()).sum(),
            full_flushes: self.full_flushes.load(Ordering::Relaxed),
            timeout_flushes: self.timeout_flushes.load(Ordering::Relaxed),
            failed_flushes: self.failed_flushes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(feature = "std")]
static LIVE_TIMER_THREADS: core::sync::atomic::AtomicUsize =
    core::sync::atomic::AtomicUsize::new(0);

/// Flush-queue timer threads running now, in the whole process: at most
/// one, [`ThreadTimer`]'s, however many lazy domains there are.
#[cfg(feature = "std")]
pub fn live_timer_threads() -> usize {
    LIVE_TIMER_THREADS.load(Ordering::SeqCst)
}

/// What a flush queue's timer calls: the DMA layer's domains implement it
/// (Linux's `fq_flush_timeout`).
pub trait FqTimeout: Send + Sync {
    /// The timeout passed: flush the IOTLB and free what it covered.
    fn timeout(&self);
}

/// A timer for flush queues (Linux's `timer_list` on `fq_timer`). The std
/// build uses `ThreadTimer` unless told otherwise; a kernel brings its own
/// (`DmaOptions::fq_timer`): without one, a no_std build's DMA-FQ domains
/// unmap strictly, as Linux's do when their flush queue cannot be set up.
///
/// What the kernel provides is small: remember `target` with a deadline,
/// and from a context that may take the DMA layer's locks (a softirq, a
/// kernel thread, the idle loop; not a hard interrupt handler that could
/// have interrupted an unmap on the same CPU) call `timeout()` on it once
/// the deadline passed, if it still upgrades. Late is fine (the stale
/// window grows by as much); never is not: queued IOVAs are only reused
/// after a flush, so a queue that is not full waits for its timer.
pub trait FqTimer: Send + Sync {
    /// Calls `target.timeout()` once, `after` from now, if `target` is
    /// still alive then. A flush queue has at most one call pending.
    fn schedule(&self, after: Duration, target: Weak<dyn FqTimeout>);
}

/// The timer a domain gets when its options name none: the process's
/// [`ThreadTimer`]; `None` (stay strict) if its thread cannot start.
#[cfg(feature = "std")]
pub(crate) fn default_timer() -> Option<Arc<dyn FqTimer>> {
    match ThreadTimer::shared() {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("flush queue timer failed to start ({e}); staying strict");
            None
        }
    }
}

/// Without std there is no timer to fall back on: the domain stays strict.
#[cfg(not(feature = "std"))]
pub(crate) fn default_timer() -> Option<Arc<dyn FqTimer>> {
    tracing::warn!("no flush queue timer (DmaOptions::fq_timer); staying strict");
    None
}

/// The std flush-queue timer: one thread serving the deadlines of every
/// flush queue in the process, started by the first lazy domain and kept
/// for the next ones (Linux's timers run off one per-CPU wheel too).
#[cfg(feature = "std")]
pub struct ThreadTimer {
    state: Mutex<ThreadTimerState>,
    cv: Condvar,
}

#[cfg(feature = "std")]
#[derive(Default)]
struct ThreadTimerState {
    /// Deadlines in order; the sequence number keeps equal deadlines apart.
    due: std::collections::BTreeMap<(Instant, u64), Weak<dyn FqTimeout>>,
    seq: u64,
}

#[cfg(feature = "std")]
impl core::fmt::Debug for ThreadTimer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ThreadTimer").finish_non_exhaustive()
    }
}

#[cfg(feature = "std")]
static SHARED_TIMER: Mutex<Option<Arc<ThreadTimer>>> = Mutex::new(None);

#[cfg(feature = "std")]
impl ThreadTimer {
    /// The process's timer, its thread started on first use.
    ///
    /// # Errors
    /// The thread could not be created (the caller stays strict; the next
    /// call tries again).
    pub fn shared() -> std::io::Result<Arc<ThreadTimer>> {
        let mut shared = SHARED_TIMER.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = shared.as_ref() {
            return Ok(t.clone());
        }
        let timer = Arc::new(ThreadTimer {
            state: Mutex::new(ThreadTimerState::default()),
            cv: Condvar::new(),
        });
        let worker = timer.clone();
        LIVE_TIMER_THREADS.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name("iommu-dma-fq".into())
            .spawn(move || worker.run());
        if let Err(e) = spawned {
            LIVE_TIMER_THREADS.fetch_sub(1, Ordering::SeqCst);
            return Err(e);
        }
        *shared = Some(timer.clone());
        Ok(timer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ThreadTimerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        let mut st = self.lock();
        loop {
            let next = st.due.keys().next().copied();
            match next {
                None => st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(key) => {
                    let now = Instant::now();
                    if now < key.0 {
                        st = self
                            .cv
                            .wait_timeout(st, key.0 - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                        continue;
                    }
                    let target = st.due.remove(&key);
                    drop(st);
                    // A domain gone since it armed the timer is skipped.
                    if let Some(t) = target.and_then(|w| w.upgrade()) {
                        t.timeout();
                    }
                    st = self.lock();
                }
            }
        }
    }
}

#[cfg(feature = "std")]
impl FqTimer for ThreadTimer {
    fn schedule(&self, after: Duration, target: Weak<dyn FqTimeout>) {
        let mut st = self.lock();
        st.seq += 1;
        let key = (Instant::now() + after, st.seq);
        st.due.insert(key, target);
        self.cv.notify_one();
    }
}
