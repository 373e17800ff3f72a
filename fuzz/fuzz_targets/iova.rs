//! The IOVA allocator against its model, on several CPUs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommu_iova::testing::run(&iommu_iova::testing::Input::decode(data));
});
