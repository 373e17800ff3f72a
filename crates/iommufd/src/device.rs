//! Bound devices and paging HWPTs (Linux's `device.c` and
//! `hw_pagetable.c`), on the core's groups, domains and DMA ownership.
//!
//! - **Binding** a device ([`Ictx::bind`]) claims its group's DMA
//!   ownership for the context (the group then sits on its blocking
//!   domain); another owner's group is refused. Only `unbind` removes the
//!   device object: `IOMMU_DESTROY` on it is `EBUSY`, as in Linux, where
//!   the binding driver holds it.
//! - A **paging HWPT** ([`Ictx::hwpt_alloc`]) is a core domain
//!   (`domain_alloc_paging_flags`) filled from an IOAS: every area mapped,
//!   then every later map and unmap of the IOAS too. Adding it sets the
//!   IOAS's IOVA alignment to the domain's smallest page (`EINVAL` above
//!   a page, `EADDRINUSE` if an area is not aligned) and reserves what
//!   lies outside the domain's aperture.
//! - **Attaching** ([`Ictx::attach`]) a device to an IOAS picks an
//!   automatic HWPT of that IOAS the device's IOMMU accepts, or makes
//!   one; to a HWPT, that HWPT. The device's reserved regions are
//!   reserved in the IOAS (`EADDRINUSE` over an area or allowed range).
//!   Devices of one group share the group's attachment: the first
//!   attaches the group, later ones join it (`EINVAL` for another HWPT,
//!   `EBUSY` for a device already attached). When the last device of a
//!   group detaches, the group goes back to blocking and an automatic
//!   HWPT no device uses is destroyed.

use crate::ctx::{lock, Ictx, Ioas, Object};
use alloc::collections::BTreeSet;
use alloc::sync::Arc;
use alloc::vec::Vec;
use iommu_core::{Device, Domain, Group, PagingFlags, ResvType, UserData};
use iommu_types::Errno;
use std::sync::Mutex;

/// A device bound to a context (Linux's `struct iommufd_device`).
#[derive(Debug)]
pub struct IDevice {
    /// The device.
    pub dev: Arc<Device>,
    /// Its group.
    pub group: Group,
}

/// A paging HWPT (Linux's `struct iommufd_hwpt_paging`).
#[derive(Debug)]
pub struct HwptPaging {
    /// The domain.
    pub domain: Domain,
    /// The IOAS it is filled from.
    pub ioas: Arc<Mutex<Ioas>>,
    /// Made by an attach to the IOAS, not by `IOMMU_HWPT_ALLOC`.
    pub auto: bool,
}

impl HwptPaging {
    /// The HWPT `id` is gone: its domain leaves the IOAS (every area
    /// unmapped from it, its aperture reservations dropped, the IOAS's
    /// alignment back to what the other domains need).
    pub(crate) fn release(&self, id: u32) {
        let mut g = lock(&self.ioas);
        if let Some(i) = g.domains.iter().position(|(h, _)| *h == id) {
            let (_, d) = g.domains.remove(i);
            let areas: Vec<_> = g.iopt.areas().cloned().collect();
            let _ = crate::ctx::unfill_domain(&d, &areas);
        }
        g.iopt.remove_reserved(hwpt_owner(id));
        // Only ever smaller: cannot fail.
        let _ = g.recalc_alignment();
    }
}

/// A HWPT a group can be attached to.
#[derive(Clone, Debug)]
pub enum Hwpt {
    /// A paging HWPT.
    Paging(Arc<HwptPaging>),
    /// A nested HWPT (made by a vIOMMU).
    Nested(Arc<crate::viommu::HwptNested>),
}

impl Hwpt {
    /// Its domain.
    pub fn domain(&self) -> &Domain {
        match self {
            Hwpt::Paging(h) => &h.domain,
            Hwpt::Nested(h) => &h.domain,
        }
    }

    fn paging(&self) -> Option<&Arc<HwptPaging>> {
        match self {
            Hwpt::Paging(h) => Some(h),
            Hwpt::Nested(_) => None,
        }
    }

    /// Made with `IOMMU_HWPT_ALLOC_PASID`: usable with PASIDs and beside
    /// them (Linux's `pasid_compat`).
    pub fn pasid_compat(&self) -> bool {
        match self {
            Hwpt::Paging(h) => h.domain.paging_flags().contains(PagingFlags::PASID),
            Hwpt::Nested(h) => h.pasid_compat,
        }
    }
}

/// A group with a bound device (Linux's `struct iommufd_group`).
#[derive(Debug, Default)]
pub struct IGroup {
    /// What the group is attached to, and its id.
    pub(crate) hwpt: Option<(u32, Hwpt)>,
    /// Bound devices of the group in this context.
    pub(crate) bound: BTreeSet<u32>,
    /// Attached devices.
    pub(crate) attached: BTreeSet<u32>,
    /// PASIDs attached, by PASID: the device and the HWPT (Linux's
    /// `pasid_attach` of the group).
    pub(crate) pasids: alloc::collections::BTreeMap<u32, (u32, u32, Hwpt)>,
}

/// Owner tags of reservations: devices by id, HWPT apertures above.
fn hwpt_owner(id: u32) -> u64 {
    (1 << 32) | u64::from(id)
}
fn dev_owner(id: u32) -> u64 {
    (2 << 32) | u64::from(id)
}

/// The smallest page `d` maps.
pub(crate) fn min_page(d: &Domain) -> u64 {
    let b = d.pgsize_bitmap();
    if b == 0 {
        1
    } else {
        1 << b.trailing_zeros()
    }
}

impl Ictx {
    /// The bound device `id`.
    ///
    /// # Errors
    /// `ENOENT` for no object or another type.
    pub fn device(&self, id: u32) -> Result<Arc<IDevice>, Errno> {
        match self.object(id) {
            Some(Object::Device(d)) => Ok(d),
            _ => Err(Errno::ENOENT),
        }
    }

    /// The paging HWPT `id`.
    ///
    /// # Errors
    /// `ENOENT` for no object or another type.
    pub fn hwpt(&self, id: u32) -> Result<Arc<HwptPaging>, Errno> {
        match self.object(id) {
            Some(Object::HwptPaging(h)) => Ok(h),
            _ => Err(Errno::ENOENT),
        }
    }

    /// Binds `dev` to the context (Linux's `iommufd_device_bind`, which
    /// VFIO calls); returns its id.
    ///
    /// # Errors
    /// `ENODEV` when no IOMMU translates it; `EINVAL` when its IOMMU is
    /// not cache-coherent (iommufd always maps cacheable); the core's
    /// refusal of the DMA ownership (`EPERM`: another owner, `EBUSY`: the
    /// group is in use).
    pub fn bind(&self, dev: &Arc<Device>) -> Result<u32, Errno> {
        let group = dev.iommu_group().ok_or(Errno::ENODEV)?;
        let ops = dev.iommu_ops().ok_or(Errno::ENODEV)?;
        if !ops.capable(iommu_core::Capability::CacheCoherency) {
            return Err(Errno::EINVAL);
        }
        let iommu = group.iommu();
        iommu.device_claim_dma_owner(dev, self.owner)?;
        let idev = Arc::new(IDevice {
            dev: Arc::clone(dev),
            group: group.clone(),
        });
        let id = match self.insert(Object::Device(idev)) {
            Ok(id) => id,
            Err(e) => {
                iommu.device_release_dma_owner(dev);
                return Err(e);
            }
        };
        lock(&self.groups)
            .entry(group.id())
            .or_default()
            .bound
            .insert(id);
        Ok(id)
    }

    /// Unbinds device `id` (Linux's `iommufd_device_unbind`): detached
    /// first, its group's ownership released.
    ///
    /// # Errors
    /// `ENOENT` for no such device.
    pub fn unbind(&self, id: u32) -> Result<(), Errno> {
        let idev = self.device(id)?;
        let pasids: Vec<u32> = lock(&self.groups)
            .get(&idev.group.id())
            .map(|g| {
                g.pasids
                    .iter()
                    .filter(|(_, (d, _, _))| *d == id)
                    .map(|(p, _)| *p)
                    .collect()
            })
            .unwrap_or_default();
        for p in pasids {
            let _ = self.pasid_detach(id, p);
        }
        let _ = self.detach(id);
        // Its vDEVICEs go; their ids stay reserved until destroyed.
        for vid in self.ids() {
            if let Some(Object::Vdevice(v)) = self.object(vid) {
                if v.dev_id == id {
                    let _ = v.viommu.viommu.vdevice_destroy(v.virt_id);
                    self.tombstone(vid);
                }
            }
        }
        self.remove(id);
        let mut groups = lock(&self.groups);
        if let Some(g) = groups.get_mut(&idev.group.id()) {
            g.bound.remove(&id);
            if g.bound.is_empty() {
                groups.remove(&idev.group.id());
            }
        }
        drop(groups);
        idev.group.iommu().device_release_dma_owner(&idev.dev);
        Ok(())
    }

    /// Makes a paging HWPT for device `dev_id` filled from IOAS `ioas_id`
    /// (`IOMMU_HWPT_ALLOC` with an IOAS); returns its id.
    ///
    /// # Errors
    /// `ENOENT` for no such device or IOAS; the core's refusal of the
    /// flags (`EOPNOTSUPP`); as the IOAS's domain rules (`EINVAL`,
    /// `EADDRINUSE`); a domain's map failure.
    pub fn hwpt_alloc(&self, dev_id: u32, ioas_id: u32, flags: PagingFlags) -> Result<u32, Errno> {
        self.hwpt_alloc_data(dev_id, ioas_id, flags, None)
    }

    /// As [`hwpt_alloc`](Self::hwpt_alloc), with driver data for the
    /// domain (`IOMMU_HWPT_ALLOC`'s `data_type` and data).
    ///
    /// # Errors
    /// As [`hwpt_alloc`](Self::hwpt_alloc); the driver's refusal of the
    /// data (`EOPNOTSUPP`, `EINVAL`).
    pub fn hwpt_alloc_data(
        &self,
        dev_id: u32,
        ioas_id: u32,
        flags: PagingFlags,
        data: Option<&UserData<'_>>,
    ) -> Result<u32, Errno> {
        let idev = self.device(dev_id)?;
        let ioas = self.ioas(ioas_id)?;
        self.new_hwpt(&idev, &ioas, flags, data, false)
    }

    fn new_hwpt(
        &self,
        idev: &IDevice,
        ioas: &Arc<Mutex<Ioas>>,
        flags: PagingFlags,
        data: Option<&UserData<'_>>,
        auto: bool,
    ) -> Result<u32, Errno> {
        let iommu = idev.group.iommu();
        // The IOAS's first domain pins every page it maps.
        let first_pins = {
            let g = lock(ioas);
            if g.domains.is_empty() {
                g.pages_once(&mut Vec::new())
            } else {
                0
            }
        };
        self.check_pin_limit(first_pins)?;
        let dirty = flags.contains(PagingFlags::DIRTY_TRACKING);
        if dirty
            && !idev
                .dev
                .iommu_ops()
                .is_some_and(|o| o.dirty_tracking_capable(&idev.dev))
        {
            return Err(Errno::EOPNOTSUPP);
        }
        let domain = iommu.domain_alloc_paging_flags(&idev.dev, flags, data)?;
        // A driver that took the flag must give the domain dirty ops.
        if dirty && !domain.has_dirty_ops() {
            return Err(Errno::EINVAL);
        }
        let hwpt = Arc::new(HwptPaging {
            domain: domain.clone(),
            ioas: Arc::clone(ioas),
            auto,
        });
        let id = self.insert(Object::HwptPaging(Arc::clone(&hwpt)))?;
        if let Err(e) = add_domain(&mut lock(ioas), id, &domain) {
            self.remove(id);
            return Err(e);
        }
        Ok(id)
    }

    /// Attaches device `dev_id` to `pt_id`: an IOAS (through an automatic
    /// HWPT) or a paging HWPT. Returns the HWPT's id.
    ///
    /// # Errors
    /// `ENOENT` for no such device or object; `EBUSY` for a device already
    /// attached; `EINVAL` when its group is attached to another HWPT or
    /// the domain does not suit it; `EADDRINUSE` when its reserved
    /// regions meet the IOAS's areas or allowed ranges; the core's
    /// refusal.
    pub fn attach(&self, dev_id: u32, pt_id: u32) -> Result<u32, Errno> {
        let idev = self.device(dev_id)?;
        match self.object(pt_id) {
            Some(Object::HwptPaging(h)) => self.attach_hwpt(dev_id, &idev, pt_id, &Hwpt::Paging(h)),
            Some(Object::HwptNested(h)) => self.attach_hwpt(dev_id, &idev, pt_id, &Hwpt::Nested(h)),
            Some(Object::Ioas(ioas)) => {
                // An automatic HWPT of this IOAS the device accepts; a
                // new one if none does.
                let autos: Vec<(u32, Arc<HwptPaging>)> = self
                    .hwpts()
                    .into_iter()
                    .filter(|(_, h)| h.auto && Arc::ptr_eq(&h.ioas, &ioas))
                    .collect();
                for (id, h) in autos {
                    match self.attach_hwpt(dev_id, &idev, id, &Hwpt::Paging(h)) {
                        Err(Errno::EINVAL) => continue,
                        r => return r,
                    }
                }
                let id = self.new_hwpt(&idev, &ioas, PagingFlags::empty(), None, true)?;
                let h = Hwpt::Paging(self.hwpt(id)?);
                self.attach_hwpt(dev_id, &idev, id, &h).inspect_err(|_| {
                    let _ = self.destroy(id);
                })
            }
            _ => Err(Errno::ENOENT),
        }
    }

    fn hwpts(&self) -> Vec<(u32, Arc<HwptPaging>)> {
        self.ids()
            .into_iter()
            .filter_map(|id| match self.object(id) {
                Some(Object::HwptPaging(h)) => Some((id, h)),
                _ => None,
            })
            .collect()
    }

    fn attach_hwpt(
        &self,
        dev_id: u32,
        idev: &IDevice,
        hwpt_id: u32,
        hwpt: &Hwpt,
    ) -> Result<u32, Errno> {
        let mut groups = lock(&self.groups);
        let g = groups.entry(idev.group.id()).or_default();
        if g.attached.contains(&dev_id) {
            return Err(Errno::EBUSY);
        }
        match &g.hwpt {
            Some((id, _)) if *id != hwpt_id => return Err(Errno::EINVAL),
            _ => {}
        }
        // With PASIDs attached, the device's own requests need a HWPT
        // made for PASIDs too.
        if !g.pasids.is_empty() && !hwpt.pasid_compat() {
            return Err(Errno::EINVAL);
        }
        // A paging HWPT's IOAS reserves the device's reserved regions.
        if let Some(p) = hwpt.paging() {
            reserve_device(&mut lock(&p.ioas), dev_id, &idev.dev)?;
        }
        if g.hwpt.is_none() {
            let iommu = idev.group.iommu();
            if let Err(e) = iommu.attach_group(hwpt.domain(), &idev.group) {
                if let Some(p) = hwpt.paging() {
                    lock(&p.ioas).iopt.remove_reserved(dev_owner(dev_id));
                }
                return Err(e);
            }
            g.hwpt = Some((hwpt_id, hwpt.clone()));
        }
        g.attached.insert(dev_id);
        Ok(hwpt_id)
    }

    /// Moves device `dev_id` from what it is attached to onto `pt_id` (an
    /// IOAS or a HWPT), as Linux's `iommufd_device_replace`; returns the
    /// new HWPT's id. Replacing with the current HWPT changes nothing.
    ///
    /// Where this differs from Linux: the core has no atomic domain
    /// replace, so the group passes through its blocking domain (DMA is
    /// refused for that moment, never let through). On failure the device
    /// is put back where it was.
    ///
    /// # Errors
    /// `ENOENT` for no such device or object; `EINVAL` when the device is
    /// not attached or shares its group with other attached devices; as
    /// [`attach`](Self::attach).
    pub fn replace(&self, dev_id: u32, pt_id: u32) -> Result<u32, Errno> {
        let idev = self.device(dev_id)?;
        let (old_id, old) = {
            let groups = lock(&self.groups);
            let g = groups.get(&idev.group.id()).ok_or(Errno::EINVAL)?;
            if !g.attached.contains(&dev_id) {
                return Err(Errno::EINVAL);
            }
            if g.attached.len() != 1 {
                return Err(Errno::EINVAL);
            }
            g.hwpt.clone().ok_or(Errno::EINVAL)?
        };
        if old_id == pt_id {
            return Ok(pt_id);
        }
        match self.object(pt_id) {
            Some(Object::HwptPaging(_) | Object::HwptNested(_) | Object::Ioas(_)) => {}
            _ => return Err(Errno::ENOENT),
        }
        // The detach keeps an automatic HWPT for a failed attach to
        // return to.
        self.detach_keep(dev_id, true)?;
        match self.attach(dev_id, pt_id) {
            Ok(id) => {
                let auto = old.paging().is_some_and(|p| p.auto);
                drop(old);
                if auto && self.hwpt_unused(old_id) {
                    let _ = self.destroy(old_id);
                }
                Ok(id)
            }
            Err(e) => {
                let _ = self.attach_hwpt(dev_id, &idev, old_id, &old);
                Err(e)
            }
        }
    }

    /// What the group of `idev` is attached to.
    pub(crate) fn group_hwpt(&self, idev: &IDevice) -> Option<Hwpt> {
        lock(&self.groups)
            .get(&idev.group.id())
            .and_then(|g| g.hwpt.clone())
            .map(|(_, h)| h)
    }

    /// What PASID `pasid` of device `dev_id` is attached to.
    pub(crate) fn pasid_hwpt(&self, dev_id: u32, pasid: u32) -> Option<Hwpt> {
        let idev = self.device(dev_id).ok()?;
        lock(&self.groups)
            .get(&idev.group.id())?
            .pasids
            .get(&pasid)
            .map(|(_, _, h)| h.clone())
    }

    /// The HWPT `pt_id` names, for a PASID (an IOAS is `EINVAL`: PASIDs
    /// take no automatic HWPT).
    fn pasid_target(&self, pt_id: u32) -> Result<Hwpt, Errno> {
        match self.object(pt_id) {
            Some(Object::HwptPaging(h)) => Ok(Hwpt::Paging(h)),
            Some(Object::HwptNested(h)) => Ok(Hwpt::Nested(h)),
            Some(_) => Err(Errno::EINVAL),
            None => Err(Errno::ENOENT),
        }
    }

    /// Attaches PASID `pasid` of device `dev_id` to HWPT `pt_id` (Linux's
    /// `iommufd_device_attach` with a PASID).
    ///
    /// # Errors
    /// `ENOENT` for no such device or HWPT; `EINVAL` for an IOAS, a HWPT
    /// not made for PASIDs (or the device's own attachment not), or a
    /// PASID the device does not have; `EBUSY` when the PASID is attached
    /// already (replace it instead); the driver's refusal.
    pub fn pasid_attach(&self, dev_id: u32, pasid: u32, pt_id: u32) -> Result<(), Errno> {
        let idev = self.device(dev_id)?;
        let hwpt = self.pasid_target(pt_id)?;
        let mut groups = lock(&self.groups);
        let g = groups.entry(idev.group.id()).or_default();
        if g.pasids.contains_key(&pasid) {
            return Err(Errno::EBUSY);
        }
        if !hwpt.pasid_compat() || g.hwpt.as_ref().is_some_and(|(_, h)| !h.pasid_compat()) {
            return Err(Errno::EINVAL);
        }
        idev.group
            .iommu()
            .set_dev_pasid(hwpt.domain(), &idev.dev, pasid, None)?;
        g.pasids.insert(pasid, (dev_id, pt_id, hwpt));
        Ok(())
    }

    /// Moves PASID `pasid` of device `dev_id` to HWPT `pt_id` (Linux's
    /// `iommufd_device_replace` with a PASID); on failure it stays.
    ///
    /// # Errors
    /// `EINVAL` for a PASID not attached, an IOAS or a HWPT not made for
    /// PASIDs; `ENOENT` for no such device or HWPT; the driver's refusal.
    pub fn pasid_replace(&self, dev_id: u32, pasid: u32, pt_id: u32) -> Result<(), Errno> {
        let idev = self.device(dev_id)?;
        let mut groups = lock(&self.groups);
        let g = groups.entry(idev.group.id()).or_default();
        let (_, old_id, old) = g.pasids.get(&pasid).cloned().ok_or(Errno::EINVAL)?;
        let hwpt = self.pasid_target(pt_id)?;
        if old_id == pt_id {
            return Ok(());
        }
        if !hwpt.pasid_compat() || g.hwpt.as_ref().is_some_and(|(_, h)| !h.pasid_compat()) {
            return Err(Errno::EINVAL);
        }
        idev.group
            .iommu()
            .set_dev_pasid(hwpt.domain(), &idev.dev, pasid, Some(old.domain()))?;
        g.pasids.insert(pasid, (dev_id, pt_id, hwpt));
        Ok(())
    }

    /// Detaches PASID `pasid` of device `dev_id` (Linux's
    /// `iommufd_device_detach` with a PASID): nothing if not attached.
    ///
    /// # Errors
    /// `ENOENT` for no such device.
    pub fn pasid_detach(&self, dev_id: u32, pasid: u32) -> Result<(), Errno> {
        let idev = self.device(dev_id)?;
        let gone = lock(&self.groups)
            .get_mut(&idev.group.id())
            .and_then(|g| g.pasids.remove(&pasid));
        if let Some((_, _, hwpt)) = gone {
            idev.group
                .iommu()
                .remove_dev_pasid(hwpt.domain(), &idev.dev, pasid);
        }
        Ok(())
    }

    /// The HWPT PASID `pasid` of device `dev_id` is attached to, by id.
    pub fn pasid_attached(&self, dev_id: u32, pasid: u32) -> Option<u32> {
        let idev = self.device(dev_id).ok()?;
        lock(&self.groups)
            .get(&idev.group.id())?
            .pasids
            .get(&pasid)
            .map(|(_, id, _)| *id)
    }

    /// Whether no group is attached to HWPT `id`.
    fn hwpt_unused(&self, id: u32) -> bool {
        !lock(&self.groups)
            .values()
            .any(|g| g.hwpt.as_ref().is_some_and(|(h, _)| *h == id))
    }

    /// Detaches device `dev_id`; the group's last device puts the group
    /// back on its blocking domain, and an automatic HWPT nothing uses any
    /// more is destroyed.
    ///
    /// # Errors
    /// `ENOENT` for no such device; `EINVAL` when it is not attached.
    pub fn detach(&self, dev_id: u32) -> Result<(), Errno> {
        self.detach_keep(dev_id, false)
    }

    /// [`detach`](Self::detach); `keep` leaves an unused automatic HWPT
    /// in place (for a replace that may put the device back).
    fn detach_keep(&self, dev_id: u32, keep: bool) -> Result<(), Errno> {
        let idev = self.device(dev_id)?;
        let released = {
            let mut groups = lock(&self.groups);
            let g = groups.get_mut(&idev.group.id()).ok_or(Errno::EINVAL)?;
            if !g.attached.remove(&dev_id) {
                return Err(Errno::EINVAL);
            }
            let (hwpt_id, hwpt) = g.hwpt.clone().ok_or(Errno::EINVAL)?;
            if let Some(p) = hwpt.paging() {
                lock(&p.ioas).iopt.remove_reserved(dev_owner(dev_id));
            }
            if g.attached.is_empty() {
                g.hwpt = None;
                idev.group.iommu().detach_group(hwpt.domain(), &idev.group);
                Some((hwpt_id, hwpt))
            } else {
                None
            }
        };
        if let Some((id, hwpt)) = released {
            if !keep && hwpt.paging().is_some_and(|p| p.auto) {
                drop(hwpt);
                let _ = self.destroy(id);
            }
        }
        Ok(())
    }
}

/// Adds `domain` (HWPT `id`) to the IOAS (Linux's `iopt_table_add_domain`).
fn add_domain(g: &mut Ioas, id: u32, domain: &Domain) -> Result<(), Errno> {
    let page = min_page(domain);
    let align = page.max(g.iopt.iova_alignment());
    if align > crate::iopt::PAGE_SIZE {
        return Err(Errno::EINVAL);
    }
    let old_align = g.iopt.iova_alignment();
    g.iopt.set_iova_alignment(align)?;
    let geo = domain.geometry();
    let owner = hwpt_owner(id);
    let undo = |g: &mut Ioas| {
        g.iopt.remove_reserved(owner);
        let _ = g.iopt.set_iova_alignment(old_align);
    };
    let (start, end) = (geo.aperture_start.raw(), geo.aperture_end.raw());
    let mut r = Ok(());
    if start != 0 {
        r = g.iopt.reserve(0, start - 1, owner);
    }
    if r.is_ok() && end != u64::MAX {
        r = g.iopt.reserve(end + 1, u64::MAX, owner);
    }
    if let Err(e) = r {
        undo(g);
        return Err(e);
    }
    let areas: Vec<_> = g.iopt.areas().cloned().collect();
    if let Err(e) = g
        .pin(&areas)
        .and_then(|()| crate::ctx::fill_domain(domain, &areas, g.small_pages))
    {
        undo(g);
        return Err(e);
    }
    g.domains.push((id, domain.clone()));
    Ok(())
}

/// Reserves `dev`'s reserved regions in the IOAS (Linux's
/// `iopt_table_enforce_dev_resv_regions`): every one but those a device
/// may do without (`DirectRelaxable`).
fn reserve_device(g: &mut Ioas, dev_id: u32, dev: &Arc<Device>) -> Result<(), Errno> {
    let Some(group) = dev.iommu_group() else {
        return Ok(());
    };
    let owner = dev_owner(dev_id);
    for r in group.iommu().get_resv_regions(dev) {
        if r.ty == ResvType::DirectRelaxable {
            continue;
        }
        let start = r.start.raw();
        let last = start.saturating_add(r.length - 1);
        if let Err(e) = g.iopt.reserve(start, last, owner) {
            g.iopt.remove_reserved(owner);
            return Err(e);
        }
    }
    Ok(())
}
