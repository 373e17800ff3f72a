//! Handle checking (what Linux's `CONFIG_DMA_API_DEBUG` does): every live
//! mapping of a device is recorded, so an unmap of an address the device
//! did not map, or with another size, direction or API, gets a typed error
//! and changes nothing.
//!
//! The records sit in a direct-mapped table of atomic words, one slot per
//! IOVA granule modulo the table size, each holding the rest of the IOVA
//! (its tag), the length in granules, the direction and the API. A record
//! is put in with one compare-and-swap on an empty slot and taken out with
//! one on the exact word read, so the checks take no lock and cost two
//! atomics per map+unmap pair. Each CPU's IOVAs come in blocks of eight
//! granules (the allocator's refills), which is one cache line of slots,
//! so CPUs rarely share a line. A record that does not fit (its slot holds
//! another live IOVA, or its tag or length is too wide) goes to a locked
//! map beside the table, which an unmap looks at only while it holds
//! something.
//!
//! Hand-written rather than a concurrent-map crate: two atomics per pair
//! and no allocation on the hot path are the point.

use crate::{DmaDirection, DmaError};
use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
// hashbrown: std's own map, available without std.
use hashbrown::HashMap;

/// Which API made a mapping; each must be undone by its counterpart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    Single,
    Sg,
    Coherent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tracked {
    pub len: u64,
    pub dir: DmaDirection,
    pub api: Api,
}

type Map = HashMap<u64, Tracked, iommu_types::BuildPageHasher>;

/// Slots per CPU, and the fewest and most there are (8 bytes each: 32 KiB
/// to 512 KiB per device).
const SLOTS_PER_CPU: usize = 2048;
const MIN_SLOTS: usize = 4096;
const MAX_SLOTS: usize = 65536;

// A slot's word: bit 0 set when it holds a record; bits 1-2 the direction,
// bits 3-4 the API, bits 5..=23 the length in granules, bits 24..=63 the tag.
const LEN_SHIFT: u32 = 5;
const LEN_BITS: u32 = 19;
const TAG_SHIFT: u32 = 24;

fn dir_bits(d: DmaDirection) -> u64 {
    match d {
        DmaDirection::Bidirectional => 0,
        DmaDirection::ToDevice => 1,
        DmaDirection::FromDevice => 2,
        DmaDirection::None => 3,
    }
}

fn dir_of(bits: u64) -> DmaDirection {
    match bits & 3 {
        0 => DmaDirection::Bidirectional,
        1 => DmaDirection::ToDevice,
        2 => DmaDirection::FromDevice,
        _ => DmaDirection::None,
    }
}

fn api_bits(a: Api) -> u64 {
    match a {
        Api::Single => 0,
        Api::Sg => 1,
        Api::Coherent => 2,
    }
}

fn api_of(bits: u64) -> Api {
    match bits & 3 {
        0 => Api::Single,
        1 => Api::Sg,
        _ => Api::Coherent,
    }
}

pub(crate) struct Tracker {
    slots: Box<[AtomicU64]>,
    /// log2 of the slot count.
    bits: u32,
    /// log2 of the IOVA granule.
    shift: u32,
    /// Records that fit no slot.
    overflow: spin::Mutex<Map>,
    /// How many records `overflow` holds (read without its lock).
    overflowed: AtomicUsize,
}

impl Tracker {
    /// A tracker for a device whose IOVAs are multiples of `1 << shift`.
    pub(crate) fn new(nr_cpus: usize, shift: u32) -> Self {
        let n = nr_cpus
            .max(1)
            .saturating_mul(SLOTS_PER_CPU)
            .clamp(MIN_SLOTS, MAX_SLOTS)
            .next_power_of_two();
        Self {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            bits: n.trailing_zeros(),
            shift,
            overflow: spin::Mutex::new(Map::default()),
            overflowed: AtomicUsize::new(0),
        }
    }

    /// The slot of `iova` and the tag its record carries there.
    #[inline]
    fn slot(&self, iova: u64) -> (&AtomicU64, u64) {
        let pfn = iova >> self.shift;
        let mask = (1u64 << self.bits) - 1;
        (&self.slots[(pfn & mask) as usize], pfn >> self.bits)
    }

    /// The slot word for a record, if it fits one.
    #[inline]
    fn pack(&self, iova: u64, tag: u64, t: Tracked) -> Option<u64> {
        let pages = t.len >> self.shift;
        let exact = pages << self.shift == t.len && iova & ((1u64 << self.shift) - 1) == 0;
        if !exact || pages == 0 || pages >= 1 << LEN_BITS || tag >= 1 << (64 - TAG_SHIFT) {
            return None;
        }
        Some(
            1 | dir_bits(t.dir) << 1 | api_bits(t.api) << 3 | pages << LEN_SHIFT | tag << TAG_SHIFT,
        )
    }

    #[inline]
    pub(crate) fn insert(&self, iova: u64, t: Tracked) {
        let (slot, tag) = self.slot(iova);
        if let Some(word) = self.pack(iova, tag, t) {
            if slot
                .compare_exchange(0, word, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
        self.insert_overflow(iova, t);
    }

    /// A record the table cannot hold goes to the locked map.
    #[cold]
    #[inline(never)]
    fn insert_overflow(&self, iova: u64, t: Tracked) {
        let mut m = self.overflow.lock();
        m.insert(iova, t);
        self.overflowed.store(m.len(), Ordering::Release);
    }

    /// Removes the record of `iova` if it matches what the caller says.
    #[inline]
    pub(crate) fn take(
        &self,
        iova: u64,
        len: u64,
        dir: DmaDirection,
        api: Api,
    ) -> Result<Tracked, DmaError> {
        // What the caller says the mapping was; a record must be exactly it.
        let want = Tracked { len, dir, api };
        let (slot, tag) = self.slot(iova);
        let mut cur = slot.load(Ordering::Acquire);
        while cur & 1 != 0 && cur >> TAG_SHIFT == tag {
            let t = Tracked {
                len: ((cur >> LEN_SHIFT) & ((1 << LEN_BITS) - 1)) << self.shift,
                dir: dir_of(cur >> 1),
                api: api_of(cur >> 3),
            };
            if t != want {
                return Err(DmaError::Mismatch);
            }
            // Only the word read goes: a racing unmap of the same handle
            // takes it once, and the loser reads what is there now.
            match slot.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(t),
                Err(now) => cur = now,
            }
        }
        if self.overflowed.load(Ordering::Acquire) == 0 {
            return Err(DmaError::NotMapped);
        }
        self.take_overflow(iova, want)
    }

    /// [`take`](Self::take) from the locked map, where records the table
    /// could not hold are.
    #[cold]
    #[inline(never)]
    fn take_overflow(&self, iova: u64, want: Tracked) -> Result<Tracked, DmaError> {
        let mut m = self.overflow.lock();
        let t = *m.get(&iova).ok_or(DmaError::NotMapped)?;
        if t != want {
            return Err(DmaError::Mismatch);
        }
        m.remove(&iova);
        self.overflowed.store(m.len(), Ordering::Release);
        Ok(t)
    }

    /// Live mappings recorded.
    pub(crate) fn len(&self) -> usize {
        let in_slots = self
            .slots
            .iter()
            .filter(|s| s.load(Ordering::Acquire) & 1 != 0)
            .count();
        in_slots + self.overflow.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SINGLE: Tracked = Tracked {
        len: 0x1000,
        dir: DmaDirection::ToDevice,
        api: Api::Single,
    };

    #[test]
    fn a_record_comes_back_once_and_only_as_it_was_made() {
        let t = Tracker::new(1, 12);
        t.insert(0x8000, SINGLE);
        assert_eq!(t.len(), 1);
        let take = |len, dir, api| t.take(0x8000, len, dir, api);
        assert_eq!(
            take(0x2000, DmaDirection::ToDevice, Api::Single),
            Err(DmaError::Mismatch)
        );
        assert_eq!(
            take(0x1000, DmaDirection::FromDevice, Api::Single),
            Err(DmaError::Mismatch)
        );
        assert_eq!(
            take(0x1000, DmaDirection::ToDevice, Api::Sg),
            Err(DmaError::Mismatch)
        );
        assert_eq!(t.len(), 1, "a refused unmap changes nothing");
        assert_eq!(
            take(0x1000, DmaDirection::ToDevice, Api::Single),
            Ok(SINGLE)
        );
        assert_eq!(
            take(0x1000, DmaDirection::ToDevice, Api::Single),
            Err(DmaError::NotMapped)
        );
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn records_that_share_a_slot_or_do_not_fit_one_overflow() {
        let t = Tracker::new(1, 12);
        let slots = 1u64 << t.bits;
        let huge = Tracked {
            len: 1 << 40,
            dir: DmaDirection::Bidirectional,
            api: Api::Coherent,
        };
        // The same slot, a length too wide, a tag too wide, an odd length.
        let odd = Tracked {
            len: 0x1234,
            ..SINGLE
        };
        let at = [0x4000, 0x4000 + (slots << 12), 0x10_0000, !0xfff, 0x20_0000];
        t.insert(at[0], SINGLE);
        t.insert(at[1], SINGLE);
        t.insert(at[2], huge);
        t.insert(at[3], SINGLE);
        t.insert(at[4], odd);
        assert_eq!(t.len(), 5);
        // The slot's own record does not answer for its neighbour.
        assert_eq!(
            t.take(at[1], 0x2000, DmaDirection::ToDevice, Api::Single),
            Err(DmaError::Mismatch)
        );
        assert_eq!(
            t.take(at[1], 0x1000, DmaDirection::ToDevice, Api::Single),
            Ok(SINGLE)
        );
        assert_eq!(
            t.take(at[0], 0x1000, DmaDirection::ToDevice, Api::Single),
            Ok(SINGLE)
        );
        assert_eq!(
            t.take(at[2], 1 << 40, DmaDirection::Bidirectional, Api::Coherent),
            Ok(huge)
        );
        assert_eq!(
            t.take(at[3], 0x1000, DmaDirection::ToDevice, Api::Single),
            Ok(SINGLE)
        );
        assert_eq!(
            t.take(at[4], 0x1234, DmaDirection::ToDevice, Api::Single),
            Ok(odd)
        );
        assert_eq!(t.len(), 0);
        assert_eq!(
            t.take(at[0], 0x1000, DmaDirection::ToDevice, Api::Single),
            Err(DmaError::NotMapped)
        );
    }

    #[test]
    fn racing_unmaps_of_one_handle_take_it_once() {
        use std::sync::atomic::AtomicUsize;
        let t = std::sync::Arc::new(Tracker::new(2, 12));
        for round in 0..200u64 {
            let iova = 0x10_0000 + (round % 7) * 0x1000;
            t.insert(iova, SINGLE);
            let won = std::sync::Arc::new(AtomicUsize::new(0));
            std::thread::scope(|s| {
                for _ in 0..4 {
                    let (t, won) = (&t, &won);
                    s.spawn(move || {
                        if t.take(iova, 0x1000, DmaDirection::ToDevice, Api::Single)
                            .is_ok()
                        {
                            won.fetch_add(1, Ordering::SeqCst);
                        }
                    });
                }
            });
            assert_eq!(won.load(Ordering::SeqCst), 1);
        }
        assert_eq!(t.len(), 0);
    }
}
