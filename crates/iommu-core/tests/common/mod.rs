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

pub use iommu_core::testing::Snapshot;

pub fn snapshot(w: &World) -> Snapshot {
    Snapshot::take(&w.iommu, &w.bus, &[])
}
