//! The PCI tree the functions form: which bridge each bus hangs from.
//!
//! Linux learns the tree by scanning; a dump only lists functions, so the
//! tree is rebuilt from the bridges' bus numbers: the function on bus `b`
//! sits behind the bridge whose secondary bus is `b` (Linux's
//! `bus->self`), and a bus no bridge claims is a root bus of its segment.
//! Bus numbers that contradict each other are refused.

use crate::{Bdf, Function};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

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
}

/// Functions and the tree they form, in Linux's enumeration order.
#[derive(Clone, Debug)]
pub struct Topology {
    functions: Vec<Function>,
    by_bdf: BTreeMap<Bdf, usize>,
    /// The bridge each function's bus hangs from (`bus->self`).
    upstream: Vec<Option<usize>>,
    /// The bridge whose secondary bus is `(segment, bus)`.
    bus_self: BTreeMap<(u16, u8), usize>,
}

impl Topology {
    /// The tree of `functions`.
    ///
    /// # Errors
    /// A [`TopologyError`] for a repeated address or bus numbers that
    /// contradict each other; nothing is built then.
    pub fn new(mut functions: Vec<Function>) -> Result<Topology, TopologyError> {
        functions.sort_by_key(|f| f.bdf);
        let mut by_bdf = BTreeMap::new();
        let mut bus_self: BTreeMap<(u16, u8), usize> = BTreeMap::new();
        for (i, f) in functions.iter().enumerate() {
            if by_bdf.insert(f.bdf, i).is_some() {
                return Err(TopologyError::Duplicate(f.bdf));
            }
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
        let upstream: Vec<Option<usize>> = functions
            .iter()
            .map(|f| bus_self.get(&(f.bdf.segment, f.bdf.bus)).copied())
            .collect();
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
        Ok(Topology {
            functions,
            by_bdf,
            upstream,
            bus_self,
        })
    }

    /// Every function, by address.
    pub fn functions(&self) -> &[Function] {
        &self.functions
    }

    /// The function at `bdf`.
    pub fn get(&self, bdf: Bdf) -> Option<&Function> {
        self.by_bdf.get(&bdf).map(|&i| &self.functions[i])
    }

    /// Index of `bdf` in [`functions`](Self::functions).
    pub fn index(&self, bdf: Bdf) -> Option<usize> {
        self.by_bdf.get(&bdf).copied()
    }

    /// The bridge the bus of function `i` hangs from, or `None` on a root
    /// bus (Linux's `pdev->bus->self`).
    pub fn upstream(&self, i: usize) -> Option<usize> {
        self.upstream[i]
    }

    /// The bridge whose secondary bus is `bus` of `segment`.
    pub fn bridge_to(&self, segment: u16, bus: u8) -> Option<usize> {
        self.bus_self.get(&(segment, bus)).copied()
    }

    /// The functions on the bus of function `i` (itself included).
    pub fn same_bus(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        let b = self.functions[i].bdf;
        self.functions
            .iter()
            .enumerate()
            .filter(move |(_, f)| f.bdf.segment == b.segment && f.bdf.bus == b.bus)
            .map(|(j, _)| j)
    }

    /// Linux's order of adding devices: per segment, a bus's functions in
    /// address order, then the buses behind each of its bridges in turn.
    pub fn enumeration_order(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.functions.len());
        let mut roots: Vec<(u16, u8)> = self
            .functions
            .iter()
            .enumerate()
            .filter(|&(i, _)| self.upstream[i].is_none())
            .map(|(_, f)| (f.bdf.segment, f.bdf.bus))
            .collect();
        roots.dedup();
        for (seg, bus) in roots {
            self.enumerate_bus(seg, bus, &mut out);
        }
        out
    }

    fn enumerate_bus(&self, seg: u16, bus: u8, out: &mut Vec<usize>) {
        let on_bus: Vec<usize> = self
            .functions
            .iter()
            .enumerate()
            .filter(|(_, f)| f.bdf.segment == seg && f.bdf.bus == bus)
            .map(|(i, _)| i)
            .collect();
        out.extend(&on_bus);
        for i in on_bus {
            if let Some(b) = self.functions[i].bridge {
                // Bus numbers strictly grow downwards, so this ends.
                if b.secondary > bus {
                    self.enumerate_bus(seg, b.secondary, out);
                }
            }
        }
    }
}
