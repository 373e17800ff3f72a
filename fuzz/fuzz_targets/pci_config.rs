//! PCI configuration space parsing: any bytes, any size.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommu_pci::testing::run(data);
});
