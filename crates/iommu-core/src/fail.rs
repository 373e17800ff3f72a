//! Failure injection at the core's own fallible steps.
//!
//! Armed points fail exactly once, after a chosen number of successful hits,
//! so a test can walk a failure through every step of an operation and check
//! that state is exactly as before. Disarmed points cost one atomic load.
//!
//! [`FailPoints::arm_nth`] is Linux's `fail_nth`: the n-th hit of any
//! point from then on fails, whichever it is, so a sequence of calls can
//! be run with n = 1, 2, 3, ... until it runs through without the failure
//! firing ([`FailPoints::nth_fired`]); every step that can fail is then
//! known to have failed once.

use core::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// A fallible step inside the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailPoint {
    /// Allocating a group (its id and object): `ENOMEM`.
    GroupAlloc,
    /// Creating a sysfs directory or attribute: `ENOMEM`.
    SysfsCreate,
    /// Creating a sysfs symlink: `ENOMEM`.
    SysfsLink,
    /// Allocating the core's side of a domain: `ENOMEM`.
    DomainAlloc,
}

const POINTS: usize = 4;

impl FailPoint {
    const fn index(self) -> usize {
        match self {
            FailPoint::GroupAlloc => 0,
            FailPoint::SysfsCreate => 1,
            FailPoint::SysfsLink => 2,
            FailPoint::DomainAlloc => 3,
        }
    }
}

/// Per-subsystem fail points.
#[derive(Debug)]
pub struct FailPoints {
    /// -1 = disarmed; n >= 0 = succeed n more times, then fail once.
    countdown: [AtomicI64; POINTS],
    /// 0 = disarmed; n >= 1 = the n-th hit of any point fails.
    nth: AtomicU64,
    /// The `nth` failure fired since it was armed.
    nth_fired: AtomicBool,
}

impl Default for FailPoints {
    fn default() -> Self {
        Self {
            countdown: core::array::from_fn(|_| AtomicI64::new(-1)),
            nth: AtomicU64::new(0),
            nth_fired: AtomicBool::new(false),
        }
    }
}

impl FailPoints {
    /// Makes `point` fail once after `skip` more successful hits.
    pub fn arm(&self, point: FailPoint, skip: u32) {
        self.countdown[point.index()].store(i64::from(skip), Ordering::SeqCst);
    }

    /// Disarms `point`.
    pub fn disarm(&self, point: FailPoint) {
        self.countdown[point.index()].store(-1, Ordering::SeqCst);
    }

    /// Whether `point` is still armed (it has not fired yet).
    pub fn is_armed(&self, point: FailPoint) -> bool {
        self.countdown[point.index()].load(Ordering::SeqCst) >= 0
    }

    /// Makes the `n`-th hit of any point from now on fail, once (Linux's
    /// `fail_nth`); `n = 0` disarms it.
    pub fn arm_nth(&self, n: u64) {
        self.nth_fired.store(false, Ordering::SeqCst);
        self.nth.store(n, Ordering::SeqCst);
    }

    /// Hits left before the armed failure fires: 0 once it fired or when
    /// none is armed (what Linux's `/proc/<pid>/fail-nth` reads back).
    pub fn nth_remaining(&self) -> u64 {
        self.nth.load(Ordering::SeqCst)
    }

    /// Whether the failure [`arm_nth`](Self::arm_nth) armed has fired.
    pub fn nth_fired(&self) -> bool {
        self.nth_fired.load(Ordering::SeqCst)
    }

    /// Counts a hit for [`arm_nth`](Self::arm_nth): `true` when this one
    /// is the n-th. Layers above the core (iommufd's own allocations) call
    /// it at their fallible steps so one count covers the whole stack.
    pub fn hit_nth(&self) -> bool {
        if self.nth.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let fire = self
            .nth
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok_and(|prev| prev == 1);
        if fire {
            self.nth_fired.store(true, Ordering::SeqCst);
        }
        fire
    }

    /// Called at the step: `true` means "fail now".
    pub(crate) fn hit(&self, point: FailPoint) -> bool {
        if self.hit_nth() {
            return true;
        }
        let c = &self.countdown[point.index()];
        if c.load(Ordering::Relaxed) < 0 {
            return false;
        }
        let prev = c.fetch_sub(1, Ordering::SeqCst);
        if prev == 0 {
            return true; // now -1: disarmed after firing
        }
        if prev < 0 {
            c.store(-1, Ordering::SeqCst);
        }
        false
    }
}
