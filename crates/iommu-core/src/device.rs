//! Devices as the IOMMU core sees them: a name, a sysfs directory, firmware
//! data the driver reads (stream ids, reserved memory), and the device's
//! group pointer (`dev->iommu_group`).

use crate::prelude::*;
use crate::sync::Mutex;
use crate::{Bus, Group, ReservedRegion};
use alloc::sync::{Arc, Weak};
use core::any::Any;
use core::fmt;

/// Description of a device to add to a bus.
#[derive(Clone, Debug, Default)]
pub struct DeviceBuilder {
    name: String,
    sysfs_dir: Option<String>,
    description: String,
    stream_ids: Vec<u32>,
    resv_regions: Vec<ReservedRegion>,
    pci: bool,
}

impl DeviceBuilder {
    /// A device named `name` (unique on its bus, e.g. `0000:00:02.0`).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Its directory under `/sys` (default `devices/<bus>/<name>`).
    pub fn sysfs_dir(mut self, dir: impl Into<String>) -> Self {
        self.sysfs_dir = Some(dir.into());
        self
    }

    /// A human description (what `lspci` would print after the address).
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = text.into();
        self
    }

    /// Firmware stream/requester ids (Linux's `iommu_fwspec` ids).
    pub fn stream_ids(mut self, ids: impl IntoIterator<Item = u32>) -> Self {
        self.stream_ids = ids.into_iter().collect();
        self
    }

    /// A reserved region firmware describes for the device.
    pub fn resv_region(mut self, region: ReservedRegion) -> Self {
        self.resv_regions.push(region);
        self
    }

    /// Marks it as a PCI function.
    pub fn pci(mut self, pci: bool) -> Self {
        self.pci = pci;
        self
    }

    pub(crate) fn build(self, bus: &Bus) -> Device {
        let sysfs_dir = self
            .sysfs_dir
            .unwrap_or_else(|| format!("devices/{}/{}", bus.name(), self.name));
        Device {
            name: self.name,
            sysfs_dir,
            description: self.description,
            stream_ids: self.stream_ids,
            resv_regions: self.resv_regions,
            pci: self.pci,
            bus_name: bus.name().to_string(),
            bus: Arc::downgrade(bus.inner()),
            group: Mutex::new(None),
            iommu_priv: Mutex::new(None),
        }
    }
}

/// A device on a bus.
pub struct Device {
    name: String,
    sysfs_dir: String,
    description: String,
    stream_ids: Vec<u32>,
    resv_regions: Vec<ReservedRegion>,
    pci: bool,
    bus_name: String,
    bus: Weak<crate::bus::BusInner>,
    /// `dev->iommu_group`: holds a reference on the group.
    group: Mutex<Option<Group>>,
    /// `dev->iommu->priv`: the driver's per-device data.
    iommu_priv: Mutex<Option<Arc<dyn Any + Send + Sync>>>,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.name)
            .field("bus", &self.bus_name)
            .field("group", &self.iommu_group().map(|g| g.id()))
            .finish()
    }
}

impl Device {
    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its directory under `/sys`.
    pub fn sysfs_dir(&self) -> &str {
        &self.sysfs_dir
    }

    /// The human description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Firmware stream ids.
    pub fn stream_ids(&self) -> &[u32] {
        &self.stream_ids
    }

    /// Reserved regions described by firmware.
    pub fn firmware_resv_regions(&self) -> &[ReservedRegion] {
        &self.resv_regions
    }

    /// Whether it is a PCI function.
    pub fn is_pci(&self) -> bool {
        self.pci
    }

    /// The name of its bus.
    pub fn bus_name(&self) -> &str {
        &self.bus_name
    }

    /// Its bus, while the bus exists.
    pub fn bus(&self) -> Option<Bus> {
        self.bus.upgrade().map(Bus::from_inner)
    }

    /// The IOMMU ops of its bus, if set (Linux's `dev_iommu_ops`).
    pub fn iommu_ops(&self) -> Option<Arc<dyn crate::IommuOps>> {
        self.bus()?.iommu_ops()
    }

    /// Its group, taking a reference (Linux's `iommu_group_get`).
    pub fn iommu_group(&self) -> Option<Group> {
        self.group.lock().clone()
    }

    /// Sets the group if the device has none; `false` if another add won.
    pub(crate) fn claim_group(&self, group: &Group) -> bool {
        let mut slot = self.group.lock();
        if slot.is_some() {
            return false;
        }
        *slot = Some(group.clone());
        true
    }

    pub(crate) fn set_group(&self, group: Option<Group>) -> Option<Group> {
        core::mem::replace(&mut *self.group.lock(), group)
    }

    /// Stores the driver's per-device data.
    pub fn set_iommu_priv(&self, data: Option<Arc<dyn Any + Send + Sync>>) {
        *self.iommu_priv.lock() = data;
    }

    /// The driver's per-device data.
    pub fn iommu_priv(&self) -> Option<Arc<dyn Any + Send + Sync>> {
        self.iommu_priv.lock().clone()
    }
}
