//! The IOMMU core with the reference driver (isolation through the emulated
//! hardware) and the failure-injecting mock (rollback).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommu_soft::testing::run(&iommu_soft::testing::Input::decode(data));
});
