//! Attaching groups and devices to domains, DMA ownership, and changing a
//! group's default domain.
//!
//! Every change of a group's domain goes through [`set_domain`], which
//! attaches each device in turn and, if one refuses, puts the devices already
//! moved back where they were: a group is never left half-attached.

use crate::group::{create_direct_mappings, DmaOwner, Group, GroupState};
use crate::prelude::*;
use crate::sync::MutexGuard;
use crate::{Device, Domain, DomainType, Iommu, IommuOps};
use alloc::sync::Arc;
use iommu_types::Errno;

pub(crate) fn attach_dev(domain: &Domain, dev: &Arc<Device>) -> Result<(), Errno> {
    let _s = crate::trace::debug_span!(
        "attach_dev",
        domain = domain.id(),
        ty = domain.ty().sysfs_name(),
        dev = dev.name()
    )
    .entered();
    domain.ops().attach_dev(domain, dev)
}

/// Moves every device of the group to `new` (or detaches them all for
/// `None`); all or nothing.
pub(crate) fn set_domain(st: &mut GroupState, new: Option<&Domain>) -> Result<(), Errno> {
    if st.domain.as_ref() == new {
        return Ok(());
    }
    // A device whose firmware asks for a 1:1 mapping (a `direct` reserved
    // region: an RMRR the firmware keeps using) may not have its DMA
    // blocked (Linux's `require_direct`): blocking the group fails whole.
    if let Some(d) = new {
        if d.ty() == DomainType::Blocked || Some(d) == st.blocking_domain.as_ref() {
            if let Some(gd) = st.devices.iter().find(|gd| requires_direct(&gd.dev)) {
                crate::trace::warn!(
                    dev = gd.dev.name(),
                    "the firmware asks for a 1:1 mapping of this device: its DMA cannot be blocked"
                );
                return Err(Errno::EINVAL);
            }
        }
    }
    let old = st.domain.clone();
    match new {
        Some(domain) => {
            for (i, gd) in st.devices.iter().enumerate() {
                if let Err(e) = attach_dev(domain, &gd.dev) {
                    for done in &st.devices[..i] {
                        match &old {
                            // Re-attaching what worked a moment ago; a failure
                            // here would be a driver bug, so only log it.
                            Some(o) => {
                                if let Err(e2) = attach_dev(o, &done.dev) {
                                    crate::trace::error!(
                                        dev = done.dev.name(),
                                        err = e2.name(),
                                        "rollback attach failed"
                                    );
                                }
                            }
                            None => domain.ops().detach_dev(domain, &done.dev),
                        }
                    }
                    return Err(e);
                }
            }
        }
        None => {
            if let Some(o) = &old {
                for gd in &st.devices {
                    o.ops().detach_dev(o, &gd.dev);
                }
            }
        }
    }
    st.domain = new.cloned();
    Ok(())
}

/// Whether `dev` has a `direct` reserved region (not a relaxable one).
fn requires_direct(dev: &Device) -> bool {
    crate::subsystem::device_resv_regions(dev)
        .iter()
        .any(|r| r.ty == crate::ResvType::Direct)
}

/// Where a group goes when it leaves a domain: the blocking domain while
/// owned, else the default domain, else nowhere.
fn set_core_domain(group: &Group, st: &mut GroupState) {
    let target = if st.owner.is_some() {
        st.blocking_domain.clone()
    } else {
        st.default_domain.clone()
    };
    if target.is_none() {
        let _ = set_domain(st, None);
        return;
    }
    if let Err(e) = set_domain(st, target.as_ref()) {
        group.iommu().shared.log(format!(
            "group {}: failed to return to its core domain: {}",
            group.id(),
            e.name()
        ));
    }
}

fn group_ops(st: &GroupState) -> Option<Arc<dyn IommuOps>> {
    st.devices.first()?.dev.iommu_ops()
}

impl Iommu {
    /// Attaches every device of `group` to `domain` (`iommu_attach_group`).
    ///
    /// # Errors
    /// `EBUSY` while the group is on a domain other than its default or
    /// blocking one; `EINVAL` if `domain` was allocated by another IOMMU
    /// instance than the one translating the group (or the group is empty);
    /// the first device's attach error (the group then stays where it was).
    pub fn attach_group(&self, domain: &Domain, group: &Group) -> Result<(), Errno> {
        let _span = crate::trace::debug_span!(
            "iommu_attach_group",
            domain = domain.id(),
            group = group.id()
        )
        .entered();
        let mut st = group.state();
        Self::attach_group_locked(domain, &mut st)
    }

    fn attach_group_locked(
        domain: &Domain,
        st: &mut MutexGuard<'_, GroupState>,
    ) -> Result<(), Errno> {
        if let Some(cur) = &st.domain {
            if Some(cur) != st.default_domain.as_ref() && Some(cur) != st.blocking_domain.as_ref() {
                return Err(Errno::EBUSY);
            }
        }
        // The group's own IOMMU must be the one that made the domain:
        // another instance's domain means nothing to this hardware.
        match group_ops(st) {
            Some(ops) if domain.is_owned_by(&ops) => {}
            _ => return Err(Errno::EINVAL),
        }
        set_domain(st, Some(domain))
    }

    /// Detaches `group` from whatever it is attached to
    /// (`iommu_detach_group`): the group goes back to its default domain
    /// (its blocking domain while owned), or, with neither, every device is
    /// detached. As in Linux, `domain` is not consulted: the group always
    /// returns to its core domain.
    pub fn detach_group(&self, domain: &Domain, group: &Group) {
        let _span = crate::trace::debug_span!(
            "iommu_detach_group",
            domain = domain.id(),
            group = group.id()
        )
        .entered();
        let mut st = group.state();
        set_core_domain(group, &mut st);
    }

    /// Points PASID `pasid` of `dev` at `domain`, in place of `old` if it
    /// had one (Linux's `iommu_attach_device_pasid` and
    /// `iommu_replace_device_pasid`). The caller keeps which domain each
    /// PASID is on; on failure it stays where it was.
    ///
    /// # Errors
    /// `EINVAL` for PASID 0 (the device's own requests), a PASID beyond
    /// the device's (`IommuOps::max_pasids`, none for most devices) or a
    /// domain of another IOMMU instance; the driver's refusal.
    pub fn set_dev_pasid(
        &self,
        domain: &Domain,
        dev: &Arc<Device>,
        pasid: u32,
        old: Option<&Domain>,
    ) -> Result<(), Errno> {
        let _span =
            crate::trace::debug_span!("set_dev_pasid", domain = domain.id(), pasid).entered();
        let ops = dev.iommu_ops().ok_or(Errno::ENODEV)?;
        if pasid == 0 || pasid >= ops.max_pasids(dev) || !domain.is_owned_by(&ops) {
            return Err(Errno::EINVAL);
        }
        domain.ops().set_dev_pasid(domain, dev, pasid, old)
    }

    /// PASID `pasid` of `dev` leaves `domain` (Linux's
    /// `iommu_detach_device_pasid`): DMA with it is blocked.
    pub fn remove_dev_pasid(&self, domain: &Domain, dev: &Arc<Device>, pasid: u32) {
        let _span =
            crate::trace::debug_span!("remove_dev_pasid", domain = domain.id(), pasid).entered();
        domain.ops().remove_dev_pasid(domain, dev, pasid);
    }

    /// Attaches a single device (`iommu_attach_device`).
    ///
    /// # Errors
    /// `ENODEV` if the device has no group; `EINVAL` if it shares its group
    /// with others; otherwise as [`attach_group`](Self::attach_group).
    pub fn attach_device(&self, domain: &Domain, dev: &Arc<Device>) -> Result<(), Errno> {
        let Some(group) = dev.iommu_group() else {
            return Err(Errno::ENODEV);
        };
        let _span = crate::trace::debug_span!(
            "iommu_attach_device",
            domain = domain.id(),
            dev = dev.name()
        )
        .entered();
        let mut st = group.state();
        if st.devices.len() != 1 {
            return Err(Errno::EINVAL);
        }
        Self::attach_group_locked(domain, &mut st)
    }

    /// Detaches a single device (`iommu_detach_device`): its group returns
    /// to its core domain. A device without a group is left alone; one that
    /// shares its group, or is not attached to `domain`, too, with a warning
    /// logged (Linux's `WARN_ON`s).
    pub fn detach_device(&self, domain: &Domain, dev: &Arc<Device>) {
        let Some(group) = dev.iommu_group() else {
            return;
        };
        let mut st = group.state();
        let why = if st.domain.as_ref() != Some(domain) {
            "not attached to that domain"
        } else if st.devices.len() != 1 {
            "in a group of several devices"
        } else {
            set_core_domain(&group, &mut st);
            return;
        };
        drop(st);
        self.shared.log(format!(
            "WARNING: {}: detach_device, but the device is {why}",
            dev.name()
        ));
    }

    // ---- DMA ownership -----------------------------------------------------

    fn take_dma_ownership(&self, st: &mut GroupState, owner: DmaOwner) -> Result<(), Errno> {
        if st.domain.is_some() && st.domain != st.default_domain {
            return Err(Errno::EBUSY);
        }
        if st.blocking_domain.is_none() {
            let ops = group_ops(st).ok_or(Errno::ENODEV)?;
            // A driver without blocking domains gets an empty unmanaged one.
            let blocking = self
                .domain_alloc_with(&ops, DomainType::Blocked)
                .or_else(|_| self.domain_alloc_with(&ops, DomainType::Unmanaged))?;
            st.blocking_domain = Some(blocking);
        }
        let blocking = st.blocking_domain.clone();
        set_domain(st, blocking.as_ref())?;
        st.owner = Some(owner);
        st.owner_cnt += 1;
        Ok(())
    }

    fn release_dma_ownership(&self, group: &Group, st: &mut GroupState) {
        st.owner_cnt = 0;
        st.owner = None;
        let default = st.default_domain.clone();
        if let Err(e) = set_domain(st, default.as_ref()) {
            self.shared.log(format!(
                "group {}: failed to restore the default domain: {}",
                group.id(),
                e.name()
            ));
        }
    }

    /// Claims the group for a user-space DMA owner (`iommu_group_claim_dma_owner`):
    /// the group moves to a blocking domain until released.
    ///
    /// # Errors
    /// `EPERM` if already owned; `EBUSY` if the group is not on its default domain.
    pub fn group_claim_dma_owner(&self, group: &Group, owner: DmaOwner) -> Result<(), Errno> {
        let mut st = group.state();
        if st.owner_cnt > 0 {
            return Err(Errno::EPERM);
        }
        self.take_dma_ownership(&mut st, owner)
    }

    /// Releases a group claimed with [`group_claim_dma_owner`](Self::group_claim_dma_owner);
    /// it returns to its default domain. Releasing an unowned group is logged and ignored.
    pub fn group_release_dma_owner(&self, group: &Group) {
        let mut st = group.state();
        if st.owner.is_none() {
            drop(st);
            self.shared.log(format!(
                "WARNING: group {}: release of a DMA owner it does not have",
                group.id()
            ));
            return;
        }
        self.release_dma_ownership(group, &mut st);
    }

    /// Claims `dev`'s group for `owner`; the same owner may claim again (a
    /// count is kept) (`iommu_device_claim_dma_owner`).
    ///
    /// # Errors
    /// `ENODEV` without a group; `EPERM` if another owner (or a kernel driver)
    /// holds it; `EBUSY` if the group is not on its default domain.
    pub fn device_claim_dma_owner(&self, dev: &Device, owner: DmaOwner) -> Result<(), Errno> {
        let group = dev.iommu_group().ok_or(Errno::ENODEV)?;
        let mut st = group.state();
        if st.owner_cnt > 0 {
            if st.owner != Some(owner) {
                return Err(Errno::EPERM);
            }
            st.owner_cnt += 1;
            return Ok(());
        }
        self.take_dma_ownership(&mut st, owner)
    }

    /// Drops one claim of `dev`'s group; the last returns it to its default domain.
    pub fn device_release_dma_owner(&self, dev: &Device) {
        let Some(group) = dev.iommu_group() else {
            return;
        };
        let mut st = group.state();
        if st.owner.is_none() || st.owner_cnt == 0 {
            drop(st);
            self.shared.log(format!(
                "WARNING: {}: release of a DMA owner it does not have",
                dev.name()
            ));
            return;
        }
        if st.owner_cnt > 1 {
            st.owner_cnt -= 1;
        } else {
            self.release_dma_ownership(&group, &mut st);
        }
    }

    /// A kernel driver binding to `dev` will use the default domain
    /// (`iommu_device_use_default_domain`); blocks user ownership meanwhile.
    ///
    /// # Errors
    /// `EBUSY` if a user owns the group or it is off its default domain.
    pub fn device_use_default_domain(&self, dev: &Device) -> Result<(), Errno> {
        let Some(group) = dev.iommu_group() else {
            return Ok(());
        };
        let mut st = group.state();
        if st.owner_cnt > 0 && (st.owner.is_some() || st.domain != st.default_domain) {
            return Err(Errno::EBUSY);
        }
        st.owner_cnt += 1;
        Ok(())
    }

    /// The kernel driver of `dev` stopped using the default domain.
    pub fn device_unuse_default_domain(&self, dev: &Device) {
        let Some(group) = dev.iommu_group() else {
            return;
        };
        let mut st = group.state();
        if st.owner.is_none() && st.owner_cnt > 0 {
            st.owner_cnt -= 1;
        }
    }

    // ---- default domain changes ------------------------------------------

    /// Handles a write to the group's sysfs `type` (`identity`, `DMA`,
    /// `DMA-FQ` or `auto`; a trailing newline is allowed). `DMA` to `DMA-FQ`
    /// happens in place; every other change allocates a new default domain,
    /// identity-maps the direct regions into it and moves the devices.
    /// Returns the bytes consumed.
    ///
    /// # Errors
    /// `EINVAL` for another word, a group without a default domain, or a type
    /// a device's driver forbids; `EPERM` while the group is owned or empty;
    /// `EBUSY` while it is attached to a non-default domain; allocation and
    /// attach errors (the old domain then stays).
    pub fn group_store_type(&self, group: &Group, buf: &str) -> Result<usize, Errno> {
        let _span = crate::trace::debug_span!(
            "iommu_group_store_type",
            group = group.id(),
            req = buf.trim_end()
        )
        .entered();
        let word = buf.strip_suffix('\n').unwrap_or(buf);
        let req = match word {
            "identity" => Some(DomainType::Identity),
            "DMA" => Some(DomainType::Dma),
            "DMA-FQ" => Some(DomainType::DmaFq),
            "auto" => None,
            _ => return Err(Errno::EINVAL),
        };
        let mut st = group.state();
        let Some(current) = st.default_domain.clone() else {
            return Err(Errno::EINVAL);
        };
        if req == Some(DomainType::DmaFq) && current.ty() == DomainType::Dma {
            let ops = group_ops(&st).ok_or(Errno::EINVAL)?;
            if !ops.capable(crate::Capability::DeferredFlush) {
                return Err(Errno::EINVAL);
            }
            current.set_ty(DomainType::DmaFq);
            return Ok(buf.len());
        }
        if st.devices.is_empty() || st.owner_cnt > 0 {
            return Err(Errno::EPERM);
        }
        if st.domain.as_ref() != Some(&current) {
            return Err(Errno::EBUSY);
        }
        let ops = group_ops(&st).ok_or(Errno::EINVAL)?;
        // Every device's driver vote must agree with the request (and each other).
        let mut vote: Option<DomainType> = None;
        for gd in &st.devices {
            if let Some(v) = ops.def_domain_type(&gd.dev) {
                if vote.is_some_and(|prev| prev != v) {
                    return Err(Errno::EINVAL);
                }
                vote = Some(v);
            }
        }
        if let (Some(r), Some(v)) = (req, vote) {
            if r != v {
                return Err(Errno::EINVAL);
            }
        }
        let ty = self.resolve_default_type(&ops, vote, req);
        if req == Some(DomainType::DmaFq) && ty != DomainType::DmaFq {
            return Err(Errno::EINVAL);
        }
        if ty == current.ty() {
            return Ok(buf.len());
        }
        let new = match self.domain_alloc_with(&ops, ty) {
            Ok(d) => d,
            Err(e) if req.is_none() && ty != DomainType::Dma => self
                .domain_alloc_with(&ops, DomainType::Dma)
                .map_err(|_| e)?,
            Err(e) => return Err(e),
        };
        let mut runs = Vec::with_capacity(st.devices.len());
        for gd in &st.devices {
            let regions = crate::subsystem::device_resv_regions(&gd.dev);
            match create_direct_mappings(&self.shared, &new, &regions, gd.dev.name()) {
                Ok(r) => runs.push(r),
                Err(e) => return Err(e), // `new` is dropped with its mappings
            }
        }
        set_domain(&mut st, Some(&new))?;
        for (gd, r) in st.devices.iter_mut().zip(runs) {
            gd.direct_maps = r;
        }
        st.default_domain = Some(new);
        drop(st);
        self.shared.log(format!(
            "group {}: default domain type is now {}",
            group.id(),
            ty.sysfs_name()
        ));
        Ok(buf.len())
    }
}
