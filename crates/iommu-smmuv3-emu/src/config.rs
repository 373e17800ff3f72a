//! Stream table entries and context descriptors as the SMMU reads them
//! (Arm IHI 0070, section 5.2 "Stream Table Entry" and 5.4 "Context
//! Descriptor").
//!
//! The decode is the hardware's: it trusts nothing, takes what the driver
//! wrote in memory as the only truth, and answers a field it cannot honour
//! with the configuration error the specification names (`C_BAD_STE`,
//! `C_BAD_CD`, `C_BAD_STREAMID`) or a fetch abort.

use crate::event::EventId;
use crate::regs::field;
use crate::{Features, Walker};
use iommu_pgtable::lpae::{Granule, Lpae, LpaeConfig, Stage};
use iommu_pgtable::PhysRead;
use iommu_types::PhysAddr;

/// `STE.Config` values (IHI 0070 5.2, STE word 0 bits [3:1]).
const CFG_ABORT: u64 = 0b000;
const CFG_BYPASS: u64 = 0b100;
const CFG_S1: u64 = 0b101;
const CFG_S2: u64 = 0b110;
const CFG_NESTED: u64 = 0b111;

/// A stage's walk: its format, root and tag.
#[derive(Clone, Debug)]
pub(crate) struct StageWalk {
    pub(crate) walker: Walker,
    /// ASID (stage 1) or VMID (stage 2).
    pub(crate) tag: u16,
    /// Whether translation faults of this stage are recorded (`CD.R`, `STE.S2R`).
    pub(crate) record: bool,
    /// Stage 1 only: `EPD0`, every walk through TTB0 faults.
    pub(crate) disabled: bool,
    /// Stage 1 only: `TBI0`, the top byte of the address is ignored.
    pub(crate) tbi: bool,
}

/// What a stream's STE (and CD) say to do with its traffic.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // built once per stream and kept in an `Arc`
pub(crate) enum StreamConfig {
    /// `Config` = abort: terminate, record nothing.
    Abort,
    /// `Config` = bypass.
    Bypass,
    /// Translate through stage 1, stage 2, or both.
    Translate {
        /// VMID tagging the stream's TLB entries (0 without stage 2).
        vmid: u16,
        s1: Option<StageWalk>,
        s2: Option<StageWalk>,
    },
}

/// Why a configuration could not be used: the event to record and, for a
/// fetch abort, the address that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConfigError {
    pub(crate) id: EventId,
    pub(crate) addr: u64,
    /// Stage 2 faulted while fetching the CD (`S2` = 1, `CLASS` = CD).
    pub(crate) stage2: bool,
    /// Whether the event is recorded (stage-2 faults follow `STE.S2R`).
    pub(crate) record: bool,
}

fn bad(id: EventId) -> ConfigError {
    ConfigError {
        id,
        addr: 0,
        stage2: false,
        record: true,
    }
}

/// Reads `n` double words at `addr`, reporting `fetch` with the address on abort.
fn fetch<const N: usize>(
    mem: &impl PhysRead,
    addr: u64,
    fetch: EventId,
) -> Result<[u64; N], ConfigError> {
    let mut out = [0u64; N];
    for (i, w) in out.iter_mut().enumerate() {
        let a = addr.wrapping_add(8 * i as u64);
        *w = mem.read_u64(PhysAddr::new(a)).ok_or(ConfigError {
            addr: a,
            ..bad(fetch)
        })?;
    }
    Ok(out)
}

/// The stream table as `STRTAB_BASE` and `STRTAB_BASE_CFG` describe it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamTable {
    pub(crate) base: u64,
    pub(crate) cfg: u32,
}

impl StreamTable {
    /// Where stream `sid`'s STE lives (IHI 0070 3.3.2 linear, 3.3.3 two-level).
    pub(crate) fn ste_addr(
        &self,
        sid: u32,
        feat: &Features,
        mem: &impl PhysRead,
    ) -> Result<u64, ConfigError> {
        let cfg = u64::from(self.cfg);
        // LOG2SIZE above IDR1.SIDSIZE behaves as SIDSIZE.
        let log2size = (field(cfg, 0, 6) as u32).min(feat.sid_bits);
        if u64::from(sid) >> log2size != 0 {
            return Err(bad(EventId::BadStreamId));
        }
        let addr_mask = 0x000f_ffff_ffff_ffc0u64;
        if field(cfg, 16, 2) as u32 == crate::regs::STRTAB_FMT_2LVL && feat.two_level {
            // Only 4, 16 and 64 KiB level-2 tables exist; others read as 4 KiB.
            let split = match field(cfg, 6, 5) as u32 {
                s @ (6 | 8 | 10) => s.min(log2size),
                _ => 6u32.min(log2size),
            };
            let l1_entries = 1u64 << (log2size - split);
            let l1_base = self.base & addr_mask & !((l1_entries * 8).max(64) - 1);
            let l1 = l1_base + 8 * (u64::from(sid) >> split);
            let [desc] = fetch::<1>(mem, l1, EventId::SteFetch)?;
            let span = field(desc, 0, 5) as u32;
            // SPAN 0 is an invalid descriptor; above SPLIT + 1 is reserved.
            if span == 0 || span > split + 1 {
                return Err(bad(EventId::BadStreamId));
            }
            let index = u64::from(sid) & ((1 << split) - 1);
            if index >> (span - 1) != 0 {
                return Err(bad(EventId::BadStreamId));
            }
            let l2 = desc & addr_mask;
            Ok(l2.wrapping_add(index * 64))
        } else {
            let size = (64u64 << log2size).max(64);
            Ok((self.base & addr_mask & !(size - 1)) + 64 * u64::from(sid))
        }
    }
}

/// The translation granule a `TG0`/`S2TG` encoding names, if implemented.
fn granule(tg: u64, feat: &Features) -> Option<Granule> {
    let g = match tg {
        0 => Granule::G4K,
        1 => Granule::G64K,
        2 => Granule::G16K,
        _ => return None,
    };
    feat.granules.contains(&g).then_some(g)
}

/// Output size of a `PS`/`IPS` encoding, capped at the SMMU's own.
fn output_bits(ps: u64, oas: u32) -> u32 {
    let bits = match ps {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        6 => 52,
        _ => oas,
    };
    bits.min(oas)
}

/// Input size for a `TxSZ`, clamped to what the granule allows (IHI 0070
/// 5.4 `T0SZ`: out-of-range values behave as the nearest limit).
fn input_bits(txsz: u64, g: Granule) -> u32 {
    let max = if g == Granule::G64K { 52 } else { 48 };
    (64 - txsz.clamp(16, 39) as u32).min(max)
}

/// Decodes the STE at `addr` (and its CD) for stream `sid`.
pub(crate) fn decode_ste(
    ste_addr: u64,
    feat: &Features,
    mem: &impl PhysRead,
) -> Result<StreamConfig, ConfigError> {
    let ste = fetch::<4>(mem, ste_addr, EventId::SteFetch)?;
    if ste[0] & 1 == 0 {
        return Err(bad(EventId::BadSte));
    }
    let config = field(ste[0], 1, 3);
    let (s1_on, s2_on) = match config {
        CFG_ABORT => return Ok(StreamConfig::Abort),
        CFG_BYPASS => return Ok(StreamConfig::Bypass),
        CFG_S1 => (true, false),
        CFG_S2 => (false, true),
        CFG_NESTED => (true, true),
        _ => return Err(bad(EventId::BadSte)),
    };
    if (s1_on && !feat.stage1) || (s2_on && !feat.stage2) {
        return Err(bad(EventId::BadSte));
    }
    // The VMID tags stage-1-only entries too when stage 2 is implemented.
    let vmid_bits = if feat.vmid16 { 16 } else { 8 };
    let vmid = if feat.stage2 {
        field(ste[2], 0, vmid_bits) as u16
    } else {
        0
    };
    let s2 = if s2_on {
        Some(decode_s2(&ste, vmid, feat)?)
    } else {
        None
    };
    let s1 = if s1_on {
        // No substreams: S1CDMax must be 0 (IDR1.SSIDSIZE is 0).
        if field(ste[0], 59, 5) != 0 {
            return Err(bad(EventId::BadSte));
        }
        let cd_ptr = ste[0] & 0x000f_ffff_ffff_ffc0;
        if cd_ptr >> feat.oas != 0 {
            return Err(bad(EventId::BadSte));
        }
        Some(decode_cd(cd_ptr, s2.as_ref(), feat, mem)?)
    } else {
        None
    };
    Ok(StreamConfig::Translate { vmid, s1, s2 })
}

/// The stage-2 half of an STE (words 2 and 3).
fn decode_s2(ste: &[u64; 4], vmid: u16, feat: &Features) -> Result<StageWalk, ConfigError> {
    let w2 = ste[2];
    let vtcr = field(w2, 32, 19);
    // AArch64 tables only, little-endian only, no stalling.
    if w2 & (1 << 51) == 0 || w2 & (1 << 52) != 0 || w2 & (1 << 57) != 0 {
        return Err(bad(EventId::BadSte));
    }
    let g = granule(field(vtcr, 14, 2), feat).ok_or(bad(EventId::BadSte))?;
    let ias = input_bits(field(vtcr, 0, 6), g);
    let oas = output_bits(field(vtcr, 16, 3), feat.oas);
    // S2SL0 names the level the walk starts at: the one the input size
    // gives, or the one below with the root's tables concatenated, where
    // the architecture allows it for this output size.
    let sl0 = field(vtcr, 6, 2);
    let start = match (g, sl0) {
        (Granule::G4K, 0) => 2,
        (Granule::G4K, 1) => 1,
        (Granule::G4K, 2) => 0,
        (_, 0) => 3,
        (_, 1) => 2,
        (_, 2) => 1,
        _ => return Err(bad(EventId::BadSte)),
    };
    let fmt = Lpae::with_start_level(
        LpaeConfig {
            stage: Stage::S2,
            granule: g,
            ias,
            oas,
        },
        start,
    )
    .map_err(|_| bad(EventId::BadSte))?;
    let root = ste[3] & 0x000f_ffff_ffff_fff0;
    Ok(StageWalk {
        walker: Walker::new(fmt, root),
        tag: vmid,
        record: w2 & (1 << 58) != 0,
        disabled: false,
        tbi: false,
    })
}

/// The context descriptor at `cd_ptr` (an IPA when stage 2 is on).
fn decode_cd(
    cd_ptr: u64,
    s2: Option<&StageWalk>,
    feat: &Features,
    mem: &impl PhysRead,
) -> Result<StageWalk, ConfigError> {
    // Through stage 2, the CD pointer is an IPA: a stage-2 fault on it is
    // reported as that fault, with S2 set and CLASS = CD (IHI 0070 7.3).
    let cd_pa = match s2 {
        Some(s2) => match s2.walker.translate(cd_ptr, mem) {
            Ok(w) => w.pa.raw(),
            Err(f) => {
                let (id, fetch) = crate::walk_event(f);
                return Err(ConfigError {
                    id,
                    addr: if id == EventId::WalkEabt {
                        fetch
                    } else {
                        cd_ptr
                    },
                    stage2: true,
                    record: s2.record,
                });
            }
        },
        None => cd_ptr,
    };
    let cd = fetch::<4>(mem, cd_pa, EventId::CdFetch)?;
    let w0 = cd[0];
    // V, AA64, little-endian, no stall.
    if w0 & (1 << 31) == 0 || w0 & (1 << 41) == 0 || w0 & (1 << 15) != 0 || w0 & (1 << 44) != 0 {
        return Err(bad(EventId::BadCd));
    }
    let g = granule(field(w0, 6, 2), feat).ok_or(bad(EventId::BadCd))?;
    let ias = input_bits(field(w0, 0, 6), g);
    let oas = output_bits(field(w0, 32, 3), feat.oas);
    let fmt = Lpae::new(LpaeConfig {
        stage: Stage::S1,
        granule: g,
        ias,
        oas,
    })
    .map_err(|_| bad(EventId::BadCd))?;
    let asid_bits = if feat.asid16 { 16 } else { 8 };
    Ok(StageWalk {
        walker: Walker::new(fmt, cd[1] & 0x000f_ffff_ffff_fff0),
        tag: field(w0, 48, asid_bits) as u16,
        record: w0 & (1 << 45) != 0,
        disabled: w0 & (1 << 14) != 0,
        tbi: w0 & (1 << 38) != 0,
    })
}
