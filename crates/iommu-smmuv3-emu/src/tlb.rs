//! The emulated TLB: translations cached by tag and removed only by
//! invalidation commands (or by running out of room), so a driver that
//! forgets a TLBI sees the stale translation it would see on silicon.

use std::collections::HashMap;

/// rustc's FxHash: the TLB and configuration cache are probed on every
/// DMA and keyed by small integers; SipHash's flood resistance buys little
/// when the table is bounded (`Features::tlb_entries`).
pub(crate) type FxBuild = rustc_hash::FxBuildHasher;

/// What a cached entry belongs to: the VMID, and the ASID for entries
/// made by stage 1 (`None` for stage-2-only streams).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Tag {
    pub(crate) vmid: u16,
    pub(crate) asid: Option<u16>,
}

/// One cached leaf: the input range it maps and what it allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TlbEntry {
    /// Output address of the leaf's first byte.
    pub(crate) pa: u64,
    /// The IPA of the leaf's first byte (nested and stage-2 entries), for
    /// stage-2 invalidation by IPA.
    pub(crate) ipa: u64,
    pub(crate) read: bool,
    pub(crate) write: bool,
}

/// The TLB: leaves keyed by tag, log2 size and input page number.
#[derive(Debug)]
pub(crate) struct Tlb {
    entries: HashMap<(Tag, u32, u64), TlbEntry, FxBuild>,
    /// Bit `s` is set while some entry has size `1 << s`, so a lookup
    /// probes only sizes that exist.
    shifts: u64,
    capacity: usize,
}

impl Tlb {
    pub(crate) fn new(capacity: usize) -> Self {
        Tlb {
            entries: HashMap::default(),
            shifts: 0,
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The cached leaf holding `va`, as `(entry, log2 size)`.
    pub(crate) fn lookup(&self, tag: Tag, va: u64) -> Option<(TlbEntry, u32)> {
        let mut shifts = self.shifts;
        while shifts != 0 {
            let s = shifts.trailing_zeros();
            shifts &= shifts - 1;
            if let Some(e) = self.entries.get(&(tag, s, va >> s)) {
                return Some((*e, s));
            }
        }
        None
    }

    /// Caches the leaf of `1 << shift` bytes holding `va`. A full TLB
    /// drops everything first (hardware may evict any entry at any time).
    pub(crate) fn insert(&mut self, tag: Tag, va: u64, shift: u32, e: TlbEntry) {
        if self.entries.len() >= self.capacity {
            self.entries.clear();
            self.shifts = 0;
        }
        self.shifts |= 1 << shift;
        self.entries.insert((tag, shift, va >> shift), e);
    }

    /// Drops every entry `keep` refuses.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(Tag, u64, u64, &TlbEntry) -> bool) {
        self.entries
            .retain(|&(tag, s, page), e| keep(tag, page << s, 1u64 << s, e));
        if self.entries.is_empty() {
            self.shifts = 0;
        }
    }

    /// Drops the entries of tags `matches` accepts whose input range
    /// overlaps `[start, start + len)`.
    pub(crate) fn invalidate_range(&mut self, matches: impl Fn(Tag) -> bool, start: u64, len: u64) {
        let last = start.saturating_add(len.max(1) - 1);
        self.retain(|tag, base, size, _| {
            !(matches(tag) && base <= last && base.saturating_add(size - 1) >= start)
        });
    }

    /// Drops every stage-2-only entry of `vmid` whose IPA range overlaps
    /// `[start, start + len)`.
    pub(crate) fn invalidate_ipa(&mut self, vmid: u16, start: u64, len: u64) {
        let last = start.saturating_add(len.max(1) - 1);
        self.retain(|tag, _, size, e| {
            !(tag.vmid == vmid
                && tag.asid.is_none()
                && e.ipa <= last
                && e.ipa.saturating_add(size - 1) >= start)
        });
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.shifts = 0;
    }
}
