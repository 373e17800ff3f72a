//! A hostile driver against the emulated SMMUv3: registers, memory,
//! commands and DMA, with no panic and stable translations.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommu_smmuv3_emu::testing::run(data);
});
