//! Machines decoded from bytes, grouped under decoded kernel parameters.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommu_pci::testing::run_groups(data);
});
