//! Property: the page-size split covers the range exactly with aligned pages
//! and never passes over a larger page that would have fitted.

use iommu_core::pgsize_for;
use proptest::prelude::*;

/// Whether a page of `size` could start at this point of the walk.
fn fits(size: u64, iova: u64, pa: u64, remaining: u64) -> bool {
    size <= remaining && iova.is_multiple_of(size) && pa.is_multiple_of(size)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn pgsize_split_is_exact_aligned_and_maximal(
        extra_sizes in proptest::collection::vec(13u32..40, 0..6),
        min_shift in 9u32..14,
        iova_pages in 0u64..(1 << 20),
        pa_pages in 0u64..(1 << 20),
        size_pages in 1u64..(1 << 12),
        big_align in 0u32..3,
    ) {
        let mut bitmap = 1u64 << min_shift;
        for s in &extra_sizes {
            bitmap |= 1u64 << s.max(&min_shift);
        }
        let min = 1u64 << min_shift;
        // Sometimes line both addresses up on a large boundary so big pages are possible.
        let shift = [0u32, 21, 30][big_align as usize];
        let iova = (iova_pages * min) << shift;
        let pa = (pa_pages * min) << shift;
        let size = (size_pages * min) << (shift / 3);

        let (mut cur_iova, mut cur_pa, mut left) = (iova, pa, size);
        while left > 0 {
            let (pgsize, count) = pgsize_for(bitmap, cur_iova, cur_pa, left);
            prop_assert!(bitmap & pgsize != 0, "a supported size");
            prop_assert!(count >= 1);
            prop_assert!(pgsize * count <= left, "never past the end");
            prop_assert!(cur_iova % pgsize == 0 && cur_pa % pgsize == 0, "aligned in both spaces");
            // A larger page could only have started at the first position of
            // the batch aligned to it; later ones have less room left.
            for bigger in (0..64).map(|b| 1u64 << b).filter(|s| bitmap & s != 0 && *s > pgsize) {
                let skip = cur_iova.next_multiple_of(bigger) - cur_iova;
                if skip < pgsize * count {
                    let (i, p, l) = (cur_iova + skip, cur_pa + skip, left - skip);
                    prop_assert!(!fits(bigger, i, p, l), "{bigger:#x} fitted at {i:#x}/{p:#x} with {l:#x} left, got {pgsize:#x}");
                }
            }
            cur_iova += pgsize * count;
            cur_pa += pgsize * count;
            left -= pgsize * count;
        }
        prop_assert_eq!(cur_iova, iova + size, "covers the range exactly");
    }
}
