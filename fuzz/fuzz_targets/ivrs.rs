//! ACPI IVRS tables: any bytes. What parses builds back into bytes that
//! parse the same, and device lookups on it never panic.
#![no_main]

use iommu_firmware::ivrs::Ivrs;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Ivrs::parse(data) {
        let again = t.to_bytes(*b"FUZZ  ", *b"FUZZFUZZ", 0);
        assert_eq!(Ivrs::parse(&again).as_ref(), Ok(&t));
        for devid in [0u16, 0x0008, 0x0100, 0xffff] {
            let _ = t.iommu_for(0, devid);
        }
    }
});
