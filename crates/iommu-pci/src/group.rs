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
//!
//! Every join is recorded as the chain of [`Step`]s that led to the group
//! found, so that a grouping can be explained rule by rule.

use crate::acs::acs_enabled;
use crate::quirks::{linux_device_quirks, vmd_controllers, QuirkContext};
use crate::{enable_acs, AcsFlags, AcsVerdict, Bdf, DeviceQuirks, Function, Platform, PortType};
use crate::{IommuKind, Topology, TopologyError};
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

/// What a device must have enabled on its ACS path to count as isolated:
/// source validation, request and completion redirect, upstream
/// forwarding (Linux's `REQ_ACS_FLAGS`).
pub const REQ_ACS_FLAGS: AcsFlags =
    AcsFlags(AcsFlags::SV.0 | AcsFlags::RR.0 | AcsFlags::CR.0 | AcsFlags::UF.0);

/// How a bridge takes over the requester id of DMA from below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BridgeAlias {
    /// A PCIe-to-PCI/PCI-X bridge: DMA carries the secondary bus number
    /// with devfn 0 (or the bridge's own id).
    PcieToPci,
    /// A PCI/PCI-X-to-PCIe bridge: DMA carries the bridge's id.
    PciToPcie,
    /// A conventional PCI bridge: DMA carries the bridge's id.
    Conventional,
    /// A conventional-looking bridge that Linux's quirk treats as a
    /// PCIe-to-PCI bridge.
    QuirkPcieBridge,
}

/// One step of the way from a device to the group it joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `dev`'s DMA is issued by `real` (`pci_real_dma_dev`, e.g. an Intel
    /// VMD controller).
    RealDmaDev {
        /// The device.
        dev: usize,
        /// The device that issues its DMA.
        real: usize,
    },
    /// DMA from below `bridge` appears to come from `bridge`.
    BridgeAlias {
        /// The device whose DMA is aliased.
        dev: usize,
        /// The bridge.
        bridge: usize,
        /// How.
        kind: BridgeAlias,
    },
    /// `bridge` has no ACS path to the root, because `blocker` (on the
    /// way up from `bridge`) is not isolated; so everything below
    /// `bridge` shares its group.
    NoAcsPath {
        /// The device below.
        dev: usize,
        /// The bridge the walk moved up to.
        bridge: usize,
        /// The first device on the path that is not isolated.
        blocker: usize,
        /// Why not.
        verdict: AcsVerdict,
    },
    /// `from` and `to` use each other's requester ids (a DMA-alias
    /// quirk, or one is the other's real DMA device).
    DmaAlias {
        /// The device looked from.
        from: usize,
        /// The device it aliases with.
        to: usize,
    },
    /// `from` and `to` are functions of one multifunction device, and
    /// neither is isolated by ACS.
    SameSlot {
        /// The device looked from.
        from: usize,
        /// Its sibling function.
        to: usize,
        /// Why `from` is not isolated.
        verdict: AcsVerdict,
    },
}

/// How one device came into an existing group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Join {
    /// The device whose group it took.
    pub with: usize,
    /// The steps from the device to `with`.
    pub steps: Vec<Step>,
}

/// Groups over a topology: which group each function is in, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Groups {
    /// Group number of each function of the topology (by index), `None`
    /// for one the IOMMU does not cover.
    pub of: Vec<Option<usize>>,
    /// The functions of each group, by index, in the order they joined.
    pub members: Vec<Vec<usize>>,
    /// For each function that joined a group another function made, how.
    pub joins: Vec<Option<Join>>,
    /// For each function the IOMMU driver refused although it covers it,
    /// the function that already holds one of its stream ids: arm-smmu-v3
    /// rejects a second master whose DMA carries a stream id another
    /// master has (`arm_smmu_insert_master`), which happens behind a
    /// PCIe-to-PCI bridge, where every device's DMA carries the bridge's
    /// alias. The refused function has no group. A function refused by
    /// itself (its own index) listed one stream id twice, which
    /// arm-smmu-v3 refused before Linux 6.12
    /// ([`KernelVersion::arm_smmu_refuses_duplicate_stream_ids`](crate::KernelVersion::arm_smmu_refuses_duplicate_stream_ids)).
    pub refused: Vec<Option<usize>>,
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
    quirks: &'a [DeviceQuirks],
    acs: &'a [AcsVerdict],
    /// For each function, the first device from it up to the root that
    /// is not isolated (`pci_acs_path_enabled` failing there), if any.
    path_blocker: Vec<Option<usize>>,
    of: Vec<Option<usize>>,
}

impl<'a> Grouper<'a> {
    fn f(&self, i: usize) -> &'a Function {
        &self.topo.functions()[i]
    }

    fn real_dma_dev(&self, i: usize) -> usize {
        self.quirks[i]
            .real_dma_dev
            .and_then(|b| self.topo.index(b))
            .unwrap_or(i)
    }

    /// Linux's `pci_for_each_dma_alias`, as `pci_device_group` uses it:
    /// the device, then each bridge on the way up that takes over its
    /// requester id. Returns the last device visited and whether it
    /// already has a group, with the steps taken.
    fn upstream_alias(&self, i: usize, steps: &mut Vec<Step>) -> (usize, Option<usize>) {
        let real = self.real_dma_dev(i);
        if real != i {
            steps.push(Step::RealDmaDev { dev: i, real });
        }
        if let Some(g) = self.of[real] {
            return (real, Some(g));
        }
        let (mut last, mut at) = (real, real);
        while let Some(up) = self.topo.upstream(at) {
            if self.quirks[up].bridge_xlate_root {
                break;
            }
            let bridge = self.f(up);
            let kind = match bridge.port_type() {
                Some(PortType::PcieToPciBridge) => Some(BridgeAlias::PcieToPci),
                Some(PortType::PciToPcieBridge) => Some(BridgeAlias::PciToPcie),
                Some(_) => None,
                None if self.quirks[up].pcie_bridge_alias => Some(BridgeAlias::QuirkPcieBridge),
                None => Some(BridgeAlias::Conventional),
            };
            if let Some(kind) = kind {
                steps.push(Step::BridgeAlias {
                    dev: last,
                    bridge: up,
                    kind,
                });
                last = up;
                if let Some(g) = self.of[up] {
                    return (up, Some(g));
                }
            }
            at = up;
        }
        (last, None)
    }

    /// `pci_devs_are_dma_aliases`.
    fn are_dma_aliases(&self, a: usize, b: usize) -> bool {
        let (fa, fb) = (self.f(a), self.f(b));
        let masks = |x: usize, y: &Function| self.quirks[x].dma_aliases.contains(&y.bdf.devfn);
        masks(a, fb) || masks(b, fa) || self.real_dma_dev(a) == b || self.real_dma_dev(b) == a
    }

    /// Linux's `get_pci_function_alias_group`.
    fn function_alias_group(
        &self,
        i: usize,
        seen: &mut [bool; 256],
        steps: &mut Vec<Step>,
    ) -> Option<(usize, usize)> {
        if !self.topo.multifunction(i) || self.acs[i].enabled() {
            return None;
        }
        let f = self.f(i);
        for j in self.topo.same_bus(i) {
            if j == i || self.f(j).bdf.dev() != f.bdf.dev() || self.acs[j].enabled() {
                continue;
            }
            let mark = steps.len();
            steps.push(Step::SameSlot {
                from: i,
                to: j,
                verdict: self.acs[i],
            });
            if let Some(found) = self.alias_group(j, seen, steps) {
                return Some(found);
            }
            steps.truncate(mark);
        }
        None
    }

    /// Linux's `get_pci_alias_group`: the group found and the device
    /// that has it.
    fn alias_group(
        &self,
        i: usize,
        seen: &mut [bool; 256],
        steps: &mut Vec<Step>,
    ) -> Option<(usize, usize)> {
        let devfn = usize::from(self.f(i).bdf.devfn);
        if seen[devfn] {
            return None;
        }
        seen[devfn] = true;
        if let Some(g) = self.of[i] {
            return Some((g, i));
        }
        for j in self.topo.same_bus(i) {
            if j == i || !self.are_dma_aliases(i, j) {
                continue;
            }
            let mark = steps.len();
            steps.push(Step::DmaAlias { from: i, to: j });
            if let Some(found) = self.alias_group(j, seen, steps) {
                return Some(found);
            }
            if let Some(found) = self.function_alias_group(j, seen, steps) {
                return Some(found);
            }
            steps.truncate(mark);
        }
        None
    }

    /// Linux's `pci_device_group`: the existing group function `i` must
    /// join and how, or `None` for a new one.
    fn device_group(&self, i: usize) -> Option<(usize, Join)> {
        let mut steps = Vec::new();
        let (last, found) = self.upstream_alias(i, &mut steps);
        if let Some(g) = found {
            return Some((g, Join { with: last, steps }));
        }
        let mut pdev = last;
        let mut at = last;
        while let Some(up) = self.topo.upstream(at) {
            let Some(blocker) = self.path_blocker[up] else {
                break;
            };
            steps.push(Step::NoAcsPath {
                dev: pdev,
                bridge: up,
                blocker,
                verdict: self.acs[blocker],
            });
            pdev = up;
            if let Some(g) = self.of[pdev] {
                return Some((g, Join { with: pdev, steps }));
            }
            at = up;
        }
        let mut seen = [false; 256];
        let found = self
            .alias_group(pdev, &mut seen, &mut steps)
            .or_else(|| self.function_alias_group(pdev, &mut seen, &mut steps));
        found.map(|(g, with)| (g, Join { with, steps }))
    }
}

/// The result of running Linux's PCI set-up and grouping over a machine.
#[derive(Clone, Debug)]
pub struct Analysis {
    /// The tree, with the ACS controls as the kernel leaves them.
    pub topology: Topology,
    /// The platform it ran with.
    pub platform: Platform,
    /// The quirks in force per function (Linux's and the platform's).
    pub quirks: Vec<DeviceQuirks>,
    /// `pci_acs_enabled(dev, REQ_ACS_FLAGS)` per function, with reasons.
    pub acs: Vec<AcsVerdict>,
    /// The groups.
    pub groups: Groups,
}

impl Analysis {
    /// Builds the tree of `functions` and runs Linux's set-up and grouping
    /// on it: the ACS enabling (`pci_enable_acs` with the platform's
    /// kernel parameters), then `pci_device_group` for every device the
    /// IOMMU covers, in enumeration order.
    ///
    /// # Errors
    /// A [`TopologyError`] when the functions do not form a tree.
    pub fn new(functions: Vec<Function>, platform: Platform) -> Result<Analysis, TopologyError> {
        let mut topology = Topology::new(functions)?;
        enable_acs(&mut topology, &platform);
        Ok(Analysis::of(topology, platform))
    }

    /// Groups a tree whose ACS controls are already as the kernel leaves
    /// them (no [`enable_acs`] run).
    pub fn of(topology: Topology, platform: Platform) -> Analysis {
        let order = topology.enumeration_order();
        let vmds = if platform.linux_quirks {
            vmd_controllers(&topology, &order)
        } else {
            Vec::new()
        };
        let quirks: Vec<DeviceQuirks> = (0..topology.len())
            .map(|i| {
                let mut q = if platform.linux_quirks {
                    linux_device_quirks(&topology, i, &vmds)
                } else {
                    DeviceQuirks::default()
                };
                if let Some(extra) = platform.quirks.get(&topology.functions()[i].bdf) {
                    for &d in &extra.dma_aliases {
                        if !q.dma_aliases.contains(&d) {
                            q.dma_aliases.push(d);
                        }
                    }
                    q.real_dma_dev = extra.real_dma_dev.or(q.real_dma_dev);
                    q.bridge_xlate_root |= extra.bridge_xlate_root;
                    q.pcie_bridge_alias |= extra.pcie_bridge_alias;
                    q.acs_provides = extra.acs_provides;
                }
                q
            })
            .collect();
        let cx = QuirkContext {
            topo: &topology,
            amd_iommu: platform.iommu == crate::IommuKind::AmdVi,
            acs_override: &platform.params.acs_override,
            linux_quirks: platform.linux_quirks,
        };
        let acs: Vec<AcsVerdict> = (0..topology.len())
            .map(|i| acs_enabled(&cx, &quirks[i], i, REQ_ACS_FLAGS))
            .collect();
        let groups = group(&topology, &platform, &quirks, &acs, &order);
        Analysis {
            topology,
            platform,
            quirks,
            acs,
            groups,
        }
    }

    /// The group of the function at `bdf`.
    pub fn group_of(&self, bdf: Bdf) -> Option<usize> {
        self.topology.index(bdf).and_then(|i| self.groups.of[i])
    }

    /// Every requester id function `i`'s DMA may carry when it reaches the
    /// root (Linux's whole `pci_for_each_dma_alias` walk): the id of the
    /// device that issues it, its quirk aliases, and the id of each bridge
    /// on the way up that takes ownership. What an IOMMU driver programs
    /// for the device.
    pub fn dma_requester_ids(&self, i: usize) -> Vec<u16> {
        requester_ids(&self.topology, &self.quirks, i)
    }
}

/// The requester ids function `i`'s DMA may carry at the root, sorted
/// (see [`Analysis::dma_requester_ids`]).
fn requester_ids(topo: &Topology, quirks: &[DeviceQuirks], i: usize) -> Vec<u16> {
    let mut ids = requester_ids_listed(topo, quirks, i);
    ids.dedup();
    ids
}

/// The requester ids of function `i`'s DMA as Linux lists them for the
/// IOMMU (one per alias found, so possibly one id twice), sorted.
fn requester_ids_listed(topo: &Topology, quirks: &[DeviceQuirks], i: usize) -> Vec<u16> {
    let real = quirks[i]
        .real_dma_dev
        .and_then(|b| topo.index(b))
        .unwrap_or(i);
    let rf = &topo.functions()[real];
    let mut ids = alloc::vec![rf.bdf.requester_id()];
    for &devfn in &quirks[real].dma_aliases {
        ids.push(u16::from(rf.bdf.bus) << 8 | u16::from(devfn));
    }
    let mut at = real;
    while let Some(up) = topo.upstream(topo.physfn(at).unwrap_or(at)) {
        if quirks[up].bridge_xlate_root {
            break;
        }
        let b = &topo.functions()[up];
        let secondary = b.bridge.map_or(0, |x| x.secondary);
        match b.port_type() {
            Some(PortType::PcieToPciBridge) => ids.push(u16::from(secondary) << 8),
            Some(PortType::PciToPcieBridge) => ids.push(b.bdf.requester_id()),
            Some(_) => {}
            None if quirks[up].pcie_bridge_alias => ids.push(u16::from(secondary) << 8),
            None => ids.push(b.bdf.requester_id()),
        }
        at = up;
    }
    ids.sort_unstable();
    ids
}

fn group(
    topo: &Topology,
    platform: &Platform,
    quirks: &[DeviceQuirks],
    acs: &[AcsVerdict],
    order: &[usize],
) -> Groups {
    let n = topo.len();
    // Parents come before children in enumeration order, so each
    // function's path blocker follows from its upstream bridge's.
    let mut path_blocker: Vec<Option<usize>> = vec![None; n];
    let mut done = vec![false; n];
    for &i in order {
        let above = topo.upstream(topo.physfn(i).unwrap_or(i));
        let up = above.and_then(|u| {
            debug_assert!(done[u], "bridges enumerate before their buses");
            path_blocker[u]
        });
        path_blocker[i] = if acs[i].enabled() { up } else { Some(i) };
        done[i] = true;
    }
    let mut g = Grouper {
        topo,
        quirks,
        acs,
        path_blocker,
        of: vec![None; n],
    };
    let mut members: Vec<Vec<usize>> = Vec::new();
    let mut joins: Vec<Option<Join>> = vec![None; n];
    let mut refused: Vec<Option<usize>> = vec![None; n];
    // Stream ids already held, by segment and requester id (one SMMU's
    // stream ids per PCI segment: IORT maps each root complex apart).
    let mut held: BTreeMap<(u32, u16), usize> = BTreeMap::new();
    let one_master_per_stream_id = platform.iommu == IommuKind::ArmSmmu;
    for &i in order {
        if !platform.covers(&topo.functions()[i]) {
            continue;
        }
        if one_master_per_stream_id {
            let segment = topo.functions()[i].bdf.segment;
            // The ids as Linux lists them (sorted: a repeated id is
            // adjacent), then each once.
            let mut ids = requester_ids_listed(topo, quirks, i);
            if platform.kernel.arm_smmu_refuses_duplicate_stream_ids()
                && ids.windows(2).any(|w| w[0] == w[1])
            {
                // Its own stream tree already holds the id: it refused
                // itself.
                refused[i] = Some(i);
                continue;
            }
            ids.dedup();
            if let Some(&holder) = ids.iter().find_map(|&id| held.get(&(segment, id))) {
                refused[i] = Some(holder);
                continue;
            }
            for id in ids {
                held.insert((segment, id), i);
            }
        }
        let group = match g.device_group(i) {
            Some((group, join)) => {
                joins[i] = Some(join);
                group
            }
            None => {
                members.push(Vec::new());
                members.len() - 1
            }
        };
        g.of[i] = Some(group);
        members[group].push(i);
    }
    Groups {
        of: g.of,
        members,
        joins,
        refused,
    }
}

/// Groups every function of `topo` the platform's IOMMU covers, as Linux
/// 6.12 would, with the ACS controls as `topo` has them (see
/// [`Analysis::new`] for the whole set-up).
pub fn pci_groups(topo: &Topology, platform: &Platform) -> Groups {
    Analysis::of(topo.clone(), platform.clone()).groups
}
