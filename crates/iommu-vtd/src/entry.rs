//! What the driver writes into memory for the hardware to read: root and
//! context entries (legacy mode, 9.1 and 9.3; scalable mode, 9.2 and 9.4),
//! PASID directory and table entries (9.5, 9.6), invalidation descriptors
//! (6.5.2), and what it reads back from a fault recording register
//! (11.4.14).

/// A 128-bit entry or descriptor, low double word first.
pub type Entry128 = [u64; 2];

/// A scalable-mode PASID-table entry's first three double words (the other
/// five are zero).
pub type PasidEntry = [u64; 3];

const PRESENT: u64 = 1;

/// What a domain makes a device's requests reach; the driver writes it as
/// a legacy context entry or, in scalable mode, as the PASID entry of the
/// device's RID_PASID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Untranslated (ECAP.PT), tagged with a domain id.
    PassThrough {
        /// The domain id.
        did: u16,
    },
    /// Second-stage (second-level) tables.
    SecondStage {
        /// The table's root.
        root: u64,
        /// Its levels (3, 4 or 5).
        levels: usize,
        /// The domain id.
        did: u16,
    },
    /// First-stage (x86-64) tables; scalable mode only.
    FirstStage {
        /// The table's root.
        root: u64,
        /// Its levels (4 or 5).
        levels: usize,
        /// The domain id.
        did: u16,
    },
}

impl Target {
    /// The domain id.
    pub fn did(&self) -> u16 {
        match *self {
            Target::PassThrough { did }
            | Target::SecondStage { did, .. }
            | Target::FirstStage { did, .. } => did,
        }
    }
}

/// A scalable-mode root entry (9.2): the context tables of devfn 0-127
/// and 128-255 of one bus.
pub fn sm_root_entry(lower: u64, upper: u64) -> Entry128 {
    [(lower & !0xfff) | PRESENT, (upper & !0xfff) | PRESENT]
}

/// A scalable-mode context entry's first 128 bits (9.4; the rest is
/// zero): the PASID directory (of 128 entries, PDTS = 0) and the PASID
/// that requests without one use.
pub fn sm_context_entry(pasid_dir: u64, rid_pasid: u32) -> Entry128 {
    [
        (pasid_dir & !0xfff) | PRESENT,
        u64::from(rid_pasid & 0xf_ffff),
    ]
}

/// A PASID directory entry (9.5): the PASID table of 64 PASIDs.
pub fn pasid_dir_entry(table: u64) -> u64 {
    (table & !0xfff) | PRESENT
}

/// A scalable-mode PASID-table entry (9.6) for `target`: PGTT, the
/// table, its width (AW, written for the first stage too, as Linux does
/// and QEMU reads it for the canonical check) and the domain id.
pub fn pasid_entry(target: Target) -> PasidEntry {
    let aw = |levels: usize| levels.saturating_sub(2) as u64 & 7;
    match target {
        Target::PassThrough { did } => [4 << 6 | aw(4) << 2 | PRESENT, u64::from(did), 0],
        Target::SecondStage { root, levels, did } => [
            (root & !0xfff) | 2 << 6 | aw(levels) << 2 | PRESENT,
            u64::from(did),
            0,
        ],
        Target::FirstStage { root, levels, did } => [
            1 << 6 | aw(levels.min(4)) << 2 | PRESENT,
            u64::from(did),
            // FSPM: 00b 4-level, 01b 5-level.
            (root & !0xfff) | u64::from(levels == 5) << 2,
        ],
    }
}

/// The domain id of a PASID-table entry.
pub fn pasid_did(e: PasidEntry) -> u16 {
    e[1] as u16
}

/// Whether a PASID-table entry's translation is first-stage (PGTT = 001b).
pub fn pasid_first_stage(e: PasidEntry) -> bool {
    (e[0] >> 6) & 7 == 1
}

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
    const PASID_IOTLB: u64 = 0x6;
    const PASID_CACHE: u64 = 0x7;
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

    /// PASID-cache invalidation (6.5.2.5) of one PASID of domain `did`
    /// (granularity 01b).
    pub fn pasid_cache(did: u16, pasid: u32) -> Entry128 {
        [
            PASID_CACHE | 1 << 4 | u64::from(did) << 16 | u64::from(pasid & 0xf_ffff) << 32,
            0,
        ]
    }

    /// PASID-cache invalidation of everything (granularity 11b).
    pub fn pasid_cache_global() -> Entry128 {
        [PASID_CACHE | 3 << 4, 0]
    }

    /// PASID-based IOTLB invalidation (6.5.2.6) of every entry of `did`
    /// and `pasid` (granularity 10b).
    pub fn piotlb_pasid(did: u16, pasid: u32) -> Entry128 {
        [
            PASID_IOTLB | 2 << 4 | u64::from(did) << 16 | u64::from(pasid & 0xf_ffff) << 32,
            0,
        ]
    }

    /// PASID-based IOTLB invalidation of `2^am` pages at `addr` of `did`
    /// and `pasid` (granularity 11b).
    pub fn piotlb_pages(did: u16, pasid: u32, addr: u64, am: u32) -> Entry128 {
        [
            PASID_IOTLB | 3 << 4 | u64::from(did) << 16 | u64::from(pasid & 0xf_ffff) << 32,
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
            0x6 => {
                let pasid = (d[0] >> 32) as u32 & 0xf_ffff;
                match g {
                    2 => format!("PASID-based IOTLB invalidate, domain {did}, PASID {pasid}"),
                    _ => format!(
                        "PASID-based IOTLB invalidate, domain {did}, PASID {pasid}, {:#x} + 2^{} pages",
                        d[1] & !0xfff,
                        d[1] & 0x3f
                    ),
                }
            }
            0x7 => match g {
                3 => "PASID-cache invalidate, global".into(),
                _ => format!(
                    "PASID-cache invalidate, domain {did}, PASID {}",
                    (d[0] >> 32) as u32 & 0xf_ffff
                ),
            },
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
    /// The unit that recorded it (its index in the driver's units).
    pub unit: usize,
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
            unit: 0,
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
            0x50 => "PASID directory entry not accessible",
            0x51 => "PASID directory entry not present",
            0x58 => "PASID table entry not accessible",
            0x59 => "PASID table entry not present",
            0x5b => "invalid PASID table entry",
            0x70 => "first-stage entry not accessible",
            0x71 => "first-stage entry not present",
            0x72 => "reserved bits in a first-stage entry",
            0x73 => "invalid first-stage table pointer",
            0x80 => "non-canonical address",
            0x81 => "user access to a supervisor page",
            0x85 => "write not permitted (scalable mode)",
            0x91 => "accessed/dirty update failed",
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
    fn scalable_mode_entries_put_their_fields_where_the_specification_says() {
        assert_eq!(sm_root_entry(0x1000, 0x2000), [0x1001, 0x2001]);
        assert_eq!(sm_context_entry(0x3000, 0), [0x3001, 0]);
        assert_eq!(pasid_dir_entry(0x4000), 0x4001);
        let fs = pasid_entry(Target::FirstStage {
            root: 0x5000,
            levels: 4,
            did: 9,
        });
        // P, AW = 2 (48-bit), PGTT = 001b; FSPTPTR with FSPM = 00b.
        assert_eq!(fs, [0x49, 9, 0x5000]);
        assert!(pasid_first_stage(fs));
        let ss = pasid_entry(Target::SecondStage {
            root: 0x6000,
            levels: 3,
            did: 2,
        });
        assert_eq!(ss, [0x6085, 2, 0]);
        assert_eq!(pasid_did(ss), 2);
        assert_eq!(pasid_entry(Target::PassThrough { did: 1 })[0], 0x109);
        assert_eq!(desc::pasid_cache(3, 0), [0x3_0017, 0]);
        assert_eq!(desc::piotlb_pasid(3, 5), [0x5_0003_0026, 0]);
        assert_eq!(
            desc::piotlb_pages(3, 0, 0x20_0000, 9),
            [0x3_0036, 0x20_0009]
        );
        assert_eq!(
            desc::describe(desc::piotlb_pages(3, 0, 0x20_0000, 9)),
            "PASID-based IOTLB invalidate, domain 3, PASID 0, 0x200000 + 2^9 pages"
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
