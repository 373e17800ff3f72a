//! The core's isolation oracle on the VT-d driver and the emulated unit,
//! legacy or (the input's last byte odd) scalable mode: every requester
//! id's DMA reaches exactly what its group's current domain maps.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let scalable = data.last().is_some_and(|b| b & 1 == 1);
    iommu_platform::testing::run_vtd(data, scalable);
});
