//! Nested translation for a guest's SMMUv3 (Linux's `arm-smmu-v3-iommufd.c`).
//!
//! A VMM gives its guest a virtual SMMUv3; the guest writes STEs, CDs and
//! stage-1 tables in its own memory. The host allocates a stage-2 nest
//! parent (guest-physical to host-physical), a [`Vsmmu`] over it (the
//! guest's SMMU: the parent's VMID, the guest's stream ids), and for each
//! guest STE a nested domain. The physical STE then has `Config` =
//! stage 1 + stage 2: the guest's CD pointer and stage-1 fields from its
//! vSTE, the host's stage-2 table and VMID. The SMMU walks the guest's CD
//! and tables through stage 2, so the guest reaches nothing the host did
//! not map.
//!
//! What the guest may write is checked bit by bit: the vSTE fields Linux
//! lets through (`Config`, `S1Fmt`, `S1ContextPtr`, `S1CDMax`, `S1DSS`,
//! the stage-1 cacheability and shareability, `S1STALLD`, `EATS`), and
//! the invalidation commands a guest needs, with the VMID forced to the
//! parent's and virtual stream ids replaced by physical ones (`EIO` for
//! anything else, as Linux: a command the SMMU would refuse must never
//! reach the shared queue).

use crate::domain::{DomainKind, Smmuv3Domain};
use crate::driver::Inner;
use crate::ste::{self, Cmd};
use alloc::boxed::Box;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use iommu_core::{
    Device, Domain, DomainOps, Errno, InvalidateError, UserData, UserDataArray, Viommu, ViommuOps,
};
use iommu_hw::Mmio;
use iommu_pgtable::TableMemory;

/// `IOMMU_VIOMMU_TYPE_ARM_SMMUV3`.
pub const VIOMMU_TYPE_ARM_SMMUV3: u32 = 1;
/// `IOMMU_HWPT_DATA_ARM_SMMUV3`: a vSTE, `struct iommu_hwpt_arm_smmuv3`
/// (two little-endian double words).
pub const HWPT_DATA_ARM_SMMUV3: u32 = 2;
/// `IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3`: a command, `struct
/// iommu_viommu_arm_smmuv3_invalidate` (two little-endian double words).
pub const VIOMMU_INVALIDATE_DATA_ARM_SMMUV3: u32 = 1;

const STE0_V: u64 = 1;
const STE0_CFG: u64 = 0b111 << 1;
const STE0_S1FMT: u64 = 0b11 << 4;
const STE0_S1CTXPTR: u64 = 0x000f_ffff_ffff_ffc0;
const STE0_S1CDMAX: u64 = 0x1f << 59;
const STE1_S1DSS: u64 = 0b11;
const STE1_S1CIR: u64 = 0b11 << 2;
const STE1_S1COR: u64 = 0b11 << 4;
const STE1_S1CSH: u64 = 0b11 << 6;
const STE1_MEV: u64 = 1 << 19;
const STE1_S1STALLD: u64 = 1 << 27;
const STE1_EATS: u64 = 0b11 << 28;

/// The vSTE bits a guest may set (Linux's `STRTAB_STE_*_NESTING_ALLOWED`).
const STE0_ALLOWED: u64 = STE0_V | STE0_CFG | STE0_S1FMT | STE0_S1CTXPTR | STE0_S1CDMAX;
const STE1_ALLOWED: u64 =
    STE1_S1DSS | STE1_S1CIR | STE1_S1COR | STE1_S1CSH | STE1_S1STALLD | STE1_EATS;

const CFG_ABORT: u64 = 0b000;
const CFG_BYPASS: u64 = 0b100;
const CFG_S1: u64 = 0b101;
const CFG_NESTED: u64 = 0b111;

/// A checked vSTE: what the guest asked a stream to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vste {
    /// Not valid, or `Config` = abort: the stream aborts.
    Abort,
    /// `Config` = bypass: stage 2 only.
    Bypass,
    /// `Config` = stage 1: the guest's CD table over stage 2. The two
    /// double words hold only the guest's stage-1 fields (no `V`,
    /// `Config` or `EATS`).
    S1 {
        /// Double words 0 and 1 of the guest's fields.
        words: [u64; 2],
        /// `EATS` asked for translated ATS (kept for when ATS is driven).
        ats: bool,
    },
}

impl Vste {
    /// Checks a vSTE as Linux's `arm_smmu_validate_vste` does.
    ///
    /// # Errors
    /// `EIO` for a bit outside what a guest may set, a `Config` other
    /// than abort, bypass or stage 1, or an `EATS` other than abort or
    /// translated.
    pub fn check(words: [u64; 2]) -> Result<Vste, Errno> {
        if words[0] & STE0_V == 0 {
            return Ok(Vste::Abort);
        }
        if words[0] & !STE0_ALLOWED != 0 || words[1] & !STE1_ALLOWED != 0 {
            return Err(Errno::EIO);
        }
        let eats = (words[1] & STE1_EATS) >> 28;
        if eats > 1 {
            return Err(Errno::EIO);
        }
        match (words[0] & STE0_CFG) >> 1 {
            CFG_ABORT => Ok(Vste::Abort),
            CFG_BYPASS => Ok(Vste::Bypass),
            CFG_S1 => Ok(Vste::S1 {
                words: [words[0] & !(STE0_V | STE0_CFG), words[1] & !STE1_EATS],
                ats: eats == 1,
            }),
            _ => Err(Errno::EIO),
        }
    }

    /// The physical STE for this vSTE over the stage-2 STE `s2`.
    pub fn ste(self, s2: ste::Ste) -> ste::Ste {
        match self {
            Vste::Abort => ste::ste_abort(),
            Vste::Bypass => s2,
            Vste::S1 { words, .. } => {
                let mut out = s2;
                out[0] = STE0_V | (CFG_NESTED << 1) | words[0];
                // Merged events: a guest cannot flood the event queue.
                out[1] |= words[1] | STE1_MEV;
                out
            }
        }
    }
}

/// The guest's SMMU over one nest parent (Linux's `struct arm_vsmmu`).
pub struct Vsmmu<R: Mmio, M: TableMemory> {
    pub(crate) hw: Weak<Inner<R, M>>,
    /// The SMMU the parent is bound to.
    pub(crate) smmu: usize,
    /// The parent's VMID: every guest TLBI is forced to it.
    pub(crate) vmid: u16,
}

impl<R: Mmio, M: TableMemory> Vsmmu<R, M> {
    /// The SMMU it stands for.
    pub fn smmu(&self) -> usize {
        self.smmu
    }

    /// The VMID its guest's translations are tagged with.
    pub fn vmid(&self) -> u16 {
        self.vmid
    }
}

const OP_MASK: u64 = 0xff;
const OP_CFGI_CD: u64 = 0x05;
const OP_CFGI_CD_ALL: u64 = 0x06;
const OP_TLBI_NH_ALL: u64 = 0x10;
const OP_TLBI_NH_ASID: u64 = 0x11;
const OP_TLBI_NH_VA: u64 = 0x12;
const OP_TLBI_NH_VAA: u64 = 0x13;
const OP_TLBI_NSNH_ALL: u64 = 0x30;
const OP_ATC_INV: u64 = 0x40;

const TLBI0_NUM: u64 = 0x1f << 12;
const TLBI0_SCALE: u64 = 0x3f << 20;
const TLBI0_VMID: u64 = 0xffff << 32;
const TLBI1_LEAF: u64 = 1;
const TLBI1_TTL: u64 = 0b11 << 8;
const TLBI1_TG: u64 = 0b11 << 10;
const TLBI1_VA: u64 = !0xfff;
const CFGI0_SID: u64 = 0xffff_ffff << 32;

/// What the SMMU `caps` lets a guest command use.
struct CmdRules {
    asid_bits: u32,
    range_inv: bool,
}

/// Checks a guest's command against what it may set (Linux's
/// `arm_vsmmu_validate_user_cmd`). This SMMU has no ATS, no substreams
/// and no 52-bit (`DS`) tables in use, so the fields for those are
/// refused.
fn check_cmd(rules: &CmdRules, c: [u64; 2]) -> Result<(), Errno> {
    let mut allowed = [OP_MASK, 0u64];
    let asid = ((1u64 << rules.asid_bits.min(16)) - 1) << 48;
    match c[0] & OP_MASK {
        OP_TLBI_NSNH_ALL => {}
        op @ (OP_TLBI_NH_VA | OP_TLBI_NH_VAA) => {
            if op == OP_TLBI_NH_VA {
                allowed[0] |= asid;
            }
            if rules.range_inv {
                check_range(c)?;
                // SCALE's top bit needs DS.
                allowed[0] |= TLBI0_NUM | (TLBI0_SCALE & !(1 << 25));
                allowed[1] |= TLBI1_TG | TLBI1_TTL;
            }
            allowed[0] |= TLBI0_VMID;
            allowed[1] |= TLBI1_LEAF | TLBI1_VA;
        }
        op @ (OP_TLBI_NH_ASID | OP_TLBI_NH_ALL) => {
            if op == OP_TLBI_NH_ASID {
                allowed[0] |= asid;
            }
            allowed[0] |= TLBI0_VMID;
        }
        OP_CFGI_CD => {
            allowed[1] |= 1; // LEAF
            allowed[0] |= CFGI0_SID;
        }
        OP_CFGI_CD_ALL => allowed[0] |= CFGI0_SID,
        // No ATS on this SMMU: the command would be illegal.
        OP_ATC_INV => return Err(Errno::EIO),
        _ => return Err(Errno::EIO),
    }
    if c[0] & !allowed[0] != 0 || c[1] & !allowed[1] != 0 {
        return Err(Errno::EIO);
    }
    Ok(())
}

/// Range fields the specification reserves (`arm_vsmmu_validate_range`).
fn check_range(c: [u64; 2]) -> Result<(), Errno> {
    let range = c[0] & (TLBI0_NUM | TLBI0_SCALE) != 0;
    let ttl = (c[1] & TLBI1_TTL) >> 8;
    let tg = (c[1] & TLBI1_TG) >> 10;
    if tg == 0 {
        return if range || ttl != 0 {
            Err(Errno::EIO)
        } else {
            Ok(())
        };
    }
    // TTL 1 with a 16 KiB granule needs DS.
    if tg == 2 && ttl == 1 {
        return Err(Errno::EIO);
    }
    if !range && ttl == 0 {
        return Err(Errno::EIO);
    }
    Ok(())
}

impl<R: Mmio + 'static, M: TableMemory + 'static> Vsmmu<R, M> {
    /// A checked guest command rewritten for the host (Linux's
    /// `arm_vsmmu_convert_user_cmd`): the parent's VMID forced on TLBIs,
    /// `TLBI_NSNH_ALL` narrowed to the VM, the vSID of a CFGI replaced by
    /// the device's stream id.
    fn convert(
        &self,
        drv: &Inner<R, M>,
        viommu: &Viommu,
        rules: &CmdRules,
        mut c: [u64; 2],
    ) -> Result<Cmd, Errno> {
        check_cmd(rules, c)?;
        let vmid = u64::from(self.vmid) << 32;
        match c[0] & OP_MASK {
            OP_TLBI_NSNH_ALL => c = [OP_TLBI_NH_ALL | vmid, 0],
            OP_TLBI_NH_VA | OP_TLBI_NH_VAA | OP_TLBI_NH_ALL | OP_TLBI_NH_ASID => {
                c[0] = (c[0] & !TLBI0_VMID) | vmid;
            }
            _ => {
                let vsid = c[0] >> 32;
                let dev = viommu.find_dev(vsid).ok_or(Errno::EIO)?;
                let (unit, sids) = drv.streams_of(&dev).map_err(|_| Errno::EIO)?;
                if unit.index != self.smmu {
                    return Err(Errno::EIO);
                }
                let sid = *sids.first().ok_or(Errno::EIO)?;
                c[0] = (c[0] & !CFGI0_SID) | (u64::from(sid) << 32);
            }
        }
        Ok(c)
    }
}

/// The two little-endian double words of a 16-byte uAPI entry (a vSTE,
/// a command).
fn le_words(b: &[u8]) -> [u64; 2] {
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    };
    [word(0), word(1)]
}

/// Commands per batch handed to the queue (and synced) at once.
const BATCH: usize = 64;

impl<R: Mmio + 'static, M: TableMemory + 'static> ViommuOps for Vsmmu<R, M> {
    /// A nested domain from the guest's vSTE (`arm_vsmmu_alloc_domain_nested`).
    fn alloc_domain_nested(
        &self,
        viommu: &Viommu,
        flags: u32,
        data: &UserData<'_>,
    ) -> Result<Box<dyn DomainOps>, Errno> {
        if flags != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let mut raw = [0u8; 16];
        data.copy_struct(HWPT_DATA_ARM_SMMUV3, &mut raw, 16)?;
        let vste = Vste::check(le_words(&raw))?;
        let kind = DomainKind::Nested {
            vste,
            parent: viommu.parent().clone(),
            smmu: self.smmu,
        };
        Ok(Box::new(Smmuv3Domain::nested(
            self.hw.clone(),
            kind,
            self.smmu,
        )))
    }

    /// The guest's commands, checked, rewritten and sent in batches, each
    /// completed with a `CMD_SYNC` (`arm_vsmmu_cache_invalidate`).
    fn cache_invalidate(
        &self,
        viommu: &Viommu,
        array: &UserDataArray<'_>,
    ) -> Result<(), InvalidateError> {
        let fail = |handled: usize, errno| InvalidateError {
            handled: u32::try_from(handled).unwrap_or(u32::MAX),
            errno,
        };
        let raw = array
            .copy_entries(VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, 16)
            .map_err(|e| fail(0, e))?;
        let drv = self.hw.upgrade().ok_or_else(|| fail(0, Errno::ENODEV))?;
        let unit = &drv.units[self.smmu];
        let rules = CmdRules {
            asid_bits: unit.caps.asid_bits,
            range_inv: unit.caps.range_inv,
        };
        let mut cmds: Vec<Cmd> = Vec::with_capacity(BATCH.min(raw.len() / 16));
        let mut sent = 0;
        for (i, e) in raw.chunks_exact(16).enumerate() {
            match self.convert(&drv, viommu, &rules, le_words(e)) {
                Ok(c) => cmds.push(c),
                Err(errno) => {
                    // What was checked before it still goes out.
                    if !cmds.is_empty() {
                        unit.submit(&cmds, true).map_err(|e| fail(sent, e))?;
                    }
                    return Err(fail(i, errno));
                }
            }
            if cmds.len() == BATCH {
                unit.submit(&cmds, true).map_err(|e| fail(sent, e))?;
                sent = i + 1;
                cmds.clear();
            }
        }
        if !cmds.is_empty() {
            unit.submit(&cmds, true).map_err(|e| fail(sent, e))?;
        }
        Ok(())
    }

    /// A vDEVICE needs exactly one stream: a vSID names one stream.
    fn vdevice_init(
        &self,
        _viommu: &Viommu,
        dev: &Arc<Device>,
        _virt_id: u64,
    ) -> Result<(), Errno> {
        let drv = self.hw.upgrade().ok_or(Errno::ENODEV)?;
        let (unit, sids) = drv.streams_of(dev)?;
        if unit.index != self.smmu {
            return Err(Errno::EINVAL);
        }
        if sids.len() != 1 {
            return Err(Errno::EOPNOTSUPP);
        }
        Ok(())
    }

    fn as_any(&self) -> Option<&dyn core::any::Any> {
        Some(self)
    }
}

/// The stage-2 STE of a nest parent, for the nested STE built on it.
pub(crate) fn parent_ste<R: Mmio + 'static, M: TableMemory + 'static>(
    parent: &Domain,
) -> Result<ste::Ste, Errno> {
    Smmuv3Domain::<R, M>::of(parent)
        .and_then(Smmuv3Domain::s2_ste)
        .ok_or(Errno::EINVAL)
}
