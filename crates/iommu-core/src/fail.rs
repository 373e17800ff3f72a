//! Failure injection at the core's own fallible steps.
//!
//! Armed points fail exactly once, after a chosen number of successful hits,
//! so a test can walk a failure through every step of an operation and check
//! that state is exactly as before. Disarmed points cost one atomic load.

use core::sync::atomic::{AtomicI64, Ordering};

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
}

impl Default for FailPoints {
    fn default() -> Self {
        Self {
            countdown: core::array::from_fn(|_| AtomicI64::new(-1)),
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

    /// Called at the step: `true` means "fail now".
    pub(crate) fn hit(&self, point: FailPoint) -> bool {
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
