//! `iommu groups --vfio DEVICE`: whether a device's group can be handed to
//! a VM through VFIO, and exactly what to bind.
//!
//! Linux 6.12 gives a group to user space (`iommu_group_claim_dma_owner`)
//! only while every device in it is unbound or bound to a driver that
//! manages no kernel DMA of its own (`driver_managed_dma`): `vfio-pci` and
//! its vendor variants, `pci-stub`, and `pcieport` on bridges. Any other
//! driver makes the claim fail with `EBUSY`. And whatever is bound, a
//! group with a device whose firmware asks for a 1:1 mapping (an RMRR the
//! kernel reports as a `direct` region) cannot be claimed at all: Linux
//! refuses to block that device's DMA (`require_direct`), with `EINVAL`.

use iommu_pci::{short_name, Bdf, Machine};
use serde::Serialize;
use std::fmt::Write as _;

/// Drivers that leave a group's DMA to its owner (`driver_managed_dma`).
fn manages_no_dma(driver: &str) -> bool {
    is_vfio(driver) || driver == "pci-stub" || driver == "pcieport"
}

/// vfio-pci, or one of its vendor variants (`mlx5-vfio-pci`, ...).
fn is_vfio(driver: &str) -> bool {
    driver == "vfio-pci" || driver.ends_with("-vfio-pci")
}

fn is_bridge(class: u32) -> bool {
    matches!(class >> 8, 0x0604 | 0x0609)
}

/// What to do with one device of the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Already bound to a VFIO driver.
    Ready,
    /// Bind it to vfio-pci.
    Bind,
    /// A bridge: its port driver manages no DMA; leave it.
    Stay,
}

/// One device of the group.
#[derive(Debug, Serialize)]
pub struct Member {
    #[serde(serialize_with = "address_json")]
    address: Bdf,
    description: String,
    ids: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    driver: Option<String>,
    action: Action,
    /// Whether its current state lets the group be claimed.
    allows_claim: bool,
}

/// An address in the JSON's one format (`0000:00:14.0`).
fn address_json<S: serde::Serializer>(b: &Bdf, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(b)
}

/// The answer for one device.
#[derive(Debug, Serialize)]
pub struct Report {
    device: String,
    /// The group's number: the kernel's when the input has it.
    group: u32,
    /// Whether `group` is the kernel's number (else the prediction's).
    kernel_group: bool,
    /// Whether the input says which drivers are bound.
    drivers_known: bool,
    /// The machine's IOMMU is off: no groups, so no VFIO, until it is on.
    iommu_off: bool,
    /// Whether the group can be claimed for VFIO as the drivers are now.
    viable_now: bool,
    /// Members whose firmware asks for a 1:1 mapping (`direct` regions,
    /// as `first-last`): while there is one, no claim succeeds.
    firmware_direct: Vec<FirmwareDirect>,
    members: Vec<Member>,
    /// `vfio-pci.ids=` for the kernel command line.
    vfio_pci_ids: String,
    /// Devices outside the group that `vfio_pci_ids` would bind too.
    also_bound_by_ids: Vec<String>,
    /// Other functions of the same card, in other groups.
    related: Vec<String>,
}

/// A member the firmware keeps doing DMA for.
#[derive(Debug, Serialize)]
pub struct FirmwareDirect {
    #[serde(serialize_with = "address_json")]
    address: Bdf,
    /// Its `direct` regions, `0xfirst-0xlast`.
    regions: Vec<String>,
}

impl FirmwareDirect {
    /// `address`'s `direct` regions, as `(start, length)`.
    pub fn new(address: Bdf, regions: &[(u64, u64)]) -> FirmwareDirect {
        FirmwareDirect {
            address,
            regions: regions
                .iter()
                .map(|&(start, len)| format!("{start:#x}-{:#x}", start + (len - 1)))
                .collect(),
        }
    }
}

/// Builds the report for `target` in a group of `members` (addresses).
///
/// `group_of` gives any device's group number as shown; `firmware_direct`
/// the members whose firmware asks for 1:1 mappings.
#[allow(clippy::too_many_arguments)] // one report, assembled from its parts
pub fn report(
    machine: &Machine,
    target: Bdf,
    group: u32,
    kernel_group: bool,
    members: &[Bdf],
    group_of: &dyn Fn(Bdf) -> Option<u32>,
    iommu_off: bool,
    firmware_direct: Vec<FirmwareDirect>,
) -> Report {
    let drivers_known = machine.devices.iter().any(|d| d.driver.is_some());
    let mut out = Vec::new();
    let mut ids: Vec<(u16, u16)> = Vec::new();
    for &b in members {
        let Some(d) = machine.device(b) else { continue };
        let f = &d.function;
        let driver = d.driver.clone();
        let action = match driver.as_deref() {
            Some(drv) if is_vfio(drv) => Action::Ready,
            _ if is_bridge(f.class) => Action::Stay,
            // A host or ISA bridge nobody drives is no DMA master to hand
            // over; with a driver, it must leave like any endpoint.
            None if f.class >> 16 == 0x06 => Action::Stay,
            _ => Action::Bind,
        };
        if action == Action::Bind && !ids.contains(&(f.vendor, f.device)) {
            ids.push((f.vendor, f.device));
        }
        out.push(Member {
            address: b,
            description: machine.describe(b),
            ids: format!("{:04x}:{:04x}", f.vendor, f.device),
            allows_claim: driver.as_deref().is_none_or(manages_no_dma),
            driver,
            action,
        });
    }
    let also_bound_by_ids = machine
        .devices
        .iter()
        .filter(|d| !members.contains(&d.function.bdf))
        .filter(|d| ids.contains(&(d.function.vendor, d.function.device)))
        .map(|d| d.function.bdf.to_string())
        .collect();
    let related = machine
        .devices
        .iter()
        .map(|d| d.function.bdf)
        .filter(|b| {
            b.segment == target.segment
                && b.bus == target.bus
                && b.devfn >> 3 == target.devfn >> 3
                && !members.contains(b)
        })
        .map(|b| match group_of(b) {
            Some(g) => format!("{b} (group {g})"),
            None => format!("{b} (no group)"),
        })
        .collect();
    Report {
        device: target.to_string(),
        group,
        kernel_group,
        drivers_known,
        iommu_off,
        viable_now: !iommu_off
            && firmware_direct.is_empty()
            && drivers_known
            && out.iter().all(|m| m.allows_claim),
        firmware_direct,
        vfio_pci_ids: ids
            .iter()
            .map(|(v, d)| format!("{v:04x}:{d:04x}"))
            .collect::<Vec<_>>()
            .join(","),
        members: out,
        also_bound_by_ids,
        related,
    }
}

/// The report as text.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let whose = if r.kernel_group {
        "the kernel's"
    } else {
        "predicted"
    };
    let _ = writeln!(
        s,
        "{} is in IOMMU group {} ({whose}), with {} device{}:",
        r.device,
        r.group,
        r.members.len(),
        if r.members.len() == 1 { "" } else { "s" }
    );
    let line = |m: &Member| {
        let now = match &m.driver {
            Some(d) => format!(" (now: {d})"),
            None if r.drivers_known => " (now: no driver)".to_string(),
            None => String::new(),
        };
        format!("    {} {}{now}\n", short_name(m.address), m.description)
    };
    for (action, heading) in [
        (Action::Bind, "  bind to vfio-pci (VFIO takes the group only with every endpoint in it):"),
        (Action::Ready, "  already bound to VFIO:"),
        (Action::Stay, "  bridges, which may stay as they are (unbound, or with pcieport, which manages no DMA of its own):"),
    ] {
        let ms: Vec<&Member> = r.members.iter().filter(|m| m.action == action).collect();
        if !ms.is_empty() {
            s.push_str(heading);
            s.push('\n');
            for m in ms {
                s.push_str(&line(m));
            }
        }
    }
    if r.iommu_off {
        s.push_str("Viable now: no: the IOMMU is off, so the kernel has no groups for VFIO to take; turn it on first (above), then bind as follows.\n");
    } else if !r.firmware_direct.is_empty() {
        let who: Vec<String> = r
            .firmware_direct
            .iter()
            .map(|f| format!("{} at {}", short_name(f.address), f.regions.join(", ")))
            .collect();
        let _ = writeln!(
            s,
            "Viable now: no, whatever is bound: the firmware asks for 1:1 mappings (RMRRs, `direct` reserved regions) of {}; Linux refuses to block such a device's DMA, so VFIO's claim fails with EINVAL. Only the firmware (a BIOS setting or update) can lift it.",
            who.join("; ")
        );
    } else if !r.drivers_known {
        s.push_str("Viable now: unknown: the input does not say which drivers are bound (read the live machine, a sysfs tree, or `lspci -k` output).\n");
    } else if r.viable_now {
        s.push_str(
            "Viable now: yes: no device in the group is bound to a driver that does its own DMA.\n",
        );
    } else {
        let busy: Vec<String> = r
            .members
            .iter()
            .filter(|m| !m.allows_claim)
            .map(|m| {
                format!(
                    "{} ({})",
                    short_name(m.address),
                    m.driver.as_deref().unwrap_or("")
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "Viable now: no: {} bound to a driver that does its own DMA, so VFIO's claim fails with EBUSY.",
            busy.join(", ")
        );
    }
    if !r.vfio_pci_ids.is_empty() {
        let _ = writeln!(s, "Kernel command line: vfio-pci.ids={}", r.vfio_pci_ids);
        if !r.also_bound_by_ids.is_empty() {
            let _ = writeln!(
                s,
                "  careful: these ids also match {}, outside the group; bind by address instead:",
                r.also_bound_by_ids.join(", ")
            );
        } else {
            s.push_str("  or by address, at run time:\n");
        }
        for m in r.members.iter().filter(|m| m.action == Action::Bind) {
            let _ = writeln!(s, "    driverctl set-override {} vfio-pci", m.address);
        }
    }
    if !r.related.is_empty() {
        let _ = writeln!(
            s,
            "Other functions of the same card, in other groups (usually passed through too): {}",
            r.related.join(", ")
        );
    }
    s
}
