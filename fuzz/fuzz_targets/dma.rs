//! The DMA API, strict and lazy, with good and bad calls.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommu_dma::testing::run(&iommu_dma::testing::Input::decode(data));
});
