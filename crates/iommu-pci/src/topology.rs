//! The PCI tree the functions form, and what Linux keeps per `pci_dev`
//! beyond configuration space.
//!
//! Linux learns the tree by scanning; a dump only lists functions, so the
//! tree is rebuilt from the bridges' bus numbers: the function on bus `b`
//! sits behind the bridge whose secondary bus is `b` (Linux's
//! `bus->self`), and a bus no bridge claims is a root bus of its segment.
//! SR-IOV virtual functions are found from their physical function's
//! SR-IOV capability; they hang from the PF's bus (Linux puts them on the
//! PF's bus or on a virtual bus without a bridge, which the grouping walk
//! skips). Bus numbers that contradict each other are refused.
//!
//! Functions are kept sorted by address, so the functions of one bus are
//! one run of the list: every walk here is linear or `log n` per step.

use crate::{Bdf, Function, PortType};
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

/// Why a set of functions is not a PCI tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// The same address twice.
    #[error("{0}: listed twice")]
    Duplicate(Bdf),
    /// Two bridges claim the same secondary bus.
    #[error("{first} and {second} both claim bus {bus:#04x} as their secondary bus")]
    BusClaimedTwice {
        /// The bridge seen first.
        first: Bdf,
        /// The other one.
        second: Bdf,
        /// The bus.
        bus: u8,
    },
    /// A bridge whose primary bus register is not the bus it sits on.
    #[error("{bridge}: primary bus {primary:#04x} is not the bus the bridge sits on")]
    WrongPrimary {
        /// The bridge.
        bridge: Bdf,
        /// Its primary bus register.
        primary: u8,
    },
    /// A bridge whose buses are not inside those of the bridge above it.
    #[error(
        "{bridge}: buses {secondary:#04x}..={subordinate:#04x} are not inside those of {parent}"
    )]
    OutsideParent {
        /// The bridge.
        bridge: Bdf,
        /// Its secondary bus.
        secondary: u8,
        /// Its subordinate bus.
        subordinate: u8,
        /// The bridge above it.
        parent: Bdf,
    },
    /// A function two physical functions' SR-IOV capabilities both name
    /// as one of their virtual functions.
    #[error("{vf} is a virtual function of both {first} and {second}")]
    VfClaimedTwice {
        /// The virtual function.
        vf: Bdf,
        /// The PF seen first.
        first: Bdf,
        /// The other one.
        second: Bdf,
    },
    /// A virtual function on a bus a bridge claims, other than its PF's.
    #[error("{vf}: a virtual function of {pf} on bus {bus:#04x}, which bridge {bridge} claims")]
    VfBehindBridge {
        /// The virtual function.
        vf: Bdf,
        /// Its physical function.
        pf: Bdf,
        /// Its bus.
        bus: u8,
        /// The bridge whose secondary bus that is.
        bridge: Bdf,
    },
}

/// Flags Linux keeps in `pci_dev->dev_flags` that grouping reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevFlags {
    /// `PCI_DEV_FLAGS_ACS_ENABLED_QUIRK`: the Intel PCH root-port quirk
    /// switched the chipset's peer decodes off, so the port isolates.
    pub acs_enabled_quirk: bool,
}

/// Functions and the tree they form: Linux's list of `pci_dev`s.
#[derive(Clone, Debug)]
pub struct Topology {
    functions: Vec<Function>,
    by_bdf: BTreeMap<Bdf, usize>,
    /// The functions of each bus, by `(segment, bus)`.
    buses: BTreeMap<(u32, u8), Range<usize>>,
    /// The bridge each function's bus hangs from (`bus->self`, skipping
    /// the virtual buses of VFs).
    upstream: Vec<Option<usize>>,
    /// The bridge whose secondary bus is `(segment, bus)`.
    bus_self: BTreeMap<(u32, u8), usize>,
    /// The physical function of each virtual function.
    physfn: Vec<Option<usize>>,
    /// Linux's `pdev->multifunction`.
    multifunction: Vec<bool>,
    /// Linux's `pdev->dev_flags`, as the kernel's set-up leaves them.
    dev_flags: Vec<DevFlags>,
}

impl Topology {
    /// The tree of `functions`.
    ///
    /// # Errors
    /// A [`TopologyError`] for a repeated address, bus numbers that
    /// contradict each other, or a virtual function claimed twice; nothing
    /// is built then.
    pub fn new(mut functions: Vec<Function>) -> Result<Topology, TopologyError> {
        functions.sort_by_key(|f| f.bdf);
        let n = functions.len();
        let mut by_bdf = BTreeMap::new();
        let mut bus_self: BTreeMap<(u32, u8), usize> = BTreeMap::new();
        let mut buses: BTreeMap<(u32, u8), Range<usize>> = BTreeMap::new();
        for (i, f) in functions.iter().enumerate() {
            if by_bdf.insert(f.bdf, i).is_some() {
                return Err(TopologyError::Duplicate(f.bdf));
            }
            buses
                .entry((f.bdf.segment, f.bdf.bus))
                .and_modify(|r| r.end = i + 1)
                .or_insert(i..i + 1);
            if let Some(b) = f.bridge {
                if b.primary != f.bdf.bus {
                    return Err(TopologyError::WrongPrimary {
                        bridge: f.bdf,
                        primary: b.primary,
                    });
                }
                if let Some(&first) = bus_self.get(&(f.bdf.segment, b.secondary)) {
                    return Err(TopologyError::BusClaimedTwice {
                        first: functions[first].bdf,
                        second: f.bdf,
                        bus: b.secondary,
                    });
                }
                bus_self.insert((f.bdf.segment, b.secondary), i);
            }
        }
        let physfn = find_vfs(&functions, &by_bdf)?;
        let mut upstream: Vec<Option<usize>> = functions
            .iter()
            .map(|f| bus_self.get(&(f.bdf.segment, f.bdf.bus)).copied())
            .collect();
        for vf in 0..n {
            let Some(pf) = physfn[vf] else { continue };
            let (pfb, vfb) = (functions[pf].bdf, functions[vf].bdf);
            if vfb.bus != pfb.bus {
                if let Some(&bridge) = bus_self.get(&(vfb.segment, vfb.bus)) {
                    return Err(TopologyError::VfBehindBridge {
                        vf: vfb,
                        pf: pfb,
                        bus: vfb.bus,
                        bridge: functions[bridge].bdf,
                    });
                }
            }
            upstream[vf] = bus_self.get(&(pfb.segment, pfb.bus)).copied();
        }
        for (i, f) in functions.iter().enumerate() {
            let (Some(b), Some(p)) = (f.bridge, upstream[i]) else {
                continue;
            };
            let pb = functions[p].bridge.expect("an upstream bridge has buses");
            if !(pb.contains(b.secondary) && pb.contains(b.subordinate)) {
                return Err(TopologyError::OutsideParent {
                    bridge: f.bdf,
                    secondary: b.secondary,
                    subordinate: b.subordinate,
                    parent: functions[p].bdf,
                });
            }
        }
        let multifunction = (0..n)
            .map(|i| linux_multifunction(&functions, &buses, &bus_self, &physfn, i))
            .collect();
        Ok(Topology {
            functions,
            by_bdf,
            buses,
            upstream,
            bus_self,
            physfn,
            multifunction,
            dev_flags: vec![DevFlags::default(); n],
        })
    }

    /// Every function, by address.
    pub fn functions(&self) -> &[Function] {
        &self.functions
    }

    /// The function at index `i`, to change its registers (what the
    /// kernel's ACS set-up does).
    pub fn function_mut(&mut self, i: usize) -> &mut Function {
        &mut self.functions[i]
    }

    /// The function at `bdf`.
    pub fn get(&self, bdf: Bdf) -> Option<&Function> {
        self.by_bdf.get(&bdf).map(|&i| &self.functions[i])
    }

    /// Index of `bdf` in [`functions`](Self::functions).
    pub fn index(&self, bdf: Bdf) -> Option<usize> {
        self.by_bdf.get(&bdf).copied()
    }

    /// How many functions there are.
    pub fn len(&self) -> usize {
        self.functions.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }

    /// The bridge the bus of function `i` hangs from, or `None` on a root
    /// bus (Linux's `pdev->bus->self`, virtual buses skipped).
    pub fn upstream(&self, i: usize) -> Option<usize> {
        self.upstream[i]
    }

    /// Whether function `i` sits on a root bus (`pci_is_root_bus`).
    pub fn on_root_bus(&self, i: usize) -> bool {
        self.upstream[i].is_none() && self.physfn[i].is_none()
    }

    /// The bridge whose secondary bus is `bus` of `segment`.
    pub fn bridge_to(&self, segment: u32, bus: u8) -> Option<usize> {
        self.bus_self.get(&(segment, bus)).copied()
    }

    /// The physical function of `i`, if `i` is a virtual function.
    pub fn physfn(&self, i: usize) -> Option<usize> {
        self.physfn[i]
    }

    /// Linux's `pdev->multifunction`: the header's bit, or any function
    /// found after the first of its slot (Linux sets the flag on those
    /// when it scans them); never for a virtual function.
    pub fn multifunction(&self, i: usize) -> bool {
        self.multifunction[i]
    }

    /// The kernel's flags for function `i`.
    pub fn dev_flags(&self, i: usize) -> DevFlags {
        self.dev_flags[i]
    }

    /// Sets the kernel's flags for function `i`.
    pub fn set_dev_flags(&mut self, i: usize, flags: DevFlags) {
        self.dev_flags[i] = flags;
    }

    /// The functions on the bus of function `i` (itself included), in
    /// address order.
    pub fn same_bus(&self, i: usize) -> Range<usize> {
        let b = self.functions[i].bdf;
        self.buses
            .get(&(b.segment, b.bus))
            .cloned()
            .unwrap_or(i..i + 1)
    }

    /// The function at `devfn` on the bus of function `i`.
    pub fn on_same_bus(&self, i: usize, devfn: u8) -> Option<usize> {
        let b = self.functions[i].bdf;
        self.index(Bdf { devfn, ..b })
    }

    /// Linux's order of adding devices: per root bus, a bus's functions in
    /// address order, then the buses behind each of its bridges in turn;
    /// virtual functions last (they appear when their PF's driver enables
    /// SR-IOV), in their PF's order.
    pub fn enumeration_order(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.functions.len());
        for (&(seg, bus), range) in &self.buses {
            let root = range
                .clone()
                .any(|i| self.upstream[i].is_none() && self.physfn[i].is_none());
            if root {
                self.enumerate_bus(seg, bus, &mut out);
            }
        }
        let mut pos = vec![usize::MAX; self.functions.len()];
        for (k, &i) in out.iter().enumerate() {
            pos[i] = k;
        }
        // Every function is reached from a root bus (bus numbers grow
        // downwards); this keeps any that were not, in address order.
        for (i, p) in pos.iter_mut().enumerate() {
            if *p == usize::MAX && self.physfn[i].is_none() {
                *p = out.len();
                out.push(i);
            }
        }
        let mut vfs: Vec<(usize, usize)> = Vec::new();
        for i in 0..self.functions.len() {
            if let Some(pf) = self.physfn[i] {
                vfs.push((pos[pf], i));
            }
        }
        vfs.sort_unstable();
        out.extend(vfs.into_iter().map(|(_, i)| i));
        out
    }

    fn enumerate_bus(&self, seg: u32, bus: u8, out: &mut Vec<usize>) {
        let Some(range) = self.buses.get(&(seg, bus)) else {
            return;
        };
        let start = out.len();
        out.extend(range.clone().filter(|&i| self.physfn[i].is_none()));
        let end = out.len();
        for k in start..end {
            if let Some(b) = self.functions[out[k]].bridge {
                // Bus numbers strictly grow downwards, so this ends.
                if b.secondary > bus {
                    self.enumerate_bus(seg, b.secondary, out);
                }
            }
        }
    }
}

/// Marks each function some physical function's SR-IOV capability names
/// as a virtual function. Only the functions present are looked at, so a
/// hostile VF count costs nothing.
fn find_vfs(
    functions: &[Function],
    by_bdf: &BTreeMap<Bdf, usize>,
) -> Result<Vec<Option<usize>>, TopologyError> {
    let mut physfn: Vec<Option<usize>> = vec![None; functions.len()];
    for (pf, f) in functions.iter().enumerate() {
        let Some(iov) = f.sriov else { continue };
        if !iov.vf_enable || iov.num_vfs == 0 {
            continue;
        }
        let rid = f.bdf.requester_id();
        let Some(first) = iov.vf_requester_id(rid, 0) else {
            continue;
        };
        let stride = u32::from(iov.vf_stride);
        let last = if stride == 0 {
            u32::from(first)
        } else {
            (u32::from(first) + (u32::from(iov.num_vfs) - 1) * stride).min(0xffff)
        };
        let lo = Bdf::from_requester_id(f.bdf.segment, first);
        let hi = Bdf::from_requester_id(f.bdf.segment, last as u16);
        for (&bdf, &vf) in by_bdf.range(lo..=hi) {
            let off = u32::from(bdf.requester_id()) - u32::from(first);
            if vf == pf || (stride == 0 && off != 0) || (stride != 0 && off % stride != 0) {
                continue;
            }
            // A VF has a type 0 header; a bridge listed there is not one.
            if functions[vf].header_type != crate::HeaderType::Normal {
                continue;
            }
            if let Some(other) = physfn[vf] {
                return Err(TopologyError::VfClaimedTwice {
                    vf: bdf,
                    first: functions[other].bdf,
                    second: f.bdf,
                });
            }
            physfn[vf] = Some(pf);
        }
    }
    Ok(physfn)
}

/// Linux's `pdev->multifunction` for function `i` (see
/// [`Topology::multifunction`]). With ARI, every function after the
/// first of the device counts, whatever its device number.
fn linux_multifunction(
    functions: &[Function],
    buses: &BTreeMap<(u32, u8), Range<usize>>,
    bus_self: &BTreeMap<(u32, u8), usize>,
    physfn: &[Option<usize>],
    i: usize,
) -> bool {
    if physfn[i].is_some() {
        return false;
    }
    let f = &functions[i];
    if f.multifunction || f.bdf.func() != 0 {
        return true;
    }
    if f.bdf.devfn == 0 {
        return false;
    }
    // An ARI device: function 0 of the bus has ARI and sits below a port
    // that forwards ARI (Linux turns forwarding on when it sees ARI there).
    let key = (f.bdf.segment, f.bdf.bus);
    let first = buses.get(&key).map(|r| &functions[r.start]);
    let below_port = bus_self.get(&key).is_some_and(|&b| {
        matches!(
            functions[b].port_type(),
            Some(PortType::RootPort | PortType::DownstreamPort)
        )
    });
    below_port && first.is_some_and(|z| z.bdf.devfn == 0 && z.ari.is_some())
}
