//! IOAS command sequences through the iommufd ioctl entry against a model
//! of Linux's rules: every answer and every area as the model says.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommufd::testing::ioas_ops(data);
});
