//! Hardware tags (ASIDs, VMIDs, domain ids): lowest free first.

use alloc::collections::BTreeSet;
use iommu_types::Errno;

/// Lowest-free allocation of the tags an IOMMU's caches are keyed by, from
/// 1 (0 stays with the hardware's unused or reserved tag) up to
/// `2^bits - 1`.
#[derive(Debug)]
pub struct Ids {
    used: BTreeSet<u16>,
    max: u32,
}

impl Ids {
    /// Tags of `bits` bits (at most 16).
    pub fn new(bits: u32) -> Self {
        Ids {
            used: BTreeSet::new(),
            max: (1u32 << bits.min(16)) - 1,
        }
    }

    /// The lowest free tag.
    ///
    /// # Errors
    /// `ENOSPC` when every tag is in use.
    pub fn alloc(&mut self) -> Result<u16, Errno> {
        let mut want = 1u32;
        for &u in self.used.range(1..) {
            if u32::from(u) != want {
                break;
            }
            want += 1;
        }
        if want > self.max {
            return Err(Errno::ENOSPC);
        }
        self.used.insert(want as u16);
        Ok(want as u16)
    }

    /// Gives `id` back.
    pub fn free(&mut self, id: u16) {
        self.used.remove(&id);
    }

    /// Tags in use.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_lowest_free_from_one_and_run_out() {
        let mut ids = Ids::new(2);
        assert_eq!(
            (ids.alloc(), ids.alloc(), ids.alloc()),
            (Ok(1), Ok(2), Ok(3))
        );
        assert_eq!(ids.alloc(), Err(Errno::ENOSPC));
        ids.free(2);
        assert_eq!(ids.alloc(), Ok(2));
        assert_eq!(ids.in_use(), 3);
    }
}
