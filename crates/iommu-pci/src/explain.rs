//! Why each group is what it is, in plain words.
//!
//! For every group of more than one device, the rules that put its
//! devices together, each naming the rule and the device it comes from:
//! a bridge without an ACS path, a bridge that takes over requester ids,
//! the functions of a multifunction device without ACS, a DMA-alias quirk,
//! and any device-specific ACS answer (a Linux quirk, the ACS override)
//! that decided isolation on the group's paths.

use crate::{AcsVerdict, Analysis, Bdf, BridgeAlias, Function, PortType, Step};
use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// The rule a reason comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// A bridge without an ACS path to the root: everything below it
    /// shares its group (`pci_acs_path_enabled`).
    NoAcsPath,
    /// A bridge takes over the requester id of DMA from below it
    /// (`pci_for_each_dma_alias`).
    BridgeAlias,
    /// Functions of one multifunction device without ACS
    /// (`get_pci_function_alias_group`).
    MultifunctionWithoutAcs,
    /// Devices that use each other's requester ids
    /// (`pci_devs_are_dma_aliases`, from a DMA-alias quirk).
    DmaAlias,
    /// A device whose DMA another device issues (`pci_real_dma_dev`).
    RealDmaDevice,
    /// A device-specific ACS answer decided isolation on the way.
    AcsQuirk,
}

impl Rule {
    /// A short name, for JSON and headings.
    pub fn name(self) -> &'static str {
        match self {
            Rule::NoAcsPath => "no-acs-path",
            Rule::BridgeAlias => "bridge-alias",
            Rule::MultifunctionWithoutAcs => "multifunction-without-acs",
            Rule::DmaAlias => "dma-alias",
            Rule::RealDmaDevice => "real-dma-device",
            Rule::AcsQuirk => "acs-quirk",
        }
    }
}

/// One reason of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    /// The rule.
    pub rule: Rule,
    /// The device the rule comes from.
    pub device: Bdf,
    /// The group's devices it brings together.
    pub members: Vec<Bdf>,
    /// The reason in words.
    pub text: String,
}

/// A function's address as lspci prints it (segment 0 left out).
pub fn short_name(b: Bdf) -> String {
    if b.segment == 0 {
        format!("{:02x}:{:02x}.{:x}", b.bus, b.dev(), b.func())
    } else {
        format!("{b}")
    }
}

/// What kind of device `f` is, in words: its port type, or conventional.
fn kind(f: &Function) -> String {
    match f.port_type() {
        Some(PortType::Endpoint) if f.bridge.is_none() => String::from("endpoint"),
        Some(p) => format!("{p}"),
        None if f.bridge.is_some() => String::from("conventional PCI bridge"),
        None => String::from("conventional PCI device"),
    }
}

fn list(v: &[Bdf]) -> String {
    v.iter()
        .map(|&b| short_name(b))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Analysis {
    fn name(&self, i: usize) -> String {
        short_name(self.topology.functions()[i].bdf)
    }

    fn named(&self, i: usize) -> String {
        let f = &self.topology.functions()[i];
        format!("{} ({})", short_name(f.bdf), kind(f))
    }

    /// Whether function `i` sits somewhere below bridge `b`.
    fn below(&self, mut i: usize, b: usize) -> bool {
        loop {
            let base = self.topology.physfn(i).unwrap_or(i);
            match self.topology.upstream(base) {
                Some(up) if up == b => return true,
                Some(up) => i = up,
                None => return false,
            }
        }
    }

    /// Why group `g` holds its devices: one reason per rule and device,
    /// in the order the group's devices met them; nothing for a group of
    /// one device.
    pub fn explain_group(&self, g: usize) -> Vec<Reason> {
        let Some(members) = self.groups.members.get(g).filter(|m| m.len() > 1) else {
            return Vec::new();
        };
        let bdf = |i: usize| self.topology.functions()[i].bdf;
        let mut out: Vec<Reason> = Vec::new();
        let mut seen: BTreeSet<(Rule, usize, usize)> = BTreeSet::new();
        let mut push = |out: &mut Vec<Reason>, key: (Rule, usize, usize), r: Reason| {
            if seen.insert(key) {
                out.push(r);
            } else if let Some(prev) = out
                .iter_mut()
                .find(|p| p.rule == r.rule && p.device == r.device && p.text == r.text)
            {
                for m in r.members {
                    if !prev.members.contains(&m) {
                        prev.members.push(m);
                    }
                }
            }
        };
        for &m in members {
            let Some(join) = &self.groups.joins[m] else {
                continue;
            };
            for step in &join.steps {
                match *step {
                    Step::NoAcsPath {
                        bridge,
                        blocker,
                        verdict,
                        ..
                    } => {
                        let mut below: Vec<Bdf> = members
                            .iter()
                            .copied()
                            .filter(|&x| self.below(x, bridge))
                            .map(bdf)
                            .collect();
                        below.sort();
                        let text = if blocker == bridge {
                            format!(
                                "{} {verdict}, so everything below it shares a group: {}",
                                self.named(bridge),
                                list(&below)
                            )
                        } else {
                            format!(
                                "{} has no ACS path to the root: {} above it {verdict}, so everything below {} shares a group: {}",
                                self.named(bridge),
                                self.named(blocker),
                                self.name(bridge),
                                list(&below)
                            )
                        };
                        let mut all = below.clone();
                        all.push(bdf(bridge));
                        push(
                            &mut out,
                            (Rule::NoAcsPath, bridge, blocker),
                            Reason {
                                rule: Rule::NoAcsPath,
                                device: bdf(blocker),
                                members: all,
                                text,
                            },
                        );
                    }
                    Step::BridgeAlias { dev, bridge, kind } => {
                        let how = match kind {
                            BridgeAlias::PcieToPci => "a PCIe-to-PCI bridge",
                            BridgeAlias::PciToPcie => "a PCI-to-PCIe bridge",
                            BridgeAlias::Conventional => "a conventional PCI bridge",
                            BridgeAlias::QuirkPcieBridge => {
                                "a bridge Linux's quirk_use_pcie_bridge_dma_alias treats as PCIe-to-PCI"
                            }
                        };
                        let text = format!(
                            "{} is behind {how}, {}, and DMA appears to come from {}",
                            self.name(dev),
                            self.name(bridge),
                            self.name(bridge)
                        );
                        push(
                            &mut out,
                            (Rule::BridgeAlias, dev, bridge),
                            Reason {
                                rule: Rule::BridgeAlias,
                                device: bdf(bridge),
                                members: alloc::vec![bdf(dev), bdf(bridge)],
                                text,
                            },
                        );
                    }
                    Step::SameSlot { from, to, verdict } => {
                        let (a, b) = (from.min(to), from.max(to));
                        let text = format!(
                            "{} and {} are functions of one multifunction device without ACS ({} {verdict})",
                            self.name(a),
                            self.name(b),
                            self.name(from)
                        );
                        push(
                            &mut out,
                            (Rule::MultifunctionWithoutAcs, a, b),
                            Reason {
                                rule: Rule::MultifunctionWithoutAcs,
                                device: bdf(from),
                                members: alloc::vec![bdf(a), bdf(b)],
                                text,
                            },
                        );
                    }
                    Step::DmaAlias { from, to } => {
                        let (a, b) = (from.min(to), from.max(to));
                        let source = [a, b]
                            .iter()
                            .find_map(|&x| self.quirks[x].alias_quirk.map(|q| (x, q)));
                        let text = match source {
                            Some((x, q)) => {
                                let f = &self.topology.functions()[x];
                                format!(
                                    "{} and {} use each other's requester ids: Linux's {} for {:04x}:{:04x}",
                                    self.name(a),
                                    self.name(b),
                                    q.linux_name(),
                                    f.vendor,
                                    f.device
                                )
                            }
                            None => format!(
                                "{} and {} use each other's requester ids (a DMA alias the platform declares)",
                                self.name(a),
                                self.name(b)
                            ),
                        };
                        push(
                            &mut out,
                            (Rule::DmaAlias, a, b),
                            Reason {
                                rule: Rule::DmaAlias,
                                device: bdf(source.map_or(a, |(x, _)| x)),
                                members: alloc::vec![bdf(a), bdf(b)],
                                text,
                            },
                        );
                    }
                    Step::RealDmaDev { dev, real } => {
                        let text = format!(
                            "{}'s DMA is issued by {} (pci_real_dma_dev: a VMD controller or a declared alias)",
                            self.name(dev),
                            self.name(real)
                        );
                        push(
                            &mut out,
                            (Rule::RealDmaDevice, dev, real),
                            Reason {
                                rule: Rule::RealDmaDevice,
                                device: bdf(real),
                                members: alloc::vec![bdf(dev), bdf(real)],
                                text,
                            },
                        );
                    }
                }
            }
        }
        // ACS answers that did not come from the registers, on the
        // members and the bridges above them.
        let mut quirked: BTreeSet<usize> = BTreeSet::new();
        for &m in members {
            let mut at = Some(m);
            while let Some(i) = at {
                if matches!(
                    self.acs[i],
                    AcsVerdict::Quirk { .. } | AcsVerdict::Declared { .. }
                ) {
                    quirked.insert(i);
                }
                at = self.topology.upstream(self.topology.physfn(i).unwrap_or(i));
            }
        }
        for i in quirked {
            let f = &self.topology.functions()[i];
            let text = match self.acs[i] {
                AcsVerdict::Quirk {
                    quirk: crate::AcsQuirk::Override,
                    enabled,
                } => format!(
                    "pcie_acs_override {} {} ({:04x}:{:04x})",
                    if enabled {
                        "declares"
                    } else {
                        "does not declare"
                    },
                    self.named(i),
                    f.vendor,
                    f.device
                ),
                AcsVerdict::Quirk { quirk, enabled } => format!(
                    "the quirk for {:04x}:{:04x} ({}) says {}'s ACS is {}",
                    f.vendor,
                    f.device,
                    quirk.linux_name(),
                    self.name(i),
                    if enabled {
                        "effective"
                    } else {
                        "not effective"
                    }
                ),
                v => format!("{} {v}", self.named(i)),
            };
            out.push(Reason {
                rule: Rule::AcsQuirk,
                device: f.bdf,
                members: alloc::vec![f.bdf],
                text,
            });
        }
        for r in &mut out {
            r.members.sort();
            r.members.dedup();
        }
        out
    }
}

/// A function that has no group, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ungrouped {
    /// The function.
    pub device: Bdf,
    /// The function whose stream id it would share, when the IOMMU driver
    /// refused it for that.
    pub clashes_with: Option<Bdf>,
    /// Why, in words.
    pub text: String,
}

impl Analysis {
    /// Every function without a group, in address order, with why: the
    /// IOMMU does not translate it, or (arm-smmu-v3) the driver refused it
    /// because a stream id of its DMA is already another device's.
    pub fn ungrouped(&self) -> Vec<Ungrouped> {
        let topo = &self.topology;
        let mut out: Vec<Ungrouped> = Vec::new();
        for (i, f) in topo.functions().iter().enumerate() {
            if self.groups.of[i].is_some() {
                continue;
            }
            let (clashes_with, text) = match self.groups.refused[i] {
                Some(holder) if holder == i => (
                    None,
                    format!(
                        "{}'s DMA carries one requester id twice (its own, and a bridge's alias), \
                         and arm-smmu-v3 before Linux 6.12 (`--kernel {}`) put the second copy in \
                         its stream tree beside the first and refused the device (`stream already \
                         in tree`): it has no group (the fix, in 6.15 and the 6.12 stable series, \
                         groups it with the bridge)",
                        self.name(i),
                        self.platform.kernel
                    ),
                ),
                Some(holder) => {
                    let theirs = self.dma_requester_ids(holder);
                    let shared = self
                        .dma_requester_ids(i)
                        .into_iter()
                        .find(|id| theirs.contains(id))
                        .map(|id| short_name(Bdf::from_requester_id(f.bdf.segment, id)))
                        .unwrap_or_default();
                    (
                        Some(topo.functions()[holder].bdf),
                        format!(
                            "{}'s DMA carries requester id {shared}, already the stream id of {}, \
                             and arm-smmu-v3 takes one master per stream id, so it refuses {} \
                             (`stream already in tree`) and the device has no group",
                            self.name(i),
                            self.name(holder),
                            self.name(i)
                        ),
                    )
                }
                None => (
                    None,
                    match self.platform.iommu.why_not_covered(f) {
                        Some(why) => format!("{why}: {}", self.name(i)),
                        None => format!(
                            "{} is outside the IOMMU's scope (as the platform declares)",
                            self.name(i)
                        ),
                    },
                ),
            };
            out.push(Ungrouped {
                device: f.bdf,
                clashes_with,
                text,
            });
        }
        out.sort_by_key(|u| u.device);
        out
    }
}
