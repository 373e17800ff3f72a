//! The ACPI IO Remapping Table (Arm DEN 0049, "IO Remapping Table
//! Platform Design Document"): on Arm machines with ACPI, which SMMU
//! translates which PCI root complex or named component, and with which
//! stream ids.
//!
//! [`Iort::parse`] reads every node (ITS groups, named components, root
//! complexes, SMMUv1/v2, SMMUv3, PMCGs, reserved memory ranges) with its ID
//! mappings, checking that each mapping lies in its node, each node in the
//! table, and each mapping's output names a node. [`Iort::pci_stream`]
//! follows a requester id from its root complex through the mappings to
//! the SMMUv3 that translates it and the stream id it arrives with, the
//! way Linux's `iort_node_map_id` does; [`Iort::rmr_ranges`] gives the
//! reserved memory ranges (RMR nodes) that must stay mapped one-to-one for
//! a stream. Any byte string parses or gets an [`IortError`] naming the
//! offset, in time and memory proportional to its length.

use crate::acpi::{u32_at, u64_at, Header, HeaderError};
use alloc::string::String;
use alloc::vec::Vec;

/// Bytes before the first node's offset field is meaningful.
const FIXED: usize = 48;
/// Bytes of a node's header.
const NODE_HEADER: usize = 16;
/// Bytes of one ID mapping.
const MAPPING: usize = 20;
/// The most mappings a lookup follows before it gives up (a loop).
const MAX_HOPS: usize = 8;

/// Why bytes are not an IORT this crate can read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IortError {
    /// The ACPI header: too short, not an IORT, a bad checksum.
    #[error("IORT: {0}")]
    Header(#[from] HeaderError),
    /// The IORT's own fields do not fit.
    #[error("IORT: {len} bytes, its header needs {FIXED}")]
    Short {
        /// The table's length.
        len: usize,
    },
    /// A node that runs past the table, is shorter than its type's fixed
    /// part, or whose ID mappings run past it.
    #[error("IORT node at {offset:#x} (type {ty}): {why}")]
    Node {
        /// Where it starts.
        offset: usize,
        /// Its type.
        ty: u8,
        /// What is wrong.
        why: &'static str,
    },
    /// An ID mapping whose output names no node.
    #[error("IORT node at {offset:#x}: mapping {index} points at {target:#x}, no node")]
    Dangling {
        /// The node.
        offset: usize,
        /// The mapping's index.
        index: usize,
        /// Where it points.
        target: u32,
    },
}

/// One ID mapping (DEN 0049 3.4): input ids `input_base..input_base +
/// count` become output ids from `output_base` at the node at offset
/// `output_node` (all to `output_base` when `single`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMapping {
    /// The first input id.
    pub input_base: u32,
    /// How many ids (the table stores this minus one).
    pub count: u64,
    /// The first output id.
    pub output_base: u32,
    /// The offset of the node the output ids belong to.
    pub output_node: u32,
    /// A single mapping: the node's own id, whatever the input.
    pub single: bool,
}

impl IdMapping {
    /// The output id of `input`, if this mapping covers it.
    pub fn map(&self, input: u32) -> Option<u32> {
        let off = u64::from(input.checked_sub(self.input_base)?);
        if off >= self.count {
            return None;
        }
        if self.single {
            return Some(self.output_base);
        }
        u32::try_from(u64::from(self.output_base) + off).ok()
    }
}

/// What a node is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// An ITS group (type 0): its ITS ids.
    ItsGroup {
        /// The ITS ids.
        its_ids: Vec<u32>,
    },
    /// A named component (type 1): a device of the ACPI namespace.
    NamedComponent {
        /// Its ACPI path, e.g. `\_SB.DEV0`.
        name: String,
    },
    /// A PCI root complex (type 2).
    RootComplex {
        /// The PCI segment it is.
        segment: u32,
        /// ATS supported.
        ats: bool,
        /// Cache-coherent (CCA).
        coherent: bool,
    },
    /// An SMMUv1 or v2 (type 3).
    Smmu {
        /// Its register base.
        base: u64,
        /// Its model.
        model: u32,
    },
    /// An SMMUv3 (type 4).
    Smmuv3 {
        /// Its register base.
        base: u64,
        /// Flags (COHACC override, HTTU override, proximity domain valid).
        flags: u32,
        /// Its model (0: generic).
        model: u32,
    },
    /// A performance monitor counter group (type 5).
    Pmcg {
        /// Its page 0 base.
        base: u64,
    },
    /// Reserved memory ranges (type 6) for the streams its mappings name.
    Rmr {
        /// Flags (remapping permitted, access privileges).
        flags: u32,
        /// The ranges: (base, length).
        ranges: Vec<(u64, u64)>,
    },
    /// A type this crate does not know, kept so offsets still resolve.
    Other(u8),
}

/// One node: where it is, what it is, its identifier and its mappings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IortNode {
    /// Its offset in the table (what mappings name).
    pub offset: u32,
    /// Its revision.
    pub revision: u8,
    /// Its identifier (unique among the table's nodes from revision E).
    pub identifier: u32,
    /// What it is.
    pub kind: NodeKind,
    /// Its ID mappings.
    pub mappings: Vec<IdMapping>,
}

/// A parsed IORT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iort {
    /// The table's header.
    pub header: Header,
    /// The nodes, in table order.
    pub nodes: Vec<IortNode>,
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    b[..end].iter().map(|&c| char::from(c)).collect()
}

impl Iort {
    /// Reads an IORT.
    ///
    /// # Errors
    /// [`IortError`], naming the offset of what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Iort, IortError> {
        let (header, t) = Header::parse(bytes, *b"IORT")?;
        if t.len() < FIXED {
            return Err(IortError::Short { len: t.len() });
        }
        let count = u32_at(t, 36) as usize;
        let mut at = u32_at(t, 40) as usize;
        // Each node takes at least its header: a count past that is a lie.
        if count > t.len() / NODE_HEADER {
            return Err(IortError::Node {
                offset: at,
                ty: 0,
                why: "more nodes than the table can hold",
            });
        }
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            let bad = |ty: u8, why| IortError::Node {
                offset: at,
                ty,
                why,
            };
            if at < FIXED || at.checked_add(NODE_HEADER).is_none_or(|e| e > t.len()) {
                return Err(bad(0, "outside the table"));
            }
            let ty = t[at];
            let len = usize::from(u16::from_le_bytes([t[at + 1], t[at + 2]]));
            if len < NODE_HEADER || at + len > t.len() {
                return Err(bad(ty, "its length runs past the table"));
            }
            let n = &t[at..at + len];
            let fixed = match ty {
                0 => 20,
                1 => 29,
                2 => 32,
                3 => 76,
                4 => 60,
                5 => 40,
                6 => 28,
                _ => NODE_HEADER,
            };
            if len < fixed {
                return Err(bad(ty, "shorter than its type's fields"));
            }
            let ids = u32_at(n, 8) as usize;
            let ids_at = u32_at(n, 12) as usize;
            if ids > 0
                && ids
                    .checked_mul(MAPPING)
                    .and_then(|b| b.checked_add(ids_at))
                    .is_none_or(|e| e > len || ids_at < NODE_HEADER)
            {
                return Err(bad(ty, "its ID mappings run past it"));
            }
            let mappings = (0..ids)
                .map(|i| {
                    let m = &n[ids_at + i * MAPPING..];
                    IdMapping {
                        input_base: u32_at(m, 0),
                        count: u64::from(u32_at(m, 4)) + 1,
                        output_base: u32_at(m, 8),
                        output_node: u32_at(m, 12),
                        single: u32_at(m, 16) & 1 != 0,
                    }
                })
                .collect();
            let kind = match ty {
                0 => {
                    let k = u32_at(n, 16) as usize;
                    if k.checked_mul(4)
                        .and_then(|b| b.checked_add(20))
                        .is_none_or(|e| e > len)
                    {
                        return Err(bad(ty, "its ITS ids run past it"));
                    }
                    NodeKind::ItsGroup {
                        its_ids: (0..k).map(|i| u32_at(n, 20 + 4 * i)).collect(),
                    }
                }
                1 => NodeKind::NamedComponent {
                    name: cstr(&n[29..]),
                },
                2 => NodeKind::RootComplex {
                    coherent: u32_at(n, 16) & 1 != 0,
                    ats: u32_at(n, 24) & 1 != 0,
                    segment: u32_at(n, 28),
                },
                3 => NodeKind::Smmu {
                    base: u64_at(n, 16),
                    model: u32_at(n, 32),
                },
                4 => NodeKind::Smmuv3 {
                    base: u64_at(n, 16),
                    flags: u32_at(n, 24),
                    model: u32_at(n, 40),
                },
                5 => NodeKind::Pmcg {
                    base: u64_at(n, 16),
                },
                6 => {
                    let k = u32_at(n, 20) as usize;
                    let r_at = u32_at(n, 24) as usize;
                    if k > 0
                        && k.checked_mul(20)
                            .and_then(|b| b.checked_add(r_at))
                            .is_none_or(|e| e > len || r_at < 28)
                    {
                        return Err(bad(ty, "its memory ranges run past it"));
                    }
                    NodeKind::Rmr {
                        flags: u32_at(n, 16),
                        ranges: (0..k)
                            .map(|i| (u64_at(n, r_at + 20 * i), u64_at(n, r_at + 20 * i + 8)))
                            .collect(),
                    }
                }
                other => NodeKind::Other(other),
            };
            nodes.push(IortNode {
                offset: at as u32,
                revision: n[3],
                identifier: u32_at(n, 4),
                kind,
                mappings,
            });
            at += len;
        }
        let iort = Iort { header, nodes };
        for n in &iort.nodes {
            for (index, m) in n.mappings.iter().enumerate() {
                if iort.node_at(m.output_node).is_none() {
                    return Err(IortError::Dangling {
                        offset: n.offset as usize,
                        index,
                        target: m.output_node,
                    });
                }
            }
        }
        Ok(iort)
    }

    /// The node at `offset`.
    pub fn node_at(&self, offset: u32) -> Option<&IortNode> {
        self.nodes.iter().find(|n| n.offset == offset)
    }

    /// The root complex of PCI segment `segment`.
    pub fn root_complex(&self, segment: u32) -> Option<&IortNode> {
        self.nodes
            .iter()
            .find(|n| matches!(n.kind, NodeKind::RootComplex { segment: s, .. } if s == segment))
    }

    /// The SMMU (v3, or v1/v2) that translates requester id `rid` of PCI
    /// segment `segment`, and the stream id its requests carry there:
    /// the root complex's mappings followed until they reach an SMMU
    /// (`None`: they end at an ITS group, or nowhere, so nothing
    /// translates the device).
    pub fn pci_stream(&self, segment: u32, rid: u32) -> Option<(u32, &IortNode)> {
        let mut node = self.root_complex(segment)?;
        let mut id = rid;
        for _ in 0..MAX_HOPS {
            let (out, next) = node
                .mappings
                .iter()
                .find_map(|m| Some((m.map(id)?, m.output_node)))?;
            let next = self.node_at(next)?;
            match next.kind {
                NodeKind::Smmuv3 { .. } | NodeKind::Smmu { .. } => return Some((out, next)),
                NodeKind::ItsGroup { .. } => return None,
                _ => {
                    node = next;
                    id = out;
                }
            }
        }
        None
    }

    /// The reserved memory ranges that must stay mapped one-to-one for
    /// stream `sid` of the SMMU at offset `smmu` (RMR nodes whose mappings
    /// name that stream).
    pub fn rmr_ranges(&self, smmu: u32, sid: u32) -> Vec<(u64, u64)> {
        self.nodes
            .iter()
            .filter_map(|n| match &n.kind {
                NodeKind::Rmr { ranges, .. }
                    if n.mappings
                        .iter()
                        .any(|m| m.output_node == smmu && covers(m, sid)) =>
                {
                    Some(ranges.iter().copied())
                }
                _ => None,
            })
            .flatten()
            .collect()
    }
}

/// Whether a mapping's outputs include `sid`.
fn covers(m: &IdMapping, sid: u32) -> bool {
    if m.single {
        return m.output_base == sid;
    }
    u64::from(sid)
        .checked_sub(u64::from(m.output_base))
        .is_some_and(|o| o < m.count)
}
