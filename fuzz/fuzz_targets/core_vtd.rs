//! The core's isolation oracle on the VT-d driver and emulated units,
//! legacy or (the input's last byte odd) scalable mode, on one unit or
//! (its bit 1 set) two: every requester id's DMA reaches exactly what its
//! group's current domain maps.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let last = data.last().copied().unwrap_or(0);
    let units = if last & 2 != 0 { 2 } else { 1 };
    iommu_platform::testing::run_vtd(data, last & 1 == 1, units);
});
