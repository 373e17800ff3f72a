//! The core's isolation oracle on the SMMUv3 driver and emulated SMMUv3s,
//! one or (the input's last byte odd) two: every stream's DMA reaches
//! exactly what its domain maps.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let smmus = if data.last().is_some_and(|b| b & 1 == 1) {
        2
    } else {
        1
    };
    iommu_smmuv3::testing::run_with_smmus(data, smmus);
});
