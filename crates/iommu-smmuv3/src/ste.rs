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
/// with granule `1 << granule_shift`, appended to `out`.
///
/// With range invalidation (`IDR3.RIL`) each command covers
/// `(NUM + 1) << SCALE` granules and a few commands cover any range; without
/// it, one command per `leaf` bytes (the gather's page size).
pub fn tlbi_range(
    target: TlbiTarget,
    start: u64,
    size: u64,
    leaf: u64,
    granule_shift: u32,
    ril: bool,
    out: &mut alloc::vec::Vec<Cmd>,
) {
    let (opcode, tag) = match target {
        TlbiTarget::Asid(asid) => (0x12u64, u64::from(asid) << 48),
        TlbiTarget::Vmid(vmid) => (0x2a, u64::from(vmid) << 32),
    };
    let addr_mask = match target {
        TlbiTarget::Asid(_) => !0xfffu64,
        TlbiTarget::Vmid(_) => 0x000f_ffff_ffff_f000,
    };
    if !ril {
        let step = leaf.max(1 << granule_shift);
        let mut at = start & !(step - 1);
        let end = start.saturating_add(size);
        while at < end {
            // LEAF = 0: freed tables may be cached by the walk too.
            out.push([opcode | tag, at & addr_mask]);
            at = match at.checked_add(step) {
                Some(a) => a,
                None => break,
            };
        }
        return;
    }
    let tg = match granule_shift {
        12 => 1u64,
        14 => 2,
        _ => 3,
    };
    let mut at = start >> granule_shift << granule_shift;
    let end = start.saturating_add(size);
    let mut pages = (end - at).div_ceil(1 << granule_shift);
    while pages > 0 {
        // The largest (NUM + 1) << SCALE with NUM < 32 that the remaining
        // count allows, from its lowest set bit up.
        let scale = pages.trailing_zeros().min(31);
        let num = ((pages >> scale) & 0x1f).max(1);
        let covered = num << scale;
        out.push([
            opcode | tag | ((num - 1) << 12) | (u64::from(scale) << 20),
            (at & addr_mask) | (tg << 10),
        ]);
        at = at.wrapping_add(covered << granule_shift);
        pages -= covered;
    }
}
