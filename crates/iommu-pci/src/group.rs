//! Linux's PCI grouping (`pci_device_group` of `drivers/iommu/iommu.c`,
//! with `pci_acs_enabled`, `pci_acs_path_enabled` and
//! `pci_for_each_dma_alias` of `drivers/pci`), run over a [`Topology`].
//!
//! Devices join groups in Linux's enumeration order, each by the kernel's
//! rules: the upstream DMA alias (bridges that take over requester ids),
//! then upward to the first bridge with an ACS path to the root, then any
//! device that aliases it, then the functions of its slot that are not
//! isolated by ACS; the first of those that already has a group is joined,
//! else a new group is made. The partition is the kernel's; the group
//! numbers follow this order, so compare partitions, not numbers.

use crate::{AcsFlags, Bdf, Function, PortType, Topology};
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

/// What a device must have enabled on its ACS path to count as isolated:
/// source validation, request and completion redirect, upstream
/// forwarding (Linux's `REQ_ACS_FLAGS`).
pub const REQ_ACS_FLAGS: AcsFlags =
    AcsFlags(AcsFlags::SV.0 | AcsFlags::RR.0 | AcsFlags::CR.0 | AcsFlags::UF.0);

/// What Linux keeps per device beyond configuration space, from its quirk
/// tables (`dma_alias_mask`, `pci_real_dma_dev`, the bridge flags) and its
/// device-specific ACS table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceQuirks {
    /// Other functions (devfns on the same bus) whose requester id the
    /// device also uses for DMA (`pci_add_dma_alias`).
    pub dma_aliases: Vec<u8>,
    /// The device that really issues this one's DMA (`pci_real_dma_dev`).
    pub real_dma_dev: Option<Bdf>,
    /// A bridge where the translation unit sits: aliasing stops there
    /// (`PCI_DEV_FLAGS_BRIDGE_XLATE_ROOT`).
    pub bridge_xlate_root: bool,
    /// A conventional bridge that is really a PCIe-to-PCI one and aliases
    /// with its secondary bus (`PCI_DEV_FLAG_PCIE_BRIDGE_ALIAS`).
    pub pcie_bridge_alias: bool,
    /// The device-specific ACS answer (`pci_dev_specific_acs_enabled`):
    /// the flags the device's isolation is known to provide, overriding
    /// its registers.
    pub acs_provides: Option<AcsFlags>,
}

/// The platform around the tree: per-device quirks, and which devices the
/// IOMMU covers (a device it does not cover gets no group; that is the
/// driver's and firmware's decision, e.g. AMD's IVRS leaving out the
/// IOMMU's own function).
#[derive(Clone, Debug, Default)]
pub struct Platform {
    /// Quirks by address.
    pub quirks: BTreeMap<Bdf, DeviceQuirks>,
    /// Addresses the IOMMU does not cover.
    pub not_covered: Vec<Bdf>,
}

impl Platform {
    fn quirks(&self, bdf: Bdf) -> Option<&DeviceQuirks> {
        self.quirks.get(&bdf)
    }
}

/// Groups over a topology: which group each function is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Groups {
    /// Group number of each function of the topology (by index), `None`
    /// for one the IOMMU does not cover.
    pub of: Vec<Option<usize>>,
    /// The functions of each group, by index, in the order they joined.
    pub members: Vec<Vec<usize>>,
}

impl Groups {
    /// The partition, as sets of addresses sorted by address, for comparing
    /// with another grouping whatever its numbering.
    pub fn partition(&self, topo: &Topology) -> Vec<Vec<Bdf>> {
        let mut p: Vec<Vec<Bdf>> = self
            .members
            .iter()
            .map(|m| {
                let mut v: Vec<Bdf> = m.iter().map(|&i| topo.functions()[i].bdf).collect();
                v.sort();
                v
            })
            .collect();
        p.sort();
        p
    }
}

/// The grouping machinery over one topology and platform.
struct Grouper<'a> {
    topo: &'a Topology,
    platform: &'a Platform,
    of: Vec<Option<usize>>,
}

/// Whether `f`'s ACS registers enable `flags`; a capability bit the
/// function lacks counts as hard-wired on, except egress control.
fn acs_flags_enabled(f: &Function, flags: AcsFlags) -> bool {
    let Some(acs) = f.acs else {
        return false;
    };
    let need = flags.intersection(acs.cap.union(AcsFlags::EC));
    acs.ctrl.contains(need)
}

impl<'a> Grouper<'a> {
    fn f(&self, i: usize) -> &'a Function {
        &self.topo.functions()[i]
    }

    /// Linux's `pci_acs_enabled`: whether function `i` is isolated by
    /// `flags` for its port type (single-function endpoints need no ACS).
    fn acs_enabled(&self, i: usize, flags: AcsFlags) -> bool {
        let f = self.f(i);
        if let Some(provides) = self.platform.quirks(f.bdf).and_then(|q| q.acs_provides) {
            return provides.contains(flags);
        }
        let Some(port) = f.port_type() else {
            // Conventional PCI and PCI-X: a shared bus, never isolated.
            return false;
        };
        match port {
            PortType::PciToPcieBridge | PortType::PcieToPciBridge | PortType::RcEventCollector => {
                false
            }
            PortType::DownstreamPort | PortType::RootPort => acs_flags_enabled(f, flags),
            PortType::Endpoint
            | PortType::UpstreamPort
            | PortType::LegacyEndpoint
            | PortType::RcIntegratedEndpoint => !f.multifunction || acs_flags_enabled(f, flags),
            PortType::Reserved(_) => true,
        }
    }

    /// Linux's `pci_acs_path_enabled(start, NULL, flags)`: ACS from `i` up
    /// to the root bus.
    fn acs_path_enabled(&self, mut i: usize, flags: AcsFlags) -> bool {
        loop {
            if !self.acs_enabled(i, flags) {
                return false;
            }
            match self.topo.upstream(i) {
                None => return true,
                Some(up) => i = up,
            }
        }
    }

    fn real_dma_dev(&self, i: usize) -> usize {
        self.platform
            .quirks(self.f(i).bdf)
            .and_then(|q| q.real_dma_dev)
            .and_then(|b| self.topo.index(b))
            .unwrap_or(i)
    }

    /// Linux's `pci_for_each_dma_alias`: calls `visit(device)` for the
    /// device and every device whose requester id its DMA may carry on the
    /// way to the root, stopping when `visit` returns `true`.
    fn for_each_dma_alias(&self, i: usize, visit: &mut impl FnMut(usize) -> bool) -> bool {
        let i = self.real_dma_dev(i);
        if visit(i) {
            return true;
        }
        // (A quirk's extra requester ids of the same device are visited with
        // the device itself again, which changes nothing here: they matter
        // to `are_dma_aliases`.)
        let mut at = i;
        while let Some(up) = self.topo.upstream(at) {
            let bridge = self.f(up);
            let bq = self.platform.quirks(bridge.bdf);
            if bq.is_some_and(|q| q.bridge_xlate_root) {
                return false;
            }
            let aliases = match bridge.port_type() {
                Some(PortType::RootPort | PortType::UpstreamPort | PortType::DownstreamPort) => {
                    false
                }
                Some(PortType::PcieToPciBridge | PortType::PciToPcieBridge) => true,
                Some(_) => false,
                None => true,
            };
            if aliases && visit(up) {
                return true;
            }
            at = up;
        }
        false
    }

    fn are_dma_aliases(&self, a: usize, b: usize) -> bool {
        let (fa, fb) = (self.f(a), self.f(b));
        let masks = |x: &Function, y: &Function| {
            self.platform
                .quirks(x.bdf)
                .is_some_and(|q| q.dma_aliases.contains(&y.bdf.devfn))
        };
        masks(fa, fb) || masks(fb, fa) || self.real_dma_dev(a) == b || self.real_dma_dev(b) == a
    }

    /// Linux's `get_pci_function_alias_group`.
    fn function_alias_group(&self, i: usize, seen: &mut [bool; 256]) -> Option<usize> {
        let f = self.f(i);
        if !f.multifunction || self.acs_enabled(i, REQ_ACS_FLAGS) {
            return None;
        }
        for j in self.topo.same_bus(i) {
            if j == i || self.f(j).bdf.dev() != f.bdf.dev() || self.acs_enabled(j, REQ_ACS_FLAGS) {
                continue;
            }
            if let Some(g) = self.alias_group(j, seen) {
                return Some(g);
            }
        }
        None
    }

    /// Linux's `get_pci_alias_group`.
    fn alias_group(&self, i: usize, seen: &mut [bool; 256]) -> Option<usize> {
        let devfn = usize::from(self.f(i).bdf.devfn);
        if seen[devfn] {
            return None;
        }
        seen[devfn] = true;
        if let Some(g) = self.of[i] {
            return Some(g);
        }
        for j in self.topo.same_bus(i) {
            if j == i || !self.are_dma_aliases(i, j) {
                continue;
            }
            if let Some(g) = self.alias_group(j, seen) {
                return Some(g);
            }
            if let Some(g) = self.function_alias_group(j, seen) {
                return Some(g);
            }
        }
        None
    }

    /// Linux's `pci_device_group`: the existing group function `i` must
    /// join, or `None` for a new one.
    fn device_group(&self, i: usize) -> Option<usize> {
        let mut last = i;
        let mut found = None;
        self.for_each_dma_alias(i, &mut |d| {
            last = d;
            found = self.of[d];
            found.is_some()
        });
        if found.is_some() {
            return found;
        }
        let mut pdev = last;
        let mut at = last;
        while let Some(up) = self.topo.upstream(at) {
            if self.acs_path_enabled(up, REQ_ACS_FLAGS) {
                break;
            }
            pdev = up;
            if let Some(g) = self.of[pdev] {
                return Some(g);
            }
            at = up;
        }
        let mut seen = [false; 256];
        self.alias_group(pdev, &mut seen)
            .or_else(|| self.function_alias_group(pdev, &mut seen))
    }
}

/// Groups every function the IOMMU covers, as Linux 6.12 would.
pub fn pci_groups(topo: &Topology, platform: &Platform) -> Groups {
    let mut g = Grouper {
        topo,
        platform,
        of: vec![None; topo.functions().len()],
    };
    let mut members: Vec<Vec<usize>> = Vec::new();
    for i in topo.enumeration_order() {
        if platform.not_covered.contains(&topo.functions()[i].bdf) {
            continue;
        }
        let group = g.device_group(i).unwrap_or_else(|| {
            members.push(Vec::new());
            members.len() - 1
        });
        g.of[i] = Some(group);
        members[group].push(i);
    }
    Groups { of: g.of, members }
}
