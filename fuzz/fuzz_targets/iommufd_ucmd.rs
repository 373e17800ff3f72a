//! Any bytes as any iommufd command, at any declared size: the decoder
//! answers exactly as Linux's ioctl entry reads a structure.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommufd::testing::decode_any(data);
});
