//! What QEMU 10's intel-iommu records in each phase of the judge's
//! scenario (`judge/qemu-virt/src/bin/vtd.rs`), which the emulator
//! configured like it must record too.

use std::collections::BTreeMap;

/// A fault record: (source id, reason, page, write).
pub type Fault = (u16, u8, u64, bool);

/// The records of each phase, for a device with source id `sid`: one per
/// phase (QEMU keeps one record and compresses a source's further faults
/// into it until the driver clears it), "write not permitted" (5) for a
/// page nothing maps, "context entry not present" (2) for a blocked
/// device, and none for a write a cached read-only translation refuses.
pub fn qemu_phases(sid: u16) -> BTreeMap<String, Vec<Fault>> {
    let w = |reason: u8, page: u64| vec![(sid, reason, page, true)];
    [
        ("mapped", vec![]),
        ("hole", w(5, 0x30_0000)),
        ("unmapped", w(5, 0x20_0000)),
        ("read-only-cached", vec![]),
        ("read-only", w(5, 0x10_0000)),
        ("stale", vec![]),
        ("synced", w(5, 0x40_0000)),
        ("block", vec![]),
        ("block-unmapped", w(5, 0x7f_f000)),
        ("blocked", w(2, 0x20_0000)),
        ("identity", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
