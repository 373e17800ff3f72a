//! IOMMU groups: the smallest set of devices the IOMMU can isolate.
//!
//! A [`Group`] is a counted reference (Linux's kobject reference): every
//! device in the group holds one, and so does every caller holding a
//! `Group`. When the last one goes the group is released exactly once: its
//! sysfs directory is removed, its id returns to the allocator and its
//! driver data is handed to the driver's release callback.
//!
//! Lock order: a group's state lock, then the id registry, then sysfs.
//! Listeners are always called with no lock held.

use crate::notifier::{NotifierChain, NotifierId, Notify};
use crate::prelude::*;
use crate::resv::{insert_resv_region, ReservedRegion};
use crate::subsystem::Shared;
use crate::sync::{Mutex, MutexGuard};
use crate::sysfs::{Attr, Node};
use crate::{Device, Domain, Iommu};
use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use core::any::Any;
use core::fmt;
use iommu_types::{Errno, Iova, PhysAddr};

/// Group events (`IOMMU_GROUP_NOTIFY_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupAction {
    /// A device joined the group.
    AddDevice,
    /// A device is leaving the group.
    DelDevice,
    /// A driver is about to bind to a device of the group.
    BindDriver,
    /// A driver has bound.
    BoundDriver,
    /// A driver is about to unbind.
    UnbindDriver,
    /// A driver has unbound.
    UnboundDriver,
}

/// One group event.
#[derive(Clone, Debug)]
pub struct GroupEvent {
    /// What happened.
    pub action: GroupAction,
    /// To which device.
    pub dev: Arc<Device>,
}

/// Identity of a DMA owner (e.g. one VFIO container); compare by value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DmaOwner(u64);

impl DmaOwner {
    /// A new owner identity, different from every other one in the process.
    pub fn new() -> DmaOwner {
        static NEXT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);
        DmaOwner(NEXT.fetch_add(1, core::sync::atomic::Ordering::Relaxed))
    }
}

impl Default for DmaOwner {
    fn default() -> Self {
        Self::new()
    }
}

/// A device's membership: its link name under `devices/` and the identity
/// mappings its add created (so removal undoes exactly those).
pub(crate) struct GroupDevice {
    pub(crate) dev: Arc<Device>,
    pub(crate) link_name: String,
    pub(crate) direct_maps: Vec<(Iova, u64)>,
}

/// Everything `group->mutex` protects.
#[derive(Default)]
pub(crate) struct GroupState {
    pub(crate) devices: Vec<GroupDevice>,
    pub(crate) name: Option<String>,
    pub(crate) default_domain: Option<Domain>,
    pub(crate) blocking_domain: Option<Domain>,
    pub(crate) domain: Option<Domain>,
    pub(crate) owner_cnt: u32,
    pub(crate) owner: Option<DmaOwner>,
}

/// The callback that releases a group's driver data (Linux's `iommu_data_release`).
pub type IommuDataRelease = Box<dyn FnOnce(Arc<dyn Any + Send + Sync>) + Send>;

struct IommuData {
    data: Arc<dyn Any + Send + Sync>,
    release: Option<IommuDataRelease>,
}

pub(crate) struct GroupInner {
    id: u32,
    pub(crate) shared: Arc<Shared>,
    state: Mutex<GroupState>,
    notifier: NotifierChain<GroupEvent>,
    iommu_data: Mutex<Option<IommuData>>,
}

impl Drop for GroupInner {
    fn drop(&mut self) {
        // sysfs first: the id must not be handed out while its directory exists.
        self.shared.sysfs().remove_tree(&group_dir(self.id));
        self.shared
            .release_group_id(self.id, self as *const GroupInner);
        if let Some(d) = self.iommu_data.get_mut().take() {
            if let Some(release) = d.release {
                release(d.data);
            }
        }
        self.shared.log(format!("Releasing group {}", self.id));
    }
}

pub(crate) fn group_dir(id: u32) -> String {
    format!("kernel/iommu_groups/{id}")
}

/// A reference to an IOMMU group; clone = get, drop = put.
#[derive(Clone)]
pub struct Group(pub(crate) Arc<GroupInner>);

/// A reference that does not keep the group alive (for driver lookup tables).
#[derive(Clone, Debug, Default)]
pub struct WeakGroup(Weak<GroupInner>);

impl WeakGroup {
    /// The group, if it still exists.
    pub fn upgrade(&self) -> Option<Group> {
        self.0.upgrade().map(Group)
    }
}

impl PartialEq for Group {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for Group {}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Group({})", self.0.id)
    }
}

impl Group {
    pub(crate) fn new_inner(id: u32, shared: Arc<Shared>) -> Group {
        Group(Arc::new(GroupInner {
            id,
            shared,
            state: Mutex::new(GroupState::default()),
            notifier: NotifierChain::default(),
            iommu_data: Mutex::new(None),
        }))
    }

    pub(crate) fn downgrade_inner(&self) -> Weak<GroupInner> {
        Arc::downgrade(&self.0)
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, GroupState> {
        self.0.state.lock()
    }

    /// `dev`'s group, taking a reference (Linux's `iommu_group_get`); the same
    /// as [`Device::iommu_group`].
    pub fn get(dev: &Device) -> Option<Group> {
        dev.iommu_group()
    }

    /// The group id (its directory name under `kernel/iommu_groups`).
    pub fn id(&self) -> u32 {
        self.0.id
    }

    /// The subsystem the group belongs to.
    pub fn iommu(&self) -> Iommu {
        Iommu {
            shared: Arc::clone(&self.0.shared),
        }
    }

    /// A non-owning reference.
    pub fn downgrade(&self) -> WeakGroup {
        WeakGroup(self.downgrade_inner())
    }

    /// References held on the group (its devices plus every other holder).
    pub fn refcount(&self) -> usize {
        Arc::strong_count(&self.0)
    }

    /// Its directory, relative to the sysfs root.
    pub fn sysfs_dir(&self) -> String {
        group_dir(self.0.id)
    }

    /// The group's notifier chain.
    pub fn notifier(&self) -> &NotifierChain<GroupEvent> {
        &self.0.notifier
    }

    /// Registers a listener for group events (`iommu_group_register_notifier`).
    pub fn register_notifier(
        &self,
        f: impl Fn(&GroupEvent) -> Notify + Send + Sync + 'static,
    ) -> NotifierId {
        self.0.notifier.register(f)
    }

    /// Unregisters a listener; `false` if it was not registered.
    pub fn unregister_notifier(&self, id: NotifierId) -> bool {
        self.0.notifier.unregister(id)
    }

    pub(crate) fn notify(&self, action: GroupAction, dev: &Arc<Device>) {
        self.0.notifier.call(&GroupEvent {
            action,
            dev: Arc::clone(dev),
        });
    }

    /// Devices in the group.
    pub fn device_count(&self) -> usize {
        self.state().devices.len()
    }

    /// A snapshot of the group's devices, in the order they joined.
    pub fn devices(&self) -> Vec<Arc<Device>> {
        self.state()
            .devices
            .iter()
            .map(|g| Arc::clone(&g.dev))
            .collect()
    }

    /// Calls `f` on every device with the group locked, stopping at the first
    /// non-zero result and returning it (`iommu_group_for_each_dev`). `f` must
    /// not call back into this group.
    pub fn for_each_dev(&self, mut f: impl FnMut(&Arc<Device>) -> i32) -> i32 {
        let st = self.state();
        for gd in &st.devices {
            let r = f(&gd.dev);
            if r != 0 {
                return r;
            }
        }
        0
    }

    /// The group's name, if one was set.
    pub fn name(&self) -> Option<String> {
        self.state().name.clone()
    }

    /// Sets (or with `None` removes) the group's name and its sysfs `name` file.
    ///
    /// # Errors
    /// `ENOMEM` if the sysfs file cannot be created.
    pub fn set_name(&self, name: Option<&str>) -> Result<(), Errno> {
        let mut st = self.state();
        let path = format!("{}/name", self.sysfs_dir());
        match name {
            Some(n) => {
                if self.0.shared.fail.hit(crate::FailPoint::SysfsCreate) {
                    return Err(Errno::ENOMEM);
                }
                self.0.shared.sysfs().set_file(&path, format!("{n}\n"))?;
                st.name = Some(n.to_string());
            }
            None => {
                self.0.shared.sysfs().remove(&path);
                st.name = None;
            }
        }
        Ok(())
    }

    /// Attaches driver data, released through `release` when the group is
    /// released or the data replaced (`iommu_group_set_iommudata`).
    pub fn set_iommu_data(
        &self,
        data: Arc<dyn Any + Send + Sync>,
        release: Option<IommuDataRelease>,
    ) {
        let old = self
            .0
            .iommu_data
            .lock()
            .replace(IommuData { data, release });
        if let Some(IommuData {
            data,
            release: Some(r),
        }) = old
        {
            r(data);
        }
    }

    /// The driver data (`iommu_group_get_iommudata`).
    pub fn iommu_data(&self) -> Option<Arc<dyn Any + Send + Sync>> {
        self.0
            .iommu_data
            .lock()
            .as_ref()
            .map(|d| Arc::clone(&d.data))
    }

    /// The default domain, if the group has one.
    pub fn default_domain(&self) -> Option<Domain> {
        self.state().default_domain.clone()
    }

    /// The domain the group is attached to now.
    pub fn domain(&self) -> Option<Domain> {
        self.state().domain.clone()
    }

    /// The DMA owner, if the group is claimed by a user.
    pub fn dma_owner(&self) -> Option<DmaOwner> {
        self.state().owner
    }

    /// Whether the group is owned (by a user, or by kernel drivers using the default domain).
    pub fn dma_owner_count(&self) -> u32 {
        self.state().owner_cnt
    }

    /// The union of the group's devices' reserved regions, sorted and merged.
    pub fn resv_regions(&self) -> Vec<ReservedRegion> {
        let devices = self.devices();
        let mut out = Vec::new();
        for dev in devices {
            for r in crate::subsystem::device_resv_regions(&dev) {
                insert_resv_region(&mut out, r);
            }
        }
        out
    }

    /// The sysfs `type` contents.
    pub fn type_string(&self) -> String {
        let t = self
            .state()
            .default_domain
            .as_ref()
            .map_or("unknown", |d| d.ty().sysfs_name());
        format!("{t}\n")
    }

    /// Creates `<dev dir>/iommu_group` and `devices/<name>` (retrying clashing
    /// names as `<name>.0`, `<name>.1`, ...); returns the link name used.
    fn link_device(&self, dev: &Device) -> Result<String, Errno> {
        let shared = &self.0.shared;
        let back = format!("{}/iommu_group", dev.sysfs_dir());
        shared.create_link(&back, &self.sysfs_dir())?;
        let mut name = dev.name().to_string();
        let mut i = 0u32;
        loop {
            let path = format!("{}/devices/{name}", self.sysfs_dir());
            match shared.create_link(&path, dev.sysfs_dir()) {
                Ok(()) => return Ok(name),
                Err(Errno::EEXIST) => {
                    name = format!("{}.{i}", dev.name());
                    i += 1;
                }
                Err(e) => {
                    shared.sysfs().remove(&back);
                    return Err(e);
                }
            }
        }
    }

    fn unlink_device(&self, dev: &Device, link_name: &str) {
        let mut sysfs = self.0.shared.sysfs();
        sysfs.remove(&format!("{}/devices/{link_name}", self.sysfs_dir()));
        sysfs.remove(&format!("{}/iommu_group", dev.sysfs_dir()));
    }

    /// Adds `dev` to the group (`iommu_group_add_device`): sysfs links both
    /// ways, identity maps for its direct regions in the default domain,
    /// attachment to the group's current domain, then `AddDevice` to the
    /// group's listeners. Any failure undoes everything.
    ///
    /// # Errors
    /// `EBUSY` if the device already has a group; link, mapping or attach errors.
    pub fn add_device(&self, dev: &Arc<Device>) -> Result<(), Errno> {
        self.join(dev, None)
    }

    /// [`add_device`](Self::add_device), first making `new_default` the
    /// default domain of a group that has none: the direct regions of the
    /// devices already in the group are mapped into it and, if the group is
    /// on no domain, they are attached to it. If anything fails the group is
    /// put back exactly as it was, without `new_default`.
    pub(crate) fn join(&self, dev: &Arc<Device>, new_default: Option<Domain>) -> Result<(), Errno> {
        let _span = crate::trace::debug_span!(
            "iommu_group_add_device",
            group = self.id(),
            dev = dev.name()
        )
        .entered();
        if dev.iommu_group().is_some() {
            return Err(Errno::EBUSY);
        }
        let link_name = self.link_device(dev)?;
        let regions = crate::subsystem::device_resv_regions(dev);
        let mut st = self.state();
        let installed = match new_default {
            // Another add may have given the group a default domain meanwhile.
            Some(dom) if st.default_domain.is_none() => {
                match install_default(&self.0.shared, &mut st, dom) {
                    Ok(i) => Some(i),
                    Err(e) => {
                        drop(st);
                        self.unlink_device(dev, &link_name);
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        let undo = |mut st: MutexGuard<'_, GroupState>, direct: &[(Iova, u64)]| {
            if let Some(dd) = &st.default_domain {
                for &(iova, len) in direct {
                    unmap_direct(dd, iova, len);
                }
            }
            if let Some(i) = installed {
                uninstall_default(&mut st, i);
            }
            drop(st);
            self.unlink_device(dev, &link_name);
        };
        let direct = match &st.default_domain {
            Some(dd) => match create_direct_mappings(&self.0.shared, dd, &regions, dev.name()) {
                Ok(d) => d,
                Err(e) => {
                    undo(st, &[]);
                    return Err(e);
                }
            },
            None => Vec::new(),
        };
        if let Some(domain) = st.domain.clone() {
            if let Err(e) = crate::attach::attach_dev(&domain, dev) {
                undo(st, &direct);
                return Err(e);
            }
        }
        if !dev.claim_group(self) {
            // Lost a race with another add of the same device.
            if let Some(domain) = &st.domain {
                domain.ops().detach_dev(domain, dev);
            }
            undo(st, &direct);
            return Err(Errno::EBUSY);
        }
        st.devices.push(GroupDevice {
            dev: Arc::clone(dev),
            link_name,
            direct_maps: direct,
        });
        drop(st);
        self.notify(GroupAction::AddDevice, dev);
        self.0.shared.log(format!(
            "Adding device {} to group {}",
            dev.name(),
            self.id()
        ));
        Ok(())
    }

    /// Removes `dev` from the group (`iommu_group_remove_device`), the exact
    /// reverse of [`add_device`](Self::add_device); `DelDevice` goes to the
    /// listeners first. A device not in this group is left alone.
    pub fn remove_device(&self, dev: &Arc<Device>) {
        let _span = crate::trace::debug_span!(
            "iommu_group_remove_device",
            group = self.id(),
            dev = dev.name()
        )
        .entered();
        if dev.iommu_group().as_ref() != Some(self) {
            return;
        }
        self.notify(GroupAction::DelDevice, dev);
        let mut st = self.state();
        let Some(pos) = st.devices.iter().position(|g| Arc::ptr_eq(&g.dev, dev)) else {
            return;
        };
        let gd = st.devices.remove(pos);
        if let Some(domain) = st.domain.clone() {
            domain.ops().detach_dev(&domain, dev);
        }
        release_direct_mappings(&mut st, gd.direct_maps);
        drop(st);
        self.unlink_device(dev, &gd.link_name);
        let held = dev.set_group(None);
        self.0.shared.log(format!(
            "Removing device {} from group {}",
            dev.name(),
            self.id()
        ));
        drop(held);
    }
}

/// What [`install_default`] did, so that [`uninstall_default`] can undo it.
#[derive(Clone, Copy)]
pub(crate) struct Installed {
    /// The group was on no domain and was attached to the new default one.
    attached: bool,
}

/// Makes `dom` the default domain of a group that has none, for the devices
/// already in it: their direct regions are mapped, and a group on no domain
/// is attached to it. All or nothing (on error `dom` is dropped, and its
/// mappings with it).
pub(crate) fn install_default(
    shared: &Shared,
    st: &mut GroupState,
    dom: Domain,
) -> Result<Installed, Errno> {
    let mut runs = Vec::with_capacity(st.devices.len());
    for gd in &st.devices {
        let regions = crate::subsystem::device_resv_regions(&gd.dev);
        runs.push(create_direct_mappings(
            shared,
            &dom,
            &regions,
            gd.dev.name(),
        )?);
    }
    let attached = st.domain.is_none();
    if attached {
        crate::attach::set_domain(st, Some(&dom))?;
    }
    for (gd, r) in st.devices.iter_mut().zip(runs) {
        gd.direct_maps = r;
    }
    st.default_domain = Some(dom);
    Ok(Installed { attached })
}

/// Undoes [`install_default`]: the group loses the default domain again.
pub(crate) fn uninstall_default(st: &mut GroupState, i: Installed) {
    if i.attached {
        let _ = crate::attach::set_domain(st, None);
    }
    for gd in &mut st.devices {
        gd.direct_maps.clear();
    }
    st.default_domain = None;
}

/// Identity-maps the direct regions of device `dev_name` in `domain`
/// (DMA-API domains only), leaving alone what is already mapped; returns the
/// runs it mapped, or undoes them all and returns the error.
///
/// The work follows what is mapped, not the size of the regions: holes are
/// found by asking the page tables for the next leaf, never by probing page
/// after page.
///
/// # Errors
/// `EINVAL` for a region that wraps past the top of the address space;
/// `ERANGE` for one outside the domain's aperture; map errors.
pub(crate) fn create_direct_mappings(
    shared: &Shared,
    domain: &Domain,
    regions: &[ReservedRegion],
    dev_name: &str,
) -> Result<Vec<(Iova, u64)>, Errno> {
    if !domain.ty().is_dma_api() || domain.pgsize_bitmap() == 0 {
        return Ok(Vec::new());
    }
    let _span = crate::trace::debug_span!("create_direct_mappings", domain = domain.id()).entered();
    let pg = domain.pgsize_bitmap() & domain.pgsize_bitmap().wrapping_neg();
    let geometry = domain.geometry();
    let refuse = |r: &ReservedRegion, why: &str, e: Errno| {
        shared.log(format!(
            "{dev_name}: direct region {:#x}+{:#x} {why}",
            r.start.raw(),
            r.length
        ));
        e
    };
    let mut runs: Vec<(Iova, u64)> = Vec::new();
    let mut result = Ok(());
    'regions: for r in regions.iter().filter(|r| r.ty.is_direct() && r.length != 0) {
        let Some(last) = r.start.raw().checked_add(r.length - 1) else {
            result = Err(refuse(
                r,
                "wraps past the top of the address space",
                Errno::EINVAL,
            ));
            break;
        };
        // Cover the whole region: round the start down and the end up.
        let start = r.start.raw() & !(pg - 1);
        let last = last | (pg - 1);
        if !geometry.contains(Iova::new(start), Iova::new(last)) {
            result = Err(refuse(
                r,
                "lies outside the domain's aperture",
                Errno::ERANGE,
            ));
            break;
        }
        let mut cur = start;
        loop {
            let next = domain.first_mapping(Iova::new(cur), Iova::new(last));
            let hole_end = next.map_or(last, |(at, _)| at.raw().saturating_sub(1).min(last));
            if next.is_none_or(|(at, _)| at.raw() > cur) {
                let len = hole_end - cur + 1;
                if let Err(e) = domain.map(Iova::new(cur), PhysAddr::new(cur), len, r.prot) {
                    result = Err(e);
                    break 'regions;
                }
                runs.push((Iova::new(cur), len));
            }
            // Past the leaf in the way, if any, else done.
            match next.and_then(|(at, size)| at.raw().checked_add(size)) {
                Some(after) if after > cur && after <= last => cur = after,
                _ => break,
            }
        }
    }
    match result {
        Ok(()) => {
            // Linux flushes after adding the identity maps in case the IOMMU
            // cached "not present"; a flush that fails leaves such a device
            // faulting, not reaching anything it should not.
            if !runs.is_empty() {
                if let Err(e) = domain.flush_iotlb_all() {
                    crate::trace::warn!(
                        dev = dev_name,
                        errno = e.name(),
                        "flush after direct mappings did not complete"
                    );
                }
            }
            Ok(runs)
        }
        Err(e) => {
            for &(iova, len) in &runs {
                unmap_direct(domain, iova, len);
            }
            Err(e)
        }
    }
}

/// Takes an identity map of a reserved region out of `domain`. If its
/// invalidation fails, a device may still reach the region 1:1 for a while:
/// logged, not fatal, because the region is reserved and its IOVAs are
/// never handed out for anything else.
fn unmap_direct(domain: &Domain, iova: Iova, len: u64) {
    if let Err(e) = domain.unmap(iova, len) {
        crate::trace::warn!(%iova, len, "{e}");
    }
}

/// Undoes a leaving device's identity maps, except runs another remaining
/// device also needs: those pass to that device, to be undone when it leaves.
fn release_direct_mappings(st: &mut GroupState, runs: Vec<(Iova, u64)>) {
    for (iova, len) in runs {
        let last = iova.raw() + (len - 1);
        let needed_by = st.devices.iter().position(|gd| {
            crate::subsystem::device_resv_regions(&gd.dev)
                .iter()
                .any(|r| r.ty.is_direct() && r.start.raw() <= last && r.last() >= iova.raw())
        });
        match (needed_by, &st.default_domain) {
            (Some(i), _) => st.devices[i].direct_maps.push((iova, len)),
            (None, Some(dd)) => unmap_direct(dd, iova, len),
            (None, None) => {}
        }
    }
}

/// A driver helper for IOMMUs that tell devices apart by stream (requester)
/// id: devices sharing any id cannot be isolated from each other and share a
/// group, as SMMU stream matching or a PCI alias forces.
///
/// A stream id belongs to exactly one group. An entry is owned by its group
/// and counted by the devices using it: it goes when the last of them is
/// released ([`release_device`](Self::release_device)), not when one of
/// several leaves. A device whose ids already belong to two different groups
/// cannot be placed in either without letting one group's device reach the
/// other's memory, and is refused (`EINVAL`, as Linux's SMMU drivers do);
/// groups are never merged, since devices in them are already attached.
///
/// Only weak references are held, so a group is still released when its
/// devices leave, and a device that never got released cannot pin anything.
#[derive(Debug, Default)]
pub struct StreamIdGroups {
    by_id: Mutex<BTreeMap<u32, StreamOwner>>,
}

/// Who owns one stream id.
#[derive(Debug)]
struct StreamOwner {
    group: WeakGroup,
    users: Vec<Weak<Device>>,
}

impl StreamOwner {
    /// The owning group, while it and at least one user are alive.
    fn live_group(&self) -> Option<Group> {
        if self.users.iter().all(|u| u.strong_count() == 0) {
            return None;
        }
        self.group.upgrade()
    }
}

impl StreamIdGroups {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The group that owns `dev`'s stream ids, or a new group when none is
    /// owned yet; `dev` is then counted as a user of each of its ids. For a
    /// driver's `device_group` op; pair it with
    /// [`release_device`](Self::release_device) when the device goes (or
    /// fails to join).
    ///
    /// # Errors
    /// `EINVAL` when `dev`'s ids are owned by two different groups (nothing
    /// is recorded then); as [`Iommu::group_alloc`].
    pub fn device_group(&self, iommu: &Iommu, dev: &Arc<Device>) -> Result<Group, Errno> {
        self.device_group_in(iommu, dev, None)
    }

    /// As [`device_group`](Self::device_group), with the group a bus
    /// layer has already chosen for `dev` (PCI grouping puts devices that
    /// share no stream id together when ACS cannot keep them apart):
    /// `want` is joined, and `dev`'s ids must not be owned by another
    /// group.
    ///
    /// # Errors
    /// `EINVAL` when `dev`'s ids are owned by two different groups, or by
    /// a group other than `want` (nothing is recorded then); as
    /// [`Iommu::group_alloc`].
    pub fn device_group_in(
        &self,
        iommu: &Iommu,
        dev: &Arc<Device>,
        want: Option<Group>,
    ) -> Result<Group, Errno> {
        let mut by_id = self.by_id.lock();
        let mut owner: Option<Group> = want;
        for id in dev.stream_ids() {
            let Some(g) = by_id.get(id).and_then(StreamOwner::live_group) else {
                continue;
            };
            match &owner {
                Some(o) if *o != g => {
                    drop(by_id);
                    iommu.shared.log(format!(
                        "{}: stream ids span IOMMU groups {} and {}; device refused",
                        dev.name(),
                        o.id(),
                        g.id()
                    ));
                    return Err(Errno::EINVAL);
                }
                _ => owner = Some(g),
            }
        }
        let group = match owner {
            Some(g) => g,
            None => iommu.generic_device_group(dev)?,
        };
        for id in dev.stream_ids() {
            let entry = by_id.entry(*id).or_insert_with(|| StreamOwner {
                group: group.downgrade(),
                users: Vec::new(),
            });
            if entry.live_group().as_ref() != Some(&group) {
                // A stale entry (its group or every user is gone): take it over.
                entry.group = group.downgrade();
            }
            entry.users.retain(|u| u.strong_count() > 0);
            if !entry
                .users
                .iter()
                .any(|u| core::ptr::eq(u.as_ptr(), Arc::as_ptr(dev)))
            {
                entry.users.push(Arc::downgrade(dev));
            }
        }
        Ok(group)
    }

    /// As [`device_group`](Self::device_group), but a device that
    /// `keys` names joins the group of the other devices with its key
    /// (Linux's `pci_device_group`: functions ACS cannot keep apart share
    /// a group even without a shared stream id).
    ///
    /// # Errors
    /// As [`device_group_in`](Self::device_group_in).
    pub fn device_group_keyed(
        &self,
        iommu: &Iommu,
        dev: &Arc<Device>,
        keys: Option<&GroupKeys>,
    ) -> Result<Group, Errno> {
        let Some((keys, key)) = keys.and_then(|k| Some((k, k.key(dev.name())?))) else {
            return self.device_group(iommu, dev);
        };
        let mut live = keys.live.lock();
        let want = live.get(&key).and_then(|w| w.upgrade());
        let group = self.device_group_in(iommu, dev, want)?;
        live.insert(key, group.downgrade());
        Ok(group)
    }

    /// A driver's `add_device` for devices grouped here: `dev` joins its
    /// group (through the driver's `device_group`), and what was recorded
    /// for it is released again if that fails.
    ///
    /// # Errors
    /// As [`Iommu::group_get_for_dev`].
    pub fn add_device(&self, iommu: &Iommu, dev: &Arc<Device>) -> Result<(), Errno> {
        iommu
            .group_get_for_dev(dev)
            .map(drop)
            .inspect_err(|_| self.release_device(dev))
    }

    /// A driver's `remove_device` for devices grouped here: `dev` leaves
    /// its group and its stream ids.
    pub fn remove_device(&self, iommu: &Iommu, dev: &Arc<Device>) {
        iommu.group_remove_device(dev);
        self.release_device(dev);
    }

    /// `dev` no longer uses its stream ids; an id whose last user this was
    /// is free again. Harmless for a device that was never recorded.
    pub fn release_device(&self, dev: &Device) {
        let mut by_id = self.by_id.lock();
        for id in dev.stream_ids() {
            if let Some(entry) = by_id.get_mut(id) {
                entry
                    .users
                    .retain(|u| u.strong_count() > 0 && !core::ptr::eq(u.as_ptr(), dev));
                if entry.users.is_empty() {
                    by_id.remove(id);
                }
            }
        }
    }

    /// The group that owns stream id `id`, if any.
    pub fn owner(&self, id: u32) -> Option<Group> {
        self.by_id.lock().get(&id).and_then(StreamOwner::live_group)
    }
}

pub(crate) fn group_attr_node(id: u32, name: &str) -> Option<Node> {
    match name {
        "type" => Some(Node::Attr(Attr::GroupType(id))),
        "reserved_regions" => Some(Node::Attr(Attr::GroupResvRegions(id))),
        _ => None,
    }
}

/// A grouping a bus layer decided, by device name: devices with the same
/// key share a group even when they share no stream id. The PCI layer
/// fills it from ACS and topology; any driver passes it to
/// [`StreamIdGroups::device_group_keyed`].
#[derive(Debug, Default)]
pub struct GroupKeys {
    key: BTreeMap<String, usize>,
    live: Mutex<BTreeMap<usize, WeakGroup>>,
}

impl GroupKeys {
    /// A grouping that puts each named device in group `key`.
    pub fn new(keys: impl IntoIterator<Item = (String, usize)>) -> Self {
        GroupKeys {
            key: keys.into_iter().collect(),
            live: Mutex::default(),
        }
    }

    /// The key of device `name`, if the bus layer grouped it.
    pub fn key(&self, name: &str) -> Option<usize> {
        self.key.get(name).copied()
    }
}
