//! What one unmap step removed.

use crate::Iova;

/// The leaves one `unmap_pages` call removed: `size` bytes from `iova`.
///
/// Linux's `unmap_pages` returns only a byte count and its caller adds it to
/// the IOVA it asked for. That is wrong when the call removed a larger leaf
/// that starts *below* the requested IOVA (a leaf is never split, so
/// unmapping part of one removes all of it): the caller would skip the part
/// of the range after the leaf. Returning where the removal started lets the
/// caller continue from the end of what was actually removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Unmapped {
    /// First IOVA removed; at or below the IOVA asked for.
    pub iova: Iova,
    /// Bytes removed (0: nothing was mapped at the IOVA asked for).
    pub size: u64,
}

impl Unmapped {
    /// Nothing removed.
    pub const NOTHING: Unmapped = Unmapped {
        iova: Iova::ZERO,
        size: 0,
    };

    /// `size` bytes removed from `iova`.
    pub const fn new(iova: Iova, size: u64) -> Self {
        Self { iova, size }
    }

    /// Whether nothing was removed.
    pub const fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// The first IOVA after what was removed, or `None` when the removal
    /// ran to the top of the 64-bit space (or removed nothing).
    pub const fn end(&self) -> Option<Iova> {
        if self.size == 0 {
            return None;
        }
        self.iova.checked_add(self.size)
    }

    /// Whether the removal covers `iova` (so a caller can check that a
    /// driver's answer is about the address it asked for).
    pub const fn covers(&self, iova: Iova) -> bool {
        self.size != 0 && iova.raw() >= self.iova.raw() && iova.raw() - self.iova.raw() < self.size
    }
}
