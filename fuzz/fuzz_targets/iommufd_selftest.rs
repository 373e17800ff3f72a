//! Object-lifetime sequences on the selftest platform (mock devices and
//! domains, HWPTs, accesses, dirty tracking, dma-bufs, VFIO compat):
//! every domain maps exactly its IOAS after every step, nothing is left.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommufd::testing::selftest_ops(data);
});
