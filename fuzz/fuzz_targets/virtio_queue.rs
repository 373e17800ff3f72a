//! A hostile driver's request queue: any ring addresses, indexes and
//! guest memory, served by the device (see `iommu_virtio::testing::run_queue`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = iommu_virtio::testing::run_queue(data);
});
