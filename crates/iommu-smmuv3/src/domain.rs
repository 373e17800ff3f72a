//! Domains: what an STE points at.
//!
//! Blocked and identity domains are STE configurations (abort, bypass).
//! A stage-1 paging domain owns an LPAE table, an ASID and the CD that
//! names both; a stage-2 paging domain owns a table and a VMID. Unlike
//! Linux, which gives every device a CD table, the CD belongs to the
//! domain here: without substreams a device needs only CD 0, and every
//! stream of the domain can share it.
//!
//! With several SMMUs, a paging domain is bound to the SMMU of the first
//! device attached to it (Linux finalises a domain on its first attach):
//! its invalidations go there, and attaching it to a device behind
//! another SMMU is `EINVAL`, as in Linux. Blocked and identity domains
//! hold no tag and serve every SMMU.

use crate::driver::{Inner, Unit};
use crate::nested::Vste;
use crate::ste::{self, TlbiTarget};
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};
use iommu_core::{
    Device, Domain, DomainGeometry, DomainOps, Errno, IotlbGather, Iova, PagingOps, PhysAddr, Prot,
};
use iommu_hw::Mmio;
use iommu_hw::{DmaRegion, DomainMemory};
use iommu_pgtable::lpae::{Lpae, Stage};
use iommu_pgtable::{Format, IoPageTable, TableMemory};

/// What the domain is to the SMMU.
pub(crate) enum DomainKind<M: TableMemory> {
    Blocked,
    Identity,
    S1 {
        table: IoPageTable<Lpae, DomainMemory<M>>,
        asid: u16,
        cd: DmaRegion<M>,
    },
    S2 {
        table: IoPageTable<Lpae, DomainMemory<M>>,
        vmid: u16,
    },
    /// A guest's vSTE over a nest parent (stage 2) on one SMMU; it owns
    /// nothing but a reference to the parent.
    Nested {
        vste: Vste,
        parent: Domain,
        smmu: usize,
    },
}

impl<M: TableMemory> DomainKind<M> {
    /// A paging domain of the driver's stage: its table, tag and (stage 1) CD.
    pub(crate) fn paging<R: Mmio>(inner: &Arc<Inner<R, M>>) -> Result<Self, Errno> {
        Self::paging_at(inner, inner.paging_stage())
    }

    /// A paging domain at `stage`.
    pub(crate) fn paging_at<R: Mmio>(
        inner: &Arc<Inner<R, M>>,
        stage: Stage,
    ) -> Result<Self, Errno> {
        let fmt = inner.format(stage)?;
        let mem = DomainMemory::new(inner.mem.clone(), inner.cfg.table_budget);
        let table = IoPageTable::new(fmt.clone(), mem).map_err(Errno::from)?;
        match stage {
            Stage::S1 => {
                let asid = inner.asids.lock().alloc()?;
                let cd = match DmaRegion::alloc(&inner.mem, 64) {
                    Ok(cd) => cd,
                    Err(e) => {
                        inner.asids.lock().free(asid);
                        return Err(e);
                    }
                };
                // Double word 0 (with V) last: the CD is whole before it is valid.
                let words = ste::cd(&fmt, table.root(), asid);
                for (i, w) in words.iter().enumerate().skip(1) {
                    cd.write(i, *w);
                }
                cd.write(0, words[0]);
                Ok(DomainKind::S1 { table, asid, cd })
            }
            Stage::S2 => {
                let vmid = inner.vmids.lock().alloc()?;
                Ok(DomainKind::S2 { table, vmid })
            }
        }
    }

    fn table(&self) -> Option<&IoPageTable<Lpae, DomainMemory<M>>> {
        match self {
            DomainKind::S1 { table, .. } | DomainKind::S2 { table, .. } => Some(table),
            _ => None,
        }
    }
}

/// Not bound to an SMMU yet.
const UNBOUND: usize = usize::MAX;

/// An SMMUv3 domain.
pub struct Smmuv3Domain<R: Mmio, M: TableMemory> {
    /// Weak: the stream bookkeeping holds domains.
    hw: Weak<Inner<R, M>>,
    kind: DomainKind<M>,
    /// The SMMU a paging domain is bound to, from its first attach.
    smmu: AtomicUsize,
    /// A stage-2 domain vSMMUs may nest over: its changes also empty the
    /// guest's combined stage-1 + stage-2 entries of its VMID.
    nest_parent: bool,
}

impl<R: Mmio, M: TableMemory> Smmuv3Domain<R, M> {
    pub(crate) fn new(hw: Weak<Inner<R, M>>, kind: DomainKind<M>) -> Self {
        Smmuv3Domain {
            hw,
            kind,
            smmu: AtomicUsize::new(UNBOUND),
            nest_parent: false,
        }
    }

    /// A stage-2 nest parent.
    pub(crate) fn nest_parent(hw: Weak<Inner<R, M>>, kind: DomainKind<M>) -> Self {
        let mut d = Self::new(hw, kind);
        d.nest_parent = true;
        d
    }

    /// A nested domain, bound to its vSMMU's SMMU from the start.
    pub(crate) fn nested(hw: Weak<Inner<R, M>>, kind: DomainKind<M>, smmu: usize) -> Self {
        let d = Self::new(hw, kind);
        d.smmu.store(smmu, Ordering::Relaxed);
        d
    }

    /// The driver's side of `domain`, when this driver made it.
    pub(crate) fn of(domain: &Domain) -> Option<&Self>
    where
        R: 'static,
        M: 'static,
    {
        domain.ops().as_any()?.downcast_ref::<Self>()
    }

    /// Binds a paging domain to SMMU `unit` (its first attach, or a
    /// vSMMU made over it); `EINVAL` when it is bound to another.
    pub(crate) fn bind(&self, unit: usize) -> Result<(), Errno> {
        match self
            .smmu
            .compare_exchange(UNBOUND, unit, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(()),
            Err(i) if i == unit => Ok(()),
            Err(_) => Err(Errno::EINVAL),
        }
    }

    /// Whether vSMMUs may nest over this domain.
    pub fn is_nest_parent(&self) -> bool {
        self.nest_parent
    }

    /// The stage-2 STE of a stage-2 domain.
    pub(crate) fn s2_ste(&self) -> Option<ste::Ste> {
        match &self.kind {
            DomainKind::S2 { table, vmid } => {
                Some(ste::ste_s2(table.format(), table.root(), *vmid))
            }
            _ => None,
        }
    }

    /// The guest's checked vSTE of a nested domain.
    pub fn vste(&self) -> Option<Vste> {
        match self.kind {
            DomainKind::Nested { vste, .. } => Some(vste),
            _ => None,
        }
    }

    fn driver(&self) -> Result<Arc<Inner<R, M>>, Errno> {
        self.hw.upgrade().ok_or(Errno::ENODEV)
    }

    /// The SMMU a paging domain is bound to (the one of the first device
    /// attached to it), if any yet.
    pub fn smmu(&self) -> Option<usize> {
        match self.smmu.load(Ordering::Acquire) {
            UNBOUND => None,
            i => Some(i),
        }
    }

    /// The bound SMMU of `drv`, if any: only it can hold the domain's
    /// translations.
    fn bound<'a>(&self, drv: &'a Inner<R, M>) -> Option<&'a Arc<Unit<R, M>>> {
        drv.units.get(self.smmu()?)
    }

    /// The STE that makes a stream use this domain.
    fn ste(&self) -> Result<ste::Ste, Errno>
    where
        R: 'static,
        M: 'static,
    {
        Ok(match &self.kind {
            DomainKind::Blocked => ste::ste_abort(),
            DomainKind::Identity => ste::ste_bypass(),
            DomainKind::S1 { cd, .. } => ste::ste_s1(cd.pa()),
            DomainKind::S2 { table, vmid } => ste::ste_s2(table.format(), table.root(), *vmid),
            DomainKind::Nested { vste, parent, .. } => {
                vste.ste(crate::nested::parent_ste::<R, M>(parent)?)
            }
        })
    }

    /// The ASID of a stage-1 domain.
    pub fn asid(&self) -> Option<u16> {
        match self.kind {
            DomainKind::S1 { asid, .. } => Some(asid),
            _ => None,
        }
    }

    /// The VMID of a stage-2 domain.
    pub fn vmid(&self) -> Option<u16> {
        match self.kind {
            DomainKind::S2 { vmid, .. } => Some(vmid),
            _ => None,
        }
    }

    /// Every leaf of the domain's table: `(iova, size, pa, prot)`.
    pub fn dump(&self) -> Vec<(Iova, u64, PhysAddr, Prot)> {
        self.kind
            .table()
            .map(|t| {
                let ias = t.format().geometry().ias;
                t.walk(Iova::ZERO, 1u64 << ias.min(63))
                    .iter()
                    .map(|m| (m.iova, m.size, m.pa, m.prot))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Table pages in use, for leak checks.
    pub fn table_pages(&self) -> usize {
        self.kind.table().map_or(0, |t| t.table_pages())
    }

    /// Everything the TLB may hold for this domain.
    fn flush_all_cmd(&self) -> Option<ste::Cmd> {
        match self.kind {
            DomainKind::S1 { asid, .. } => Some(ste::tlbi_nh_asid(asid)),
            DomainKind::S2 { vmid, .. } => Some(ste::tlbi_s12_vmall(vmid)),
            _ => None,
        }
    }
}

/// Invalidations an `iotlb_sync` builds on the stack before it needs the
/// heap (with the TLBI_NH_ALL a nesting parent adds).
const INLINE_TLBI: usize = 4;

impl<R: Mmio + 'static, M: TableMemory + 'static> DomainOps for Smmuv3Domain<R, M> {
    /// `EINVAL` for a paging or nested domain bound to another SMMU than
    /// `dev`'s; `ENOENT` for a nested domain translating through the
    /// guest's CD table when `dev` is not one of its vSMMU's vDEVICEs
    /// (the guest could not name it in its invalidations).
    fn attach_dev(&self, domain: &Domain, dev: &Arc<Device>) -> Result<(), Errno> {
        let drv = self.driver()?;
        let (unit, sids) = drv.streams_of(dev)?;
        match &self.kind {
            DomainKind::S1 { .. } | DomainKind::S2 { .. } => self.bind(unit.index)?,
            DomainKind::Nested { smmu, vste, .. } => {
                if *smmu != unit.index {
                    return Err(Errno::EINVAL);
                }
                let named = domain.viommu().and_then(|v| v.virt_id_of(dev)).is_some();
                if matches!(vste, Vste::S1 { .. }) && !named {
                    return Err(Errno::ENOENT);
                }
            }
            DomainKind::Blocked | DomainKind::Identity => {}
        }
        unit.attach(domain, dev, &sids, self.ste()?)
    }

    fn detach_dev(&self, _domain: &Domain, dev: &Arc<Device>) {
        if let Ok(drv) = self.driver() {
            if let Ok((unit, sids)) = drv.streams_of(dev) {
                unit.detach(dev, &sids);
            }
        }
    }

    fn paging(&self) -> Option<&dyn PagingOps> {
        self.kind.table().map(|t| t as &dyn PagingOps)
    }

    fn geometry(&self) -> Option<DomainGeometry> {
        self.kind
            .table()
            .map(|t| DomainGeometry::bits(t.format().geometry().ias))
    }

    fn pgsize_bitmap(&self) -> Option<u64> {
        self.kind.table().map(|t| t.pgsize_bitmap())
    }

    /// Range invalidations for what the gather covers, then CMD_SYNC; the
    /// table pages the unmap freed become reusable only once that completed.
    fn iotlb_sync(&self, gather: &IotlbGather) -> Result<(), Errno> {
        let (Some((first, last)), Some(table)) = (gather.range(), self.kind.table()) else {
            return Ok(());
        };
        // Without its driver nothing can reach the SMMU: say so.
        let drv = self.driver()?;
        // Not attached yet: no SMMU has seen the tables.
        let Some(unit) = self.bound(&drv) else {
            table.release_gathered(gather);
            return Ok(());
        };
        let target = match self.kind {
            DomainKind::S1 { asid, .. } => TlbiTarget::Asid(asid),
            DomainKind::S2 { vmid, .. } => TlbiTarget::Vmid(vmid),
            _ => return Ok(()),
        };
        let size = (last.raw() - first.raw()).saturating_add(1);
        let granule_shift = table.format().geometry().granule_shift;
        // A stage 2 under guests' stage 1 adds a TLBI_NH_ALL: a guest's
        // stage-1 entries combined with this stage 2 are found by VA, not
        // IPA, so TLBI_S2_IPA may leave them.
        let nh_all = match (self.nest_parent, &self.kind) {
            (true, DomainKind::S2 { vmid, .. }) => Some(ste::tlbi_nh_all(*vmid)),
            _ => None,
        };
        let range = ste::TlbiRange {
            target,
            start: first.raw(),
            size,
            leaf: 1 << granule_shift,
            granule_shift,
            ril: unit.caps.range_inv,
        };
        // The usual few commands sit on the stack; up to MAX_TLBI_OPS go
        // to the heap; past that, one invalidation of the whole domain.
        let mut inline = [[0u64; 2]; INLINE_TLBI];
        let mut heap = Vec::new();
        let cmds: &[ste::Cmd] = match range.count(crate::driver::MAX_TLBI_OPS) {
            None => match self.flush_all_cmd() {
                Some(all) => {
                    inline[0] = all;
                    &inline[..1]
                }
                None => &[],
            },
            Some(n) if n + usize::from(nh_all.is_some()) <= INLINE_TLBI => {
                let mut k = 0;
                range.for_each(|c| {
                    inline[k] = c;
                    k += 1;
                });
                if let Some(c) = nh_all {
                    inline[k] = c;
                    k += 1;
                }
                &inline[..k]
            }
            Some(n) => {
                heap.reserve_exact(n + 1);
                range.for_each(|c| heap.push(c));
                heap.extend(nh_all);
                &heap
            }
        };
        // A failed sync keeps the freed tables parked (never reused while
        // the SMMU may still walk them) until a flush-all completes; the
        // driver keeps the invalidation and sends it again at once (a
        // refused command was skipped, the queue may be moving again) and
        // before any later command.
        let r = unit.submit(cmds, true).or_else(|_| unit.submit(&[], true));
        match r {
            Ok(()) => table.release_gathered(gather),
            Err(_) => table.hold_gathered(gather),
        }
        r
    }

    /// TLBI of the domain's ASID or VMID and a CMD_SYNC. For a bypass or
    /// abort domain there is no TLB to empty, but the SMMU may owe STE
    /// changes: a CMD_SYNC completes them.
    fn flush_iotlb_all(&self) -> Result<(), Errno> {
        let drv = self.driver()?;
        match (self.flush_all_cmd(), self.kind.table(), self.bound(&drv)) {
            (Some(cmd), Some(table), Some(unit)) => {
                table.release_held_after(|| unit.submit(&[cmd], true))
            }
            (Some(_), Some(table), None) => table.release_held_after(|| Ok(())),
            _ => {
                let mut r = Ok(());
                for u in drv.units.iter().filter(|u| u.owes()) {
                    r = r.and(u.submit(&[], true));
                }
                r
            }
        }
    }

    fn as_any(&self) -> Option<&dyn core::any::Any> {
        Some(self)
    }
}

impl<R: Mmio, M: TableMemory> Drop for Smmuv3Domain<R, M> {
    fn drop(&mut self) {
        // Nothing points at the domain any more; empty the TLB of its tag
        // before the tag (and the table pages) can be reused.
        let Some(drv) = self.hw.upgrade() else {
            return;
        };
        // Never attached: no SMMU has seen it; the first one frees it.
        let unit = self.bound(&drv).unwrap_or(&drv.units[0]);
        let flushed = match (self.flush_all_cmd(), self.smmu()) {
            (Some(cmd), Some(_)) => unit.submit(&[cmd], true).is_ok(),
            _ => true,
        };
        let kind = core::mem::replace(&mut self.kind, DomainKind::Blocked);
        unit.retire(kind, flushed);
    }
}
