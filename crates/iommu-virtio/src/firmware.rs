//! How a guest finds the virtio-iommu and the endpoints behind it: the
//! ACPI VIOT table (Virtual I/O Translation table) and the device-tree
//! properties, built by the VMM and read back.
//!
//! A guest's virtio-iommu driver only translates the endpoints the
//! firmware says it translates. On ACPI machines that is the VIOT: nodes
//! for the IOMMU (a virtio-pci function, or a virtio-mmio device) and for
//! the endpoints (ranges of PCI requester ids, or single MMIO devices),
//! each endpoint node naming its IOMMU and the endpoint ID the guest then
//! uses in ATTACH, MAP and PROBE requests. On device-tree machines the PCI
//! host bridge's `iommu-map` maps requester ids to the IOMMU node and the
//! endpoint IDs, and an MMIO device's `iommus` names its IOMMU and ID; the
//! IOMMU node has `#iommu-cells = <1>`.
//!
//! ```
//! use iommu_virtio::firmware::{Viot, ViotNode};
//!
//! // A virtio-iommu at 00:03.0 translating every other function of
//! // segment 0 (endpoint ID = requester id), as QEMU lays it out.
//! let mut viot = Viot::new();
//! let iommu = viot.virtio_iommu_pci(0, 0x0018);
//! viot.pci_range(0, 0x0000, 0x0017, 0x0000, iommu).unwrap();
//! viot.pci_range(0, 0x0019, 0xffff, 0x0019, iommu).unwrap();
//! let bytes = viot.to_bytes(*b"IOMMRS", *b"IOMMURS ", 1);
//! assert_eq!(&bytes[..4], b"VIOT");
//! assert_eq!(bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0, "checksum");
//!
//! // What a guest reads back: the IOMMU and the two ranges.
//! let parsed = Viot::parse(&bytes).unwrap();
//! assert_eq!(parsed, viot);
//! assert!(matches!(parsed.nodes()[0], ViotNode::VirtioIommuPci { segment: 0, bdf: 0x18 }));
//! // Which endpoint ID 00:02.0 (requester id 0x10) has, and where.
//! assert_eq!(parsed.pci_endpoint(0, 0x10), Some((0x10, iommu)));
//! assert_eq!(parsed.iommu_node(iommu), Some(&ViotNode::VirtioIommuPci { segment: 0, bdf: 0x18 }));
//! assert_eq!(parsed.pci_endpoint(0, 0x18), None, "the IOMMU does not translate itself");
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// The ACPI table header's length.
const HEADER: usize = 36;
/// Where the first node starts: the header, the node count and offset,
/// and 8 reserved bytes.
const FIRST_NODE: usize = HEADER + 12;
/// The most nodes a table may hold: the node count is 16 bits, and a
/// table longer than this is no firmware's.
pub const MAX_NODES: usize = 1024;

const PCI_RANGE: u8 = 1;
const MMIO: u8 = 2;
const VIRTIO_IOMMU_PCI: u8 = 3;
const VIRTIO_IOMMU_MMIO: u8 = 4;

/// An IOMMU node of a [`Viot`], by its index among the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuRef(usize);

/// One node of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViotNode {
    /// PCI functions `bdf_start..=bdf_end` of segments
    /// `segment_start..=segment_end`, translated by `iommu` with endpoint
    /// IDs counted up from `endpoint_start`.
    PciRange {
        /// First endpoint ID.
        endpoint_start: u32,
        /// First and last PCI segment.
        segment_start: u16,
        /// Last PCI segment.
        segment_end: u16,
        /// First requester id (bus << 8 | devfn).
        bdf_start: u16,
        /// Last requester id.
        bdf_end: u16,
        /// The IOMMU.
        iommu: IommuRef,
    },
    /// One MMIO device at `base_address`, endpoint ID `endpoint`.
    Mmio {
        /// Its endpoint ID.
        endpoint: u32,
        /// Its MMIO base address.
        base_address: u64,
        /// The IOMMU.
        iommu: IommuRef,
    },
    /// A virtio-iommu that is the PCI function `bdf` of `segment`.
    VirtioIommuPci {
        /// Its PCI segment.
        segment: u16,
        /// Its requester id.
        bdf: u16,
    },
    /// A virtio-mmio virtio-iommu at `base_address`.
    VirtioIommuMmio {
        /// Its MMIO base address.
        base_address: u64,
    },
}

impl ViotNode {
    fn length(&self) -> usize {
        match self {
            ViotNode::PciRange { .. } | ViotNode::Mmio { .. } => 24,
            ViotNode::VirtioIommuPci { .. } | ViotNode::VirtioIommuMmio { .. } => 16,
        }
    }

    fn is_iommu(&self) -> bool {
        matches!(
            self,
            ViotNode::VirtioIommuPci { .. } | ViotNode::VirtioIommuMmio { .. }
        )
    }
}

/// Why a VIOT is refused: what a guest's parser would stumble on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViotError {
    /// Shorter than its header, or than its `Length` field says, or its
    /// `Length` beyond the bytes given.
    Truncated {
        /// The bytes the table needs.
        need: usize,
        /// The bytes there are.
        have: usize,
    },
    /// Not a VIOT (the signature).
    Signature([u8; 4]),
    /// The bytes do not sum to zero.
    Checksum,
    /// The node count or offset points outside the table, or the count is
    /// past [`MAX_NODES`].
    NodeTable(String),
    /// A node that is malformed: at `offset`, why.
    Node {
        /// Where it starts.
        offset: usize,
        /// What is wrong.
        why: String,
    },
    /// A builder call that makes no table: why.
    Invalid(String),
}

impl fmt::Display for ViotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ViotError::Truncated { need, have } => {
                write!(f, "VIOT truncated: {need} bytes needed, {have} given")
            }
            ViotError::Signature(s) => write!(f, "not a VIOT: signature {s:02x?}"),
            ViotError::Checksum => f.write_str("VIOT checksum: the bytes do not sum to zero"),
            ViotError::NodeTable(why) => write!(f, "VIOT node table: {why}"),
            ViotError::Node { offset, why } => write!(f, "VIOT node at {offset:#x}: {why}"),
            ViotError::Invalid(why) => write!(f, "VIOT: {why}"),
        }
    }
}

/// A VIOT: built by a VMM for its guest, or parsed from a guest's firmware.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Viot {
    nodes: Vec<ViotNode>,
}

impl Viot {
    /// A table without nodes.
    pub fn new() -> Viot {
        Viot::default()
    }

    /// The nodes, in table order.
    pub fn nodes(&self) -> &[ViotNode] {
        &self.nodes
    }

    fn push(&mut self, node: ViotNode) -> Result<usize, ViotError> {
        if self.nodes.len() >= MAX_NODES {
            return Err(ViotError::Invalid(format!("more than {MAX_NODES} nodes")));
        }
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    fn iommu(&self, r: IommuRef) -> Result<(), ViotError> {
        match self.nodes.get(r.0) {
            Some(n) if n.is_iommu() => Ok(()),
            _ => Err(ViotError::Invalid(format!("node {} is not an IOMMU", r.0))),
        }
    }

    /// Adds a virtio-iommu that is PCI function `bdf` of `segment`.
    ///
    /// # Panics
    /// Past [`MAX_NODES`] nodes.
    pub fn virtio_iommu_pci(&mut self, segment: u16, bdf: u16) -> IommuRef {
        IommuRef(
            self.push(ViotNode::VirtioIommuPci { segment, bdf })
                .expect("a VIOT holds at most MAX_NODES nodes"),
        )
    }

    /// Adds a virtio-mmio virtio-iommu at `base_address`.
    ///
    /// # Panics
    /// Past [`MAX_NODES`] nodes.
    pub fn virtio_iommu_mmio(&mut self, base_address: u64) -> IommuRef {
        IommuRef(
            self.push(ViotNode::VirtioIommuMmio { base_address })
                .expect("a VIOT holds at most MAX_NODES nodes"),
        )
    }

    /// Adds the PCI functions `bdf_start..=bdf_end` of `segment`,
    /// translated by `iommu` with endpoint IDs from `endpoint_start`.
    ///
    /// # Errors
    /// [`ViotError::Invalid`] for an empty range, endpoint IDs past
    /// `u32::MAX`, a range that overlaps one already added, an `iommu`
    /// that is not an IOMMU node, or too many nodes.
    pub fn pci_range(
        &mut self,
        segment: u16,
        bdf_start: u16,
        bdf_end: u16,
        endpoint_start: u32,
        iommu: IommuRef,
    ) -> Result<(), ViotError> {
        self.iommu(iommu)?;
        if bdf_end < bdf_start {
            return Err(ViotError::Invalid(format!(
                "empty PCI range {bdf_start:#06x}-{bdf_end:#06x}"
            )));
        }
        if endpoint_start
            .checked_add(u32::from(bdf_end - bdf_start))
            .is_none()
        {
            return Err(ViotError::Invalid("endpoint IDs past 2^32".into()));
        }
        let overlaps = self.nodes.iter().any(|n| {
            matches!(n, ViotNode::PciRange { segment_start, segment_end, bdf_start: s, bdf_end: e, .. }
                if *segment_start <= segment && segment <= *segment_end && *s <= bdf_end && bdf_start <= *e)
        });
        if overlaps {
            return Err(ViotError::Invalid(format!(
                "PCI range {segment:04x}:{bdf_start:#06x}-{bdf_end:#06x} overlaps another"
            )));
        }
        self.push(ViotNode::PciRange {
            endpoint_start,
            segment_start: segment,
            segment_end: segment,
            bdf_start,
            bdf_end,
            iommu,
        })
        .map(|_| ())
    }

    /// Adds the MMIO device at `base_address`, endpoint ID `endpoint`.
    ///
    /// # Errors
    /// As [`pci_range`](Self::pci_range): an `iommu` that is not one, or
    /// too many nodes.
    pub fn mmio_endpoint(
        &mut self,
        endpoint: u32,
        base_address: u64,
        iommu: IommuRef,
    ) -> Result<(), ViotError> {
        self.iommu(iommu)?;
        self.push(ViotNode::Mmio {
            endpoint,
            base_address,
            iommu,
        })
        .map(|_| ())
    }

    /// The IOMMU node `r` names: which virtio-iommu a guest's lookup
    /// ([`pci_endpoint`](Self::pci_endpoint)) led to.
    pub fn iommu_node(&self, r: IommuRef) -> Option<&ViotNode> {
        self.nodes.get(r.0).filter(|n| n.is_iommu())
    }

    /// The endpoint ID and IOMMU a guest gives PCI function `bdf` of
    /// `segment`: [`pci_endpoint`](Self::pci_endpoint), less a
    /// virtio-pci IOMMU's own function, which is never its own endpoint
    /// even when a range covers it (QEMU's q35 table covers it; Linux's
    /// VIOT code skips it).
    pub fn translated_endpoint(&self, segment: u16, bdf: u16) -> Option<(u32, IommuRef)> {
        let (ep, iommu) = self.pci_endpoint(segment, bdf)?;
        let own = ViotNode::VirtioIommuPci { segment, bdf };
        (self.iommu_node(iommu) != Some(&own)).then_some((ep, iommu))
    }

    /// The endpoint ID and IOMMU of PCI function `bdf` of `segment`, as a
    /// guest looks it up; `None` where no range covers it.
    pub fn pci_endpoint(&self, segment: u16, bdf: u16) -> Option<(u32, IommuRef)> {
        self.nodes.iter().find_map(|n| match *n {
            ViotNode::PciRange {
                endpoint_start,
                segment_start,
                segment_end,
                bdf_start,
                bdf_end,
                iommu,
            } if (segment_start..=segment_end).contains(&segment)
                && (bdf_start..=bdf_end).contains(&bdf) =>
            {
                Some((endpoint_start + u32::from(bdf - bdf_start), iommu))
            }
            _ => None,
        })
    }

    fn offsets(&self) -> Vec<usize> {
        let mut at = FIRST_NODE;
        self.nodes
            .iter()
            .map(|n| {
                let here = at;
                at += n.length();
                here
            })
            .collect()
    }

    /// The table's bytes, with the OEM fields given, creator `IOMR`, and
    /// the checksum that makes every byte sum to zero.
    pub fn to_bytes(&self, oem_id: [u8; 6], oem_table_id: [u8; 8], oem_revision: u32) -> Vec<u8> {
        let offsets = self.offsets();
        let len = offsets
            .last()
            .zip(self.nodes.last())
            .map_or(FIRST_NODE, |(o, n)| o + n.length());
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(b"VIOT");
        b.extend_from_slice(&(len as u32).to_le_bytes());
        b.push(0); // revision
        b.push(0); // checksum, below
        b.extend_from_slice(&oem_id);
        b.extend_from_slice(&oem_table_id);
        b.extend_from_slice(&oem_revision.to_le_bytes());
        b.extend_from_slice(b"IOMR");
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&(self.nodes.len() as u16).to_le_bytes());
        b.extend_from_slice(&(FIRST_NODE as u16).to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        let node_offset = |r: IommuRef| offsets[r.0] as u16;
        for n in &self.nodes {
            let kind = match n {
                ViotNode::PciRange { .. } => PCI_RANGE,
                ViotNode::Mmio { .. } => MMIO,
                ViotNode::VirtioIommuPci { .. } => VIRTIO_IOMMU_PCI,
                ViotNode::VirtioIommuMmio { .. } => VIRTIO_IOMMU_MMIO,
            };
            b.push(kind);
            b.push(0);
            b.extend_from_slice(&(n.length() as u16).to_le_bytes());
            match *n {
                ViotNode::PciRange {
                    endpoint_start,
                    segment_start,
                    segment_end,
                    bdf_start,
                    bdf_end,
                    iommu,
                } => {
                    b.extend_from_slice(&endpoint_start.to_le_bytes());
                    for v in [
                        segment_start,
                        segment_end,
                        bdf_start,
                        bdf_end,
                        node_offset(iommu),
                    ] {
                        b.extend_from_slice(&v.to_le_bytes());
                    }
                    b.extend_from_slice(&[0; 6]);
                }
                ViotNode::Mmio {
                    endpoint,
                    base_address,
                    iommu,
                } => {
                    b.extend_from_slice(&endpoint.to_le_bytes());
                    b.extend_from_slice(&base_address.to_le_bytes());
                    b.extend_from_slice(&node_offset(iommu).to_le_bytes());
                    b.extend_from_slice(&[0; 6]);
                }
                ViotNode::VirtioIommuPci { segment, bdf } => {
                    b.extend_from_slice(&segment.to_le_bytes());
                    b.extend_from_slice(&bdf.to_le_bytes());
                    b.extend_from_slice(&[0; 8]);
                }
                ViotNode::VirtioIommuMmio { base_address } => {
                    b.extend_from_slice(&[0; 4]);
                    b.extend_from_slice(&base_address.to_le_bytes());
                }
            }
        }
        let sum = b.iter().fold(0u8, |s, x| s.wrapping_add(*x));
        b[9] = 0u8.wrapping_sub(sum);
        b
    }

    /// Reads a VIOT as a guest does: the header, the checksum, every node
    /// within the table, every endpoint node naming an IOMMU node. Hostile
    /// bytes get a [`ViotError`], in time and memory bounded by the input.
    ///
    /// # Errors
    /// A [`ViotError`] saying what is wrong and where.
    pub fn parse(bytes: &[u8]) -> Result<Viot, ViotError> {
        if bytes.len() < FIRST_NODE {
            return Err(ViotError::Truncated {
                need: FIRST_NODE,
                have: bytes.len(),
            });
        }
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | u64::from(u32_at(o + 4)) << 32;
        let sig = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if &sig != b"VIOT" {
            return Err(ViotError::Signature(sig));
        }
        let len = u32_at(4) as usize;
        if len < FIRST_NODE || len > bytes.len() {
            return Err(ViotError::Truncated {
                need: len.max(FIRST_NODE),
                have: bytes.len(),
            });
        }
        let table = &bytes[..len];
        if table.iter().fold(0u8, |s, x| s.wrapping_add(*x)) != 0 {
            return Err(ViotError::Checksum);
        }
        let count = usize::from(u16_at(36));
        let first = usize::from(u16_at(38));
        if count > MAX_NODES {
            return Err(ViotError::NodeTable(format!(
                "{count} nodes, more than {MAX_NODES}"
            )));
        }
        if count > 0 && (first < FIRST_NODE || first >= len) {
            return Err(ViotError::NodeTable(format!(
                "first node at {first:#x}, outside {FIRST_NODE:#x}..{len:#x}"
            )));
        }
        // First pass: where each node is and what it is.
        let mut at = first;
        let mut raw: Vec<(usize, u8)> = Vec::with_capacity(count);
        for _ in 0..count {
            if at + 4 > len {
                return Err(ViotError::Node {
                    offset: at,
                    why: "starts past the end of the table".into(),
                });
            }
            let kind = table[at];
            let nlen = usize::from(u16_at(at + 2));
            let want = match kind {
                PCI_RANGE | MMIO => 24,
                VIRTIO_IOMMU_PCI | VIRTIO_IOMMU_MMIO => 16,
                other => {
                    return Err(ViotError::Node {
                        offset: at,
                        why: format!("unknown type {other}"),
                    })
                }
            };
            if nlen < want || at + nlen > len {
                return Err(ViotError::Node {
                    offset: at,
                    why: format!("length {nlen}, a type {kind} node needs {want} within the table"),
                });
            }
            raw.push((at, kind));
            at += nlen;
        }
        let iommu_at = |o: u16, from: usize| -> Result<IommuRef, ViotError> {
            raw.iter()
                .position(|&(a, k)| {
                    a == usize::from(o) && matches!(k, VIRTIO_IOMMU_PCI | VIRTIO_IOMMU_MMIO)
                })
                .map(IommuRef)
                .ok_or_else(|| ViotError::Node {
                    offset: from,
                    why: format!("output node {o:#x} is not an IOMMU node"),
                })
        };
        let mut nodes = Vec::with_capacity(count);
        for &(o, kind) in &raw {
            nodes.push(match kind {
                PCI_RANGE => {
                    let (segment_start, segment_end) = (u16_at(o + 8), u16_at(o + 10));
                    let (bdf_start, bdf_end) = (u16_at(o + 12), u16_at(o + 14));
                    if segment_end < segment_start || bdf_end < bdf_start {
                        return Err(ViotError::Node {
                            offset: o,
                            why: "a PCI range whose end is before its start".into(),
                        });
                    }
                    ViotNode::PciRange {
                        endpoint_start: u32_at(o + 4),
                        segment_start,
                        segment_end,
                        bdf_start,
                        bdf_end,
                        iommu: iommu_at(u16_at(o + 16), o)?,
                    }
                }
                MMIO => ViotNode::Mmio {
                    endpoint: u32_at(o + 4),
                    base_address: u64_at(o + 8),
                    iommu: iommu_at(u16_at(o + 16), o)?,
                },
                VIRTIO_IOMMU_PCI => ViotNode::VirtioIommuPci {
                    segment: u16_at(o + 4),
                    bdf: u16_at(o + 6),
                },
                _ => ViotNode::VirtioIommuMmio {
                    base_address: u64_at(o + 8),
                },
            });
        }
        Ok(Viot { nodes })
    }
}

/// The device-tree properties that describe a virtio-iommu and what it
/// translates, as cells (32-bit values) and in `.dts` syntax.
///
/// The IOMMU's node gets `#iommu-cells = <1>` (one cell: the endpoint ID).
/// A PCI host bridge's node gets `iommu-map`: for each range of requester
/// ids, `<rid-base &iommu endpoint-base length>`; an MMIO device's node
/// gets `iommus = <&iommu endpoint-id>`. For a virtio-pci virtio-iommu, the
/// PCI host's `iommu-map` must leave the IOMMU's own requester id out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DtIommuMap {
    entries: Vec<(u32, u32, u32)>,
}

impl DtIommuMap {
    /// The `#iommu-cells` value of a virtio-iommu's node.
    pub const IOMMU_CELLS: u32 = 1;

    /// The `iommu-map` of a PCI host translated whole by a virtio-iommu
    /// with endpoint ID = requester id, leaving out the IOMMU's own
    /// function `iommu_bdf` when it is on this host (`None` for a
    /// virtio-mmio IOMMU).
    pub fn pci_host(iommu_bdf: Option<u16>) -> DtIommuMap {
        let mut m = DtIommuMap::default();
        match iommu_bdf {
            None => m.entries.push((0, 0, 0x1_0000)),
            Some(b) => {
                let b = u32::from(b);
                if b > 0 {
                    m.entries.push((0, 0, b));
                }
                if b < 0xffff {
                    m.entries.push((b + 1, b + 1, 0xffff - b));
                }
            }
        }
        m
    }

    /// The `(rid-base, endpoint-base, length)` entries.
    pub fn entries(&self) -> &[(u32, u32, u32)] {
        &self.entries
    }

    /// The property's cells, with `phandle` for the IOMMU node.
    pub fn cells(&self, phandle: u32) -> Vec<u32> {
        self.entries
            .iter()
            .flat_map(|&(rid, ep, len)| [rid, phandle, ep, len])
            .collect()
    }

    /// The property's bytes as a flattened device tree holds them (each
    /// cell big-endian).
    pub fn to_bytes(&self, phandle: u32) -> Vec<u8> {
        self.cells(phandle)
            .into_iter()
            .flat_map(u32::to_be_bytes)
            .collect()
    }

    /// Reads an `iommu-map` property's bytes back, keeping the entries
    /// that name `phandle`.
    ///
    /// # Errors
    /// A length that is not whole entries of four cells, or an entry whose
    /// range wraps past 2^32.
    pub fn parse(bytes: &[u8], phandle: u32) -> Result<DtIommuMap, String> {
        if !bytes.len().is_multiple_of(16) {
            return Err(format!(
                "iommu-map of {} bytes, not entries of 16",
                bytes.len()
            ));
        }
        let mut m = DtIommuMap::default();
        for e in bytes.chunks_exact(16) {
            let cell =
                |i: usize| u32::from_be_bytes([e[i * 4], e[i * 4 + 1], e[i * 4 + 2], e[i * 4 + 3]]);
            let (rid, ph, ep, len) = (cell(0), cell(1), cell(2), cell(3));
            if rid.checked_add(len).is_none() || ep.checked_add(len).is_none() {
                return Err(format!(
                    "iommu-map entry <{rid:#x} {ph:#x} {ep:#x} {len:#x}> wraps"
                ));
            }
            if ph == phandle {
                m.entries.push((rid, ep, len));
            }
        }
        Ok(m)
    }

    /// The endpoint ID of requester id `rid`, as a guest maps it.
    pub fn endpoint(&self, rid: u32) -> Option<u32> {
        self.entries
            .iter()
            .find(|&&(base, _, len)| rid >= base && rid - base < len)
            .map(|&(base, ep, _)| ep + (rid - base))
    }

    /// The property in `.dts` syntax, the IOMMU node named by `label`.
    pub fn to_dts(&self, label: &str) -> String {
        let entries: Vec<String> = self
            .entries
            .iter()
            .map(|&(rid, ep, len)| format!("<{rid:#x} &{label} {ep:#x} {len:#x}>"))
            .collect();
        format!("iommu-map = {};", entries.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Viot, IommuRef) {
        let mut v = Viot::new();
        let iommu = v.virtio_iommu_pci(0, 0x18);
        v.pci_range(0, 0, 0x17, 0, iommu).unwrap();
        v.pci_range(0, 0x19, 0xffff, 0x19, iommu).unwrap();
        let mmio = v.virtio_iommu_mmio(0xfeb0_0000);
        v.mmio_endpoint(0x1_0000, 0xfeb0_1000, mmio).unwrap();
        (v, iommu)
    }

    fn fix_checksum(b: &mut [u8]) {
        b[9] = 0;
        let sum = b.iter().fold(0u8, |s, x| s.wrapping_add(*x));
        b[9] = 0u8.wrapping_sub(sum);
    }

    #[test]
    fn a_table_reads_back_as_built() {
        let (v, iommu) = sample();
        let b = v.to_bytes(*b"OEMID ", *b"TABLEID ", 7);
        assert_eq!(b.len(), 48 + 16 + 24 + 24 + 16 + 24);
        assert_eq!(
            u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize,
            b.len()
        );
        let back = Viot::parse(&b).unwrap();
        assert_eq!(back, v);
        assert_eq!(back.pci_endpoint(0, 0x10), Some((0x10, iommu)));
        assert_eq!(back.pci_endpoint(0, 0x18), None);
        assert_eq!(back.pci_endpoint(1, 0x10), None);
        // The PCI range names the IOMMU node by its offset in the table.
        assert_eq!(u16::from_le_bytes([b[64 + 16], b[64 + 17]]), 48);
    }

    #[test]
    fn the_builder_refuses_what_makes_no_table() {
        let (mut v, iommu) = sample();
        assert!(v.pci_range(0, 0x10, 0x20, 0, iommu).is_err(), "overlap");
        assert!(v.pci_range(1, 0x20, 0x10, 0, iommu).is_err(), "empty");
        assert!(
            v.pci_range(1, 0, 0xffff, u32::MAX, iommu).is_err(),
            "IDs wrap"
        );
        assert!(
            v.pci_range(1, 0, 1, 0, IommuRef(1)).is_err(),
            "not an IOMMU"
        );
        assert!(v.mmio_endpoint(1, 0, IommuRef(99)).is_err(), "no such node");
        assert!(
            v.pci_range(1, 0, 0xffff, 0, iommu).is_ok(),
            "another segment"
        );
    }

    #[test]
    fn hostile_tables_are_refused_with_what_is_wrong() {
        let (v, _) = sample();
        let good = v.to_bytes(*b"OEMID ", *b"TABLEID ", 7);
        assert!(matches!(
            Viot::parse(&good[..40]),
            Err(ViotError::Truncated { .. })
        ));
        assert!(matches!(
            Viot::parse(&good[..good.len() - 1]),
            Err(ViotError::Truncated { .. })
        ));
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(Viot::parse(&b), Err(ViotError::Signature(_))));
        let mut b = good.clone();
        b[60] ^= 1;
        assert_eq!(Viot::parse(&b), Err(ViotError::Checksum));
        // A node count past the table, an unknown type, a short length, an
        // output node that is not an IOMMU, a range backwards.
        for (at, value) in [
            (36usize, 9u8),
            (48, 9),
            (50, 4),
            (64 + 16, 64),
            (64 + 12, 0xff),
        ] {
            let mut b = good.clone();
            b[at] = value;
            if at == 64 + 12 {
                b[64 + 13] = 0xff;
            }
            fix_checksum(&mut b);
            assert!(Viot::parse(&b).is_err(), "byte {at} = {value:#x} accepted");
        }
        let mut b = good.clone();
        b[36..38].copy_from_slice(&2000u16.to_le_bytes());
        fix_checksum(&mut b);
        assert!(matches!(Viot::parse(&b), Err(ViotError::NodeTable(_))));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic generator: every length up to a few
        // tables, bytes biased to small values, checksums fixed half the
        // time so the node parser is reached.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (v, _) = sample();
        let good = v.to_bytes(*b"OEMID ", *b"TABLEID ", 7);
        for round in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..(next() % 6) {
                let at = (next() as usize) % b.len();
                b[at] = (next() % 5) as u8 * (next() as u8 % 64);
            }
            if round % 3 == 0 {
                b.truncate((next() as usize) % (good.len() + 1));
            }
            if b.len() > 9 && round % 2 == 0 {
                fix_checksum(&mut b);
            }
            if let Ok(t) = Viot::parse(&b) {
                // Whatever parses builds back to a table that parses the same.
                let again = t.to_bytes(*b"OEMID ", *b"TABLEID ", 7);
                assert_eq!(Viot::parse(&again).as_ref(), Ok(&t));
            }
        }
    }

    #[test]
    fn the_device_tree_map_leaves_the_iommu_out_and_reads_back() {
        let m = DtIommuMap::pci_host(Some(0x18));
        assert_eq!(m.entries(), &[(0, 0, 0x18), (0x19, 0x19, 0xffe7)]);
        assert_eq!(m.endpoint(0x10), Some(0x10));
        assert_eq!(m.endpoint(0x18), None);
        assert_eq!(m.endpoint(0xffff), Some(0xffff));
        assert_eq!(m.endpoint(0x1_0000), None);
        assert_eq!(
            m.to_dts("viommu"),
            "iommu-map = <0x0 &viommu 0x0 0x18>, <0x19 &viommu 0x19 0xffe7>;"
        );
        let bytes = m.to_bytes(7);
        assert_eq!(&bytes[..8], &[0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(DtIommuMap::parse(&bytes, 7), Ok(m.clone()));
        assert_eq!(DtIommuMap::parse(&bytes, 8), Ok(DtIommuMap::default()));
        assert!(DtIommuMap::parse(&bytes[..15], 7).is_err());
        let wraps = [0xffu8; 16];
        assert!(DtIommuMap::parse(&wraps, u32::MAX).is_err());
        assert_eq!(DtIommuMap::pci_host(None).entries(), &[(0, 0, 0x1_0000)]);
        assert_eq!(DtIommuMap::pci_host(Some(0)).entries(), &[(1, 1, 0xffff)]);
        assert_eq!(
            DtIommuMap::pci_host(Some(0xffff)).entries(),
            &[(0, 0, 0xffff)]
        );
    }
}
