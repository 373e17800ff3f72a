//! What the driver writes into memory for the SMMU to read: stream table
//! entries (IHI 0070 5.2), context descriptors (5.4), level-1 stream table
//! descriptors (3.3.3) and commands (chapter 4). Pure encoders: no memory,
//! no registers, so every bit can be checked in isolation.

use iommu_pgtable::lpae::{Granule, Lpae};
use iommu_types::PhysAddr;

const ADDR_51_6: u64 = 0x000f_ffff_ffff_ffc0;
const ADDR_51_4: u64 = 0x000f_ffff_ffff_fff0;

/// The first four double words of an STE; the other four are zero here.
pub type Ste = [u64; 4];
/// The first four double words of a CD; the other four are zero here.
pub type Cd = [u64; 4];

const STE_V: u64 = 1;
const CFG_ABORT: u64 = 0b000 << 1;
const CFG_BYPASS: u64 = 0b100 << 1;
const CFG_S1: u64 = 0b101 << 1;
const CFG_S2: u64 = 0b110 << 1;
/// `SHCFG` = use the incoming shareability.
const SHCFG_INCOMING: u64 = 1 << 44;
/// Write-back read/write-allocate, for `S1CIR`/`S1COR`, `IRGN0`/`ORGN0`.
const WB: u64 = 1;
/// Inner shareable.
const ISH: u64 = 3;

/// An STE that terminates every transaction without recording an event
/// (a blocked domain, or a stream nobody is attached to).
pub const fn ste_abort() -> Ste {
    [STE_V | CFG_ABORT, 0, 0, 0]
}

/// An STE that passes transactions through untranslated (an identity domain).
pub const fn ste_bypass() -> Ste {
    [STE_V | CFG_BYPASS, SHCFG_INCOMING, 0, 0]
}

/// An STE translating through stage 1 with the single CD at `cd`.
pub fn ste_s1(cd: PhysAddr) -> Ste {
    let w1 = (WB << 2) | (WB << 4) | (ISH << 6) | SHCFG_INCOMING;
    [STE_V | CFG_S1 | (cd.raw() & ADDR_51_6), w1, 0, 0]
}

/// An STE translating through the stage-2 table `fmt` rooted at `root`,
/// tagged with `vmid`; faults are recorded (`S2R`).
pub fn ste_s2(fmt: &Lpae, root: PhysAddr, vmid: u16) -> Ste {
    let cfg = fmt.config();
    let t0sz = u64::from(64 - cfg.ias);
    // SL0 counts back from the last level for 4 KiB, from level 3 otherwise.
    let sl0 = match cfg.granule {
        Granule::G4K => 2 - u64::from(fmt.start_level()),
        _ => 3 - u64::from(fmt.start_level()),
    };
    let vtcr = t0sz
        | (sl0 << 6)
        | (WB << 8)
        | (WB << 10)
        | (ISH << 12)
        | (tg(cfg.granule) << 14)
        | (ps(cfg.oas) << 16);
    let w2 = u64::from(vmid) | (vtcr << 32) | (1 << 51) /* S2AA64 */ | (1 << 54) /* S2PTW */ | (1 << 58) /* S2R */;
    [STE_V | CFG_S2, SHCFG_INCOMING, w2, root.raw() & ADDR_51_4]
}

/// A level-1 stream table descriptor for a level-2 table of `2^(span-1)` STEs.
pub fn l1_desc(l2: PhysAddr, span: u32) -> u64 {
    (l2.raw() & ADDR_51_6) | u64::from(span & 0x1f)
}

/// `TG0`/`S2TG` encoding of a granule.
const fn tg(g: Granule) -> u64 {
    match g {
        Granule::G4K => 0,
        Granule::G64K => 1,
        Granule::G16K => 2,
    }
}

/// `IPS`/`S2PS` encoding of an address size (sizes between encodings round down).
pub const fn ps(bits: u32) -> u64 {
    match bits {
        52.. => 6,
        48..=51 => 5,
        44..=47 => 4,
        42..=43 => 3,
        40..=41 => 2,
        36..=39 => 1,
        _ => 0,
    }
}

/// The MAIR the CDs carry, matching the LPAE format's attribute indexes:
/// 0 normal non-cacheable, 1 write-back, 2 device-nGnRE.
pub const MAIR: u64 = 0x44 | (0xff << 8) | (0x04 << 16);

/// A valid CD for the stage-1 table `fmt` rooted at `ttb`, tagged `asid`:
/// TTB1 walks disabled, faults recorded and terminated with an abort.
pub fn cd(fmt: &Lpae, ttb: PhysAddr, asid: u16) -> Cd {
    let cfg = fmt.config();
    let w0 = u64::from(64 - cfg.ias)
        | (tg(cfg.granule) << 6)
        | (WB << 8)
        | (WB << 10)
        | (ISH << 12)
        | (1 << 30) // EPD1
        | (1 << 31) // V
        | (ps(cfg.oas) << 32)
        | (1 << 41) // AA64
        | (1 << 45) // R
        | (1 << 46) // A
        | (1 << 47) // ASET
        | (u64::from(asid) << 48);
    [w0, ttb.raw() & ADDR_51_4, 0, MAIR]
}

/// One command: two double words.
pub type Cmd = [u64; 2];

/// `CMD_CFGI_STE`: the SMMU forgets what it cached of stream `sid`.
pub const fn cfgi_ste(sid: u32) -> Cmd {
    [0x03 | ((sid as u64) << 32), 0]
}

/// `CMD_CFGI_ALL` (`CFGI_STE_RANGE` over every stream).
pub const fn cfgi_all() -> Cmd {
    [0x04, 31]
}

/// `CMD_CFGI_CD`: the SMMU forgets stream `sid`'s CD (substream 0).
pub const fn cfgi_cd(sid: u32) -> Cmd {
    [0x05 | ((sid as u64) << 32), 0]
}

/// `CMD_TLBI_NH_ASID`.
pub const fn tlbi_nh_asid(asid: u16) -> Cmd {
    [0x11 | ((asid as u64) << 48), 0]
}

/// `CMD_TLBI_NH_ALL` of a VMID: its stage-1 (and nested) entries.
pub const fn tlbi_nh_all(vmid: u16) -> Cmd {
    [0x10 | ((vmid as u64) << 32), 0]
}

/// `CMD_TLBI_S12_VMALL`.
pub const fn tlbi_s12_vmall(vmid: u16) -> Cmd {
    [0x28 | ((vmid as u64) << 32), 0]
}

/// `CMD_TLBI_NSNH_ALL`.
pub const fn tlbi_nsnh_all() -> Cmd {
    [0x30, 0]
}

/// `CMD_SYNC`; with `msi`, the SMMU writes `data` to that address when done.
pub fn sync(msi: Option<(PhysAddr, u32)>) -> Cmd {
    match msi {
        Some((addr, data)) => [
            0x46 | (1 << 12) | (u64::from(data) << 32),
            addr.raw() & 0x000f_ffff_ffff_fffc,
        ],
        None => [0x46, 0],
    }
}

/// What an invalidation by address is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbiTarget {
    /// Stage-1 entries of an ASID (`TLBI_NH_VA`).
    Asid(u16),
    /// Stage-2 entries of a VMID (`TLBI_S2_IPA`).
    Vmid(u16),
}

/// Invalidations by address covering `[start, start + size)` of a table
/// with granule `1 << granule_shift`.
///
/// With range invalidation (`IDR3.RIL`) each command covers
/// `(NUM + 1) << SCALE` granules and a few commands cover any range; without
/// it, one command per `leaf` bytes (the gather's page size). A caller asks
/// [`count`](Self::count) first and invalidates everything instead past its
/// bound, as Linux does past `CMDQ_MAX_TLBI_OPS`: a huge range then costs
/// neither time nor memory.
#[derive(Clone, Copy, Debug)]
pub struct TlbiRange {
    /// Whose entries.
    pub target: TlbiTarget,
    /// First byte.
    pub start: u64,
    /// Bytes.
    pub size: u64,
    /// Bytes per command without range invalidation.
    pub leaf: u64,
    /// log2 of the table's granule.
    pub granule_shift: u32,
    /// Whether the SMMU has range invalidation.
    pub ril: bool,
}

impl TlbiRange {
    /// How many commands cover the range; `None` when more than `max`.
    /// Arithmetic without range invalidation, at most `max + 1` steps with it.
    #[inline]
    pub fn count(&self, max: usize) -> Option<usize> {
        if !self.ril {
            let (step, first, end) = self.pages();
            let n = if end <= first {
                0
            } else {
                (end - first).div_ceil(step)
            };
            return usize::try_from(n).ok().filter(|&n| n <= max);
        }
        let mut n = 0;
        self.run(|_| {
            n += 1;
            n <= max
        })
        .then_some(n)
    }

    /// Hands each command to `emit`, in order.
    #[inline]
    pub fn for_each(&self, mut emit: impl FnMut(Cmd)) {
        self.run(|c| {
            emit(c);
            true
        });
    }

    /// Without range invalidation: the step, the first address and the end.
    fn pages(&self) -> (u64, u64, u64) {
        let step = self.leaf.max(1 << self.granule_shift);
        (
            step,
            self.start & !(step - 1),
            self.start.saturating_add(self.size),
        )
    }

    /// Hands each command to `f` while it answers `true`; whether all went.
    #[inline]
    fn run(&self, mut f: impl FnMut(Cmd) -> bool) -> bool {
        let (opcode, tag) = match self.target {
            TlbiTarget::Asid(asid) => (0x12u64, u64::from(asid) << 48),
            TlbiTarget::Vmid(vmid) => (0x2a, u64::from(vmid) << 32),
        };
        let addr_mask = match self.target {
            TlbiTarget::Asid(_) => !0xfffu64,
            TlbiTarget::Vmid(_) => 0x000f_ffff_ffff_f000,
        };
        if !self.ril {
            let (step, mut at, end) = self.pages();
            while at < end {
                // LEAF = 0: freed tables may be cached by the walk too.
                if !f([opcode | tag, at & addr_mask]) {
                    return false;
                }
                at = match at.checked_add(step) {
                    Some(a) => a,
                    None => break,
                };
            }
            return true;
        }
        let tg = match self.granule_shift {
            12 => 1u64,
            14 => 2,
            _ => 3,
        };
        let end = self.start.saturating_add(self.size);
        let mut at = self.start >> self.granule_shift << self.granule_shift;
        let mut pages = (end - at).div_ceil(1 << self.granule_shift);
        while pages > 0 {
            // The largest (NUM + 1) << SCALE with NUM < 32 that the remaining
            // count allows, from its lowest set bit up.
            let scale = pages.trailing_zeros().min(31);
            let num = ((pages >> scale) & 0x1f).max(1);
            let covered = num << scale;
            if !f([
                opcode | tag | ((num - 1) << 12) | (u64::from(scale) << 20),
                (at & addr_mask) | (tg << 10),
            ]) {
                return false;
            }
            at = at.wrapping_add(covered << self.granule_shift);
            pages -= covered;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use iommu_pgtable::lpae::{LpaeConfig, Stage};

    #[test]
    fn abort_and_bypass_stes_are_valid_with_their_config_5_2() {
        assert_eq!(ste_abort(), [0b0001, 0, 0, 0]);
        // Config 0b100 in bits [3:1]; SHCFG = 1 (incoming) in word 1 bits [45:44].
        assert_eq!(ste_bypass(), [0b1001, 1 << 44, 0, 0]);
    }

    #[test]
    fn stage1_ste_points_at_the_cd_with_write_back_walks_5_2() {
        let s = ste_s1(PhysAddr::new(0x1234_5640));
        assert_eq!(s[0], 0x1234_5640 | 0b1011, "V, Config 0b101, S1ContextPtr");
        assert_eq!(s[0] >> 59, 0, "S1CDMax 0: one CD, no substreams");
        assert_eq!((s[1] >> 2) & 3, 1, "S1CIR write-back");
        assert_eq!((s[1] >> 4) & 3, 1, "S1COR write-back");
        assert_eq!((s[1] >> 6) & 3, 3, "S1CSH inner shareable");
    }

    #[test]
    fn stage2_ste_encodes_vtcr_for_the_table_shape_5_2() {
        let fmt = Lpae::new(LpaeConfig {
            stage: Stage::S2,
            granule: Granule::G4K,
            ias: 40,
            oas: 44,
        })
        .unwrap();
        let s = ste_s2(&fmt, PhysAddr::new(0x8_0000), 7);
        assert_eq!(s[0], 0b1101, "V, Config 0b110");
        assert_eq!(s[2] & 0xffff, 7, "S2VMID");
        let vtcr = (s[2] >> 32) & 0x7_ffff;
        assert_eq!(vtcr & 0x3f, 24, "S2T0SZ = 64 - 40");
        // 40 bits at 4 KiB with a 44-bit output start at level 0 (a
        // two-entry root): SL0 = 2.
        assert_eq!(fmt.start_level(), 0);
        assert_eq!((vtcr >> 6) & 3, 2, "S2SL0");
        assert_eq!((vtcr >> 14) & 3, 0, "S2TG 4 KiB");
        assert_eq!((vtcr >> 16) & 7, 4, "S2PS 44 bits");
        assert_ne!(s[2] & (1 << 51), 0, "S2AA64");
        assert_ne!(s[2] & (1 << 58), 0, "S2R: record faults");
        assert_eq!(s[3], 0x8_0000, "S2TTB");
        // A 40-bit output may not start at level 0: two tables
        // concatenated at level 1, SL0 = 1.
        let fmt = Lpae::new(LpaeConfig {
            stage: Stage::S2,
            granule: Granule::G4K,
            ias: 40,
            oas: 40,
        })
        .unwrap();
        let s = ste_s2(&fmt, PhysAddr::new(0x8_0000), 7);
        let vtcr = (s[2] >> 32) & 0x7_ffff;
        assert_eq!((fmt.start_level(), fmt.concatenated_tables()), (1, 2));
        assert_eq!((vtcr >> 6) & 3, 1, "S2SL0");
        assert_eq!((vtcr >> 16) & 7, 2, "S2PS 40 bits");
    }

    #[test]
    fn cd_encodes_tcr_ttb_asid_and_mair_5_4() {
        let fmt = Lpae::stage1_4k(48, 44).unwrap();
        let c = cd(&fmt, PhysAddr::new(0x4000_0000), 0x1234);
        assert_eq!(c[0] & 0x3f, 16, "T0SZ = 64 - 48");
        assert_eq!((c[0] >> 6) & 3, 0, "TG0 4 KiB");
        assert_eq!(c[0] & (1 << 14), 0, "EPD0 clear: TTB0 walks");
        assert_ne!(c[0] & (1 << 30), 0, "EPD1: no TTB1 walks");
        assert_ne!(c[0] & (1 << 31), 0, "V");
        assert_eq!((c[0] >> 32) & 7, 4, "IPS 44 bits");
        assert_ne!(c[0] & (1 << 41), 0, "AA64");
        assert_ne!(c[0] & (1 << 45), 0, "R: record faults");
        assert_eq!(c[0] >> 48, 0x1234, "ASID");
        assert_eq!(c[1], 0x4000_0000, "TTB0");
        assert_eq!(c[3], MAIR);
        // MAIR indexes match the LPAE format's attribute indexes.
        assert_eq!(
            (MAIR >> (8 * iommu_pgtable::lpae::MAIR_IDX_CACHE)) & 0xff,
            0xff
        );
        assert_eq!(
            (MAIR >> (8 * iommu_pgtable::lpae::MAIR_IDX_DEV)) & 0xff,
            0x04
        );
    }

    #[test]
    fn level1_descriptor_carries_the_span_3_3_3() {
        assert_eq!(l1_desc(PhysAddr::new(0x10_0000), 9), 0x10_0009);
    }

    #[test]
    fn commands_put_their_fields_where_chapter_4_says() {
        assert_eq!(cfgi_ste(0xbeef), [0x03 | (0xbeef << 32), 0]);
        assert_eq!(cfgi_all(), [0x04, 31]);
        assert_eq!(tlbi_nh_asid(9), [0x11 | (9 << 48), 0]);
        assert_eq!(tlbi_s12_vmall(5), [0x28 | (5 << 32), 0]);
        assert_eq!(sync(None), [0x46, 0]);
        let s = sync(Some((PhysAddr::new(0x1000), 7)));
        assert_eq!(s[0], 0x46 | (1 << 12) | (7 << 32), "CS = SIG_IRQ, MSIData");
        assert_eq!(s[1], 0x1000, "MSIAddress");
    }

    /// Decodes a range TLBI back to (first byte, bytes).
    fn covered(cmd: &Cmd) -> (u64, u64) {
        let tg = (cmd[1] >> 10) & 3;
        let shift = [0, 12, 14, 16][tg as usize];
        let num = ((cmd[0] >> 12) & 0x1f) + 1;
        let scale = (cmd[0] >> 20) & 0x1f;
        (cmd[1] & !0xfff, (num << scale) << shift)
    }

    /// Every command of `r`.
    fn cmds(r: &TlbiRange) -> Vec<Cmd> {
        let mut out = Vec::new();
        r.for_each(|c| out.push(c));
        out
    }

    fn asid1(start: u64, size: u64, ril: bool) -> TlbiRange {
        TlbiRange {
            target: TlbiTarget::Asid(1),
            start,
            size,
            leaf: 0x1000,
            granule_shift: 12,
            ril,
        }
    }

    #[test]
    fn range_tlbis_cover_exactly_the_range_in_few_commands_4_4_1_1() {
        for (start, size) in [
            (0x1fe000u64, 0x204000u64),
            (0x1000, 0x1000),
            (0, 33 << 12),
            (0x4000_0000, 1 << 30),
        ] {
            let r = TlbiRange {
                target: TlbiTarget::Asid(3),
                ..asid1(start, size, true)
            };
            let out = cmds(&r);
            assert_eq!(r.count(usize::MAX), Some(out.len()));
            let mut at = start;
            for c in &out {
                assert_eq!(c[0] & 0xff, 0x12);
                assert_eq!(c[0] >> 48, 3, "ASID");
                let (from, len) = covered(c);
                assert_eq!(from, at, "contiguous");
                at += len;
            }
            assert_eq!(at, start + size, "{start:#x}+{size:#x}");
            assert!(out.len() <= 6, "{} commands", out.len());
        }
    }

    #[test]
    fn without_range_invalidation_one_tlbi_per_page_4_4_2() {
        let r = TlbiRange {
            target: TlbiTarget::Vmid(2),
            ..asid1(0x3000, 0x3000, false)
        };
        assert_eq!(r.count(3), Some(3));
        let out = cmds(&r);
        assert_eq!(out.len(), 3);
        for (i, c) in out.iter().enumerate() {
            assert_eq!(c[0], 0x2a | (2 << 32), "TLBI_S2_IPA, VMID");
            assert_eq!(c[1], 0x3000 + 0x1000 * i as u64, "IPA, TG = 0");
        }
    }

    #[test]
    fn past_the_bound_the_count_is_refused_however_large_the_range() {
        for ril in [false, true] {
            // Just under, at and past the bound.
            for (pages, fits) in [(127u64, true), (128, true), (129, false)] {
                let r = asid1(0, pages << 12, ril);
                let n = r.count(128);
                // A range TLBI covers any of these in a few commands.
                assert_eq!(n.is_some(), fits || ril, "{pages} pages, ril {ril}");
                let all = cmds(&r).len();
                assert_eq!(n.unwrap_or(all), all);
                assert_eq!(n.is_none(), all > 128);
            }
            // The whole 64-bit space: a page at a time without RIL, and in
            // 2^21 commands of at most 2^31 pages with it. Refused at once
            // (the bound is found in 129 steps).
            let r = TlbiRange {
                target: TlbiTarget::Vmid(1),
                ..asid1(0, u64::MAX, ril)
            };
            assert_eq!(r.count(128), None);
        }
        // A bound of zero refuses everything but an empty range.
        assert_eq!(asid1(0, 0x1000, true).count(0), None);
        assert_eq!(asid1(0x1000, 0, false).count(0), Some(0));
        assert!(cmds(&asid1(0x1000, 0, false)).is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(if cfg!(miri) { 60 } else { 4000 }))]

        /// The bound is exact: a range that takes `n` commands counts `n`,
        /// fits `n` and not `n - 1`, whatever its start, size, leaf and
        /// granule.
        #[test]
        fn the_bound_is_the_command_count(
            start_bits in 0u32..64,
            start in proptest::prelude::any::<u64>(),
            size in 0u64..if cfg!(miri) { 1 << 22 } else { 1 << 30 },
            granule in 0usize..3,
            leaf_over in 0usize..4,
            ril in proptest::prelude::any::<bool>(),
        ) {
            let granule_shift = [12, 14, 16][granule];
            let r = TlbiRange {
                leaf: 1u64 << (granule_shift + [0, 0, 9, 13][leaf_over]),
                granule_shift,
                ..asid1(start >> start_bits, size, ril)
            };
            let n = cmds(&r).len();
            proptest::prop_assert_eq!(r.count(usize::MAX), Some(n));
            proptest::prop_assert_eq!(r.count(n), Some(n));
            if n > 0 {
                proptest::prop_assert_eq!(r.count(n - 1), None);
            }
        }
    }
}
