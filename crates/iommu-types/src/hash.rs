//! A hasher for keys that are page numbers or page-aligned addresses.

use core::hash::{BuildHasherDefault, Hasher};

/// Hashes one `u64` key that is a page number or a page-aligned address
/// (an IOVA, a guest page) with a folded multiply: the 128-bit product of
/// the key and an odd constant, its two halves XORed together.
///
/// A plain multiply (`key * C`, Fibonacci hashing) leaves the low bits of
/// the hash depending only on the low bits of the key: every key of a
/// stride of two pages, or every page-aligned address, lands in half the
/// buckets or in one, and a hashbrown map (which picks the bucket from the
/// low bits) fills with runs of full groups and tombstones. The high half
/// of the product depends on every bit of the key, so folding it in
/// spreads both the low bits (the bucket) and the top bits (hashbrown's
/// tag) for any stride. One `mul` and one `xor` on x86-64 and arm64: not a
/// general-purpose hash (an adversary who picks keys can collide it), which
/// is enough where the keys come from an allocator or are bounded per
/// owner.
#[derive(Clone, Copy, Debug, Default)]
pub struct PageHasher(u64);

/// `BuildHasher` for [`PageHasher`], for `HashMap::with_hasher` and
/// `HashMap::default`.
pub type BuildPageHasher = BuildHasherDefault<PageHasher>;

const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
fn fold(v: u64) -> u64 {
    let p = u128::from(v) * u128::from(MUL);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for PageHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    /// Other key types: each byte folded in (not the fast path).
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = fold(self.0 ^ u64::from(b) ^ MUL);
        }
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = fold(self.0 ^ v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(v: u64) -> u64 {
        let mut h = PageHasher::default();
        h.write_u64(v);
        h.finish()
    }

    /// Keys of every stride common in DMA (one page, two pages, a page-
    /// aligned address, 2 MiB apart) fill most of a table's buckets and
    /// spread the top seven bits too.
    #[test]
    fn strided_keys_spread_over_the_buckets_and_the_tags() {
        const BUCKETS: u64 = 2048;
        for stride in [1u64, 2, 4, 0x1000, 0x2000, 0x20_0000] {
            let mut seen = [false; BUCKETS as usize];
            let mut tags = [false; 128];
            for i in 0..BUCKETS {
                let h = hash(i * stride);
                seen[(h % BUCKETS) as usize] = true;
                tags[(h >> 57) as usize] = true;
            }
            let used = seen.iter().filter(|&&s| s).count() as u64;
            // Random placement fills 1 - 1/e of them (about 63 %).
            assert!(
                used * 100 >= BUCKETS * 55,
                "stride {stride:#x}: {used} buckets"
            );
            assert!(tags.iter().all(|&t| t), "stride {stride:#x}: a tag unused");
        }
    }

    #[test]
    fn bytes_and_words_both_hash() {
        let mut a = PageHasher::default();
        a.write(&[1, 2, 3]);
        let mut b = PageHasher::default();
        b.write(&[1, 2, 4]);
        assert_ne!(a.finish(), b.finish());
        assert_ne!(hash(1), hash(2));
    }
}
