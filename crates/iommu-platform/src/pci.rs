//! PCI platforms: any machine the PCI layer reads (a listing, a hex dump,
//! a sysfs tree, a topology file), and the built-in default one, behind
//! the soft IOMMU or any driver on its (emulated) hardware.
//!
//! A platform's functions are configuration space; [`iommu_pci`] runs
//! Linux's PCI set-up and grouping over them, and each function becomes a
//! core [`Device`] whose stream ids are the requester ids its DMA can
//! carry (Linux's `pci_for_each_dma_alias`). The driver then groups the
//! devices as the PCI layer decided, so the core's groups, their ids
//! and `/sys/kernel/iommu_groups` come out of the algorithm, not a table.
//!
//! The default platform ([`DEFAULT_TOPOLOGY`]) has 20 functions of a
//! vendor id no company holds: a GPU and its audio function, an SR-IOV
//! NIC with two VFs, an NVMe drive, a USB controller with a
//! firmware-reserved direct region (an RMRR-like identity map), a chipset
//! whose three functions lack ACS, a root port without ACS above a
//! PCIe-to-PCI bridge and two legacy devices, and a management controller
//! the IOMMU does not cover.

use crate::DmaHardware;
use iommu_core::{
    Bus, Device, DeviceBuilder, Errno, Iommu, IommuConfig, Prot, ReservedRegion, ResvType,
};
use iommu_pci::{Analysis, Bdf, Machine, TopologyError};
use iommu_soft::{PciGrouping, SoftConfig, SoftIommu};
use std::sync::Arc;

/// The USB controller's firmware-reserved buffer, identity-mapped.
pub const USB_RMRR: ReservedRegion =
    ReservedRegion::new(0x7d00_0000, 0x2_0000, Prot::RW, ResvType::Direct);

/// The software MSI window the driver reserves for every device.
pub const SW_MSI: (u64, u64) = (0x0800_0000, 0x10_0000);

/// The default platform, in the topology format of [`iommu_pci`].
pub const DEFAULT_TOPOLOGY: &str = r#"# The iommu tool's default platform (vendor 0de5: no company holds it).
00:00.0 host-bridge id=0de5:0001 name="Host bridge [0600]: iommu-rs Simulated Root Complex [0de5:0001]"
00:01.0 root-port buses=01-01 id=0de5:0002 acs=SV,RR,CR,UF name="PCI bridge [0604]: iommu-rs Simulated Root Port [0de5:0002]"
00:02.0 root-port buses=02-02 id=0de5:0002 acs=SV,RR,CR,UF name="PCI bridge [0604]: iommu-rs Simulated Root Port [0de5:0002]"
00:03.0 root-port buses=03-03 id=0de5:0002 acs=SV,RR,CR,UF name="PCI bridge [0604]: iommu-rs Simulated Root Port [0de5:0002]"
00:14.0 rc-endpoint id=0de5:0014 class=0c0330 name="USB controller [0c03]: iommu-rs Simulated xHCI [0de5:0014]"
00:1c.0 root-port buses=04-05 id=0de5:001c name="PCI bridge [0604]: iommu-rs Simulated Root Port without ACS [0de5:001c]"
00:1d.0 root-port buses=06-06 id=0de5:0002 acs=SV,RR,CR,UF name="PCI bridge [0604]: iommu-rs Simulated Root Port [0de5:0002]"
00:1f.0 rc-endpoint id=0de5:001f class=0601 multifunction name="ISA bridge [0601]: iommu-rs Simulated LPC [0de5:001f]"
00:1f.3 rc-endpoint id=0de5:0020 class=0403 name="Audio device [0403]: iommu-rs Simulated HD Audio [0de5:0020]"
00:1f.4 rc-endpoint id=0de5:0021 class=0c05 name="SMBus [0c05]: iommu-rs Simulated SMBus [0de5:0021]"
01:00.0 endpoint id=0de5:0100 class=0300 multifunction name="VGA compatible controller [0300]: iommu-rs Simulated GPU [0de5:0100]"
01:00.1 endpoint id=0de5:0101 class=0403 name="Audio device [0403]: iommu-rs Simulated GPU Audio [0de5:0101]"
02:00.0 endpoint id=0de5:0200 class=0200 sriov=2 vf-offset=16 vf-stride=1 vf-id=0210 name="Ethernet controller [0200]: iommu-rs Simulated NIC [0de5:0200]"
03:00.0 endpoint id=0de5:0300 class=010802 name="Non-Volatile memory controller [0108]: iommu-rs Simulated NVMe [0de5:0300]"
04:00.0 pcie-to-pci-bridge buses=05-05 id=0de5:0400 name="PCI bridge [0604]: iommu-rs Simulated PCIe-to-PCI Bridge [0de5:0400]"
05:01.0 pci id=0de5:0500 class=0700 name="Serial controller [0700]: iommu-rs Simulated UART [0de5:0500]"
05:02.0 pci id=0de5:0501 class=0701 name="Parallel controller [0701]: iommu-rs Simulated Parallel Port [0de5:0501]"
06:00.0 endpoint id=0de5:0600 class=1180 not-covered name="Signal processing controller [1180]: iommu-rs Simulated BMC (no IOMMU) [0de5:0600]"
"#;

/// Why a platform could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The machine's functions do not form a PCI tree.
    #[error("the machine's functions do not form a PCI tree: {0}")]
    Topology(#[from] TopologyError),
    /// The core refused a step.
    #[error("{0}")]
    Core(#[from] Errno),
}

/// A PCI machine behind an IOMMU: the subsystem, its bus, the driver on
/// its hardware, and the PCI layer's view.
pub struct PciPlatform {
    /// The subsystem.
    pub iommu: Iommu,
    /// The PCI bus.
    pub bus: Bus,
    /// What the devices DMA through: the driver's (emulated) hardware.
    pub hw: Arc<dyn DmaHardware>,
    /// The machine as read.
    pub machine: Machine,
    /// Linux's set-up and grouping over it.
    pub analysis: Arc<Analysis>,
}

/// The built-in platform is a [`PciPlatform`] of [`DEFAULT_TOPOLOGY`].
pub type DefaultPlatform = PciPlatform;

/// The sysfs directory of function `i`: under `pci<segment>:<root bus>`,
/// through each bridge above it, as Linux's `/sys/devices` nests them.
fn sysfs_dir(a: &Analysis, i: usize) -> String {
    let topo = &a.topology;
    let mut chain = vec![topo.functions()[i].bdf];
    let mut at = topo.physfn(i).unwrap_or(i);
    while let Some(up) = topo.upstream(at) {
        chain.push(topo.functions()[up].bdf);
        at = up;
    }
    let top = chain.last().copied().expect("the function itself");
    let mut dir = format!("devices/pci{:04x}:{:02x}", top.segment, top.bus);
    for b in chain.iter().rev() {
        dir.push('/');
        dir.push_str(&b.to_string());
    }
    dir
}

/// The soft driver of the built-in platforms, grouping as the PCI layer says.
fn soft_driver(pci: Arc<PciGrouping>) -> Result<Arc<dyn DmaHardware>, Errno> {
    soft_driver_with(pci, Some(SW_MSI))
}

fn soft_driver_with(
    pci: Arc<PciGrouping>,
    sw_msi: Option<(u64, u64)>,
) -> Result<Arc<dyn DmaHardware>, Errno> {
    Ok(Arc::new(SoftIommu::new(SoftConfig {
        sw_msi,
        pci: Some(pci),
        ..SoftConfig::default()
    })))
}

/// The interrupt range of x86, where every MSI is written: VT-d and
/// AMD-Vi report it as an MSI region of every device.
pub const X86_MSI: (u64, u64) = (0xfee0_0000, 0x10_0000);
/// AMD's HyperTransport window (1012 GiB to 1 TiB), which AMD-Vi reports
/// as reserved for every device.
pub const AMD_HT_RANGE: (u64, u64) = (0xfd_0000_0000, 0x3_0000_0000);
/// What VT-d identity-maps (relaxably) for an ISA bridge's legacy DMA, the
/// floppy workaround: the first 16 MiB.
pub const INTEL_ISA_RANGE: (u64, u64) = (0, 1 << 24);

/// The regions the Linux 6.12 driver of an IOMMU of `kind` reports for
/// function `f` beyond the firmware's (`get_resv_regions`): VT-d's IOAPIC
/// MSI range and, for an ISA bridge, its 16 MiB floppy window; AMD-Vi's
/// MSI range and HyperTransport window; the MSI range a virtio-iommu on a
/// PC reports. Arm SMMU drivers, the generic IOMMU and a virtio-iommu
/// elsewhere get a software-managed MSI window instead, from the driver.
pub fn driver_resv_regions(
    kind: iommu_pci::IommuKind,
    f: &iommu_pci::Function,
) -> Vec<ReservedRegion> {
    use iommu_core::{Prot, ResvType};
    let msi = || {
        ReservedRegion::new(
            X86_MSI.0,
            X86_MSI.1,
            Prot::WRITE | Prot::MMIO,
            ResvType::Msi,
        )
    };
    match kind {
        iommu_pci::IommuKind::IntelVtd => {
            let mut v = Vec::new();
            if f.class >> 8 == 0x0601 {
                v.push(ReservedRegion::new(
                    INTEL_ISA_RANGE.0,
                    INTEL_ISA_RANGE.1,
                    Prot::RW,
                    ResvType::DirectRelaxable,
                ));
            }
            v.push(msi());
            v
        }
        iommu_pci::IommuKind::AmdVi => vec![
            msi(),
            ReservedRegion::new(
                AMD_HT_RANGE.0,
                AMD_HT_RANGE.1,
                Prot::NONE,
                ResvType::Reserved,
            ),
        ],
        // QEMU's virtio-iommu on a PC reports the IOAPIC's MSI range in
        // its probe replies; elsewhere it reports none and Linux adds its
        // software MSI window.
        iommu_pci::IommuKind::VirtioIommu { x86: true } => vec![msi()],
        iommu_pci::IommuKind::VirtioIommu { x86: false }
        | iommu_pci::IommuKind::Generic
        | iommu_pci::IommuKind::ArmSmmu => Vec::new(),
    }
}

impl PciPlatform {
    /// Builds the default platform with the default policy (translated,
    /// strict).
    ///
    /// # Errors
    /// Any error from the core while adding devices or setting the ops.
    pub fn build() -> Result<Self, Errno> {
        Self::build_with(IommuConfig::default())
    }

    /// Builds the default platform with `config`.
    ///
    /// # Errors
    /// Any error from the core while adding devices or setting the ops.
    pub fn build_with(config: IommuConfig) -> Result<Self, Errno> {
        Self::build_on(config, soft_driver)
    }

    /// The default platform with `config` and the driver `make` builds
    /// (see [`from_machine_on`](Self::from_machine_on)).
    ///
    /// # Errors
    /// As [`build`](Self::build); what `make` returns.
    pub fn build_on(
        config: IommuConfig,
        make: impl FnOnce(Arc<PciGrouping>) -> Result<Arc<dyn DmaHardware>, Errno>,
    ) -> Result<Self, Errno> {
        let t = iommu_pci::parse_topology(DEFAULT_TOPOLOGY).expect("the default topology parses");
        let platform = iommu_pci::Platform {
            not_covered: t.not_covered,
            quirks: t.quirks,
            ..iommu_pci::Platform::default()
        };
        let usb: Bdf = "00:14.0".parse().expect("an address");
        Self::from_machine_on(t.machine, platform, config, &[(usb, USB_RMRR)], make).map_err(|e| {
            match e {
                PlatformError::Core(e) => e,
                PlatformError::Topology(_) => Errno::EINVAL,
            }
        })
    }

    /// Builds `machine` behind a soft IOMMU: Linux's PCI set-up and
    /// grouping with `platform`, then a core device per function (in
    /// enumeration order, with its DMA requester ids as stream ids and
    /// any firmware regions of `resv`), then the IOMMU ops set on the
    /// bus, which walks the devices into the groups the PCI layer chose.
    ///
    /// # Errors
    /// [`PlatformError::Topology`] when the functions do not form a tree;
    /// [`PlatformError::Core`] when the core refuses a device or the ops.
    pub fn from_machine(
        machine: Machine,
        platform: iommu_pci::Platform,
        config: IommuConfig,
        resv: &[(Bdf, ReservedRegion)],
    ) -> Result<Self, PlatformError> {
        // The software MSI window is an Arm SMMU's (and the generic
        // IOMMU's); x86 IOMMUs report the hardware's MSI range instead
        // (`driver_resv_regions`).
        let sw_msi = (!platform.iommu.is_x86()).then_some(SW_MSI);
        Self::from_machine_on(machine, platform, config, resv, move |pci| {
            soft_driver_with(pci, sw_msi)
        })
    }

    /// The soft driver, when the platform runs on it.
    pub fn soft(&self) -> Option<&SoftIommu> {
        self.hw.as_any().downcast_ref()
    }

    /// As [`from_machine`](Self::from_machine), with the driver `make`
    /// builds from the PCI layer's grouping (another driver on its own
    /// hardware, such as the SMMUv3 driver on the emulated SMMUv3).
    ///
    /// # Errors
    /// As [`from_machine`](Self::from_machine); what `make` returns.
    pub fn from_machine_on(
        machine: Machine,
        platform: iommu_pci::Platform,
        config: IommuConfig,
        resv: &[(Bdf, ReservedRegion)],
        make: impl FnOnce(Arc<PciGrouping>) -> Result<Arc<dyn DmaHardware>, Errno>,
    ) -> Result<Self, PlatformError> {
        let kind = platform.iommu;
        let analysis = Arc::new(machine.analyze(platform)?);
        let iommu = Iommu::new(config);
        let bus = Bus::new(&iommu, "pci")?;
        let mut keys = Vec::new();
        // A requester id two groups would share (two quirks naming one
        // absent function, which Linux does not group together) stays with
        // the first group: the core refuses a device whose ids span groups.
        let mut claimed: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
        for i in analysis.topology.enumeration_order() {
            let f = &analysis.topology.functions()[i];
            let name = f.bdf.to_string();
            let mut b = DeviceBuilder::new(&name)
                .sysfs_dir(sysfs_dir(&analysis, i))
                .description(machine.describe(f.bdf))
                .pci(true);
            if let Some(g) = analysis.groups.of[i] {
                let seg = f.bdf.segment << 16;
                let ids: Vec<u32> = analysis
                    .dma_requester_ids(i)
                    .into_iter()
                    .map(|rid| seg | u32::from(rid))
                    .filter(|&sid| *claimed.entry(sid).or_insert(g) == g)
                    .collect();
                b = b.stream_ids(ids);
                keys.push((name, g));
            }
            for (at, region) in resv {
                if *at == f.bdf {
                    b = b.resv_region(*region);
                }
            }
            for region in driver_resv_regions(kind, f) {
                b = b.resv_region(region);
            }
            bus.add_device(b)?;
        }
        let hw = make(Arc::new(PciGrouping::new(keys)))?;
        iommu.bus_set_iommu(&bus, hw.ops())?;
        Ok(Self {
            iommu,
            bus,
            hw,
            machine,
            analysis,
        })
    }

    /// The device at PCI address `name` (`0000:01:00.0`).
    pub fn device(&self, name: &str) -> Option<Arc<Device>> {
        self.bus.find_device(name)
    }

    /// Writes the platform as a real sysfs tree under `dir`: the core's
    /// model (`kernel/iommu_groups/N/{devices/,type,reserved_regions}`,
    /// `devices/pci.../`, `bus/pci/devices/*` links, each device's
    /// `iommu_group` link) and, in each PCI device's directory, what
    /// `lspci -A linux-sysfs` reads: `config` (the bytes of configuration
    /// space), `vendor`, `device`, `class`, `revision`,
    /// `subsystem_vendor`, `subsystem_device`, `irq` and `resource`.
    ///
    /// # Errors
    /// Any I/O error, naming the path; `dir` may then hold part of the
    /// tree. An existing `dir` must be empty.
    pub fn export_sysfs(&self, dir: &std::path::Path) -> Result<(), ExportError> {
        use std::fs;
        let fail = |path: &std::path::Path, e: std::io::Error| ExportError {
            path: path.to_path_buf(),
            error: e,
        };
        if dir.exists() {
            let mut it = fs::read_dir(dir).map_err(|e| fail(dir, e))?;
            if it.next().is_some() {
                return Err(fail(
                    dir,
                    std::io::Error::new(std::io::ErrorKind::AlreadyExists, "not empty"),
                ));
            }
        }
        fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
        let sysfs = self.iommu.sysfs();
        let mut stack: Vec<String> = sysfs.list("").unwrap_or_default();
        while let Some(rel) = stack.pop() {
            let path = dir.join(&rel);
            match sysfs.kind(&rel) {
                Ok(iommu_core::EntryKind::Dir) => {
                    fs::create_dir_all(&path).map_err(|e| fail(&path, e))?;
                    for child in sysfs.list(&rel).unwrap_or_default() {
                        stack.push(format!("{rel}/{child}"));
                    }
                }
                Ok(iommu_core::EntryKind::File) => {
                    let text = sysfs.read(&rel).unwrap_or_default();
                    fs::write(&path, text).map_err(|e| fail(&path, e))?;
                }
                Ok(iommu_core::EntryKind::Link(target)) => {
                    symlink(&target, &path).map_err(|e| fail(&path, e))?;
                }
                Err(_) => {}
            }
        }
        for dev in self.bus.devices() {
            let Ok(bdf) = dev.name().parse::<Bdf>() else {
                continue;
            };
            let Some(d) = self.machine.device(bdf) else {
                continue;
            };
            let f = &d.function;
            let base = dir.join(dev.sysfs_dir());
            let files: [(&str, Vec<u8>); 9] = [
                ("config", f.config.as_bytes().to_vec()),
                ("vendor", format!("{:#06x}\n", f.vendor).into_bytes()),
                ("device", format!("{:#06x}\n", f.device).into_bytes()),
                ("class", format!("{:#08x}\n", f.class).into_bytes()),
                ("revision", format!("{:#04x}\n", f.revision).into_bytes()),
                (
                    "subsystem_vendor",
                    format!("{:#06x}\n", f.subsystem.0).into_bytes(),
                ),
                (
                    "subsystem_device",
                    format!("{:#06x}\n", f.subsystem.1).into_bytes(),
                ),
                ("irq", b"0\n".to_vec()),
                (
                    "resource",
                    "0x0000000000000000 0x0000000000000000 0x0000000000000000\n"
                        .repeat(13)
                        .into_bytes(),
                ),
            ];
            for (name, bytes) in files {
                let p = base.join(name);
                fs::write(&p, bytes).map_err(|e| fail(&p, e))?;
            }
        }
        Ok(())
    }
}

/// An I/O error of [`PciPlatform::export_sysfs`], with its path.
#[derive(Debug, thiserror::Error)]
#[error("{}: {error}", path.display())]
pub struct ExportError {
    /// The path written.
    pub path: std::path::PathBuf,
    /// What went wrong.
    pub error: std::io::Error,
}

#[cfg(unix)]
fn symlink(target: &str, link: &std::path::Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(target: &str, link: &std::path::Path) -> std::io::Result<()> {
    // Without symlinks, the link's target is written as its contents.
    std::fs::write(link, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_platform_groups_come_from_the_pci_rules() {
        let p = DefaultPlatform::build().unwrap();
        assert_eq!(p.bus.devices().len(), 20);
        assert_eq!(p.iommu.group_ids(), (0..13).collect::<Vec<u32>>());
        let gpu = p.device("0000:01:00.0").unwrap().iommu_group().unwrap();
        assert_eq!(
            gpu.device_count(),
            2,
            "GPU and audio: one device without ACS"
        );
        let pch = p.device("0000:00:1f.0").unwrap().iommu_group().unwrap();
        assert_eq!(pch.device_count(), 3);
        let legacy = p.device("0000:05:01.0").unwrap().iommu_group().unwrap();
        assert_eq!(
            legacy.device_count(),
            4,
            "root port without ACS, bridge, two devices"
        );
        assert!(p.device("0000:06:00.0").unwrap().iommu_group().is_none());
        let vf = p.device("0000:02:02.1").unwrap().iommu_group().unwrap();
        assert_eq!(vf.device_count(), 1);
        // The core's group ids are the PCI layer's numbers.
        for d in p.bus.devices() {
            let bdf: Bdf = d.name().parse().unwrap();
            assert_eq!(
                d.iommu_group().map(|g| g.id() as usize),
                p.analysis.group_of(bdf),
                "{}",
                d.name()
            );
        }
        let usb = p.device("0000:00:14.0").unwrap();
        let regions = p
            .iommu
            .sysfs()
            .read(&format!(
                "kernel/iommu_groups/{}/reserved_regions",
                usb.iommu_group().unwrap().id()
            ))
            .unwrap();
        assert_eq!(regions, "0x0000000008000000 0x00000000080fffff msi\n0x000000007d000000 0x000000007d01ffff direct\n");
        let dd = usb.iommu_group().unwrap().default_domain().unwrap();
        assert_eq!(
            dd.iova_to_phys(iommu_core::Iova::new(0x7d01_0000)),
            Some(iommu_core::PhysAddr::new(0x7d01_0000))
        );
    }

    #[test]
    fn devices_behind_a_pcie_to_pci_bridge_carry_its_alias_as_a_stream_id() {
        let p = DefaultPlatform::build().unwrap();
        let uart = p.device("0000:05:01.0").unwrap();
        assert_eq!(uart.stream_ids(), &[0x0500, 0x0508]);
        let dir = p
            .iommu
            .sysfs()
            .resolve("kernel/iommu_groups/5/devices/0000:05:01.0")
            .unwrap();
        assert_eq!(
            dir,
            "devices/pci0000:00/0000:00:1c.0/0000:04:00.0/0000:05:01.0"
        );
    }
}
