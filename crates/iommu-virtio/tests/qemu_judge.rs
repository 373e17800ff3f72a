//! Our guest driver on QEMU's device: the bare-metal program `viommu` in
//! `judge/qemu-virt` runs the no_std core and `driver::Viommu` over
//! `pci::PciTransport` on QEMU's own `virtio-iommu-pci` and `edu` DMA
//! device, on two machines: Arm `virt`, the topology read from the device
//! tree's `iommu-map`, and x86 `q35` (booted through PVH), the topology
//! read from the ACPI VIOT (and the ECAM window from the MCFG). This test
//! builds it for each, boots it, checks every line it prints, then runs
//! the same scenario on this crate's device
//! (through `Loopback`, with an edu-like endpoint that writes in 4-byte
//! transactions as QEMU's edu does) and requires the same fault reports,
//! phase by phase, but for the differences named in [`DIFFERENCES`].
//!
//! It needs `qemu-system-aarch64`, `qemu-system-x86_64` and the two
//! bare-metal targets, so it is ignored by default; `.ci/run` runs it
//! (`cargo nextest run -p iommu-virtio --run-ignored only`).

use iommu_core::{Bus, DeviceBuilder, DmaOwner, Iommu, IommuOps, Iova, PhysAddr, Prot};
use iommu_virtio::driver::{Loopback, Viommu, ViommuConfig};
use iommu_virtio::pci::VirtioPciCaps;
use iommu_virtio::spec::{fault, feature, resv};
use iommu_virtio::{Device, DeviceConfig, ResvMem, VirtioIommu};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory};

/// How QEMU's device is configured on the judge's command line.
const AW_BITS: u32 = 39;

/// Where QEMU 10's answers differ from this crate's device, and which
/// side the virtio specification (1.2, 5.13) supports.
const DIFFERENCES: &[(&str, &str)] = &[
    (
        "DMA of an endpoint no request has named yet, with bypass off",
        "QEMU reports R_UNKNOWN (it creates its endpoints on their first \
         PROBE or ATTACH); ours R_DOMAIN, the reason the specification \
         defines for an endpoint attached to no domain. Both are allowed \
         (R_UNKNOWN covers any fault the others do not describe); ours says more.",
    ),
    (
        "access direction in a fault report",
        "QEMU sets F_READ or F_WRITE only for a permission fault; for an \
         address nothing maps, and for an unknown endpoint, it gives F_ADDRESS \
         alone. Ours always says the direction. The flags are the fault's \
         context and a driver may not depend on them; ours says more.",
    ),
];

/// A fault report as both sides print it.
type Fault = (u8, u32, u32, u64);

fn judge_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../judge/qemu-virt")
}

/// The two machines: QEMU's `virt` (aarch64, topology from the device
/// tree) and `q35` (x86_64, topology from the ACPI VIOT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Machine {
    Virt,
    Q35,
}

/// Builds the judge for `machine` and boots it on QEMU; its UART output.
fn run_qemu(machine: Machine) -> String {
    let dir = judge_dir();
    let target = match machine {
        Machine::Virt => "aarch64-unknown-none",
        Machine::Q35 => "x86_64-unknown-none",
    };
    let build = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "--bin",
            "viommu",
            "--target",
            target,
        ])
        .current_dir(&dir)
        .status()
        .expect("cargo runs");
    assert!(build.success(), "building the judge failed");
    let elf = dir.join(format!("target/{target}/release/viommu"));
    let mut qemu = Command::new("timeout");
    match machine {
        Machine::Virt => qemu.args(["120", "qemu-system-aarch64"]).args([
            "-machine",
            "virt,highmem=off",
            "-cpu",
            "cortex-a57",
        ]),
        Machine::Q35 => qemu
            .args(["120", "qemu-system-x86_64"])
            .args(["-machine", "q35"]),
    };
    let out = qemu
        .args(["-m", "128M", "-nographic", "-no-reboot"])
        .args([
            "-device",
            &format!("virtio-iommu-pci,aw-bits={AW_BITS},granule=4k"),
        ])
        .args(["-device", "edu,dma_mask=0xffffffffffffffff"])
        .arg("-kernel")
        .arg(&elf)
        .output()
        .expect("qemu-system-aarch64 and qemu-system-x86_64 run (apt-get install qemu-system-arm qemu-system-x86)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn field(line: &str, key: &str) -> u64 {
    let v = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("{key} in {line}"));
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
        None => v.parse().unwrap(),
    }
}

/// Faults by phase: the `FAULT` lines before each `PHASE` line.
fn parse_faults(text: &str) -> BTreeMap<String, Vec<Fault>> {
    let mut phases = BTreeMap::new();
    let mut pending = Vec::new();
    for line in text.lines() {
        if line.starts_with("FAULT ") {
            pending.push((
                field(line, "reason=") as u8,
                field(line, "flags=") as u32,
                field(line, "endpoint=") as u32,
                field(line, "address="),
            ));
        } else if let Some(rest) = line.strip_prefix("PHASE ") {
            let name = rest.split_whitespace().next().unwrap().to_string();
            phases.insert(name, std::mem::take(&mut pending));
        }
    }
    phases
}

type Mem = GuestMemoryMmap<()>;

/// The judge's scenario on this crate's device, configured as QEMU's was
/// (its features, page sizes, input range, boot bypass, and the MSI window
/// its PROBE reply gave): the faults of each phase.
fn run_ours(endpoint: u32, msi: (u64, u64)) -> BTreeMap<String, Vec<Fault>> {
    let mem = Mem::from_ranges(&[(GuestAddress(0), 128 << 20)]).unwrap();
    let mut d = Device::new(DeviceConfig {
        features: feature::INPUT_RANGE
            | feature::DOMAIN_RANGE
            | feature::MAP_UNMAP
            | feature::PROBE
            | feature::MMIO
            | feature::BYPASS_CONFIG
            | feature::VERSION_1,
        page_size_mask: !0xfff,
        input_range: (0, (1u64 << AW_BITS) - 1),
        bypass: true,
        ..DeviceConfig::default()
    })
    .unwrap();
    d.add_endpoint(
        endpoint,
        &[ResvMem {
            subtype: resv::MSI,
            start: msi.0,
            end: msi.1,
        }],
    )
    .unwrap();
    let device = VirtioIommu::new(d);
    let transport = Arc::new(Loopback::new(Arc::clone(&device), mem.clone()));
    let cfg = ViommuConfig::default();
    let need = Viommu::<Mem>::memory_needed(cfg, 512);
    let drv = Viommu::probe(transport.clone(), mem.clone(), 0x10_0000, need, cfg).unwrap();
    // The edu device: DMA writes of 4 bytes each, through the device.
    let dma = IommuMemory::new(mem.clone(), device.endpoint(endpoint), true, ());
    let edu_write = |addr: u64, len: u64| {
        for off in (0..len).step_by(4) {
            let _ = dma.write_slice(&[0xa5; 4], GuestAddress(addr + off));
        }
    };
    let mut phases = BTreeMap::new();
    let mut phase = |name: &str| {
        transport.deliver_events();
        let fs: Vec<Fault> = drv
            .handle_events()
            .iter()
            .map(|f| (f.reason, f.flags, f.endpoint, f.address))
            .collect();
        phases.insert(name.to_string(), fs);
    };
    let scratch = 0x200_0000u64;
    edu_write(scratch, 64);
    drv.set_bypass(false).unwrap();
    edu_write(scratch, 64);
    phase("bypass-off");
    drv.set_bypass(true).unwrap();
    edu_write(scratch, 64);
    phase("bypass-on");

    let iommu = Iommu::default();
    let bus = Bus::new(&iommu, "pci").unwrap();
    let dev = bus
        .add_device(DeviceBuilder::new("edu").stream_ids([endpoint]).pci(true))
        .unwrap();
    iommu.bus_set_iommu(&bus, Arc::new(drv.clone())).unwrap();
    let group = dev.iommu_group().unwrap();
    let domain = group.default_domain().unwrap();
    assert_eq!(drv.pgsize_bitmap(), !0xfff);
    let (src, dst) = (0x210_0000u64, 0x220_0000u64);
    domain
        .map(Iova::new(0x10_0000), PhysAddr::new(src), 0x1000, Prot::READ)
        .unwrap();
    domain
        .map(Iova::new(0x20_0000), PhysAddr::new(dst), 0x1000, Prot::RW)
        .unwrap();
    edu_write(0x20_0000, 256);
    phase("mapped");
    edu_write(0x30_0000, 64);
    phase("hole");
    assert_eq!(domain.unmap(Iova::new(0x20_0000), 0x1000), Ok(0x1000));
    edu_write(0x20_0000, 256);
    phase("unmapped");
    edu_write(0x10_0000, 16);
    phase("read-only");
    let block = 0x400_0000u64;
    domain
        .map(
            Iova::new(0x60_0000),
            PhysAddr::new(block),
            0x20_0000,
            Prot::RW,
        )
        .unwrap();
    edu_write(0x60_0000 + 0x12_3400, 64);
    assert_eq!(domain.unmap(Iova::new(0x60_0000), 0x20_0000), Ok(0x20_0000));
    edu_write(0x60_0000 + 0x1f_f000, 16);
    phase("block-unmapped");
    iommu
        .group_claim_dma_owner(&group, DmaOwner::new())
        .unwrap();
    let _ = domain.map(Iova::new(0x20_0000), PhysAddr::new(dst), 0x1000, Prot::RW);
    edu_write(0x20_0000, 16);
    phase("blocked");
    iommu.group_release_dma_owner(&group);
    iommu
        .sysfs()
        .write(
            &format!("kernel/iommu_groups/{}/type", group.id()),
            "identity",
        )
        .unwrap();
    edu_write(0x230_0000, 32);
    phase("identity");
    assert_eq!(drv.stats().refused, 0);
    phases
}

/// A fault as QEMU would have worded it, by the [`DIFFERENCES`].
fn as_qemu_words(phase: &str, f: Fault) -> Fault {
    let (mut reason, mut flags, endpoint, address) = f;
    if phase == "bypass-off" && reason == fault::R_DOMAIN {
        reason = fault::R_UNKNOWN;
    }
    // The direction only for a permission fault: an address the domain
    // maps (read-only) that was written.
    if !(phase == "read-only" && reason == fault::R_MAPPING) {
        flags &= !(fault::F_READ | fault::F_WRITE);
    }
    (reason, flags, endpoint, address)
}

#[test]
#[ignore = "boots QEMU (qemu-system-aarch64, target aarch64-unknown-none); .ci/run runs it"]
fn our_driver_drives_qemus_virtio_iommu_on_arm_virt_and_both_devices_report_the_same_faults() {
    judge(Machine::Virt);
}

#[test]
#[ignore = "boots QEMU (qemu-system-x86_64, target x86_64-unknown-none); .ci/run runs it"]
fn our_driver_drives_qemus_virtio_iommu_on_q35_and_both_devices_report_the_same_faults() {
    judge(Machine::Q35);
}

fn judge(machine: Machine) {
    let text = run_qemu(machine);
    println!("{text}");
    let done = text
        .lines()
        .find(|l| l.starts_with("JUDGE DONE"))
        .expect("the judge ran to the end");
    assert!(done.ends_with("fail=0"), "{done}");
    assert!(!text.contains("JUDGE FAIL"));
    assert_eq!(field(done, "pass="), 40, "every check of the judge ran");
    let topology = text.lines().find(|l| l.starts_with("TOPOLOGY ")).unwrap();
    assert!(
        topology.contains(match machine {
            Machine::Virt => "from=device tree iommu-map",
            Machine::Q35 => "from=ACPI VIOT",
        }),
        "{topology}"
    );

    // QEMU's configuration space still carries the capabilities the
    // stored copy (tests/data, read by tests/pci.rs) carries; on virt,
    // where the judge assigns the BARs itself, byte for byte.
    let hex = text
        .lines()
        .find_map(|l| l.strip_prefix("PCICFG "))
        .expect("the judge dumped configuration space");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let stored: String = include_str!("data/qemu-10.0-virtio-iommu-pci-config.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect();
    let stored_bytes: Vec<u8> = (0..stored.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&stored[i..i + 2], 16).unwrap())
        .collect();
    if machine == Machine::Virt {
        assert_eq!(
            hex, stored,
            "QEMU's virtio-iommu-pci configuration space changed"
        );
    }
    assert_eq!(
        VirtioPciCaps::parse(&bytes),
        VirtioPciCaps::parse(&stored_bytes)
    );

    // What QEMU offered, as the judge read it.
    let config = text.lines().find(|l| l.starts_with("CONFIG ")).unwrap();
    assert_eq!(field(config, "page_size_mask="), !0xfff);
    assert!(config.contains(&format!("input=0x0-{:#x}", (1u64 << AW_BITS) - 1)));
    let endpoint = field(
        text.lines().find(|l| l.starts_with("FAULT ")).unwrap(),
        "endpoint=",
    ) as u32;
    let resv: Vec<&str> = text.lines().filter(|l| l.starts_with("RESV ")).collect();
    assert_eq!(resv.len(), 1, "QEMU's PROBE reply: one MSI window");
    let (lo, hi) = resv[0]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .split_once('-')
        .unwrap();
    let parse = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    let msi = (parse(lo), parse(hi));
    assert!(resv[0].ends_with(" msi"), "{}", resv[0]);

    let qemu = parse_faults(&text);
    let ours = run_ours(endpoint, msi);
    assert_eq!(
        qemu.keys().collect::<Vec<_>>(),
        ours.keys().collect::<Vec<_>>(),
        "the same phases"
    );
    for (phase, theirs) in &qemu {
        let mine = &ours[phase];
        // The scratch buffer's address differs between the two runs:
        // compare the bypass-off faults by offset from the first.
        let rebase = |fs: &[Fault]| -> Vec<Fault> {
            let base = fs.first().map_or(0, |f| f.3);
            fs.iter().map(|f| (f.0, f.1, f.2, f.3 - base)).collect()
        };
        let (theirs, mine): (Vec<Fault>, Vec<Fault>) = if phase == "bypass-off" {
            (rebase(theirs), rebase(mine))
        } else {
            (theirs.clone(), mine.clone())
        };
        let mine_worded: Vec<Fault> = mine.iter().map(|&f| as_qemu_words(phase, f)).collect();
        assert_eq!(
            theirs, mine_worded,
            "phase {phase}: QEMU's faults and ours (worded as QEMU words them)"
        );
        // Ours always gives the direction: every access here is a write.
        assert!(
            mine.iter()
                .all(|f| f.1 & fault::F_WRITE != 0 && f.1 & fault::F_ADDRESS != 0),
            "{phase}: {mine:x?}"
        );
    }
    println!("Differences between QEMU's device and ours (and the specification's verdict):");
    for (what, verdict) in DIFFERENCES {
        println!("- {what}: {verdict}");
    }
}
