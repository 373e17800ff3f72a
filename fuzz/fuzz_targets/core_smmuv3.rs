//! The core's isolation oracle on the SMMUv3 driver and the emulated
//! SMMUv3: every stream's DMA reaches exactly what its domain maps.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommu_smmuv3::testing::run(data);
});
