//! Buses: they own their devices and a notifier chain, and carry the IOMMU
//! ops set on them (`bus->iommu_ops`).

use crate::notifier::{NotifierChain, NotifierId};
use crate::sysfs::Node;
use crate::{Device, DeviceBuilder, Iommu, IommuOps};
use iommu_types::Errno;
use std::fmt;
use std::sync::{Arc, Mutex};

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

/// A bus type (`struct bus_type`); cheap to clone.
#[derive(Clone)]
pub struct Bus(Arc<BusInner>);

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bus({})", self.0.name)
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
    /// `EEXIST` if a bus of that name exists; `EINVAL` for an empty name or one with `/`.
    pub fn new(iommu: &Iommu, name: &str) -> Result<Bus, Errno> {
        if name.is_empty() || name.contains('/') {
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
        crate::lock(&self.0.iommu_ops)
            .as_ref()
            .map(|b| Arc::clone(&b.ops))
    }

    /// A snapshot of the devices on the bus, in the order they were added.
    pub fn devices(&self) -> Vec<Arc<Device>> {
        crate::lock(&self.0.devices).clone()
    }

    /// The device called `name`.
    pub fn find_device(&self, name: &str) -> Option<Arc<Device>> {
        crate::lock(&self.0.devices)
            .iter()
            .find(|d| d.name() == name)
            .cloned()
    }

    /// Adds a device: creates its sysfs directory and bus link, then sends
    /// `AddDevice` down the chain (where the IOMMU core, if set, probes it).
    ///
    /// # Errors
    /// `EEXIST` if the name or directory is taken, `EINVAL` for an empty name.
    pub fn add_device(&self, builder: DeviceBuilder) -> Result<Arc<Device>, Errno> {
        let dev = Arc::new(builder.build(self));
        if dev.name().is_empty() || dev.name().contains('/') {
            return Err(Errno::EINVAL);
        }
        {
            let mut devices = crate::lock(&self.0.devices);
            if devices.iter().any(|d| d.name() == dev.name()) {
                return Err(Errno::EEXIST);
            }
            let mut sysfs = self.0.iommu.shared.sysfs();
            if sysfs.exists(dev.sysfs_dir()) {
                return Err(Errno::EEXIST);
            }
            sysfs.mkdir_p(dev.sysfs_dir())?;
            let link = format!("bus/{}/devices/{}", self.name(), dev.name());
            if let Err(e) = sysfs.create(&link, Node::Link(dev.sysfs_dir().to_string())) {
                sysfs.remove_tree(dev.sysfs_dir());
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
        if !crate::lock(&self.0.devices)
            .iter()
            .any(|d| Arc::ptr_eq(d, dev))
        {
            return Err(Errno::ENODEV);
        }
        self.notify(BusAction::DelDevice, dev);
        {
            let mut devices = crate::lock(&self.0.devices);
            devices.retain(|d| !Arc::ptr_eq(d, dev));
            let mut sysfs = self.0.iommu.shared.sysfs();
            sysfs.remove(&format!("bus/{}/devices/{}", self.name(), dev.name()));
            sysfs.remove_tree(dev.sysfs_dir());
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
