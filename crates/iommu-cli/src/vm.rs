//! `iommu vm`: a guest with a virtio-iommu, in one process. The guest's
//! IOMMU core runs the virtio-iommu driver, whose request and event queues
//! live in the guest's memory; the VMM side serves them with the device and
//! translates the DMA of a virtio-net and a virtio-blk through it. A third
//! device, the host's NVMe drive assigned to the guest, has its mappings
//! forwarded to the host's IOMMU (an external mapper into a domain of the
//! host's soft IOMMU, as a VMM forwards them to VFIO). The run prints every
//! request on the wire with the status the device gave, and ends with the
//! guest's IOMMU groups.

use crate::out::out;
use crate::run::{listed_groups, render_listing, ListedGroup, Narrative, JSON_VERSION};
use crate::{Failure, VmArch, VmArgs};
use iommu_core::{Bus, DeviceBuilder, Iommu, IommuConfig, PhysAddr};
use iommu_dma::{DmaDevice, DmaDirection, DmaOptions};
use iommu_platform::PciPlatform;
use iommu_virtio::driver::{Loopback, Viommu, ViommuConfig, ViommuDomain};
use iommu_virtio::spec::feature;
use iommu_virtio::{CoreDomainMapper, Device, DeviceConfig, ResvMem, VirtioIommu};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory};

type Mem = GuestMemoryMmap<()>;

/// The host's device assigned to the guest: its address on the host,
/// its address and endpoint id in the guest, its description.
const ASSIGNED: (&str, &str, u32, &str) = (
    "0000:03:00.0",
    "0000:00:04.0",
    0x20,
    "Non-Volatile memory controller [0108]: iommu-rs Simulated NVMe [0de5:0300] (assigned from the host)",
);

/// The host side of the assigned device: the host's platform and the
/// unmanaged domain its group is attached to (what VFIO holds).
struct Host {
    platform: PciPlatform,
    domain: iommu_core::Domain,
}

fn host() -> Result<Host, String> {
    let platform = PciPlatform::build().map_err(|e| format!("host: {e}"))?;
    let dev = platform
        .device(ASSIGNED.0)
        .ok_or("the host has no NVMe drive")?;
    let group = dev.iommu_group().ok_or("the host's NVMe has no group")?;
    let domain = platform
        .iommu
        .domain_alloc(&platform.bus, iommu_core::DomainType::Unmanaged)
        .map_err(|e| format!("host domain: {e}"))?;
    platform
        .iommu
        .group_claim_dma_owner(&group, iommu_core::DmaOwner::new())
        .map_err(|e| format!("host: claiming the NVMe's group: {e}"))?;
    platform
        .iommu
        .attach_group(&domain, &group)
        .map_err(|e| format!("host: attaching the NVMe's group: {e}"))?;
    Ok(Host { platform, domain })
}

/// Guest memory.
const MEM: u64 = 64 << 20;
/// Where the driver keeps its queues and request buffers.
const DRIVER_REGION: u64 = 0x10_0000;
/// The guest's two devices behind the virtio-iommu: PCI address, endpoint
/// id (the requester id), description.
const DEVICES: [(&str, u32, &str); 2] = [
    (
        "0000:00:02.0",
        0x10,
        "Ethernet controller [0200]: Red Hat, Inc. Virtio 1.0 network device [1af4:1041]",
    ),
    (
        "0000:00:03.0",
        0x18,
        "SCSI storage controller [0100]: Red Hat, Inc. Virtio 1.0 block device [1af4:1042]",
    ),
];

/// What the run prints (line by line, or kept for JSON), and the
/// requests the device served that it has not printed yet.
struct Story {
    n: Narrative,
    wire: Arc<Mutex<Vec<String>>>,
}

impl Story {
    fn say(&mut self, line: String) {
        self.n.say(line);
    }

    fn heading(&mut self, title: &str) {
        self.n.heading(title);
    }

    /// The requests the device served since the last call.
    fn wire(&mut self) {
        let taken = std::mem::take(&mut *self.wire.lock().unwrap_or_else(|e| e.into_inner()));
        for w in taken {
            self.say(format!("  wire: {w}"));
        }
    }
}

fn feature_names(f: u64) -> String {
    let names = [
        (feature::VERSION_1, "VERSION_1"),
        (feature::INPUT_RANGE, "INPUT_RANGE"),
        (feature::DOMAIN_RANGE, "DOMAIN_RANGE"),
        (feature::MAP_UNMAP, "MAP_UNMAP"),
        (feature::BYPASS, "BYPASS"),
        (feature::PROBE, "PROBE"),
        (feature::MMIO, "MMIO"),
        (feature::BYPASS_CONFIG, "BYPASS_CONFIG"),
    ];
    names
        .iter()
        .filter(|(bit, _)| f & bit != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs the guest.
///
/// # Errors
/// A step that fails (none does on the built-in guest).
pub fn vm(args: &VmArgs) -> Result<(), Failure> {
    crate::run::trace(&args.trace)?;
    let mut story = Story {
        n: Narrative::new(args.json),
        wire: Arc::default(),
    };
    let msi = match args.arch {
        VmArch::X86 => ResvMem::X86_MSI,
        VmArch::Arm => ResvMem::ARM_VIRT_ITS,
        VmArch::Riscv => ResvMem::RISCV_VIRT_IMSIC,
    };

    // The VMM: guest memory and the device with the two endpoints.
    let mem = Mem::from_ranges(&[(GuestAddress(0), MEM as usize)])
        .map_err(|e| format!("guest memory: {e}"))?;
    // An assigned device cannot bypass through this host model, so it is
    // only there when the guest translates.
    let assigned = !args.policy.passthrough;
    let host = if assigned { Some(host()?) } else { None };
    let mut config = DeviceConfig::default();
    if let Some(h) = &host {
        // The guest may only use IOVAs the host's IOMMU can map (as a VMM
        // sizes the vIOMMU's input range from the host's aperture).
        let g = h.domain.geometry();
        config.input_range = (g.aperture_start.raw(), g.aperture_end.raw());
    }
    let mut d = Device::new(config).map_err(|e| e.to_string())?;
    for (_, id, _) in DEVICES {
        d.add_endpoint(id, &[msi]).map_err(|e| e.to_string())?;
    }
    if assigned {
        d.add_endpoint(ASSIGNED.2, &[msi])
            .map_err(|e| e.to_string())?;
    }
    let device = VirtioIommu::new(d);
    if let Some(h) = &host {
        device
            .set_external_mapper(
                ASSIGNED.2,
                Box::new(CoreDomainMapper::new(h.domain.clone())),
            )
            .map_err(|e| format!("the assigned device's mapper: {e}"))?;
    }
    let wire = Arc::clone(&story.wire);
    device.observe(move |r, s| {
        tracing::debug!("device: {r} -> {s}");
        wire.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{r} -> {s}"));
    });
    let transport = Arc::new(Loopback::new(Arc::clone(&device), mem.clone()));

    story.heading(&format!(
        "Guest: {} MiB, a virtio-iommu (device 23) with a virtio-net and a virtio-blk behind it ({:?} MSI doorbell {:#x}-{:#x})",
        MEM >> 20,
        args.arch,
        msi.start,
        msi.end
    ));
    let cfg = ViommuConfig::default();
    let probe_size = device.with_device(|d| d.config().probe_size);
    let need = Viommu::<Mem>::memory_needed(cfg, probe_size);
    let viommu = {
        let _s = tracing::debug_span!("viommu_probe").entered();
        Viommu::probe(transport.clone(), mem.clone(), DRIVER_REGION, need, cfg)
            .map_err(|e| format!("virtio-iommu probe: {e}"))?
    };
    story.say(format!(
        "  driver: features {}",
        feature_names(viommu.features())
    ));
    let dc = device.with_device(|d| *d.config());
    story.say(format!(
        "  driver: page_size_mask {:#x}, input range {:#x}-{:#x}, domains {}-{}, probe_size {}; queues at {:#x} ({} bytes)",
        dc.page_size_mask, dc.input_range.0, dc.input_range.1, dc.domain_range.0, dc.domain_range.1, dc.probe_size, DRIVER_REGION, need
    ));

    story.heading("The guest's IOMMU core takes the driver; the devices are added");
    let policy = IommuConfig {
        passthrough: args.policy.passthrough,
        strict: !args.policy.lazy,
    };
    let iommu = Iommu::new(policy);
    let bus = Bus::new(&iommu, "pci").map_err(|e| format!("bus: {e}"))?;
    iommu
        .bus_set_iommu(&bus, Arc::new(viommu.clone()))
        .map_err(|e| format!("bus_set_iommu: {e}"))?;
    let mut guest_devices: Vec<(&str, u32, &str)> = DEVICES.to_vec();
    if assigned {
        guest_devices.push((ASSIGNED.1, ASSIGNED.2, ASSIGNED.3));
    }
    for &(name, id, desc) in &guest_devices {
        bus.add_device(DeviceBuilder::new(name).stream_ids([id]).description(desc))
            .map_err(|e| format!("adding {name}: {e}"))?;
    }
    story.wire();
    for &(name, _, _) in &guest_devices {
        let missing = |what: &str| Failure::Run(format!("{name}: {what}"));
        let dev = bus.find_device(name).ok_or_else(|| missing("gone"))?;
        let group = dev.iommu_group().ok_or_else(|| missing("no group"))?;
        let dd = group
            .default_domain()
            .ok_or_else(|| missing("no default domain"))?;
        let on_device = dd
            .ops()
            .as_any()
            .and_then(|a| a.downcast_ref::<ViommuDomain<Mem>>())
            .map_or(String::new(), |v| {
                format!(", domain {} on the device", v.id())
            });
        story.say(format!(
            "  {name}: group {}, default domain {} ({}){on_device}",
            group.id(),
            dd.id(),
            dd.ty()
        ));
        for r in group.resv_regions() {
            story.say(format!(
                "    reserved {:#x}-{:#x} {}",
                r.start.raw(),
                r.last(),
                r.ty.sysfs_name()
            ));
        }
    }

    if args.policy.passthrough {
        story.heading("Identity default domains: the devices' DMA bypasses translation");
        let net_ep = DEVICES[0].1;
        let mut got = [0u8; 4];
        mem.write_slice(b"idem", GuestAddress(0x40_0000))
            .map_err(|e| e.to_string())?;
        let dma = IommuMemory::new(mem.clone(), device.endpoint(net_ep), true, ());
        dma.read_slice(&mut got, GuestAddress(0x40_0000))
            .map_err(|e| format!("bypass DMA: {e}"))?;
        story.say(format!(
            "  virtio-net reads {:?} at 0x400000, untranslated",
            String::from_utf8_lossy(&got)
        ));
    } else {
        dma_steps(&mut story, &iommu, &bus, &mem, &device, &transport, &viommu)?;
        if let Some(h) = &host {
            assigned_steps(&mut story, &iommu, &bus, h)?;
        }
    }

    let groups = listed_groups(&iommu, |n| {
        bus.find_device(n).map(|d| d.description().to_string())
    })
    .map_err(|e| format!("reading the guest's sysfs: {e}"))?;
    let stats = viommu.stats();
    let summary = format!(
        "  requests: {} ATTACH, {} DETACH, {} MAP, {} UNMAP, {} PROBE; {} notifications; {} refused; {} fault events",
        stats.requests[0], stats.requests[1], stats.requests[2], stats.requests[3], stats.requests[4], stats.kicks, stats.refused, stats.faults
    );
    if args.json {
        story.say(summary);
        let steps = story.n.take_lines();
        #[derive(Serialize)]
        struct Out<'a> {
            version: u32,
            command: &'static str,
            steps: &'a [String],
            groups: &'a [ListedGroup],
        }
        out!(
            "{}\n",
            serde_json::to_string_pretty(&Out {
                version: JSON_VERSION,
                command: "vm",
                steps: &steps,
                groups: &groups,
            })
            .expect("plain data")
        );
    } else {
        story.heading("Driver");
        story.say(summary);
        story.heading("The guest's IOMMU groups");
        out!("{}", render_listing(&groups));
    }
    Ok(())
}

/// Delivers the faults the devices have caused so far through the event
/// queue, and says what the driver and the core made of them: each section
/// shows its own device's faults, and no earlier one's.
fn report_faults(
    story: &mut Story,
    transport: &Loopback<Mem>,
    viommu: &Viommu<Mem>,
    faults: &Mutex<Vec<String>>,
) {
    let delivered = transport.deliver_events();
    if delivered == 0 {
        return;
    }
    story.say(format!(
        "  the VMM writes {delivered} fault report{} into event buffers",
        if delivered == 1 { "" } else { "s" }
    ));
    for f in viommu.handle_events() {
        story.say(format!(
            "  driver: fault reason {} flags {:#x} endpoint {:#x} address {:#x}",
            f.reason, f.flags, f.endpoint, f.address
        ));
    }
    for line in faults.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        story.say(format!("  core: {line}"));
    }
}

/// Both devices do DMA through the DMA API, then one touches what was
/// unmapped and the fault comes back through the event queue.
fn dma_steps(
    story: &mut Story,
    iommu: &Iommu,
    bus: &Bus,
    mem: &Mem,
    device: &Arc<VirtioIommu>,
    transport: &Loopback<Mem>,
    viommu: &Viommu<Mem>,
) -> Result<(), Failure> {
    let bind = |name: &str| -> Result<DmaDevice, String> {
        let dev = bus.find_device(name).ok_or("a device went missing")?;
        let d = DmaDevice::bind(iommu, &dev, DmaOptions::default())
            .map_err(|e| format!("{name}: {e}"))?;
        d.set_dma_mask_and_coherent(u64::MAX)
            .map_err(|e| format!("{name}: {e}"))?;
        Ok(d)
    };
    let (net_name, net_ep, _) = DEVICES[0];
    let (blk_name, blk_ep, _) = DEVICES[1];
    let net = bind(net_name)?;
    let blk = bind(blk_name)?;
    // What the core's fault reporting receives from the driver.
    let faults = Arc::new(Mutex::new(Vec::new()));
    for d in [&net, &blk] {
        let seen = Arc::clone(&faults);
        d.domain()
            .set_fault_handler(Some(Arc::new(move |domain, dev, iova, access| {
                seen.lock().unwrap_or_else(|e| e.into_inner()).push(format!(
                    "domain {} reports a {access:?} fault of {} at {iova}",
                    domain.id(),
                    dev.name()
                ));
                Ok(())
            })));
    }
    let vmm_dma = |ep: u32| IommuMemory::new(mem.clone(), device.endpoint(ep), true, ());

    story.heading(
        "virtio-net transmits: dma_map_single(DMA_TO_DEVICE), the device reads the packet",
    );
    let packet_pa = 0x40_0000u64;
    let packet = b"a packet the guest sends";
    mem.write_slice(packet, GuestAddress(packet_pa))
        .map_err(|e| e.to_string())?;
    let tx = net
        .map_single(
            PhysAddr::new(packet_pa),
            packet.len() as u64,
            DmaDirection::ToDevice,
        )
        .map_err(|e| format!("dma_map_single: {e}"))?;
    story.say(format!(
        "  dma_map_single({packet_pa:#x}, {}) = {:#x}",
        packet.len(),
        tx.raw()
    ));
    story.wire();
    let mut got = vec![0u8; packet.len()];
    vmm_dma(net_ep)
        .read_slice(&mut got, GuestAddress(tx.raw()))
        .map_err(|e| format!("the device's read: {e}"))?;
    story.say(format!(
        "  the device reads {:?} at IOVA {:#x}",
        String::from_utf8_lossy(&got),
        tx.raw()
    ));
    let refused = vmm_dma(net_ep)
        .write_slice(b"!", GuestAddress(tx.raw()))
        .is_err();
    story.say(format!(
        "  the device's write there: {}",
        if refused {
            "refused (mapped read-only)"
        } else {
            "allowed"
        }
    ));
    report_faults(story, transport, viommu, &faults);

    story.heading(
        "virtio-blk reads a sector: dma_map_single(DMA_FROM_DEVICE), the device writes it",
    );
    let sector_pa = 0x80_0000u64;
    let rx = blk
        .map_single(PhysAddr::new(sector_pa), 512, DmaDirection::FromDevice)
        .map_err(|e| format!("dma_map_single: {e}"))?;
    story.say(format!(
        "  dma_map_single({sector_pa:#x}, 512) = {:#x}",
        rx.raw()
    ));
    story.wire();
    vmm_dma(blk_ep)
        .write_slice(b"sector 0 of the disk", GuestAddress(rx.raw()))
        .map_err(|e| format!("the device's write: {e}"))?;
    let mut seen = [0u8; 20];
    mem.read_slice(&mut seen, GuestAddress(sector_pa))
        .map_err(|e| e.to_string())?;
    story.say(format!(
        "  the CPU finds {:?} at {sector_pa:#x}",
        String::from_utf8_lossy(&seen)
    ));

    if net.is_lazy() {
        story.heading("Both unmap (lazy: the IOVAs wait in the flush queue)");
    } else {
        story.heading("Both unmap (strict: the UNMAP completes before dma_unmap_single returns)");
    }
    net.unmap_single(tx, packet.len() as u64, DmaDirection::ToDevice)
        .map_err(|e| format!("dma_unmap_single: {e}"))?;
    blk.unmap_single(rx, 512, DmaDirection::FromDevice)
        .map_err(|e| format!("dma_unmap_single: {e}"))?;
    story.wire();
    if net.is_lazy() {
        story.say(
            "  (no UNMAP yet: until the flush queue drains, the device may still reach the old pages; \
             that window is lazy mode's bargain, and bounded: the queue drains within its timeout, \
             or sooner when full)"
                .into(),
        );
        story.say("  the flush queue drains:".into());
        net.flush_queue_now();
        blk.flush_queue_now();
        story.wire();
    }

    story.heading(
        "virtio-blk writes to the IOVA it no longer has; the fault comes back on the event queue",
    );
    let late = vmm_dma(blk_ep).write_slice(b"late", GuestAddress(rx.raw()));
    story.say(format!(
        "  the device's write at {:#x}: {}",
        rx.raw(),
        match late {
            Ok(()) => "allowed (a bug)".to_string(),
            Err(e) => format!("refused ({e})"),
        }
    ));
    report_faults(story, transport, viommu, &faults);
    for d in [&net, &blk] {
        d.domain().set_fault_handler(None);
    }
    Ok(())
}

/// The assigned NVMe maps a buffer: the guest's MAP reaches the device,
/// which forwards it to the host's IOMMU; the host's page tables then
/// translate the drive's DMA, until the guest unmaps.
fn assigned_steps(story: &mut Story, iommu: &Iommu, bus: &Bus, host: &Host) -> Result<(), Failure> {
    use iommu_core::Iova;
    use iommu_soft::Access;
    story.heading(&format!(
        "The host's NVMe {} is assigned to the guest as {}: its mappings go on to the host's IOMMU",
        ASSIGNED.0, ASSIGNED.1
    ));
    let dev = bus
        .find_device(ASSIGNED.1)
        .ok_or_else(|| Failure::Run("the assigned device went missing".into()))?;
    let nvme = DmaDevice::bind(iommu, &dev, DmaOptions::default())
        .map_err(|e| format!("{}: {e}", ASSIGNED.1))?;
    nvme.set_dma_mask_and_coherent(u64::MAX)
        .map_err(|e| format!("{}: {e}", ASSIGNED.1))?;
    let buf = 0xc0_0000u64;
    let a = nvme
        .map_single(PhysAddr::new(buf), 0x2000, DmaDirection::Bidirectional)
        .map_err(|e| format!("dma_map_single: {e}"))?;
    story.say(format!(
        "  dma_map_single({buf:#x}, 0x2000) = {:#x}",
        a.raw()
    ));
    story.wire();
    let host_dev = host
        .platform
        .device(ASSIGNED.0)
        .ok_or_else(|| Failure::Run("the host's NVMe went missing".into()))?;
    let show = |story: &mut Story, when: &str| {
        let at = a.raw() + 0x1234;
        match host.platform.hw.translate(&host_dev, Iova::new(at), Access::Write) {
            Ok(pa) => story.say(format!(
                "  {when}: the host IOMMU translates the drive's write at {at:#x} to {pa} (LPAE tables)"
            )),
            Err(e) => story.say(format!(
                "  {when}: the host IOMMU refuses the drive's write at {at:#x}: {e}"
            )),
        }
    };
    show(story, "mapped");
    nvme.unmap_single(a, 0x2000, DmaDirection::Bidirectional)
        .map_err(|e| format!("dma_unmap_single: {e}"))?;
    story.wire();
    if nvme.is_lazy() {
        show(story, "unmapped, UNMAP still queued");
        story.say(
            "  (expected in lazy mode, and bounded: the mapping lives until the guest's flush queue drains)"
                .into(),
        );
        nvme.flush_queue_now();
        story.wire();
        show(story, "after the drain");
    } else {
        show(story, "unmapped");
    }
    Ok(())
}
