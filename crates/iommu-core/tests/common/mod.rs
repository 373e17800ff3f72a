//! Shared set-up for the core's tests.
#![allow(dead_code)]

use iommu_core::testing::{MockConfig, MockIommu};
use iommu_core::{Bus, Device, DeviceBuilder, Group, Iommu, IommuConfig};
use std::sync::Arc;

pub struct World {
    pub iommu: Iommu,
    pub bus: Bus,
    pub mock: Arc<MockIommu>,
    pub devs: Vec<Arc<Device>>,
}

impl World {
    pub fn group_of(&self, i: usize) -> Group {
        self.devs[i].iommu_group().expect("device has a group")
    }
}

/// A bus with `devices` (name, stream ids) and the mock driver set on it.
pub fn world_with(config: IommuConfig, cfg: MockConfig, devices: &[(&str, &[u32])]) -> World {
    let iommu = Iommu::new(config);
    let bus = Bus::new(&iommu, "platform").unwrap();
    let devs = devices
        .iter()
        .map(|(name, ids)| {
            bus.add_device(DeviceBuilder::new(*name).stream_ids(ids.iter().copied()))
                .unwrap()
        })
        .collect();
    let mock = Arc::new(MockIommu::with_config(cfg));
    iommu.bus_set_iommu(&bus, mock.clone()).unwrap();
    World {
        iommu,
        bus,
        mock,
        devs,
    }
}

/// Like `world_with`, but the driver is not set on the bus yet.
pub fn world_unset(cfg: MockConfig, devices: &[DeviceBuilder]) -> World {
    let iommu = Iommu::new(IommuConfig::default());
    let bus = Bus::new(&iommu, "platform").unwrap();
    let devs = devices
        .iter()
        .map(|b| bus.add_device(b.clone()).unwrap())
        .collect();
    World {
        iommu,
        bus,
        mock: Arc::new(MockIommu::with_config(cfg)),
        devs,
    }
}

pub fn world(devices: &[(&str, &[u32])]) -> World {
    world_with(IommuConfig::default(), MockConfig::default(), devices)
}

/// One leaf of a mock domain: (iova, size, pa, prot).
pub type Leaf = (u64, u64, u64, iommu_core::Prot);

/// Everything a failed operation must leave untouched.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub ids: Vec<u32>,
    pub sysfs: String,
    pub refcounts: Vec<(u32, usize)>,
    pub device_groups: Vec<(String, Option<u32>)>,
    pub mappings: Vec<(u32, Vec<Leaf>)>,
    pub domains: Vec<(u32, Option<u64>, Option<u64>)>,
}

pub fn snapshot(w: &World) -> Snapshot {
    let groups = w.iommu.groups();
    let refcounts = groups.iter().map(|g| (g.id(), g.refcount() - 1)).collect();
    let mappings = groups
        .iter()
        .map(|g| {
            (
                g.id(),
                g.default_domain()
                    .map(|d| MockIommu::mappings(&d))
                    .unwrap_or_default(),
            )
        })
        .collect();
    let domains = groups
        .iter()
        .map(|g| {
            (
                g.id(),
                g.default_domain().map(|d| d.id()),
                g.domain().map(|d| d.id()),
            )
        })
        .collect();
    Snapshot {
        ids: w.iommu.group_ids(),
        sysfs: w.iommu.sysfs().render(),
        refcounts,
        device_groups: w
            .bus
            .devices()
            .iter()
            .map(|d| (d.name().to_string(), d.iommu_group().map(|g| g.id())))
            .collect(),
        mappings,
        domains,
    }
}
