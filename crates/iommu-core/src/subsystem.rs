//! The subsystem value (Linux's `iommu_init` state): the group registry and
//! id allocator, the sysfs model, the log, failure injection, and the
//! bus-level entry points. There is no global state: independent [`Iommu`]
//! values live side by side in one process.

use crate::bus::{BusAction, BusEvent, BusIommu};
use crate::fail::{FailPoint, FailPoints};
use crate::group::{group_attr_node, group_dir, Group, GroupAction, GroupInner};
use crate::notifier::Notify;
use crate::ops::Capability;
use crate::prelude::*;
use crate::resv::{format_resv_regions, ReservedRegion};
use crate::sync::{Mutex, MutexGuard};
use crate::sysfs::{render, Attr, EntryKind, Node, SysfsTree};
use crate::{Bus, Device, Domain, DomainType, IommuOps};
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::sync::{Arc, Weak};
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use iommu_types::Errno;

/// Boot-time policy for default domains (Linux's `iommu.passthrough=` and `iommu.strict=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuConfig {
    /// Default domains are identity (passthrough) rather than translated.
    pub passthrough: bool,
    /// Translated default domains invalidate on every unmap (`DMA`) rather
    /// than through a flush queue (`DMA-FQ`).
    pub strict: bool,
}

impl Default for IommuConfig {
    /// Translated and strict, the safe default.
    fn default() -> Self {
        Self {
            passthrough: false,
            strict: true,
        }
    }
}

impl IommuConfig {
    /// The default domain type this policy asks for.
    pub fn default_domain_type(&self) -> DomainType {
        match (self.passthrough, self.strict) {
            (true, _) => DomainType::Identity,
            (false, true) => DomainType::Dma,
            (false, false) => DomainType::DmaFq,
        }
    }
}

const LOG_CAPACITY: usize = 4096;

pub(crate) struct Shared {
    config: IommuConfig,
    /// Group id -> group; an entry stays until the group's release finishes.
    groups: Mutex<GroupTable>,
    sysfs: Mutex<SysfsTree>,
    log: Mutex<VecDeque<String>>,
    next_domain_id: AtomicU64,
    pub(crate) fail: FailPoints,
}

/// The groups by id, and the lowest free id in O(log n), as Linux's IDA
/// gives it (a scan for the first gap made adding n devices O(n^2)).
#[derive(Default)]
pub(crate) struct GroupTable {
    by_id: BTreeMap<u32, Weak<GroupInner>>,
    /// Ids below `next` that are not in `by_id`.
    free: BTreeSet<u32>,
    /// One past the highest id ever handed out.
    next: u64,
}

impl core::ops::Deref for GroupTable {
    type Target = BTreeMap<u32, Weak<GroupInner>>;
    fn deref(&self) -> &Self::Target {
        &self.by_id
    }
}

impl GroupTable {
    /// The lowest id not in use.
    fn lowest_free(&self) -> Result<u32, Errno> {
        match self.free.first() {
            Some(&id) => Ok(id),
            None => u32::try_from(self.next).map_err(|_| Errno::ENOSPC),
        }
    }

    /// Records `group` under `id`, which [`lowest_free`](Self::lowest_free) gave.
    fn insert(&mut self, id: u32, group: Weak<GroupInner>) {
        if u64::from(id) >= self.next {
            self.next = u64::from(id) + 1;
        } else {
            self.free.remove(&id);
        }
        self.by_id.insert(id, group);
    }

    fn remove(&mut self, id: u32) {
        if self.by_id.remove(&id).is_some() {
            self.free.insert(id);
        }
    }
}

impl Shared {
    /// A fresh domain id.
    pub(crate) fn next_domain_id(&self) -> u64 {
        self.next_domain_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn sysfs(&self) -> MutexGuard<'_, SysfsTree> {
        self.sysfs.lock()
    }

    pub(crate) fn log(&self, line: String) {
        crate::trace::info!("{line}");
        let mut log = self.log.lock();
        if log.len() == LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(line);
    }

    pub(crate) fn create_link(&self, path: &str, target: &str) -> Result<(), Errno> {
        if self.fail.hit(FailPoint::SysfsLink) {
            return Err(Errno::ENOMEM);
        }
        self.sysfs().create(path, Node::Link(target.to_string()))
    }

    pub(crate) fn release_group_id(&self, id: u32, ptr: *const GroupInner) {
        let mut groups = self.groups.lock();
        if groups
            .get(&id)
            .is_some_and(|w| core::ptr::eq(w.as_ptr(), ptr))
        {
            groups.remove(id);
        }
    }
}

/// One IOMMU subsystem instance; cheap to clone (clones share it).
#[derive(Clone)]
pub struct Iommu {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Iommu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iommu")
            .field("config", &self.shared.config)
            .field("groups", &self.group_ids())
            .finish()
    }
}

impl Default for Iommu {
    fn default() -> Self {
        Self::new(IommuConfig::default())
    }
}

/// The reserved regions of `dev` according to its bus's driver.
pub(crate) fn device_resv_regions(dev: &Device) -> Vec<ReservedRegion> {
    dev.iommu_ops()
        .map(|ops| ops.get_resv_regions(dev))
        .unwrap_or_default()
}

impl Iommu {
    /// A new, empty subsystem.
    pub fn new(config: IommuConfig) -> Iommu {
        Iommu {
            shared: Arc::new(Shared {
                config,
                groups: Mutex::new(GroupTable::default()),
                sysfs: Mutex::new(SysfsTree::new()),
                log: Mutex::new(VecDeque::new()),
                next_domain_id: AtomicU64::new(1),
                fail: FailPoints::default(),
            }),
        }
    }

    /// The policy it was created with.
    pub fn config(&self) -> IommuConfig {
        self.shared.config
    }

    /// Failure injection for the core's own fallible steps.
    pub fn fail_points(&self) -> &FailPoints {
        &self.shared.fail
    }

    /// The most recent log lines (kernel-log style), oldest first.
    pub fn log_lines(&self) -> Vec<String> {
        self.shared.log.lock().iter().cloned().collect()
    }

    /// The sysfs view.
    pub fn sysfs(&self) -> Sysfs<'_> {
        Sysfs { iommu: self }
    }

    // ---- buses -------------------------------------------------------------

    /// Sets `ops` on `bus` (Linux's `bus_set_iommu`): registers the core's
    /// bus listener, then runs the driver's `add_device` on every device
    /// already on the bus, stopping at the first error. On error everything
    /// is undone: devices added so far are removed and the ops are unset.
    ///
    /// # Errors
    /// `EBUSY` if the bus already has ops; the first `add_device` error
    /// (`ENODEV` for a driver without the op).
    pub fn bus_set_iommu(&self, bus: &Bus, ops: Arc<dyn IommuOps>) -> Result<(), Errno> {
        let _span =
            crate::trace::debug_span!("bus_set_iommu", bus = bus.name(), driver = ops.name())
                .entered();
        {
            let mut slot = bus.inner().iommu_ops.lock();
            if slot.is_some() {
                return Err(Errno::EBUSY);
            }
            let iommu = self.clone();
            let notifier = bus
                .notifier()
                .register(move |ev: &BusEvent| iommu.bus_notifier(ev));
            *slot = Some(BusIommu {
                ops: Arc::clone(&ops),
                notifier,
            });
        }
        let mut added: Vec<Arc<Device>> = Vec::new();
        for dev in bus.devices() {
            let had_group = dev.iommu_group().is_some();
            if had_group {
                // Linux: WARN_ON(dev->iommu_group) in the bus walk.
                self.shared.log(format!(
                    "WARNING: {}: already in an IOMMU group when the bus got its IOMMU ops",
                    dev.name()
                ));
            }
            let r = {
                let _s = crate::trace::debug_span!("add_device", dev = dev.name()).entered();
                ops.add_device(self, &dev)
            };
            if let Err(e) = r {
                for d in added.iter().rev() {
                    ops.remove_device(self, d);
                }
                if let Some(b) = bus.inner().iommu_ops.lock().take() {
                    bus.notifier().unregister(b.notifier);
                }
                return Err(e);
            }
            if !had_group && dev.iommu_group().is_some() {
                added.push(dev);
            }
        }
        Ok(())
    }

    /// The core's bus listener (Linux's `iommu_bus_notifier`).
    fn bus_notifier(&self, ev: &BusEvent) -> Notify {
        let Some(ops) = ev.dev.iommu_ops() else {
            return Notify::Done;
        };
        let group_action = match ev.action {
            BusAction::AddDevice => {
                let _s = crate::trace::debug_span!("add_device", dev = ev.dev.name()).entered();
                return match ops.add_device(self, &ev.dev) {
                    Ok(()) => Notify::Ok,
                    Err(e) => {
                        self.shared.log(format!(
                            "{}: failed to add device to IOMMU: {}",
                            ev.dev.name(),
                            e.name()
                        ));
                        Notify::Done
                    }
                };
            }
            BusAction::DelDevice => {
                if ev.dev.iommu_group().is_some() {
                    let _s =
                        crate::trace::debug_span!("remove_device", dev = ev.dev.name()).entered();
                    ops.remove_device(self, &ev.dev);
                    return Notify::Ok;
                }
                return Notify::Done;
            }
            BusAction::BindDriver => GroupAction::BindDriver,
            BusAction::BoundDriver => GroupAction::BoundDriver,
            BusAction::UnbindDriver => GroupAction::UnbindDriver,
            BusAction::UnboundDriver => GroupAction::UnboundDriver,
            BusAction::RemovedDevice | BusAction::DriverNotBound => return Notify::Done,
        };
        match ev.dev.iommu_group() {
            Some(group) => {
                group.notify(group_action, &ev.dev);
                Notify::Ok
            }
            None => Notify::Done,
        }
    }

    // ---- groups ------------------------------------------------------------

    /// Allocates a group with the lowest free id and its sysfs directory
    /// (`devices/`, `type`, `reserved_regions`).
    ///
    /// # Errors
    /// `ENOMEM` when allocation or sysfs creation fails; `ENOSPC` when every id is taken.
    pub fn group_alloc(&self) -> Result<Group, Errno> {
        let _span = crate::trace::debug_span!("iommu_group_alloc").entered();
        if self.shared.fail.hit(FailPoint::GroupAlloc) {
            return Err(Errno::ENOMEM);
        }
        let mut groups = self.shared.groups.lock();
        let id = groups.lowest_free()?;
        {
            let mut sysfs = self.shared.sysfs();
            let dir = group_dir(id);
            if self.shared.fail.hit(FailPoint::SysfsCreate) {
                return Err(Errno::ENOMEM);
            }
            // Only what this call created is removed on failure: a directory
            // that was already there belongs to someone else.
            sysfs.create(&dir, Node::Dir)?;
            let created = (|| {
                sysfs.create(&format!("{dir}/devices"), Node::Dir)?;
                for attr in ["type", "reserved_regions"] {
                    if let Some(node) = group_attr_node(id, attr) {
                        sysfs.create(&format!("{dir}/{attr}"), node)?;
                    }
                }
                Ok(())
            })();
            if let Err(e) = created {
                sysfs.remove_tree(&dir);
                return Err(e);
            }
        }
        let group = Group::new_inner(id, Arc::clone(&self.shared));
        groups.insert(id, group.downgrade_inner());
        crate::trace::debug!(id, "group allocated");
        Ok(group)
    }

    /// The group with id `id`, taking a reference (`iommu_group_get_by_id`).
    pub fn group_get_by_id(&self, id: u32) -> Option<Group> {
        self.shared
            .groups
            .lock()
            .get(&id)
            .and_then(Weak::upgrade)
            .map(Group)
    }

    /// Ids of live groups, ascending.
    pub fn group_ids(&self) -> Vec<u32> {
        self.shared
            .groups
            .lock()
            .iter()
            .filter(|(_, w)| w.strong_count() > 0)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Every live group, by id.
    pub fn groups(&self) -> Vec<Group> {
        self.shared
            .groups
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .map(Group)
            .collect()
    }

    /// A fresh group for `dev` (Linux's `generic_device_group`).
    ///
    /// # Errors
    /// As [`group_alloc`](Self::group_alloc).
    pub fn generic_device_group(&self, dev: &Device) -> Result<Group, Errno> {
        let _ = dev;
        self.group_alloc()
    }

    /// Finds or creates `dev`'s group (Linux's `iommu_group_get_for_dev`):
    /// asks the driver which group, and adds the device. A group without a
    /// default domain (a new one, or one whose allocation failed before)
    /// gets one now, for every device in it: direct regions mapped, devices
    /// attached, all or nothing. If the add fails, the group is left exactly
    /// as it was, without the new default domain.
    ///
    /// # Errors
    /// `ENODEV` if the device's bus has no IOMMU ops; the driver's
    /// `device_group` error; [`Group::add_device`] errors.
    pub fn group_get_for_dev(&self, dev: &Arc<Device>) -> Result<Group, Errno> {
        let _span =
            crate::trace::debug_span!("iommu_group_get_for_dev", dev = dev.name()).entered();
        if let Some(g) = dev.iommu_group() {
            return Ok(g);
        }
        let ops = dev.iommu_ops().ok_or(Errno::ENODEV)?;
        let group = {
            let _s = crate::trace::debug_span!("device_group", driver = ops.name()).entered();
            ops.device_group(self, dev)?
        };
        let new_default = if group.default_domain().is_none() {
            // The devices already in the group vote too.
            let members = group.devices();
            let voter = members
                .iter()
                .find(|d| ops.def_domain_type(d).is_some())
                .map_or(&**dev, |d| &**d);
            self.alloc_default_domain(&ops, voter, None)
        } else {
            None
        };
        group.join(dev, new_default)?;
        Ok(group)
    }

    /// Removes `dev` from its group, if it has one.
    pub fn group_remove_device(&self, dev: &Arc<Device>) {
        if let Some(group) = dev.iommu_group() {
            group.remove_device(dev);
        }
    }

    // ---- domains -----------------------------------------------------------

    /// Allocates a domain of type `ty` from `bus`'s driver (`iommu_domain_alloc`).
    /// The core fills in the type, ops, page sizes and aperture.
    ///
    /// # Errors
    /// `ENODEV` if the bus has no IOMMU ops; `EINVAL` for
    /// [`DomainType::Nested`] (a [`Viommu`](crate::Viommu) makes those);
    /// the driver's refusal; `ENOMEM`.
    pub fn domain_alloc(&self, bus: &Bus, ty: DomainType) -> Result<Domain, Errno> {
        let ops = bus.iommu_ops().ok_or(Errno::ENODEV)?;
        self.domain_alloc_with(&ops, ty)
    }

    pub(crate) fn domain_alloc_with(
        &self,
        ops: &Arc<dyn IommuOps>,
        ty: DomainType,
    ) -> Result<Domain, Errno> {
        let _span =
            crate::trace::debug_span!("domain_alloc", driver = ops.name(), ty = ty.sysfs_name())
                .entered();
        // Only a vIOMMU makes nested domains: they need its parent.
        if ty == DomainType::Nested {
            return Err(Errno::EINVAL);
        }
        if self.shared.fail.hit(FailPoint::DomainAlloc) {
            return Err(Errno::ENOMEM);
        }
        let driver_part = ops.domain_alloc(ty)?;
        let id = self.shared.next_domain_id();
        let domain = Domain::new(id, ty, driver_part, ops);
        crate::trace::debug!(domain = domain.id(), "allocated");
        Ok(domain)
    }

    /// The type a default domain gets: the request, else the driver's vote
    /// for `dev`, else the subsystem policy; lazy only where the driver can
    /// defer flushes.
    pub(crate) fn resolve_default_type(
        &self,
        ops: &Arc<dyn IommuOps>,
        vote: Option<DomainType>,
        req: Option<DomainType>,
    ) -> DomainType {
        let mut ty = req
            .or(vote)
            .unwrap_or(self.shared.config.default_domain_type());
        if ty == DomainType::Dma && req.is_none() && !self.shared.config.strict {
            ty = DomainType::DmaFq;
        }
        if ty == DomainType::DmaFq && !ops.capable(Capability::DeferredFlush) {
            ty = DomainType::Dma;
        }
        ty
    }

    /// Allocates a default domain for a group `dev` starts, falling back to
    /// `DMA` when the preferred type cannot be had; `None` if nothing can.
    fn alloc_default_domain(
        &self,
        ops: &Arc<dyn IommuOps>,
        dev: &Device,
        req: Option<DomainType>,
    ) -> Option<Domain> {
        let ty = self.resolve_default_type(ops, ops.def_domain_type(dev), req);
        match self.domain_alloc_with(ops, ty) {
            Ok(d) => Some(d),
            Err(e) if ty != DomainType::Dma => {
                self.shared.log(format!(
                    "Failed to allocate default IOMMU domain of type {} for group of {}: {} - falling back to DMA",
                    ty.sysfs_name(),
                    dev.name(),
                    e.name()
                ));
                self.domain_alloc_with(ops, DomainType::Dma).ok()
            }
            Err(_) => None,
        }
    }

    /// Reserved regions of one device, as its driver reports them.
    pub fn get_resv_regions(&self, dev: &Device) -> Vec<ReservedRegion> {
        device_resv_regions(dev)
    }
}

/// The sysfs model of one subsystem.
pub struct Sysfs<'a> {
    iommu: &'a Iommu,
}

impl Sysfs<'_> {
    fn read_attr(&self, attr: Attr) -> Result<String, Errno> {
        let (Attr::GroupType(id) | Attr::GroupResvRegions(id)) = attr;
        let group = self.iommu.group_get_by_id(id).ok_or(Errno::ENODEV)?;
        Ok(match attr {
            Attr::GroupType(_) => group.type_string(),
            Attr::GroupResvRegions(_) => format_resv_regions(&group.resv_regions()),
        })
    }

    /// Names in directory `path` (links followed), sorted.
    ///
    /// # Errors
    /// `ENOENT` if nothing is there; `EINVAL` if it is not a directory.
    pub fn list(&self, path: &str) -> Result<Vec<String>, Errno> {
        self.iommu.shared.sysfs().list(path.trim_start_matches('/'))
    }

    /// Contents of file `path` (links followed).
    ///
    /// # Errors
    /// `ENOENT` if nothing is there; `EINVAL` for a directory.
    pub fn read(&self, path: &str) -> Result<String, Errno> {
        let node = {
            let sysfs = self.iommu.shared.sysfs();
            sysfs.lookup(path.trim_start_matches('/'))?.1.clone()
        };
        match node {
            Node::File(s) => Ok(s),
            Node::Attr(a) => self.read_attr(a),
            Node::Dir | Node::Link(_) => Err(Errno::EINVAL),
        }
    }

    /// Writes `data` to file `path`; returns the bytes consumed.
    ///
    /// # Errors
    /// `ENOENT`; `EACCES` for read-only files; the attribute's own errors
    /// (see [`Iommu::group_store_type`]).
    pub fn write(&self, path: &str, data: &str) -> Result<usize, Errno> {
        let node = {
            let sysfs = self.iommu.shared.sysfs();
            sysfs.lookup(path.trim_start_matches('/'))?.1.clone()
        };
        match node {
            Node::Attr(Attr::GroupType(id)) => {
                let group = self.iommu.group_get_by_id(id).ok_or(Errno::ENODEV)?;
                self.iommu.group_store_type(&group, data)
            }
            Node::Dir => Err(Errno::EINVAL),
            _ => Err(Errno::EACCES),
        }
    }

    /// The target of link `path`, relative to the link's directory.
    ///
    /// # Errors
    /// `ENOENT`; `EINVAL` if it is not a link.
    pub fn read_link(&self, path: &str) -> Result<String, Errno> {
        self.iommu
            .shared
            .sysfs()
            .read_link(path.trim_start_matches('/'))
    }

    /// The canonical path `path` resolves to (every link followed).
    ///
    /// # Errors
    /// `ENOENT`; `EINVAL` for a link loop.
    pub fn resolve(&self, path: &str) -> Result<String, Errno> {
        Ok(self
            .iommu
            .shared
            .sysfs()
            .lookup(path.trim_start_matches('/'))?
            .0)
    }

    /// What `path` itself is (a link is not followed).
    ///
    /// # Errors
    /// `ENOENT`.
    pub fn kind(&self, path: &str) -> Result<EntryKind, Errno> {
        self.iommu.shared.sysfs().kind(path.trim_start_matches('/'))
    }

    /// The whole tree as indented text, with file contents.
    pub fn render(&self) -> String {
        // Attribute contents are computed with the sysfs lock released.
        let snapshot: Vec<(String, Node)> = {
            let sysfs = self.iommu.shared.sysfs();
            sysfs
                .entries()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let mut tree = SysfsTree::default();
        let mut contents = BTreeMap::new();
        for (path, node) in snapshot {
            if let Node::Attr(a) = node {
                contents.insert(path.clone(), self.read_attr(a).unwrap_or_default());
            }
            tree.insert_raw(path, node);
        }
        render(&tree, |path, node| match node {
            Node::File(s) => Some(s.clone()),
            Node::Attr(_) => contents.get(path).cloned(),
            _ => None,
        })
    }
}
