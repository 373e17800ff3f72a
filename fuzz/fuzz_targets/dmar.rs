//! ACPI DMAR tables: any bytes. What parses builds back into bytes that
//! parse the same, and unit lookups on it never panic. The same bytes as
//! the tables a kernel reads first (RSDP, RSDT or XSDT, MCFG): a typed
//! result, never a panic.
#![no_main]

use iommu_firmware::acpi::{mcfg, root_table_entries, Rsdp};
use iommu_firmware::dmar::Dmar;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = Rsdp::parse(data);
    let _ = root_table_entries(data);
    if let Ok(windows) = mcfg(data) {
        for w in windows {
            let _ = w.config_address(w.end_bus, 0xff);
        }
    }
    if let Ok(t) = Dmar::parse(data) {
        let again = t.to_bytes(*b"FUZZ  ", *b"FUZZFUZZ", 0);
        assert_eq!(Dmar::parse(&again).as_ref(), Ok(&t));
        // Every bridge leads one bus down; every bridge spans to bus 0xff.
        let secondary = |bus: u8, _: u8| bus.checked_add(1);
        let range = |bdf: u16| Some(((bdf >> 8) as u8, 0xff));
        for bdf in [0u16, 0x0008, 0x0100, 0xffff] {
            let _ = t.drhd_for(0, bdf, &secondary, &range);
            let _ = t.rmrrs_for(0, bdf, &secondary, &range).count();
        }
    }
});
