//! Any bytes as the properties of a PROBE reply, read by the guest
//! driver: well-formed reserved regions or a typed refusal.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommu_virtio::testing::run_probe_reply(data);
});
