//! What the driver writes into memory for the hardware to read: root and
//! context entries (legacy mode, 9.1 and 9.3), invalidation descriptors
//! (6.5.2), and what it reads back from a fault recording register
//! (11.4.14).

/// A 128-bit entry or descriptor, low double word first.
pub type Entry128 = [u64; 2];

const PRESENT: u64 = 1;

/// A root entry (9.1): the context table of one bus.
pub fn root_entry(context_table: u64) -> Entry128 {
    [(context_table & !0xfff) | PRESENT, 0]
}

/// The translation type of a legacy context entry (9.3, TT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslationType {
    /// Untranslated requests through second-level tables.
    SecondLevel,
    /// Untranslated requests pass through unchanged (ECAP.PT).
    PassThrough,
}

/// A legacy context entry (9.3): translation type, second-level table,
/// address width (AW: 1 = 3 levels, 2 = 4, 3 = 5) and domain id.
pub fn context_entry(tt: TranslationType, table: u64, levels: usize, did: u16) -> Entry128 {
    let tt = match tt {
        TranslationType::SecondLevel => 0,
        TranslationType::PassThrough => 2,
    };
    let aw = levels.saturating_sub(2) as u64 & 7;
    [
        (table & !0xfff) | (tt << 2) | PRESENT,
        aw | (u64::from(did) << 8),
    ]
}

/// Whether an entry is present.
pub fn present(e: Entry128) -> bool {
    e[0] & PRESENT != 0
}

/// The domain id of a context entry.
pub fn context_did(e: Entry128) -> u16 {
    (e[1] >> 8) as u16
}

/// Invalidation descriptors (6.5.2), for the invalidation queue.
pub mod desc {
    use super::Entry128;

    const CONTEXT: u64 = 0x1;
    const IOTLB: u64 = 0x2;
    const WAIT: u64 = 0x5;
    const GLOBAL: u64 = 1 << 4;
    const DOMAIN: u64 = 2 << 4;
    const DEVICE_OR_PAGE: u64 = 3 << 4;
    const DW: u64 = 1 << 6;
    const DR: u64 = 1 << 7;
    const STATUS_WRITE: u64 = 1 << 5;
    const FENCE: u64 = 1 << 6;

    /// Context-cache invalidation of everything.
    pub fn context_global() -> Entry128 {
        [CONTEXT | GLOBAL, 0]
    }

    /// Context-cache invalidation of one domain's entries.
    pub fn context_domain(did: u16) -> Entry128 {
        [CONTEXT | DOMAIN | u64::from(did) << 16, 0]
    }

    /// Context-cache invalidation of one device's entry (`sid`: its
    /// requester id; function mask 0).
    pub fn context_device(did: u16, sid: u16) -> Entry128 {
        [
            CONTEXT | DEVICE_OR_PAGE | u64::from(did) << 16 | u64::from(sid) << 32,
            0,
        ]
    }

    fn drain(drain: (bool, bool)) -> u64 {
        (if drain.0 { DW } else { 0 }) | (if drain.1 { DR } else { 0 })
    }

    /// IOTLB invalidation of everything.
    pub fn iotlb_global(drain_wr: (bool, bool)) -> Entry128 {
        [IOTLB | GLOBAL | drain(drain_wr), 0]
    }

    /// IOTLB invalidation of one domain.
    pub fn iotlb_domain(did: u16, drain_wr: (bool, bool)) -> Entry128 {
        [IOTLB | DOMAIN | drain(drain_wr) | u64::from(did) << 16, 0]
    }

    /// IOTLB invalidation of `2^am` pages at `addr` (aligned to them) in
    /// one domain.
    pub fn iotlb_pages(did: u16, addr: u64, am: u32, drain_wr: (bool, bool)) -> Entry128 {
        [
            IOTLB | DEVICE_OR_PAGE | drain(drain_wr) | u64::from(did) << 16,
            (addr & !0xfff) | u64::from(am & 0x3f),
        ]
    }

    /// Invalidation wait: once every earlier descriptor is done, the
    /// hardware writes `data` to `status` (4-byte aligned), and (fence)
    /// takes no later descriptor before.
    pub fn wait(status: u64, data: u32) -> Entry128 {
        [
            WAIT | STATUS_WRITE | FENCE | u64::from(data) << 32,
            status & !3,
        ]
    }

    /// The descriptor's type (bits 3:0, and 11:9 on newer hardware).
    pub fn kind(d: Entry128) -> u64 {
        (d[0] & 0xf) | ((d[0] >> 5) & 0x70)
    }

    /// The descriptor in words, as a trace shows it.
    pub fn describe(d: Entry128) -> alloc::string::String {
        use alloc::format;
        let g = (d[0] >> 4) & 3;
        let did = (d[0] >> 16) as u16;
        match kind(d) {
            0x1 => match g {
                1 => "context-cache invalidate, global".into(),
                2 => format!("context-cache invalidate, domain {did}"),
                _ => format!(
                    "context-cache invalidate, device {:#x} (domain {did})",
                    (d[0] >> 32) as u16
                ),
            },
            0x2 => match g {
                1 => "IOTLB invalidate, global".into(),
                2 => format!("IOTLB invalidate, domain {did}"),
                _ => format!(
                    "IOTLB invalidate, domain {did}, {:#x} + 2^{} pages",
                    d[1] & !0xfff,
                    d[1] & 0x3f
                ),
            },
            0x5 => format!(
                "invalidation wait, status {:#x} -> {:#x}",
                d[0] >> 32,
                d[1] & !3
            ),
            k => format!("descriptor type {k:#x}"),
        }
    }
}

/// One primary fault record (11.4.14), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdFault {
    /// The requester id (bus, device, function) that faulted.
    pub source_id: u16,
    /// The fault reason (7.2, table "Fault reasons"): 1 root entry not
    /// present, 2 context entry not present, 5 write not permitted (no
    /// entry, or one without W), 6 read not permitted, and others.
    pub reason: u8,
    /// The page the request addressed (FI, 4 KiB-aligned).
    pub address: u64,
    /// A write (T = 0) rather than a read.
    pub write: bool,
    /// What the core's fault handler answered, if it was asked.
    pub report: Option<Result<(), iommu_types::Errno>>,
}

impl VtdFault {
    /// Decodes a fault record's two double words; `None` when its F bit is
    /// clear (no fault recorded there).
    pub fn decode(lo: u64, hi: u64) -> Option<VtdFault> {
        if hi & (1 << 63) == 0 {
            return None;
        }
        Some(VtdFault {
            source_id: hi as u16,
            reason: (hi >> 32) as u8,
            address: lo & !0xfff,
            write: hi & (1 << 62) == 0,
            report: None,
        })
    }

    /// The reason in words.
    pub fn reason_name(&self) -> &'static str {
        match self.reason {
            0x1 => "root entry not present",
            0x2 => "context entry not present",
            0x3 => "invalid context entry",
            0x4 => "address beyond the guest address width",
            0x5 => "write not permitted",
            0x6 => "read not permitted",
            0x7 => "invalid second-level entry",
            0x8 => "root table address not accessible",
            0x9 => "context table not accessible",
            0xa => "reserved bits in a root entry",
            0xb => "reserved bits in a context entry",
            0xc => "reserved bits in a second-level entry",
            0xd => "translation type not allowed",
            _ => "other",
        }
    }
}

impl core::fmt::Display for VtdFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "DMAR fault: {} of {:02x}:{:02x}.{} at {:#x}, reason {:#x} ({})",
            if self.write { "write" } else { "read" },
            self.source_id >> 8,
            (self.source_id >> 3) & 0x1f,
            self.source_id & 7,
            self.address,
            self.reason,
            self.reason_name()
        )
    }
}

/// The smallest address mask that covers pages `first..=last` (page frame
/// numbers) with one aligned block: `(address, am)`.
pub fn psi_block(first_pfn: u64, last_pfn: u64) -> (u64, u32) {
    let am = 64 - (first_pfn ^ last_pfn).leading_zeros();
    let base = if am >= 64 { 0 } else { (first_pfn >> am) << am };
    (base << 12, am)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn entries_put_their_fields_where_the_specification_says() {
        assert_eq!(root_entry(0x1234_5000), [0x1234_5001, 0]);
        let c = context_entry(TranslationType::SecondLevel, 0x8_9000, 3, 0x42);
        assert_eq!(c, [0x8_9001, 0x4201]);
        assert!(present(c));
        assert_eq!(context_did(c), 0x42);
        let pt = context_entry(TranslationType::PassThrough, 0, 4, 7);
        assert_eq!(pt, [0b1001, 0x702]);
    }

    #[test]
    fn descriptors_encode_type_granularity_and_ids() {
        assert_eq!(desc::context_global(), [0x11, 0]);
        assert_eq!(desc::context_device(5, 0x18), [0x18_0005_0031, 0]);
        assert_eq!(desc::iotlb_domain(3, (true, true)), [0x3_00e2, 0]);
        assert_eq!(
            desc::iotlb_pages(3, 0x20_0fff, 9, (false, false)),
            [0x3_0032, 0x20_0009]
        );
        assert_eq!(desc::wait(0x1003, 7), [0x7_0000_0065, 0x1000]);
        assert_eq!(desc::kind(desc::wait(0, 0)), 5);
        assert_eq!(
            desc::describe(desc::iotlb_pages(3, 0x20_0000, 9, (false, false))),
            "IOTLB invalidate, domain 3, 0x200000 + 2^9 pages"
        );
        assert_eq!(
            desc::describe(desc::context_global()),
            "context-cache invalidate, global"
        );
    }

    #[test]
    fn a_fault_record_decodes_and_an_empty_one_does_not() {
        assert_eq!(VtdFault::decode(0x30_0123, 0), None);
        let f = VtdFault::decode(0x30_0123, (1 << 63) | (5 << 32) | 0x20).unwrap();
        assert_eq!(
            (f.source_id, f.reason, f.address, f.write),
            (0x20, 5, 0x30_0000, true)
        );
        let r = VtdFault::decode(0x1000, (1 << 63) | (1 << 62) | (6 << 32)).unwrap();
        assert!(!r.write);
        assert_eq!(
            f.to_string(),
            "DMAR fault: write of 00:04.0 at 0x300000, reason 0x5 (write not permitted)"
        );
    }

    #[test]
    fn psi_blocks_cover_ranges_with_one_aligned_mask() {
        assert_eq!(psi_block(0x200, 0x200), (0x20_0000, 0));
        assert_eq!(psi_block(0x200, 0x3ff), (0x20_0000, 9));
        assert_eq!(psi_block(0x1ff, 0x200), (0, 10));
        assert_eq!(psi_block(0, u64::MAX >> 12).1, 52);
    }
}
