//! `lspci -vvvnn` listings: any text.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommu_pci::testing::run_lspci_v(data);
});
