//! Topology files: any text.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommu_pci::testing::run_topology(data);
});
