//! ACPI IORT tables: any bytes. What parses answers every lookup (a
//! requester id's SMMU and stream id, a stream's reserved ranges) without
//! a panic and in bounded time, whatever loops its mappings make.
#![no_main]

use iommu_firmware::iort::Iort;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Iort::parse(data) {
        for segment in [0u32, 1] {
            for rid in [0u32, 0x18, 0x100, 0xffff, u32::MAX] {
                if let Some((sid, smmu)) = t.pci_stream(segment, rid) {
                    let _ = t.rmr_ranges(smmu.offset, sid);
                }
            }
        }
    }
});
