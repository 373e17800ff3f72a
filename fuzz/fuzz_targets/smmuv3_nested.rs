//! A hostile guest against SMMUv3 nesting: its memory, vSTEs and
//! invalidation commands, with the host's stage-2 map and unmap between;
//! its DMA must reach only what the nest parent maps at that moment.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommu_smmuv3::testing::run_nested(data);
});
