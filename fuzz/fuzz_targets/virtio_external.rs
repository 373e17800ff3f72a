//! virtio-iommu requests, control-path changes and mapper failures on a
//! device whose endpoints forward to external mappers: each mapper holds
//! exactly its endpoint's domain, and what a mapper refuses is refused
//! whole.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommu_virtio::testing::run_external(data);
});
