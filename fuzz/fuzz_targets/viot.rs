//! ACPI VIOT tables and device-tree `iommu-map` properties: any bytes. What
//! parses builds back into bytes that parse the same.
#![no_main]

use iommu_virtio::firmware::{DtIommuMap, Viot};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Viot::parse(data) {
        let again = t.to_bytes(*b"FUZZ  ", *b"FUZZFUZZ", 0);
        assert_eq!(Viot::parse(&again).as_ref(), Ok(&t));
    }
    if let Ok(m) = DtIommuMap::parse(data, 1) {
        assert_eq!(DtIommuMap::parse(&m.to_bytes(1), 1).as_ref(), Ok(&m));
    }
});
