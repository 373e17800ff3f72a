//! An IOVA allocator for DMA layers, as Linux's `iova.c` defines one, usable
//! in a kernel (`no_std` + `alloc`) and in a VMM.
//!
//! - [`IovaTree`]: allocated and reserved ranges of granule frames in a
//!   red-black tree (an arena with parent links, as Linux's rbtree of
//!   `struct iova`); top-down allocation below a limit, size alignment,
//!   32-bit fail-fast, reservation.
//! - [`IovaDomain`]: the tree behind a lock plus per-CPU magazine caches
//!   for ranges of up to 32 granules, with a shared depot whose magazines
//!   go back to the CPU that filled them. A CPU that runs exclusively
//!   ([`CpuId::current_exclusive`]) also keeps one range per size class
//!   without a lock. The CPU id comes from a [`CpuId`]; hosted builds use
//!   [`ThreadCpu`].
//!
//! Invariant: a frame is in at most one live range, and a range is held by
//! at most one of "a caller", "one cache"; so nothing is handed out twice.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod cpu;
mod domain;
pub mod measure;
mod rcache;
#[cfg(feature = "test-utils")]
pub mod testing;
mod tree;

#[cfg(feature = "std")]
pub use cpu::ThreadCpu;
pub use cpu::{CpuId, SingleCpu};
pub use domain::{IovaDomain, IovaStats};
pub use rcache::{CACHE_CLASSES, MAG_SIZE};
pub use tree::IovaTree;

use core::fmt;
use iommu_types::Errno;

/// An inclusive range of frames (Linux's `struct iova`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IovaRange {
    /// First frame.
    pub pfn_lo: u64,
    /// Last frame (inclusive).
    pub pfn_hi: u64,
}

impl IovaRange {
    /// Frames in the range.
    pub const fn size(&self) -> u64 {
        self.pfn_hi - self.pfn_lo + 1
    }
}

/// Why an allocator call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IovaError {
    /// A size of zero frames.
    InvalidSize,
    /// A granule that is not a power of two of at least 512 bytes.
    InvalidGranule,
    /// A range whose start is above its end, or beyond the address space.
    InvalidRange,
    /// No free range fits under the limit.
    NoSpace,
    /// No allocated range contains the frame.
    NotAllocated,
    /// A reservation over a live allocation.
    Overlap,
}

impl IovaError {
    /// The errno Linux's callers would see for this failure.
    pub const fn errno(self) -> Errno {
        match self {
            IovaError::NoSpace => Errno::ENOMEM,
            IovaError::Overlap => Errno::EBUSY,
            IovaError::NotAllocated => Errno::ENOENT,
            _ => Errno::EINVAL,
        }
    }
}

impl fmt::Display for IovaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IovaError::InvalidSize => "size of zero granules",
            IovaError::InvalidGranule => "granule is not a power of two of at least 512 bytes",
            IovaError::InvalidRange => "range start above its end or beyond the address space",
            IovaError::NoSpace => "no free IOVA range fits under the limit",
            IovaError::NotAllocated => "no allocated IOVA range contains the frame",
            IovaError::Overlap => "reservation overlaps a live allocation",
        })
    }
}

impl From<IovaError> for Errno {
    fn from(e: IovaError) -> Self {
        e.errno()
    }
}
