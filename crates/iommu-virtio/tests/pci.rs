//! The virtio-pci modern transport: the capabilities of QEMU 10's
//! virtio-iommu-pci as its configuration space holds them, malformed
//! capability lists refused with a typed error, and the driver run whole
//! through `PciTransport` on a virtio-pci function whose registers are
//! modelled here in front of this crate's device.

use iommu_core::{Bus, DeviceBuilder, Errno, Iommu, Iova, PhysAddr, Prot};
use iommu_virtio::driver::{Loopback, QueueLayout, Transport, Viommu, ViommuConfig};
use iommu_virtio::pci::{
    cap, status, PciBars, PciCapsError, PciRegion, PciTransport, VirtioPciCaps,
};
use iommu_virtio::spec::feature;
use iommu_virtio::{Device, DeviceConfig, VirtioIommu};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory};

type Mem = GuestMemoryMmap<()>;

/// QEMU 10.0's virtio-iommu-pci configuration space (stored test data).
fn qemu_config() -> Vec<u8> {
    let text = include_str!("data/qemu-10.0-virtio-iommu-pci-config.txt");
    let hex: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .concat();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn qemus_capabilities_parse() {
    let cfg = qemu_config();
    assert_eq!(cfg.len(), 256);
    assert_eq!(&cfg[..4], &[0xf4, 0x1a, 0x57, 0x10], "1af4:1057");
    let caps = VirtioPciCaps::parse(&cfg).unwrap();
    let at = |offset| PciRegion {
        bar: 4,
        offset,
        length: 0x1000,
    };
    assert_eq!(
        caps,
        VirtioPciCaps {
            common: at(0),
            notify: at(0x3000),
            notify_off_multiplier: 4,
            isr: at(0x1000),
            device: Some(at(0x2000)),
        }
    );
}

/// A configuration space with the given vendor capabilities, chained
/// from 0x40 in order: (cfg_type, bar, offset, length).
fn config_with(caps: &[(u8, u8, u32, u32)]) -> Vec<u8> {
    let mut cfg = vec![0u8; 256];
    cfg[0x06] = 0x10;
    cfg[0x34] = 0x40;
    for (i, &(ty, bar, offset, length)) in caps.iter().enumerate() {
        let at = 0x40 + 20 * i;
        let next = if i + 1 < caps.len() { at + 20 } else { 0 };
        cfg[at] = 0x09;
        cfg[at + 1] = next as u8;
        cfg[at + 2] = 20;
        cfg[at + 3] = ty;
        cfg[at + 4] = bar;
        cfg[at + 8..at + 12].copy_from_slice(&offset.to_le_bytes());
        cfg[at + 12..at + 16].copy_from_slice(&length.to_le_bytes());
        cfg[at + 16..at + 20].copy_from_slice(&4u32.to_le_bytes());
    }
    cfg
}

const FULL: [(u8, u8, u32, u32); 4] = [
    (cap::COMMON, 0, 0, 0x1000),
    (cap::ISR, 0, 0x1000, 0x1000),
    (cap::DEVICE, 0, 0x2000, 0x1000),
    (cap::NOTIFY, 0, 0x3000, 0x1000),
];

#[test]
fn malformed_capability_lists_get_typed_errors() {
    assert_eq!(
        VirtioPciCaps::parse(&[0u8; 63]),
        Err(PciCapsError::Short(63))
    );
    let mut cfg = config_with(&FULL);
    cfg[0x06] = 0;
    assert_eq!(
        VirtioPciCaps::parse(&cfg),
        Err(PciCapsError::NoCapabilities)
    );
    // A list that loops back on itself.
    let mut cfg = config_with(&FULL);
    cfg[0x40 + 20 * 3 + 1] = 0x40;
    assert!(matches!(
        VirtioPciCaps::parse(&cfg),
        Err(PciCapsError::BadList(_))
    ));
    // A pointer into the header.
    let mut cfg = config_with(&FULL);
    cfg[0x34] = 0x10;
    assert_eq!(VirtioPciCaps::parse(&cfg), Err(PciCapsError::BadList(0x10)));
    // No notification structure.
    let cfg = config_with(&FULL[..3]);
    assert_eq!(
        VirtioPciCaps::parse(&cfg),
        Err(PciCapsError::Missing(cap::NOTIFY))
    );
    // A common structure too short for its registers is no common structure.
    let cfg = config_with(&[(cap::COMMON, 0, 0, 0x10), FULL[1], FULL[2], FULL[3]]);
    assert_eq!(
        VirtioPciCaps::parse(&cfg),
        Err(PciCapsError::Missing(cap::COMMON))
    );
    // A capability at the very end of the space, too short to read whole.
    let mut cfg = config_with(&FULL);
    cfg[0x40 + 20 * 3 + 1] = 0xfc;
    cfg[0xfc] = 0x09;
    assert!(VirtioPciCaps::parse(&cfg).is_ok());
}

#[test]
fn the_first_usable_capability_of_each_type_wins() {
    // A common structure in a reserved BAR (6) is skipped; the next one is
    // taken; a second ISR structure is ignored.
    let cfg = config_with(&[
        (cap::COMMON, 6, 0, 0x1000),
        (cap::COMMON, 2, 0x100, 0x100),
        (cap::ISR, 2, 0x1000, 4),
        (cap::ISR, 3, 0, 4),
        (cap::NOTIFY, 2, 0x3000, 0x1000),
    ]);
    let caps = VirtioPciCaps::parse(&cfg).unwrap();
    assert_eq!(
        caps.common,
        PciRegion {
            bar: 2,
            offset: 0x100,
            length: 0x100
        }
    );
    assert_eq!(caps.isr.bar, 2);
    assert_eq!(caps.device, None);
    // Structures misaligned for their registers' accesses are skipped.
    let cfg = config_with(&[(cap::COMMON, 0, 2, 0x1000), FULL[1], FULL[2], FULL[3]]);
    assert_eq!(
        VirtioPciCaps::parse(&cfg),
        Err(PciCapsError::Missing(cap::COMMON))
    );
    let cfg = config_with(&[FULL[0], FULL[1], FULL[2], (cap::NOTIFY, 0, 0x3001, 0x1000)]);
    assert_eq!(
        VirtioPciCaps::parse(&cfg),
        Err(PciCapsError::Missing(cap::NOTIFY))
    );
    let mut cfg = config_with(&FULL);
    cfg[0x40 + 20 * 3 + 16] = 3; // an odd notify_off_multiplier
    assert_eq!(
        VirtioPciCaps::parse(&cfg),
        Err(PciCapsError::Missing(cap::NOTIFY))
    );
}

/// A modern virtio-pci function in one BAR laid out as `FULL`, its
/// registers modelled in front of this crate's device (through
/// `Loopback`): feature selects, status with FEATURES_OK checked by the
/// device, per-queue registers committed on `queue_enable`, notifications
/// and the device configuration.
struct Function {
    device: Loopback<Mem>,
    regs: Mutex<Regs>,
    max_queue: u16,
}

#[derive(Default)]
struct Regs {
    device_select: u32,
    driver_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    queues: BTreeMap<u16, QueueRegs>,
    /// Every register access, for the ordering checks.
    log: Vec<String>,
    /// Every value read, in order, as bytes (the fuzz seeds).
    read_bytes: Vec<u8>,
}

#[derive(Clone, Copy, Default)]
struct QueueRegs {
    size: u16,
    desc: u64,
    driver: u64,
    device: u64,
    enabled: bool,
}

impl Function {
    fn read(&self, off: u64, width: u8) -> u64 {
        let mut r = self.regs.lock().unwrap();
        let q = r.queue_select;
        let v = match off {
            0x0000 => u64::from(r.device_select),
            0x0004 => {
                (self.device.device_features() >> (32 * r.device_select.min(1))) & 0xffff_ffff
            }
            0x0012 => 2,
            0x0014 => u64::from(r.status),
            0x0015 => 0,
            0x0018 => match r.queues.get(&q) {
                Some(qr) if qr.size != 0 => u64::from(qr.size),
                _ if q < 2 => u64::from(self.max_queue),
                _ => 0,
            },
            0x001e => u64::from(q),
            0x2000..=0x2fff => {
                let mut b = [0u8; 8];
                let n = usize::from(width / 8);
                self.device
                    .read_config((off - 0x2000) as usize, &mut b[..n]);
                u64::from_le_bytes(b)
            }
            _ => 0,
        };
        r.log.push(format!("r{width} {off:#x}"));
        let n = usize::from(width / 8);
        r.read_bytes.extend_from_slice(&v.to_le_bytes()[..n]);
        v
    }

    fn write(&self, off: u64, width: u8, v: u64) {
        let mut r = self.regs.lock().unwrap();
        r.log.push(format!("w{width} {off:#x}={v:#x}"));
        let q = r.queue_select;
        let half = |old: u64, at: u64| {
            let shift = 8 * (off - at);
            (old & !(0xffff_ffff << shift)) | (v << shift)
        };
        match off {
            0x0000 => r.device_select = v as u32,
            0x0008 => r.driver_select = v as u32,
            0x000c => {
                let shift = 32 * r.driver_select.min(1);
                r.driver_features = (r.driver_features & !(0xffff_ffff << shift)) | (v << shift);
            }
            0x0014 => {
                let mut s = v as u8;
                if s == 0 {
                    r.queues.clear();
                }
                if s & status::FEATURES_OK != 0
                    && r.status & status::FEATURES_OK == 0
                    && self.device.set_driver_features(r.driver_features).is_err()
                {
                    s &= !status::FEATURES_OK;
                }
                r.status = s;
            }
            0x0016 => r.queue_select = v as u16,
            0x0018 => r.queues.entry(q).or_default().size = v as u16,
            0x0020 | 0x0024 => {
                let e = r.queues.entry(q).or_default();
                e.desc = half(e.desc, 0x20);
            }
            0x0028 | 0x002c => {
                let e = r.queues.entry(q).or_default();
                e.driver = half(e.driver, 0x28);
            }
            0x0030 | 0x0034 => {
                let e = r.queues.entry(q).or_default();
                e.device = half(e.device, 0x30);
            }
            0x001c if v == 1 => {
                let e = *r.queues.entry(q).or_default();
                let layout = QueueLayout {
                    size: e.size,
                    desc: e.desc,
                    avail: e.driver,
                    used: e.device,
                };
                if self.device.queue_ready(q, layout).is_ok() {
                    r.queues.get_mut(&q).unwrap().enabled = true;
                }
            }
            0x2000..=0x2fff => {
                let b = v.to_le_bytes();
                let n = usize::from(width / 8);
                let _ = self.device.write_config((off - 0x2000) as usize, &b[..n]);
            }
            // queue_notify_off is the queue's index, the multiplier 4.
            0x3000..=0x3fff => {
                let index = ((off - 0x3000) / 4) as u16;
                let ready = r.status & status::DRIVER_OK != 0
                    && r.queues.get(&index).is_some_and(|q| q.enabled);
                drop(r);
                assert_eq!(v, u64::from(index), "the notification names its queue");
                if ready {
                    self.device.notify(index);
                }
            }
            _ => {}
        }
    }
}

/// The function's BAR 0.
struct Bars(Arc<Function>);

impl PciBars for Bars {
    fn read8(&self, bar: u8, offset: u64) -> u8 {
        assert_eq!(bar, 0);
        self.0.read(offset, 8) as u8
    }
    fn read16(&self, bar: u8, offset: u64) -> u16 {
        assert_eq!((bar, offset % 2), (0, 0));
        self.0.read(offset, 16) as u16
    }
    fn read32(&self, bar: u8, offset: u64) -> u32 {
        assert_eq!((bar, offset % 4), (0, 0));
        self.0.read(offset, 32) as u32
    }
    fn write8(&self, bar: u8, offset: u64, v: u8) {
        assert_eq!(bar, 0);
        self.0.write(offset, 8, u64::from(v));
    }
    fn write16(&self, bar: u8, offset: u64, v: u16) {
        assert_eq!((bar, offset % 2), (0, 0));
        self.0.write(offset, 16, u64::from(v));
    }
    fn write32(&self, bar: u8, offset: u64, v: u32) {
        assert_eq!((bar, offset % 4), (0, 0));
        self.0.write(offset, 32, u64::from(v));
    }
}

const EP: u32 = 0x18;

fn function(config: DeviceConfig, max_queue: u16) -> (Mem, Arc<VirtioIommu>, Arc<Function>) {
    let mem = Mem::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let mut d = Device::new(config).unwrap();
    d.add_endpoint(EP, &[]).unwrap();
    let device = VirtioIommu::new(d);
    let f = Arc::new(Function {
        device: Loopback::new(Arc::clone(&device), mem.clone()),
        regs: Mutex::new(Regs::default()),
        max_queue,
    });
    (mem, device, f)
}

fn caps() -> VirtioPciCaps {
    VirtioPciCaps::parse(&config_with(&FULL)).unwrap()
}

#[test]
fn the_driver_runs_through_the_pci_transport() {
    let config = DeviceConfig {
        bypass: true,
        ..DeviceConfig::default()
    };
    let (mem, device, f) = function(config, 256);
    let t = Arc::new(PciTransport::new(Bars(Arc::clone(&f)), caps()).unwrap());
    assert_eq!(t.status(), status::ACKNOWLEDGE | status::DRIVER);
    assert_eq!(t.num_queues(), 2);
    let cfg = ViommuConfig::default();
    let need = Viommu::<Mem>::memory_needed(cfg, 512);
    let drv = Viommu::probe(t.clone(), mem.clone(), 0x10_0000, need, cfg).unwrap();
    assert_eq!(
        t.status(),
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK
    );
    assert_ne!(drv.features() & feature::VERSION_1, 0);
    device.with_device(|d| assert_eq!(d.negotiated(), drv.features()));
    // DRIVER_OK before the first notification, and the queues' addresses
    // written before they are enabled.
    {
        let log = &f.regs.lock().unwrap().log;
        let ok = log.iter().position(|l| l == "w8 0x14=0xf").unwrap();
        let first_notify = log.iter().position(|l| l.starts_with("w16 0x300")).unwrap();
        assert!(ok < first_notify, "{log:?}");
    }

    // Bypass through the device configuration.
    assert_eq!(drv.bypass(), Some(true));
    drv.set_bypass(false).unwrap();
    assert_eq!(drv.bypass(), Some(false));
    device.with_device(|d| assert!(!d.bypass_field()));

    // The core over it: PROBE, ATTACH, MAP; the endpoint's DMA goes through.
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    let dev = bus
        .add_device(
            DeviceBuilder::new("0000:00:03.0")
                .stream_ids([EP])
                .pci(true),
        )
        .unwrap();
    iommu.bus_set_iommu(&bus, Arc::new(drv.clone())).unwrap();
    let domain = dev.iommu_group().unwrap().default_domain().unwrap();
    domain
        .map(
            Iova::new(0x4000_0000),
            PhysAddr::new(0x200_0000),
            0x1000,
            Prot::RW,
        )
        .unwrap();
    let dma = IommuMemory::new(mem.clone(), device.endpoint(EP), true, ());
    dma.write_slice(b"through pci", GuestAddress(0x4000_0010))
        .unwrap();
    let mut got = [0u8; 11];
    mem.read_slice(&mut got, GuestAddress(0x200_0010)).unwrap();
    assert_eq!(&got, b"through pci");
    assert_eq!(domain.unmap(Iova::new(0x4000_0000), 0x1000), Ok(0x1000));
    assert!(dma.write_slice(b"x", GuestAddress(0x4000_0010)).is_err());
    let s = drv.stats();
    assert_eq!((s.requests[2], s.requests[3], s.refused), (1, 1, 0));

    // A reset forgets everything: the status reads 0.
    t.reset();
    assert_eq!(t.status(), 0);
}

#[test]
fn the_transport_refuses_what_the_function_cannot_do() {
    // A device whose queues hold 64 entries: the driver's default of 256
    // shrinks to fit, and the driver works.
    let (mem, _device, f) = function(DeviceConfig::default(), 64);
    let t = Arc::new(PciTransport::new(Bars(Arc::clone(&f)), caps()).unwrap());
    let cfg = ViommuConfig::default();
    let need = Viommu::<Mem>::memory_needed(cfg, 512);
    let drv = Viommu::probe(t.clone(), mem.clone(), 0x10_0000, need, cfg).unwrap();
    assert!(f
        .regs
        .lock()
        .unwrap()
        .queues
        .values()
        .all(|q| q.size == 64 && q.enabled));
    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    let dev = bus
        .add_device(DeviceBuilder::new("ep").stream_ids([EP]))
        .unwrap();
    iommu.bus_set_iommu(&bus, Arc::new(drv)).unwrap();
    let domain = dev.iommu_group().unwrap().default_domain().unwrap();
    // More MAPs than the smaller queue holds at once.
    for i in 0..100u64 {
        domain
            .map(Iova::new(i << 12), PhysAddr::new(i << 12), 0x1000, Prot::RW)
            .unwrap();
    }
    assert_eq!(domain.unmap(Iova::new(0), 100 << 12), Ok(100 << 12));
    // A queue the device does not have.
    let layout = QueueLayout {
        size: 16,
        desc: 0,
        avail: 0x100,
        used: 0x200,
    };
    assert_eq!(t.queue_ready(7, layout), Err(Errno::ENOENT));
    // Configuration writes past the device's structure.
    assert_eq!(t.write_config(0xfff, &[0, 0]), Err(Errno::EINVAL));
    assert_eq!(t.write_config(usize::MAX, &[0]), Err(Errno::EINVAL));
    // Reads past it are zero.
    let mut b = [0xffu8; 4];
    t.read_config(0x1000, &mut b);
    assert_eq!(b, [0; 4]);
    // Without a device structure, bypass cannot be set.
    let mut no_device = caps();
    no_device.device = None;
    let (mem, _device, f) = function(DeviceConfig::default(), 256);
    let t = Arc::new(PciTransport::new(Bars(f), no_device).unwrap());
    assert_eq!(t.write_config(36, &[1]), Err(Errno::EOPNOTSUPP));
    // ... and the driver refuses a device whose configuration reads as
    // zeros (no page size).
    assert_eq!(
        Viommu::probe(t, mem, 0x10_0000, need, ViommuConfig::default()).err(),
        Some(Errno::EINVAL)
    );
}

/// Seeds for `fuzz/fuzz_targets/virtio_pci.rs` (written to
/// `$IOMMU_FUZZ_SEEDS/virtio_pci` when set): a configuration space, then
/// the register values a working function gave the driver's probe, in
/// the order it read them, so that the fuzzer starts from a probe that
/// gets all the way through.
#[test]
fn the_pci_function_seeds_hold() {
    let (mem, _device, f) = function(DeviceConfig::default(), 256);
    let t = Arc::new(PciTransport::new(Bars(Arc::clone(&f)), caps()).unwrap());
    let cfg = ViommuConfig {
        request_queue_size: 16,
        event_queue_size: 4,
        completion_polls: 4,
    };
    let need = Viommu::<Mem>::memory_needed(cfg, 512);
    let drv = Viommu::probe(t, mem, 0x10_0000, need, cfg).unwrap();
    drv.set_bypass(true).unwrap();
    let stream = f.regs.lock().unwrap().read_bytes.clone();
    assert!(stream.len() > 64, "the probe read its registers");
    let seeds = [
        [config_with(&FULL), stream.clone()].concat(),
        [qemu_config(), stream].concat(),
        qemu_config(),
        config_with(&FULL[..2]),
    ];
    let dir = std::env::var_os("IOMMU_FUZZ_SEEDS").map(|d| {
        let d = std::path::PathBuf::from(d).join("virtio_pci");
        std::fs::create_dir_all(&d).unwrap();
        d
    });
    for (i, s) in seeds.iter().enumerate() {
        if let Some(d) = &dir {
            std::fs::write(d.join(format!("seed-{i}")), s).unwrap();
        }
    }
}
