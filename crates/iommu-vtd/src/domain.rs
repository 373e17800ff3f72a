//! Domains: what a context entry (legacy mode) or the RID_PASID's PASID
//! entry (scalable mode) says.
//!
//! A blocked domain is no entry at all (the hardware faults the device's
//! DMA: reason 2 in legacy mode, 59h in scalable mode); an identity domain
//! is a pass-through entry (ECAP.PT) with a domain id of its own; a paging
//! domain owns a table (second stage, or in scalable mode first stage) and
//! a domain id, and its entries point at both.
//!
//! A domain may be attached on several units: its id is one every unit
//! has (the driver hands out ids of the narrowest unit's width), and it
//! keeps a bit per unit that may hold its translations, which its
//! invalidations go to. Linux's intel-iommu gives a domain an id per unit
//! instead (`domain->iommu_array`); one id everywhere spares the hot
//! unmap path a lookup per unit, at the cost of the id space of the
//! smallest unit.

use crate::driver::{Binding, Inner, Unit};
use crate::entry::Target;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::AtomicU64;
use iommu_core::sync::Mutex;
use iommu_core::{
    Device, Domain, DomainGeometry, DomainOps, Errno, IotlbGather, Iova, PagingOps, PhysAddr, Prot,
};
use iommu_hw::{DomainMemory, Ids, Mmio};
use iommu_pgtable::vtd::VtdFormat;
use iommu_pgtable::{Format, IoPageTable, TableMemory};

/// What the domain is to the hardware.
#[allow(clippy::large_enum_variant)] // one per domain, which the core keeps boxed
pub(crate) enum DomainKind<M: TableMemory> {
    Blocked,
    Identity {
        did: u16,
    },
    Paging {
        table: IoPageTable<VtdFormat, DomainMemory<M>>,
        did: u16,
    },
}

impl<M: TableMemory> DomainKind<M> {
    /// A paging domain: a table of the unit's mode in the driver's memory
    /// and a domain id.
    pub(crate) fn paging<R: Mmio>(inner: &Arc<Inner<R, M>>) -> Result<Self, Errno> {
        let fmt = inner.format()?;
        let mem = DomainMemory::new(inner.mem.clone(), inner.cfg.table_budget);
        let table = IoPageTable::new(fmt, mem).map_err(Errno::from)?;
        let did = inner.dids.lock().alloc()?;
        Ok(DomainKind::Paging { table, did })
    }

    fn did(&self) -> Option<u16> {
        match *self {
            DomainKind::Identity { did } | DomainKind::Paging { did, .. } => Some(did),
            DomainKind::Blocked => None,
        }
    }

    fn table(&self) -> Option<&IoPageTable<VtdFormat, DomainMemory<M>>> {
        match self {
            DomainKind::Paging { table, .. } => Some(table),
            _ => None,
        }
    }

    /// Whether a paging domain's table is first-stage.
    fn first_stage(&self) -> bool {
        self.table()
            .is_some_and(|t| matches!(t.format(), VtdFormat::FirstStage(_)))
    }
}

/// A domain gone while a unit did not complete its final invalidation:
/// its tables and id, kept until every unit it waits on answered (each
/// holds a reference); the id is freed with the last.
pub(crate) struct Retired<M: TableMemory> {
    did: u16,
    _kind: DomainKind<M>,
    dids: Arc<Mutex<Ids>>,
}

impl<M: TableMemory> Retired<M> {
    pub(crate) fn did(&self) -> u16 {
        self.did
    }
}

impl<M: TableMemory> Drop for Retired<M> {
    fn drop(&mut self) {
        self.dids.lock().free(self.did);
    }
}

/// A VT-d domain.
pub struct VtdDomain<R: Mmio, M: TableMemory> {
    /// Weak: the requester-id bookkeeping holds domains.
    hw: Weak<Inner<R, M>>,
    kind: DomainKind<M>,
    /// A bit per unit that may hold the domain's translations.
    units: Arc<AtomicU64>,
}

impl<R: Mmio, M: TableMemory> VtdDomain<R, M> {
    pub(crate) fn new(hw: Weak<Inner<R, M>>, kind: DomainKind<M>) -> Self {
        VtdDomain {
            hw,
            kind,
            units: Arc::new(AtomicU64::new(0)),
        }
    }

    fn driver(&self) -> Result<Arc<Inner<R, M>>, Errno> {
        self.hw.upgrade().ok_or(Errno::ENODEV)
    }

    /// Runs `f` on every unit that may hold the domain's translations;
    /// the first error, after every unit was asked.
    fn each_unit(
        &self,
        drv: &Inner<R, M>,
        mut f: impl FnMut(&Unit<R, M>) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let mut r = Ok(());
        for u in drv.units_of(&self.units) {
            r = r.and(f(u));
        }
        r
    }

    /// The units (their indices) that may hold the domain's translations:
    /// those with an entry naming it, or one cleared whose invalidation
    /// did not complete.
    pub fn units(&self) -> Vec<usize> {
        let mask = self.units.load(core::sync::atomic::Ordering::SeqCst);
        (0..64).filter(|i| mask & (1 << i) != 0).collect()
    }

    /// The domain id its entries carry.
    pub fn did(&self) -> Option<u16> {
        self.kind.did()
    }

    /// What a device using this domain reaches (`None`: nothing, for a
    /// blocked domain).
    fn target(&self) -> Option<Target> {
        match &self.kind {
            DomainKind::Blocked => None,
            DomainKind::Identity { did } => Some(Target::PassThrough { did: *did }),
            DomainKind::Paging { table, did } => {
                let (root, levels) = (table.root().raw(), table.format().geometry().levels);
                Some(match table.format() {
                    VtdFormat::FirstStage(_) => Target::FirstStage {
                        root,
                        levels,
                        did: *did,
                    },
                    VtdFormat::SecondStage(_) => Target::SecondStage {
                        root,
                        levels,
                        did: *did,
                    },
                })
            }
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
}

impl<R: Mmio + 'static, M: TableMemory + 'static> DomainOps for VtdDomain<R, M> {
    fn attach_dev(&self, domain: &Domain, dev: &Arc<Device>) -> Result<(), Errno> {
        let drv = self.driver()?;
        let (unit, sids) = drv.unit_of(dev)?;
        let binding = self.target().map(|target| Binding {
            target,
            units: Arc::clone(&self.units),
        });
        unit.attach(domain, dev, &sids, binding)
    }

    fn detach_dev(&self, _domain: &Domain, dev: &Arc<Device>) {
        if let Ok(drv) = self.driver() {
            if let Ok((unit, sids)) = drv.unit_of(dev) {
                unit.detach(dev, &sids);
            }
        }
    }

    fn paging(&self) -> Option<&dyn PagingOps> {
        self.kind.table().map(|t| t as &dyn PagingOps)
    }

    fn geometry(&self) -> Option<DomainGeometry> {
        let drv = self.hw.upgrade()?;
        self.kind
            .table()
            .map(|_| DomainGeometry::bits(drv.input_bits()))
    }

    fn pgsize_bitmap(&self) -> Option<u64> {
        let inner = self.hw.upgrade()?;
        self.kind
            .table()
            .map(|t| t.pgsize_bitmap() & inner.pgsize_bitmap())
    }

    /// New entries: invalidated in caching mode (the hardware may hold
    /// them as not present), the write buffer flushed otherwise.
    fn iotlb_sync_map(&self, iova: Iova, size: u64) -> Result<(), Errno> {
        let (DomainKind::Paging { did, .. }, Some(last)) =
            (&self.kind, iova.raw().checked_add(size.max(1) - 1))
        else {
            return Ok(());
        };
        let drv = self.driver()?;
        let fs = self.kind.first_stage();
        self.each_unit(&drv, |u| u.sync_map(*did, iova.raw(), last, fs))
    }

    /// A page-selective invalidation covering the gather (the whole
    /// domain when it cannot be one block) and a wait; the table pages
    /// the unmap freed become reusable only once that completed.
    fn iotlb_sync(&self, gather: &IotlbGather) -> Result<(), Errno> {
        let (Some((first, last)), DomainKind::Paging { table, did }) = (gather.range(), &self.kind)
        else {
            return Ok(());
        };
        let drv = self.driver()?;
        let fs = self.kind.first_stage();
        let r = self.each_unit(&drv, |u| {
            u.invalidate(&[u.iotlb_range(*did, first.raw(), last.raw(), fs)])
        });
        match r {
            Ok(()) => table.release_gathered(gather),
            Err(_) => table.hold_gathered(gather),
        }
        r
    }

    fn flush_iotlb_all(&self) -> Result<(), Errno> {
        let drv = self.driver()?;
        let fs = self.kind.first_stage();
        let all = |did: u16| self.each_unit(&drv, |u| u.invalidate(&[u.iotlb_all(did, fs)]));
        match &self.kind {
            DomainKind::Paging { table, did } => table.release_held_after(|| all(*did)),
            DomainKind::Identity { did } => all(*did),
            DomainKind::Blocked => Ok(()),
        }
    }

    fn as_any(&self) -> Option<&dyn core::any::Any> {
        Some(self)
    }
}

impl<R: Mmio, M: TableMemory> Drop for VtdDomain<R, M> {
    fn drop(&mut self) {
        // Nothing points at the domain any more: every unit that may hold
        // something of it forgets it (its IOTLB entries, and entries
        // cleared before whose invalidation is owed) before the id and
        // the table pages can be reused. A unit that does not answer keeps
        // them waiting until it does: it may still hold translations
        // into them.
        let Some(drv) = self.hw.upgrade() else {
            return;
        };
        let Some(did) = self.kind.did() else {
            return;
        };
        let failed: Vec<&Arc<Unit<R, M>>> = drv
            .units_of(&self.units)
            .filter(|u| u.forget_domain(did).is_err())
            .collect();
        if failed.is_empty() {
            drv.dids.lock().free(did);
            return;
        }
        let retired = Arc::new(Retired {
            did,
            _kind: core::mem::replace(&mut self.kind, DomainKind::Blocked),
            dids: Arc::clone(&drv.dids),
        });
        for u in failed {
            u.retire(Arc::clone(&retired));
        }
    }
}
