//! virtio-iommu device states decoded from bytes, restored: refused with a
//! reason, or a device that saves and restores to itself and serves
//! requests without breaking a promise.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommu_virtio::testing::run_restore(data);
});
