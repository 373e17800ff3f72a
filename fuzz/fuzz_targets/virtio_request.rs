//! Any bytes as a virtio-iommu request: handled, or left unwritten.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommu_virtio::testing::run_request(data);
});
