//! virtio-iommu request sequences decoded from bytes, replayed on the
//! device and on the reference model.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommu_virtio::testing::run_ops(&iommu_virtio::testing::decode_ops(data));
});
