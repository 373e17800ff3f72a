//! What the emulated hardware sees: stream-table entries owned by groups,
//! the IOTLB after strict unmaps, and the table-memory budget.
//!
//! The rules are the hardware's, not one driver's: with
//! `IOMMU_TEST_DRIVER=smmuv3` or `vtd` they run on the SMMUv3 or VT-d
//! driver and its emulated hardware instead of the soft IOMMU.

use iommu_core::{Bus, DeviceBuilder, DomainType, Errno, Iommu, IommuConfig, Iova, PhysAddr, Prot};
use iommu_platform::testing::hardware_from_env;
use iommu_platform::{Access, DefaultPlatform, DmaHardware, TranslateError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

fn platform() -> DefaultPlatform {
    DefaultPlatform::build_on(IommuConfig::default(), |pci| {
        Ok(hardware_from_env(
            Some(pci),
            Some(iommu_soft::DEFAULT_TABLE_BUDGET),
        ))
    })
    .unwrap()
}

fn setup_with(
    devices: &[(&str, &[u32])],
    table_budget: Option<usize>,
) -> (Iommu, Bus, Arc<dyn DmaHardware>) {
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    for (name, ids) in devices {
        bus.add_device(DeviceBuilder::new(*name).stream_ids(ids.iter().copied()))
            .unwrap();
    }
    let hw = hardware_from_env(None, table_budget);
    iommu.bus_set_iommu(&bus, hw.ops()).unwrap();
    (iommu, bus, hw)
}

fn setup(devices: &[(&str, &[u32])]) -> (Iommu, Bus, Arc<dyn DmaHardware>) {
    setup_with(devices, Some(iommu_soft::DEFAULT_TABLE_BUDGET))
}

#[test]
fn a_device_whose_stream_ids_span_two_groups_cannot_redirect_either() {
    let (_iommu, bus, soft) = setup(&[("a", &[1]), ("b", &[2])]);
    let b = bus.find_device("b").unwrap();
    let b_domain = b.iommu_group().unwrap().default_domain().unwrap();
    b_domain
        .map(Iova::new(0x1000), PhysAddr::new(0xb000), 0x1000, Prot::RW)
        .unwrap();
    let c = bus
        .add_device(DeviceBuilder::new("c").stream_ids([1, 2]))
        .unwrap();
    assert!(c.iommu_group().is_none());
    // B's DMA still goes through B's domain, and only B's.
    assert_eq!(soft.stream_domain(2), Some(b_domain));
    assert_eq!(
        soft.translate(&b, Iova::new(0x1000), Access::Read),
        Ok(PhysAddr::new(0xb000))
    );
}

#[test]
fn removing_one_of_two_devices_sharing_a_stream_id_keeps_the_survivors_entry() {
    // The default platform's GPU (0x100) and its audio function (0x101,
    // 0x100) share id 0x100 and so a group.
    let p = platform();
    let gpu = p.device("0000:01:00.0").unwrap();
    let audio = p.device("0000:01:00.1").unwrap();
    let dd = gpu.iommu_group().unwrap().default_domain().unwrap();
    dd.map(Iova::new(0x4000), PhysAddr::new(0x9000), 0x1000, Prot::RW)
        .unwrap();
    p.bus.remove_device(&audio).unwrap();
    assert_eq!(
        p.hw.translate(&gpu, Iova::new(0x4000), Access::Write),
        Ok(PhysAddr::new(0x9000)),
        "the GPU still translates through its group's domain"
    );
    assert_eq!(p.hw.stream_domain(0x100), Some(dd.clone()));
    assert_eq!(p.hw.stream_domain(0x101), None, "audio's own id went");
    p.bus.remove_device(&gpu).unwrap();
    assert_eq!(p.hw.stream_domain(0x100), None, "gone with its last user");
}

#[test]
fn a_group_moving_domains_moves_its_shared_stream_entries() {
    let p = platform();
    let gpu = p.device("0000:01:00.0").unwrap();
    let audio = p.device("0000:01:00.1").unwrap();
    let g = gpu.iommu_group().unwrap();
    let vfio = p.iommu.domain_alloc(&p.bus, DomainType::Unmanaged).unwrap();
    p.iommu
        .group_claim_dma_owner(&g, iommu_core::DmaOwner::new())
        .unwrap();
    p.iommu.attach_group(&vfio, &g).unwrap();
    for sid in [0x100, 0x101] {
        assert_eq!(p.hw.stream_domain(sid), Some(vfio.clone()), "{sid:#x}");
    }
    p.iommu.detach_group(&vfio, &g);
    p.iommu.group_release_dma_owner(&g);
    assert_eq!(p.hw.stream_domain(0x100), g.default_domain());
    assert!(matches!(
        p.hw.translate(&audio, Iova::new(0x4000), Access::Read),
        Err(TranslateError::Translation { .. })
    ));
}

/// One thread keeps translating an IOVA while another maps it, unmaps it
/// (strict) and then translates it itself: that last translation must
/// fault, every time.
#[test]
fn once_a_strict_unmap_returns_nothing_translates() {
    let rounds: u64 = if cfg!(miri) { 100 } else { 2_000_000 };
    let (_iommu, bus, soft) = setup(&[("dma0", &[1])]);
    let dev = bus.find_device("dma0").unwrap();
    let domain = dev.iommu_group().unwrap().default_domain().unwrap();
    let iova = Iova::new(0x10_0000);
    // Warm the tables so every round is the fast path.
    domain
        .map(iova, PhysAddr::new(0x8000_0000), 0x1000, Prot::RW)
        .unwrap();
    assert_eq!(domain.unmap(iova, 0x1000), Ok(0x1000));
    let done = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(2));
    let reader = {
        let (soft, dev, done, hits, start) = (
            soft.clone(),
            dev.clone(),
            done.clone(),
            hits.clone(),
            start.clone(),
        );
        std::thread::spawn(move || {
            start.wait();
            while !done.load(Ordering::Relaxed) {
                if soft.translate(&dev, iova, Access::Read).is_ok() {
                    hits.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    start.wait();
    let mut stale = 0u64;
    for _ in 0..rounds {
        domain
            .map(iova, PhysAddr::new(0x8000_0000), 0x1000, Prot::RW)
            .unwrap();
        assert_eq!(domain.unmap(iova, 0x1000), Ok(0x1000));
        if soft.translate(&dev, iova, Access::Read).is_ok() {
            stale += 1;
        }
    }
    done.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert_eq!(stale, 0, "stale translations after a strict unmap returned");
    // The reader did race with the mappings (otherwise the test proves nothing).
    assert!(hits.load(Ordering::Relaxed) > 0 || rounds < 1000);
}

#[test]
fn a_map_beyond_the_table_budget_is_enomem_and_leaves_nothing_mapped() {
    let (_iommu, bus, soft) = setup_with(&[("d", &[1])], Some(16));
    let dev = bus.find_device("d").unwrap();
    let d = dev.iommu_group().unwrap().default_domain().unwrap();
    // 64 MiB at a 4 KiB-aligned physical address needs 32 leaf tables.
    let e = d
        .map(
            Iova::new(0x4000_0000),
            PhysAddr::new(0x1000),
            64 << 20,
            Prot::RW,
        )
        .unwrap_err();
    assert_eq!(e, Errno::ENOMEM);
    assert_eq!(d.first_mapping(Iova::ZERO, Iova::new(u64::MAX)), None);
    assert!(matches!(
        soft.translate(&dev, Iova::new(0x4000_0000), Access::Read),
        Err(TranslateError::Translation { .. })
    ));
    // What fits the budget still maps.
    d.map(
        Iova::new(0x4000_0000),
        PhysAddr::new(0x1000),
        4 << 20,
        Prot::RW,
    )
    .unwrap();
    assert_eq!(
        soft.translate(&dev, Iova::new(0x4000_2000), Access::Read),
        Ok(PhysAddr::new(0x3000))
    );
}

/// The log lines a closure caused, as `(level, message)`.
fn logged(f: impl FnOnce()) -> Vec<(tracing::Level, String)> {
    use std::sync::Mutex;
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

    struct Record(Arc<Mutex<Vec<(tracing::Level, String)>>>);
    struct Message(String);
    impl tracing::field::Visit for Message {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }
    impl<S: tracing::Subscriber> Layer<S> for Record {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let mut m = Message(String::new());
            event.record(&mut m);
            let level = *event.metadata().level();
            self.0.lock().unwrap().push((level, m.0));
        }
    }
    let lines = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(Record(lines.clone()));
    tracing::subscriber::with_default(subscriber, f);
    let out = lines.lock().unwrap().clone();
    out
}

/// A wedged IOMMU is said once, however many invalidations fail, and
/// its recovery once.
#[test]
fn a_wedged_iommu_is_reported_once_and_its_recovery_once() {
    let (_iommu, bus, hw) = setup(&[("dma0", &[1])]);
    let dev = bus.find_device("dma0").unwrap();
    let domain = dev.iommu_group().unwrap().default_domain().unwrap();
    let lines = logged(|| {
        hw.set_wedged(true);
        for i in 0..16u64 {
            let iova = Iova::new(0x10_0000 + i * 0x1000);
            domain
                .map(iova, PhysAddr::new(0x8000_0000), 0x1000, Prot::RW)
                .unwrap();
            assert!(domain.unmap(iova, 0x1000).is_err());
        }
        hw.set_wedged(false);
        domain.flush_iotlb_all().unwrap();
        let iova = Iova::new(0x20_0000);
        domain
            .map(iova, PhysAddr::new(0x8000_0000), 0x1000, Prot::RW)
            .unwrap();
        assert_eq!(domain.unmap(iova, 0x1000), Ok(0x1000));
    });
    let count = |level: tracing::Level, what: &str| {
        lines
            .iter()
            .filter(|(l, m)| *l == level && m.contains(what))
            .count()
    };
    assert_eq!(
        count(tracing::Level::ERROR, "invalidations are not completing"),
        1,
        "{lines:#?}"
    );
    assert_eq!(
        count(tracing::Level::INFO, "invalidations complete again"),
        1,
        "{lines:#?}"
    );
}
