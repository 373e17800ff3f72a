//! The main job: the core end to end on the default platform.

use crate::out::{out, outln};
use crate::{input, Failure, MachineArgs, PlatformArgs, RunArgs, RunIommu};
use iommu_core::{Device, DmaOwner, Domain, DomainType, Errno, Iommu, Iova, PhysAddr, Prot};
use iommu_platform::PciPlatform;
use iommu_soft::{Access, SoftDomain};
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// Version of the JSON layouts the tool prints (besides the benches').
pub const JSON_VERSION: u32 = 3;

/// What the run says: printed line by line, or kept for JSON.
#[derive(Clone, Default)]
pub(crate) struct Narrative {
    json: bool,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Narrative {
    /// Says each line on standard output, or keeps them for JSON.
    pub(crate) fn new(json: bool) -> Narrative {
        Narrative {
            json,
            ..Narrative::default()
        }
    }

    /// The lines kept for JSON so far, taken.
    pub(crate) fn take_lines(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn say(&self, line: String) {
        if self.json {
            self.lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line);
        } else {
            outln!("{line}");
        }
    }

    pub(crate) fn heading(&self, title: &str) {
        if !self.json {
            outln!();
        }
        self.say(format!("== {title}"));
    }
}

fn err(what: &str, e: Errno) -> String {
    format!("{what}: {e}")
}

fn device(p: &PciPlatform, name: &str) -> Result<Arc<Device>, String> {
    p.device(name)
        .ok_or_else(|| format!("the platform has no device {name}"))
}

/// lspci's short form of a PCI address (domain 0000 omitted).
fn lspci_name(name: &str) -> &str {
    name.strip_prefix("0000:").unwrap_or(name)
}

/// One group as the listing shows it.
#[derive(Debug, Serialize)]
pub struct ListedGroup {
    /// Its id.
    pub id: u32,
    /// `(address, description)` of each device, in the order of the
    /// group's `devices/` directory; in JSON, `{address, description}`
    /// objects.
    #[serde(serialize_with = "devices_json")]
    pub devices: Vec<(String, String)>,
}

/// A listed group's devices as JSON objects.
fn devices_json<S: serde::Serializer>(v: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Device<'a> {
        address: &'a str,
        description: &'a str,
    }
    s.collect_seq(v.iter().map(|(address, description)| Device {
        address,
        description,
    }))
}

/// The groups, read from the sysfs model exactly as the well-known shell
/// loop reads /sys/kernel/iommu_groups (ids in numeric order, then each
/// group's devices/ links).
///
/// # Errors
/// A sysfs read the model refuses.
pub fn listed_groups(
    iommu: &Iommu,
    describe: impl Fn(&str) -> Option<String>,
) -> Result<Vec<ListedGroup>, Errno> {
    let sysfs = iommu.sysfs();
    let mut ids: Vec<u32> = sysfs
        .list("kernel/iommu_groups")?
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    ids.sort_unstable();
    let mut out = Vec::new();
    for id in ids {
        let mut devices = Vec::new();
        for link in sysfs.list(&format!("kernel/iommu_groups/{id}/devices"))? {
            let dir = sysfs.resolve(&format!("kernel/iommu_groups/{id}/devices/{link}"))?;
            let name = dir.rsplit('/').next().unwrap_or(&link).to_string();
            let desc = describe(&name).unwrap_or_default();
            devices.push((name, desc));
        }
        out.push(ListedGroup { id, devices });
    }
    Ok(out)
}

/// The listing in the shell loop's format.
pub fn render_listing(groups: &[ListedGroup]) -> String {
    let mut out = String::new();
    for g in groups {
        let _ = writeln!(out, "IOMMU Group {}:", g.id);
        for (name, desc) in &g.devices {
            out.push_str(&device_line(name, desc));
            out.push('\n');
        }
    }
    out
}

/// One device of a listing, as the shell loop prints it (without the
/// line's end).
pub fn device_line(name: &str, desc: &str) -> String {
    format!("\t{} {desc}", lspci_name(name))
}

/// The platform's groups.
///
/// # Errors
/// A sysfs read the model refuses.
pub fn platform_groups(p: &PciPlatform) -> Result<Vec<ListedGroup>, String> {
    listed_groups(&p.iommu, |n| {
        p.device(n).map(|d| d.description().to_string())
    })
    .map_err(|e| err("reading sysfs", e))
}

fn show_translate(n: &Narrative, p: &PciPlatform, dev: &Device, iova: u64, access: Access) {
    let what = match access {
        Access::Read => "read ",
        Access::Write => "write",
    };
    match p.hw.translate(dev, Iova::new(iova), access) {
        Ok(pa) => n.say(format!("  DMA {what} {iova:#012x} -> {pa:#x}")),
        Err(e) => n.say(format!("  DMA {what} {iova:#012x} -> fault: {e}")),
    }
}

/// The SMMUv3 driver probed on a fresh emulated SMMUv3, grouping as the
/// PCI layer says; with `--trace`, what the SMMU does (commands it runs,
/// STEs it fetches, walks, events) appears in the call tree under the core
/// operation that caused it.
fn smmuv3_platform(
    pci: Arc<iommu_soft::PciGrouping>,
) -> Result<Arc<dyn iommu_platform::DmaHardware>, iommu_core::Errno> {
    use iommu_smmuv3::emu::{EmuLayout, EmuPlatform};
    use iommu_smmuv3_emu::HwTrace;
    let cfg = iommu_smmuv3::Smmuv3Config {
        groups: Some(pci),
        ..iommu_smmuv3::Smmuv3Config::default()
    };
    let p = EmuPlatform::new(
        EmuLayout::default(),
        iommu_smmuv3_emu::Features::default(),
        cfg,
    )
    .map_err(|e| {
        tracing::error!("SMMUv3 platform: {e}");
        iommu_core::Errno::ENODEV
    })?;
    p.hw.set_trace(Some(Box::new(|t: &HwTrace| match t {
        HwTrace::Command(c) => tracing::info!("smmu cmdq: {c}"),
        HwTrace::CommandError { cerror, index } => {
            tracing::info!("smmu cmdq: CERROR {cerror} at entry {index}")
        }
        HwTrace::SteFetch { sid, addr } => {
            tracing::info!("smmu: fetch STE of stream {sid:#x} at {addr:#x}")
        }
        HwTrace::Walk {
            sid,
            iova,
            reads: 0,
        } => {
            tracing::info!("smmu: walk stream {sid:#x} iova {iova:#x}: no leaf")
        }
        HwTrace::Walk { sid, iova, reads } => {
            tracing::info!("smmu: walk stream {sid:#x} iova {iova:#x} ({reads} descriptors)")
        }
        HwTrace::Event(e) => tracing::info!(
            "smmu evtq: {} stream {:#x} iova {:#x}",
            e.id.name(),
            e.sid,
            e.input_addr
        ),
    })));
    Ok(Arc::new(p))
}

/// The VT-d driver probed on the built-in platform's two emulated units
/// (its DMAR: one for the graphics, one for everything else; every
/// feature, eight fault records; scalable mode too if `scalable`, where
/// the driver picks first-stage tables), grouping as the PCI layer says;
/// with `--trace`, the invalidation descriptors each unit runs, the
/// context entries it reads, its walks and faults appear under the core
/// operation that caused them, named by unit (`dmar0`, `dmar1`, as Linux
/// names them).
fn vtd_platform(
    pci: Arc<iommu_soft::PciGrouping>,
    scalable: bool,
) -> Result<Arc<dyn iommu_platform::DmaHardware>, iommu_core::Errno> {
    use iommu_vtd::emu::{EmuLayout, EmuPlatform};
    use iommu_vtd_emu::HwTrace;
    let cfg = iommu_vtd::VtdConfig {
        groups: Some(pci),
        host_address_width: 48,
        ..iommu_vtd::VtdConfig::default()
    };
    let features = if scalable {
        iommu_vtd_emu::Features::scalable()
    } else {
        iommu_vtd_emu::Features::default()
    };
    let units = iommu_platform::dmar::default_vtd_units();
    let p = EmuPlatform::with_units(
        EmuLayout::default(),
        &vec![features; units.units()],
        cfg,
        Some(units.lookup()),
    )
    .map_err(|e| {
        tracing::error!("VT-d platform: {e}");
        iommu_core::Errno::ENODEV
    })?;
    for (i, hw) in p.units.iter().enumerate() {
        hw.set_trace(Some(Box::new(move |t: &HwTrace| match *t {
            HwTrace::Descriptor { lo, hi } => {
                tracing::info!(
                    "vtd dmar{i} qi: {}",
                    iommu_vtd::entry::desc::describe([lo, hi])
                )
            }
            HwTrace::QueueError { index } => {
                tracing::info!("vtd dmar{i} qi: IQE at entry {index}")
            }
            HwTrace::Register { register, value } => {
                tracing::info!("vtd dmar{i}: {register} <- {value:#x}")
            }
            HwTrace::ContextFetch { sid } => tracing::info!(
                "vtd dmar{i}: fetch context entry of {:02x}:{:02x}.{}",
                sid >> 8,
                (sid >> 3) & 0x1f,
                sid & 7
            ),
            HwTrace::Walk { sid, iova, leaf } => tracing::info!(
                "vtd dmar{i}: walk source {sid:#x} iova {iova:#x}{}",
                if leaf { "" } else { ": no leaf" }
            ),
            HwTrace::Fault { sid, reason, addr } => tracing::info!(
                "vtd dmar{i} fault: reason {reason:#x} source {sid:#x} address {addr:#x}"
            ),
        })));
    }
    Ok(Arc::new(p))
}

fn show_tables(n: &Narrative, domain: &Domain) {
    let any = domain.ops().as_any();
    let (leaves, pages) = if let Some(soft) = any.and_then(|a| a.downcast_ref::<SoftDomain>()) {
        (soft.dump(), soft.table_pages())
    } else if let Some(smmu) = any.and_then(|a| a.downcast_ref::<iommu_smmuv3::emu::EmuDomain>()) {
        (smmu.dump(), smmu.table_pages())
    } else if let Some(vtd) = any.and_then(|a| a.downcast_ref::<iommu_vtd::emu::EmuDomain>()) {
        (vtd.dump(), vtd.table_pages())
    } else {
        return;
    };
    n.say(format!("  page table ({pages} table pages):"));
    if leaves.is_empty() {
        n.say("    (empty)".into());
    }
    for (iova, size, pa, prot) in leaves {
        n.say(format!(
            "    {iova:#012x} +{size:#09x} -> {pa:#012x} {prot}"
        ));
    }
}

/// Installs `--trace` as asked.
pub(crate) fn trace(args: &crate::TraceArgs) -> Result<(), Failure> {
    if args.trace || args.trace_file.is_some() {
        crate::trace::install(args.trace_file.as_deref()).map_err(Failure::Env)?;
    }
    Ok(())
}

/// The sysfs tree as JSON entries.
#[derive(Debug, Serialize)]
pub struct SysfsEntry {
    /// Path under /sys.
    pub path: String,
    /// `dir`, `file` or `link`.
    pub kind: &'static str,
    /// A file's contents or a link's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Every entry of the sysfs model, depth first in name order.
pub fn sysfs_entries(iommu: &Iommu) -> Vec<SysfsEntry> {
    let sysfs = iommu.sysfs();
    let mut out = Vec::new();
    let mut stack: Vec<String> = sysfs.list("").unwrap_or_default();
    stack.reverse();
    while let Some(path) = stack.pop() {
        match sysfs.kind(&path) {
            Ok(iommu_core::EntryKind::Dir) => {
                let mut kids: Vec<String> = sysfs
                    .list(&path)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|k| format!("{path}/{k}"))
                    .collect();
                kids.reverse();
                stack.extend(kids);
                out.push(SysfsEntry {
                    path,
                    kind: "dir",
                    value: None,
                });
            }
            Ok(iommu_core::EntryKind::File) => {
                let value = sysfs.read(&path).ok();
                out.push(SysfsEntry {
                    path,
                    kind: "file",
                    value,
                });
            }
            Ok(iommu_core::EntryKind::Link(t)) => out.push(SysfsEntry {
                path,
                kind: "link",
                value: Some(t),
            }),
            Err(_) => {}
        }
    }
    out
}

/// `iommu run`.
pub fn main_job(args: &RunArgs) -> Result<(), Failure> {
    trace(&args.trace)?;
    let loaded = input::load(
        &MachineArgs {
            demo: true,
            ..MachineArgs::default()
        },
        &PlatformArgs::default(),
    )?;
    let platform = input::platform(&loaded, &PlatformArgs::default())?;
    let n = Narrative::new(args.json);
    let make: Option<input::MakeDriver<'_>> = match args.iommu {
        RunIommu::Soft => None,
        RunIommu::Smmuv3 => Some(Box::new(smmuv3_platform)),
        RunIommu::Vtd => Some(Box::new(|pci| vtd_platform(pci, false))),
        RunIommu::VtdSm => Some(Box::new(|pci| vtd_platform(pci, true))),
    };
    let p = input::build_on(&loaded, platform, &args.policy, make)?;
    n.heading(&format!(
        "Platform: a PCI machine behind {}",
        p.hw.describe()
    ));
    run(&n, &p)?;
    let groups = platform_groups(&p)?;
    if args.json {
        #[derive(Serialize)]
        struct Out<'a> {
            version: u32,
            command: &'static str,
            steps: Vec<String>,
            groups: &'a [ListedGroup],
            sysfs: Vec<SysfsEntry>,
        }
        let steps = n.take_lines();
        let doc = Out {
            version: JSON_VERSION,
            command: "run",
            steps,
            groups: &groups,
            sysfs: sysfs_entries(&p.iommu),
        };
        out!(
            "{}\n",
            serde_json::to_string_pretty(&doc).expect("plain data")
        );
    } else {
        n.heading("IOMMU groups");
        out!("{}", render_listing(&groups));
        n.heading("sysfs");
        out!("{}", p.iommu.sysfs().render());
        n.heading("Your own machine");
        n.say(
            "  sudo iommu groups              # its groups, as its kernel made them, with names and drivers\n  \
             sudo iommu groups --explain    # why each shared group is shared\n  \
             sudo iommu groups --vfio ADDR  # whether a device can go to a VM, and what to bind"
                .into(),
        );
    }
    Ok(())
}

fn run(n: &Narrative, p: &PciPlatform) -> Result<(), String> {
    let translated = p
        .bus
        .devices()
        .iter()
        .filter(|d| d.iommu_group().is_some())
        .count();
    n.say(format!(
        "  {} devices on bus {}, {} translated, {} groups; default domains: {}",
        p.bus.devices().len(),
        p.bus.name(),
        translated,
        p.iommu.group_ids().len(),
        p.iommu.config().default_domain_type()
    ));
    for line in p.iommu.log_lines() {
        n.say(format!("  log: {line}"));
    }

    n.heading("DMA through the NVMe drive's default domain");
    let nvme = device(p, "0000:03:00.0")?;
    let group = nvme.iommu_group().ok_or("the NVMe drive has no group")?;
    let domain = group
        .default_domain()
        .ok_or("the NVMe group has no default domain")?;
    n.say(format!(
        "  group {} default domain #{} type {}",
        group.id(),
        domain.id(),
        domain.ty()
    ));
    let handler = n.clone();
    domain.set_fault_handler(Some(Arc::new(move |d, dev, iova, access| {
        handler.say(format!(
            "  fault handler: domain #{} {} {iova} {access:?}",
            d.id(),
            dev.name()
        ));
        Err(Errno::ENOSYS)
    })));
    if domain.ty().is_paging() {
        // Two pages, a 2 MiB block, two pages: the core picks each size.
        let (iova, pa, size) = (0x1f_e000, 0x4_001f_e000, 0x20_4000);
        domain
            .map(
                Iova::new(iova),
                PhysAddr::new(pa),
                size,
                Prot::RW | Prot::CACHE,
            )
            .map_err(|e| err("map", e))?;
        n.say(format!("  map {iova:#x} -> {pa:#x} size {size:#x}: ok"));
        domain
            .map(
                Iova::new(0x60_0000),
                PhysAddr::new(0x9_0000_0000),
                0x1000,
                Prot::READ,
            )
            .map_err(|e| err("map", e))?;
        n.say("  map 0x600000 -> 0x900000000 size 0x1000 read-only: ok".into());
        show_tables(n, &domain);
        show_translate(n, p, &nvme, 0x20_0123, Access::Read);
        show_translate(n, p, &nvme, 0x1f_e010, Access::Write);
        show_translate(n, p, &nvme, 0x60_0000, Access::Read);
        show_translate(n, p, &nvme, 0x60_0000, Access::Write);
        show_translate(n, p, &nvme, 0x50_0000, Access::Read);
        let unmapped = domain
            .unmap(Iova::new(iova), size)
            .map_err(|e| err("unmap", e.errno))?;
        n.say(format!(
            "  unmap {iova:#x} size {size:#x}: {unmapped:#x} bytes"
        ));
        let unmapped = domain
            .unmap(Iova::new(0x60_0000), 0x1000)
            .map_err(|e| err("unmap", e.errno))?;
        n.say(format!("  unmap 0x600000 size 0x1000: {unmapped:#x} bytes"));
        show_translate(n, p, &nvme, 0x20_0123, Access::Read);
        show_tables(n, &domain);
    } else {
        n.say("  (passthrough: DMA addresses are physical)".into());
        show_translate(n, p, &nvme, 0x20_0123, Access::Read);
    }

    n.heading("A user takes the NIC's group for itself (VFIO-style)");
    let nic = device(p, "0000:02:00.0")?;
    let nic_group = nic.iommu_group().ok_or("the NIC has no group")?;
    let owner = DmaOwner::new();
    p.iommu
        .group_claim_dma_owner(&nic_group, owner)
        .map_err(|e| err("claim DMA ownership", e))?;
    n.say(format!(
        "  claimed: group {} now on a {} domain",
        nic_group.id(),
        nic_group.domain().map_or(DomainType::Blocked, |d| d.ty())
    ));
    show_translate(n, p, &nic, 0x4000_0000, Access::Read);
    let user = p
        .iommu
        .domain_alloc(&p.bus, DomainType::Unmanaged)
        .map_err(|e| err("domain_alloc", e))?;
    p.iommu
        .attach_group(&user, &nic_group)
        .map_err(|e| err("attach_group", e))?;
    user.map(
        Iova::new(0x4000_0000),
        PhysAddr::new(0x1_0000_0000),
        0x4000_0000,
        Prot::RW,
    )
    .map_err(|e| err("map", e))?;
    n.say(format!(
        "  attached unmanaged domain #{} and mapped 1 GiB at 0x40000000",
        user.id()
    ));
    show_tables(n, &user);
    show_translate(n, p, &nic, 0x7fff_fff0, Access::Write);
    let busy = p.iommu.attach_group(&user, &nic_group).unwrap_err();
    n.say(format!("  attaching again: {busy}"));
    p.iommu.detach_group(&user, &nic_group);
    p.iommu.group_release_dma_owner(&nic_group);
    n.say(format!(
        "  released: group {} back on its {} default domain",
        nic_group.id(),
        nic_group.domain().map_or(DomainType::Blocked, |d| d.ty())
    ));

    n.heading("Passthrough for the GPU's group through sysfs");
    let gpu = device(p, "0000:01:00.0")?;
    let gpu_group = gpu.iommu_group().ok_or("the GPU has no group")?;
    let path = format!("kernel/iommu_groups/{}/type", gpu_group.id());
    match p.iommu.sysfs().write(&path, "identity\n") {
        Ok(_) => n.say(format!(
            "  echo identity > /sys/{path}: ok, now {}",
            p.iommu.sysfs().read(&path).unwrap_or_default().trim()
        )),
        Err(e) => n.say(format!("  echo identity > /sys/{path}: {e}")),
    }
    show_translate(n, p, &gpu, 0x1234_5000, Access::Write);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_listing_matches_the_shell_loop_format() {
        let p = PciPlatform::build().unwrap();
        let out = render_listing(&platform_groups(&p).unwrap());
        assert!(
            out.starts_with("IOMMU Group 0:\n\t00:00.0 Host bridge [0600]: "),
            "{out}"
        );
        assert!(out.contains("IOMMU Group 8:\n\t01:00.0 VGA compatible controller [0300]: iommu-rs Simulated GPU [0de5:0100]\n\t01:00.1 Audio device"));
        assert_eq!(out.matches("IOMMU Group").count(), 13);
        assert!(
            !out.contains("06:00.0"),
            "the untranslated device is in no group"
        );
    }

    #[test]
    fn the_main_job_runs_in_every_policy() {
        for (passthrough, lazy) in [(false, false), (false, true), (true, false)] {
            let args = RunArgs {
                policy: crate::Policy {
                    passthrough,
                    lazy,
                    strict: false,
                },
                json: true,
                ..RunArgs::default()
            };
            main_job(&args).unwrap();
        }
    }
}
