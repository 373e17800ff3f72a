//! The device's index of one-page mappings: page number to one word (the
//! physical page and the flags). Hand-written rather than hashbrown for
//! speed only: key and value side by side, probed linearly, so that a
//! lookup among a million pages reads one cache line, where a table with
//! its control bytes apart reads two, the second after the first.

use alloc::vec;
use alloc::vec::Vec;
use core::hash::Hasher;
use iommu_types::PageHasher;

/// An empty slot's key. Keys are page numbers plus one (a page number is
/// at most 2^52), so page 0 is never mistaken for it.
const EMPTY: u64 = 0;

/// Slots of the first table: 256 bytes.
const MIN_SLOTS: usize = 16;

/// What the first multiplier is drawn from: 2^64 over the golden ratio.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// Slots an insert may probe before the table draws another multiplier.
/// A table at most half full under a multiplier the guest does not know
/// practically never reaches it.
const MAX_PROBE: usize = 64;

/// Page numbers to words, in an open-addressing table at most half full:
/// linear probing from the slot the top bits of the page's hash pick;
/// removal shifts the entries after the hole back, so there are no
/// tombstones and a lookup ends at the first empty slot.
///
/// The hash is a multiply by an odd number, whose top bits pick the slot
/// (pages in arithmetic progression, what an IOVA allocator hands out,
/// spread evenly). The guest picks the page numbers, and under a
/// multiplier it knew it could pick ones that crowd into one run of slots,
/// which every MAP and every lookup of a page near them would walk. So
/// the multiplier is one the guest cannot see, drawn anew for each table
/// from its host address and the previous multiplier (heap addresses are
/// randomised; this needs no source of randomness in `no_std`); and an
/// insert that still probes more than [`MAX_PROBE`] slots draws another.
#[derive(Clone)]
pub(crate) struct PageIndex {
    /// `[page + 1, word]`, or `[EMPTY, 0]`; a power of two of them (or
    /// none before the first insert).
    slots: Vec<[u64; 2]>,
    len: usize,
    /// The odd multiplier of the hash.
    mul: u64,
}

impl Default for PageIndex {
    fn default() -> Self {
        PageIndex {
            slots: Vec::new(),
            len: 0,
            mul: GOLDEN,
        }
    }
}

impl core::fmt::Debug for PageIndex {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageIndex")
            .field("len", &self.len)
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl PageIndex {
    /// Pages held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The slot `page`'s probe starts at, in a table of `slots` slots.
    #[inline]
    fn home(&self, page: u64) -> usize {
        // The top bits: a power-of-two table of at most 2^63 slots.
        (page.wrapping_mul(self.mul) >> (64 - self.slots.len().trailing_zeros())) as usize
    }

    /// The slot holding `page`, if any.
    #[inline]
    fn find(&self, page: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let key = page + 1;
        let mut i = self.home(page);
        // At most half full: an empty slot ends every probe.
        loop {
            match self.slots[i][0] {
                k if k == key => return Some(i),
                EMPTY => return None,
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// The word of `page`.
    #[inline]
    pub(crate) fn get(&self, page: u64) -> Option<u64> {
        self.find(page).map(|i| self.slots[i][1])
    }

    /// Whether `page` is held.
    pub(crate) fn contains(&self, page: u64) -> bool {
        self.find(page).is_some()
    }

    /// Sets the word of `page` (a page number, below 2^63), and returns
    /// the one it replaces.
    pub(crate) fn insert(&mut self, page: u64, word: u64) -> Option<u64> {
        debug_assert!(page < u64::MAX);
        // Grown first, so that one probe finds the page or its slot.
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let key = page + 1;
        let mut i = self.home(page);
        let mut steps = 0;
        let mut reseeded = false;
        loop {
            match self.slots[i][0] {
                k if k == key => return Some(core::mem::replace(&mut self.slots[i][1], word)),
                EMPTY => {
                    self.slots[i] = [key, word];
                    self.len += 1;
                    return None;
                }
                _ => {}
            }
            i = (i + 1) & mask;
            steps += 1;
            // A run this long under a secret multiplier is chance enough
            // to live with; under the default, it may have been made:
            // place everything again (same size, so `mask` holds), once.
            if steps > MAX_PROBE && !reseeded {
                self.reseed();
                reseeded = true;
                i = self.home(page);
                steps = 0;
            }
        }
    }

    /// Places every entry again, in a table of the same size, under a new
    /// secret multiplier.
    #[cold]
    #[inline(never)]
    fn reseed(&mut self) {
        self.resize(self.slots.len());
    }

    /// Puts a key not in the table into its first empty slot.
    fn put(&mut self, key: u64, word: u64) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(key - 1);
        while self.slots[i][0] != EMPTY {
            i = (i + 1) & mask;
        }
        self.slots[i] = [key, word];
    }

    /// Doubles the table (or makes the first one) and puts every entry
    /// back.
    fn grow(&mut self) {
        self.resize((self.slots.len() * 2).max(MIN_SLOTS));
    }

    /// A table of `n` slots (a power of two, more than twice `len`), under
    /// a new multiplier, with every entry put back.
    fn resize(&mut self, n: usize) {
        let old = core::mem::replace(&mut self.slots, vec![[EMPTY, 0]; n]);
        let mut h = PageHasher::default();
        h.write_u64(self.mul ^ self.slots.as_ptr() as u64);
        self.mul = h.finish() | 1;
        for [k, w] in old {
            if k != EMPTY {
                self.put(k, w);
            }
        }
    }

    /// Removes `page`, and returns its word.
    pub(crate) fn remove(&mut self, page: u64) -> Option<u64> {
        let mut hole = self.find(page)?;
        let word = self.slots[hole][1];
        let mask = self.slots.len() - 1;
        // Entries after the hole whose probe passed through it move back
        // into it, until an empty slot.
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let key = self.slots[j][0];
            if key == EMPTY {
                break;
            }
            let home = self.home(key - 1);
            // The hole lies on the probe from `home` to `j`.
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
        }
        self.slots[hole] = [EMPTY, 0];
        self.len -= 1;
        // A table an eighth full halves, so that a domain that mapped a
        // million pages once does not keep their table.
        if self.slots.len() > MIN_SLOTS && self.len * 8 < self.slots.len() {
            self.resize(self.slots.len() / 2);
        }
        Some(word)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    proptest::proptest! {
        /// Inserts, replacements and removals of pages from a few narrow
        /// ranges (so that probes collide and wrap), with growth on the
        /// way: every page answers as a B-tree does, and every probe of
        /// the table reaches its entry without crossing an empty slot.
        #[test]
        fn the_index_answers_as_a_btree(
            ops in proptest::collection::vec((0u8..3, 0u64..300, proptest::bool::ANY, proptest::bool::ANY), 1..600),
        ) {
            let mut t = PageIndex::default();
            let mut model = BTreeMap::new();
            for (range, off, add, big) in ops {
                let page = [0, 1 << 20, (1 << 52) - 300][usize::from(range)] + off;
                let word = page ^ if big { u64::MAX } else { 0x5a };
                if add {
                    proptest::prop_assert_eq!(t.insert(page, word), model.insert(page, word));
                } else {
                    proptest::prop_assert_eq!(t.remove(page), model.remove(&page));
                }
                proptest::prop_assert_eq!(t.len(), model.len());
                proptest::prop_assert_eq!(t.get(page), model.get(&page).copied());
            }
            for range in [0u64, 1 << 20, (1 << 52) - 300] {
                for page in range..range + 300 {
                    proptest::prop_assert_eq!(t.get(page), model.get(&page).copied());
                }
            }
            // No entry sits behind an empty slot on its probe.
            let mask = t.slots.len().wrapping_sub(1);
            for (i, &[k, _]) in t.slots.iter().enumerate() {
                if k != EMPTY {
                    let mut j = t.home(k - 1);
                    while j != i {
                        proptest::prop_assert_ne!(t.slots[j][0], EMPTY);
                        j = (j + 1) & mask;
                    }
                }
            }
            proptest::prop_assert!(t.slots.is_empty() || t.len * 2 <= t.slots.len());
            proptest::prop_assert!(t.slots.len() <= MIN_SLOTS || t.len * 8 >= t.slots.len());
        }
    }

    #[test]
    fn an_empty_index_holds_nothing() {
        let mut t = PageIndex::default();
        assert_eq!(t.get(0), None);
        assert_eq!(t.remove(0), None);
        assert!(!t.contains(5));
        assert_eq!(t.insert(0, 7), None);
        assert!(t.contains(0));
        assert_eq!(t.insert(0, 8), Some(7));
        assert_eq!(t.remove(0), Some(8));
        assert_eq!(t.len(), 0);
    }

    /// The first `n` pages whose top 10 bits under `mul` are 0: one slot in
    /// every table of up to 1024 slots hashed by `mul`.
    fn crowd(mul: u64, n: usize) -> Vec<u64> {
        (0..u64::MAX)
            .filter(|p| p.wrapping_mul(mul) >> 54 == 0)
            .take(n)
            .collect()
    }

    /// Inserts `crowd` (page `i` with word `i`), then checks that `t` drew
    /// a multiplier other than `known` and that every page is found, at
    /// most [`MAX_PROBE`] slots from its home.
    fn insert_and_check_spread(t: &mut PageIndex, crowd: &[u64], known: u64) {
        for (i, &p) in crowd.iter().enumerate() {
            assert_eq!(t.insert(p, i as u64), None);
        }
        assert_ne!(t.mul, known);
        let mask = t.slots.len() - 1;
        for (i, &p) in crowd.iter().enumerate() {
            let at = t.find(p).unwrap();
            assert_eq!(t.slots[at][1], i as u64);
            let far = at.wrapping_sub(t.home(p)) & mask;
            assert!(far <= MAX_PROBE, "page {p:#x} {far} slots from home");
        }
    }

    /// Pages picked to share one slot under a multiplier the table holds
    /// (as if the guest had learnt it): the table draws another, and no
    /// page then sits far from its slot.
    #[test]
    fn pages_picked_to_collide_do_not_crowd_the_table() {
        // A table already at 1024 slots, so that it does not grow on the way.
        let mut t = PageIndex::default();
        for p in 0..300 {
            t.insert(1 << 40 | p, 0);
        }
        assert_eq!(t.slots.len(), 1024);
        let learnt = t.mul;
        insert_and_check_spread(&mut t, &crowd(learnt, 200), learnt);
    }

    /// Pages that would share one slot under the golden-ratio multiplier
    /// do not: no table uses it.
    #[test]
    fn pages_picked_for_the_golden_ratio_do_not_crowd_the_table() {
        let mut t = PageIndex::default();
        insert_and_check_spread(&mut t, &crowd(GOLDEN, 400), GOLDEN);
    }

    /// A table grown for many pages shrinks as they go, and still finds
    /// the ones left.
    #[test]
    fn the_table_shrinks_as_pages_go() {
        let mut t = PageIndex::default();
        for p in 0..10_000 {
            t.insert(p * 3, p);
        }
        let big = t.slots.len();
        assert!(big >= 20_000);
        for p in 0..9_990 {
            assert_eq!(t.remove(p * 3), Some(p));
        }
        assert!(t.slots.len() <= 128, "{} slots for 10 pages", t.slots.len());
        for p in 9_990..10_000 {
            assert_eq!(t.get(p * 3), Some(p));
        }
    }
}
