//! Buses: they own their devices and a notifier chain, and carry the IOMMU
//! ops set on them (`bus->iommu_ops`).

use crate::notifier::{NotifierChain, NotifierId};
use crate::prelude::*;
use crate::sync::Mutex;
use crate::sysfs::{is_valid_component, is_valid_device_dir, Node};
use crate::{Device, DeviceBuilder, Iommu, IommuOps};
use alloc::sync::Arc;
use core::fmt;
use iommu_types::Errno;

/// Bus events (`BUS_NOTIFY_*`), in Linux's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BusAction {
    /// A device was added to the bus.
    AddDevice,
    /// A device is about to be removed.
    DelDevice,
    /// A device has been removed.
    RemovedDevice,
    /// A driver is about to bind.
    BindDriver,
    /// A driver has bound.
    BoundDriver,
    /// A driver is about to unbind.
    UnbindDriver,
    /// A driver has unbound.
    UnboundDriver,
    /// A driver failed to bind.
    DriverNotBound,
}

/// One bus event.
#[derive(Clone, Debug)]
pub struct BusEvent {
    /// What happened.
    pub action: BusAction,
    /// To which device.
    pub dev: Arc<Device>,
}

pub(crate) struct BusIommu {
    pub(crate) ops: Arc<dyn IommuOps>,
    pub(crate) notifier: NotifierId,
}

pub(crate) struct BusInner {
    name: String,
    iommu: Iommu,
    devices: Mutex<Vec<Arc<Device>>>,
    notifier: NotifierChain<BusEvent>,
    pub(crate) iommu_ops: Mutex<Option<BusIommu>>,
}

/// A bus type (`struct bus_type`); cheap to clone. When the last handle
/// goes, the devices still on it are removed (from their groups and from
/// sysfs) and the bus's directory with them; devices only refer to their
/// bus weakly.
#[derive(Clone)]
pub struct Bus(Arc<BusInner>);

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bus({})", self.0.name)
    }
}

impl Drop for BusInner {
    /// The last handle to a bus is gone while devices may still be on it:
    /// release them from the IOMMU (their groups, stream-table entries and
    /// the domains those hold), newest first, and remove their sysfs
    /// entries and the bus's. Without this, each device and its group would
    /// keep each other alive forever (Linux never frees a bus; a library
    /// must).
    fn drop(&mut self) {
        let devices = core::mem::take(self.devices.get_mut());
        let ops = self.iommu_ops.get_mut().take();
        for dev in devices.iter().rev() {
            if dev.iommu_group().is_some() {
                match &ops {
                    Some(b) => b.ops.remove_device(&self.iommu, dev),
                    None => self.iommu.group_remove_device(dev),
                }
            }
            let mut sysfs = self.iommu.shared.sysfs();
            sysfs.remove_device_dir(dev.sysfs_dir());
        }
        self.iommu
            .shared
            .sysfs()
            .remove_tree(&format!("bus/{}", self.name));
    }
}

impl PartialEq for Bus {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Bus {
    /// Registers a bus called `name` in `iommu`'s world (`/sys/bus/<name>`).
    ///
    /// # Errors
    /// `EEXIST` if a bus of that name exists; `EINVAL` for a name that is
    /// not one path component (empty, `.`, `..`, with `/` or NUL, or longer
    /// than 255 bytes).
    pub fn new(iommu: &Iommu, name: &str) -> Result<Bus, Errno> {
        if !is_valid_component(name) {
            return Err(Errno::EINVAL);
        }
        {
            let mut sysfs = iommu.shared.sysfs();
            let dir = format!("bus/{name}");
            if sysfs.exists(&dir) {
                return Err(Errno::EEXIST);
            }
            sysfs.mkdir_p(&format!("{dir}/devices"))?;
        }
        Ok(Bus(Arc::new(BusInner {
            name: name.to_string(),
            iommu: iommu.clone(),
            devices: Mutex::new(Vec::new()),
            notifier: NotifierChain::default(),
            iommu_ops: Mutex::new(None),
        })))
    }

    pub(crate) fn from_inner(inner: Arc<BusInner>) -> Bus {
        Bus(inner)
    }

    pub(crate) fn inner(&self) -> &Arc<BusInner> {
        &self.0
    }

    /// The bus name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The subsystem this bus lives in.
    pub fn iommu(&self) -> &Iommu {
        &self.0.iommu
    }

    /// The bus's notifier chain.
    pub fn notifier(&self) -> &NotifierChain<BusEvent> {
        &self.0.notifier
    }

    /// The IOMMU ops set on the bus, if any.
    pub fn iommu_ops(&self) -> Option<Arc<dyn IommuOps>> {
        self.0.iommu_ops.lock().as_ref().map(|b| Arc::clone(&b.ops))
    }

    /// A snapshot of the devices on the bus, in the order they were added.
    pub fn devices(&self) -> Vec<Arc<Device>> {
        self.0.devices.lock().clone()
    }

    /// The device called `name`.
    pub fn find_device(&self, name: &str) -> Option<Arc<Device>> {
        self.0
            .devices
            .lock()
            .iter()
            .find(|d| d.name() == name)
            .cloned()
    }

    /// Adds a device: creates its sysfs directory and bus link, then sends
    /// `AddDevice` down the chain (where the IOMMU core, if set, probes it).
    ///
    /// # Errors
    /// `EINVAL` for a name that is not one path component (empty, `.`,
    /// `..`, with `/` or NUL, over 255 bytes), a directory outside
    /// `devices/` or with such a component, or a reserved region that is
    /// empty or wraps past the top of the address space; `EEXIST` if the
    /// name or directory is taken.
    pub fn add_device(&self, builder: DeviceBuilder) -> Result<Arc<Device>, Errno> {
        let dev = Arc::new(builder.build(self));
        if !is_valid_component(dev.name()) || !is_valid_device_dir(dev.sysfs_dir()) {
            return Err(Errno::EINVAL);
        }
        let bad_region = dev
            .firmware_resv_regions()
            .iter()
            .any(|r| r.length == 0 || r.start.checked_add(r.length - 1).is_none());
        if bad_region {
            return Err(Errno::EINVAL);
        }
        {
            let mut devices = self.0.devices.lock();
            let mut sysfs = self.0.iommu.shared.sysfs();
            // The bus's link names every device on it: a name taken is
            // found in O(log n), not by a scan of the devices.
            let link = format!("bus/{}/devices/{}", self.name(), dev.name());
            if sysfs.exists(&link) {
                return Err(Errno::EEXIST);
            }
            sysfs.add_device_dir(dev.sysfs_dir())?;
            if let Err(e) = sysfs.create(&link, Node::Link(dev.sysfs_dir().to_string())) {
                sysfs.remove_device_dir(dev.sysfs_dir());
                return Err(e);
            }
            devices.push(Arc::clone(&dev));
        }
        self.notify(BusAction::AddDevice, &dev);
        Ok(dev)
    }

    /// Removes a device: `DelDevice` first (the IOMMU core releases it), then
    /// its sysfs entries go, then `RemovedDevice`.
    ///
    /// # Errors
    /// `ENODEV` if the device is not on this bus.
    pub fn remove_device(&self, dev: &Arc<Device>) -> Result<(), Errno> {
        if !self.0.devices.lock().iter().any(|d| Arc::ptr_eq(d, dev)) {
            return Err(Errno::ENODEV);
        }
        self.notify(BusAction::DelDevice, dev);
        {
            let mut devices = self.0.devices.lock();
            devices.retain(|d| !Arc::ptr_eq(d, dev));
            let mut sysfs = self.0.iommu.shared.sysfs();
            sysfs.remove(&format!("bus/{}/devices/{}", self.name(), dev.name()));
            sysfs.remove_device_dir(dev.sysfs_dir());
        }
        self.notify(BusAction::RemovedDevice, dev);
        Ok(())
    }

    /// Simulates a driver binding to `dev` (`BindDriver` then `BoundDriver`).
    pub fn bind_driver(&self, dev: &Arc<Device>) {
        self.notify(BusAction::BindDriver, dev);
        self.notify(BusAction::BoundDriver, dev);
    }

    /// Simulates a driver unbinding from `dev` (`UnbindDriver` then `UnboundDriver`).
    pub fn unbind_driver(&self, dev: &Arc<Device>) {
        self.notify(BusAction::UnbindDriver, dev);
        self.notify(BusAction::UnboundDriver, dev);
    }

    /// Sends one event down the bus chain.
    pub fn notify(&self, action: BusAction, dev: &Arc<Device>) {
        self.0.notifier.call(&BusEvent {
            action,
            dev: Arc::clone(dev),
        });
    }
}
