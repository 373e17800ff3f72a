//! The main job: the core end to end on the default platform.

use crate::out::{out, outln};
use crate::Options;
use iommu_core::{
    Device, DmaOwner, Domain, DomainType, Errno, Iommu, IommuConfig, Iova, PhysAddr, Prot,
};
use iommu_soft::platform::DefaultPlatform;
use iommu_soft::{Access, SoftDomain};
use std::fmt::Write as _;
use std::sync::Arc;

fn config(opts: &Options) -> IommuConfig {
    IommuConfig {
        passthrough: opts.passthrough,
        strict: !opts.lazy,
    }
}

fn err(what: &str, e: Errno) -> String {
    format!("{what}: {e}")
}

fn build(opts: &Options) -> Result<DefaultPlatform, String> {
    DefaultPlatform::build_with(config(opts)).map_err(|e| err("building the default platform", e))
}

fn device(p: &DefaultPlatform, name: &str) -> Result<Arc<Device>, String> {
    p.device(name)
        .ok_or_else(|| format!("the platform has no device {name}"))
}

fn heading(title: &str) {
    outln!("\n== {title}");
}

/// lspci's short form of a PCI address (domain 0000 omitted).
fn lspci_name(name: &str) -> &str {
    name.strip_prefix("0000:").unwrap_or(name)
}

/// The group listing, built by walking the sysfs model exactly as the
/// well-known shell loop walks /sys/kernel/iommu_groups (ids in version order,
/// then each group's devices/ links, described as `lspci -nns` would).
pub fn group_listing(
    iommu: &Iommu,
    describe: impl Fn(&str) -> Option<String>,
) -> Result<String, Errno> {
    let sysfs = iommu.sysfs();
    let mut ids: Vec<u32> = sysfs
        .list("kernel/iommu_groups")?
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    ids.sort_unstable();
    let mut out = String::new();
    for id in ids {
        let _ = writeln!(out, "IOMMU Group {id}:");
        for link in sysfs.list(&format!("kernel/iommu_groups/{id}/devices"))? {
            let dir = sysfs.resolve(&format!("kernel/iommu_groups/{id}/devices/{link}"))?;
            let name = dir.rsplit('/').next().unwrap_or(&link);
            let desc = describe(name).unwrap_or_default();
            let _ = writeln!(out, "\t{} {desc}", lspci_name(name));
        }
    }
    Ok(out)
}

fn listing(p: &DefaultPlatform) -> Result<String, String> {
    group_listing(&p.iommu, |n| {
        p.device(n).map(|d| d.description().to_string())
    })
    .map_err(|e| err("reading sysfs", e))
}

fn show_translate(p: &DefaultPlatform, dev: &Device, iova: u64, access: Access) {
    let what = match access {
        Access::Read => "read ",
        Access::Write => "write",
    };
    match p.soft.translate(dev, Iova::new(iova), access) {
        Ok(pa) => outln!("  DMA {what} {:#012x} -> {pa:#x}", iova),
        Err(e) => outln!("  DMA {what} {:#012x} -> fault: {e}", iova),
    }
}

fn show_tables(domain: &Domain) {
    let Some(soft) = domain
        .ops()
        .as_any()
        .and_then(|a| a.downcast_ref::<SoftDomain>())
    else {
        return;
    };
    let leaves = soft.dump();
    outln!("  page table ({} table pages):", soft.table_pages());
    if leaves.is_empty() {
        outln!("    (empty)");
    }
    for (iova, size, pa, prot) in leaves {
        outln!("    {iova:#012x} +{size:#09x} -> {pa:#012x} {prot}");
    }
}

/// `iommu run`.
pub fn run(opts: &Options) -> Result<(), String> {
    heading("Platform: a PCI bus behind a software IOMMU (ARM LPAE stage-1 tables)");
    let p = build(opts)?;
    let translated = p
        .bus
        .devices()
        .iter()
        .filter(|d| d.iommu_group().is_some())
        .count();
    outln!(
        "  {} devices on bus {}, {} translated, {} groups; default domains: {}",
        p.bus.devices().len(),
        p.bus.name(),
        translated,
        p.iommu.group_ids().len(),
        p.iommu.config().default_domain_type()
    );
    for line in p.iommu.log_lines() {
        outln!("  log: {line}");
    }

    heading("DMA through the NVMe drive's default domain");
    let nvme = device(&p, "0000:03:00.0")?;
    let group = nvme.iommu_group().ok_or("the NVMe drive has no group")?;
    let domain = group
        .default_domain()
        .ok_or("the NVMe group has no default domain")?;
    outln!(
        "  group {} default domain #{} type {}",
        group.id(),
        domain.id(),
        domain.ty()
    );
    domain.set_fault_handler(Some(Arc::new(|d, dev, iova, access| {
        outln!(
            "  fault handler: domain #{} {} {iova} {access:?}",
            d.id(),
            dev.name()
        );
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
        outln!("  map {iova:#x} -> {pa:#x} size {size:#x}: ok");
        domain
            .map(
                Iova::new(0x60_0000),
                PhysAddr::new(0x9_0000_0000),
                0x1000,
                Prot::READ,
            )
            .map_err(|e| err("map", e))?;
        outln!("  map 0x600000 -> 0x900000000 size 0x1000 read-only: ok");
        show_tables(&domain);
        show_translate(&p, &nvme, 0x20_0123, Access::Read);
        show_translate(&p, &nvme, 0x1f_e010, Access::Write);
        show_translate(&p, &nvme, 0x60_0000, Access::Read);
        show_translate(&p, &nvme, 0x60_0000, Access::Write);
        show_translate(&p, &nvme, 0x50_0000, Access::Read);
        let n = domain.unmap(Iova::new(iova), size);
        outln!("  unmap {iova:#x} size {size:#x}: {n:#x} bytes");
        let n = domain.unmap(Iova::new(0x60_0000), 0x1000);
        outln!("  unmap 0x600000 size 0x1000: {n:#x} bytes");
        show_translate(&p, &nvme, 0x20_0123, Access::Read);
        show_tables(&domain);
    } else {
        outln!("  (passthrough: DMA addresses are physical)");
        show_translate(&p, &nvme, 0x20_0123, Access::Read);
    }

    heading("A user takes the NIC's group for itself (VFIO-style)");
    let nic = device(&p, "0000:02:00.0")?;
    let nic_group = nic.iommu_group().ok_or("the NIC has no group")?;
    let owner = DmaOwner::new();
    p.iommu
        .group_claim_dma_owner(&nic_group, owner)
        .map_err(|e| err("claim DMA ownership", e))?;
    outln!(
        "  claimed: group {} now on a {} domain",
        nic_group.id(),
        nic_group.domain().map_or(DomainType::Blocked, |d| d.ty())
    );
    show_translate(&p, &nic, 0x4000_0000, Access::Read);
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
    outln!(
        "  attached unmanaged domain #{} and mapped 1 GiB at 0x40000000",
        user.id()
    );
    show_tables(&user);
    show_translate(&p, &nic, 0x7fff_fff0, Access::Write);
    let busy = p.iommu.attach_group(&user, &nic_group).unwrap_err();
    outln!("  attaching again: {busy}");
    p.iommu.detach_group(&user, &nic_group);
    p.iommu.group_release_dma_owner(&nic_group);
    outln!(
        "  released: group {} back on its {} default domain",
        nic_group.id(),
        nic_group.domain().map_or(DomainType::Blocked, |d| d.ty())
    );

    heading("Passthrough for the GPU's group through sysfs");
    let gpu = device(&p, "0000:01:00.0")?;
    let gpu_group = gpu.iommu_group().ok_or("the GPU has no group")?;
    let path = format!("kernel/iommu_groups/{}/type", gpu_group.id());
    match p.iommu.sysfs().write(&path, "identity\n") {
        Ok(_) => outln!(
            "  echo identity > /sys/{path}: ok, now {}",
            p.iommu.sysfs().read(&path).unwrap_or_default().trim()
        ),
        Err(e) => outln!("  echo identity > /sys/{path}: {e}"),
    }
    show_translate(&p, &gpu, 0x1234_5000, Access::Write);

    heading("IOMMU groups");
    out!("{}", listing(&p)?);
    heading("sysfs");
    out!("{}", p.iommu.sysfs().render());
    Ok(())
}

/// `iommu groups`.
pub fn groups(opts: &Options) -> Result<(), String> {
    let p = build(opts)?;
    out!("{}", listing(&p)?);
    Ok(())
}

/// `iommu sysfs`.
pub fn sysfs(opts: &Options) -> Result<(), String> {
    let p = build(opts)?;
    out!("{}", p.iommu.sysfs().render());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_listing_matches_the_shell_loop_format() {
        let p = DefaultPlatform::build().unwrap();
        let out = listing(&p).unwrap();
        assert!(
            out.starts_with("IOMMU Group 0:\n\t00:00.0 Host bridge [0600]: "),
            "{out}"
        );
        assert!(out.contains("IOMMU Group 2:\n\t01:00.0 VGA compatible controller [0300]: iommu-rs Simulated GPU [0de5:0100]\n\t01:00.1 Audio device"));
        assert_eq!(out.matches("IOMMU Group").count(), 7);
        assert!(
            !out.contains("04:00.0"),
            "the untranslated device is in no group"
        );
    }

    #[test]
    fn the_main_job_runs_in_every_policy() {
        for (passthrough, lazy) in [(false, false), (false, true), (true, false)] {
            let o = Options {
                passthrough,
                lazy,
                ..Options::default()
            };
            run(&o).unwrap();
        }
    }
}
