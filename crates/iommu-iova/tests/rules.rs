//! The allocator's rules at its edges: no-limit limits, granules, and frees
//! of ranges that are not handed out.

use iommu_iova::{IovaDomain, IovaError, SingleCpu, MAG_SIZE};

#[test]
fn a_limit_of_u64_max_means_no_limit() {
    let iovad = IovaDomain::new(4096, 1, SingleCpu).unwrap();
    let top = u64::MAX >> 12;
    let p = iovad.alloc_fast(1, u64::MAX, false).unwrap();
    assert!(p <= top, "{p:#x} beyond the last frame");
    iovad.free_fast(p, 1).unwrap();
    // The cached range is found again under the same limit.
    assert_eq!(iovad.alloc_fast(1, u64::MAX, false), Ok(p));
    let big = iovad.alloc_fast(64, u64::MAX, false).unwrap();
    assert!(big + 63 <= top);
    assert_eq!(
        iovad.alloc(3, u64::MAX, true).map(|p| p + 2 <= top),
        Ok(true)
    );
}

#[test]
fn granules_must_be_powers_of_two_from_512_bytes_to_4_gib() {
    for bad in [0, 1, 256, 511, 3 << 12, (1 << 32) + 4096, 1 << 33, 1 << 63] {
        assert_eq!(
            IovaDomain::new(bad, 1, SingleCpu).err(),
            Some(IovaError::InvalidGranule),
            "{bad:#x}"
        );
    }
    let four_gib = IovaDomain::new(1 << 32, 1, SingleCpu).unwrap();
    assert_eq!(four_gib.dma_32bit_pfn(), 1, "frame 1 starts at 4 GiB");
    let small = IovaDomain::new(512, 1, SingleCpu).unwrap();
    assert_eq!(small.dma_32bit_pfn(), 1 << 23);
}

#[test]
fn a_range_waiting_in_a_cache_cannot_be_freed_again() {
    let iovad = IovaDomain::new(4096, 1, SingleCpu).unwrap();
    let limit = iovad.dma_32bit_pfn() - 1;
    let p = iovad.alloc_fast(1, limit, false).unwrap();
    iovad.free_fast(p, 1).unwrap(); // now cached, not handed out
    assert_eq!(iovad.free(p), Err(IovaError::NotAllocated));
    // It still comes out exactly once.
    assert_eq!(iovad.alloc_fast(1, limit, false), Ok(p));
    let q = iovad.alloc_fast(1, limit, false).unwrap();
    assert_ne!(p, q);
    // Handed out again, the slow path may free it.
    assert_eq!(iovad.free(p).map(|r| r.pfn_lo), Ok(p));
}

#[test]
fn a_range_cached_by_a_refill_is_never_freed_by_the_slow_path() {
    // A cache miss takes a block of small ranges and caches all but one.
    let iovad = IovaDomain::new(4096, 1, SingleCpu).unwrap();
    let limit = iovad.dma_32bit_pfn() - 1;
    let p = iovad.alloc_fast(1, limit, false).unwrap();
    let cached = p - 1; // a neighbour from the same refill, never handed out
    assert!(iovad.find(cached).is_some(), "held by the cache");
    assert_eq!(iovad.free(cached), Err(IovaError::NotAllocated));
    let mut seen = std::collections::HashSet::new();
    seen.insert(p);
    for _ in 0..2 * MAG_SIZE {
        let q = iovad.alloc_fast(1, limit, false).unwrap();
        assert!(seen.insert(q), "{q:#x} handed out twice");
    }
}

#[test]
fn free_fast_refuses_what_alloc_fast_could_not_have_handed_out() {
    let iovad = IovaDomain::new(4096, 16, SingleCpu).unwrap();
    let limit = iovad.dma_32bit_pfn() - 1;
    let p = iovad.alloc_fast(4, limit, false).unwrap();
    assert_eq!(
        iovad.free_fast(p + 1, 4),
        Err(IovaError::NotAllocated),
        "misaligned"
    );
    assert_eq!(
        iovad.free_fast(8, 4),
        Err(IovaError::NotAllocated),
        "below the start"
    );
    assert_eq!(
        iovad.free_fast(!3, 4),
        Err(IovaError::NotAllocated),
        "past the last frame"
    );
    assert_eq!(iovad.free_fast(p, 0), Err(IovaError::InvalidSize));
    // Large ranges are checked exactly against the tree.
    let big = iovad.alloc_fast(100, limit, false).unwrap();
    assert_eq!(
        iovad.free_fast(big, 99),
        Err(IovaError::NotAllocated),
        "wrong size"
    );
    assert_eq!(iovad.free_fast(big + 1, 100), Err(IovaError::NotAllocated));
    iovad.free_fast(big, 100).unwrap();
    assert_eq!(
        iovad.free_fast(big, 100),
        Err(IovaError::NotAllocated),
        "twice"
    );
    iovad.free_fast(p, 4).unwrap();
}

#[test]
fn a_checked_domain_refuses_a_repeated_fast_free() {
    let iovad = IovaDomain::new(4096, 1, SingleCpu)
        .unwrap()
        .with_checked_frees(true);
    let limit = iovad.dma_32bit_pfn() - 1;
    let p = iovad.alloc_fast(2, limit, false).unwrap();
    iovad.free_fast(p, 2).unwrap();
    assert_eq!(
        iovad.free_fast(p, 2),
        Err(IovaError::NotAllocated),
        "in the cache"
    );
    iovad.flush_caches();
    assert_eq!(
        iovad.free_fast(p, 2),
        Err(IovaError::NotAllocated),
        "back in the tree"
    );
    // Exactly once more, then.
    let q = iovad.alloc_fast(2, limit, false).unwrap();
    let r = iovad.alloc_fast(2, limit, false).unwrap();
    assert_ne!(q, r);
}
