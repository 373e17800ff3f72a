//! A machine's SMMUv3s from its IORT: which SMMU a PCI function's DMA
//! reaches and with which stream id ([`IortSmmus`], the driver's
//! [`StreamLookup`]), as Linux's `iort_node_map_id` follows a root
//! complex's ID mappings.

use iommu_firmware::iort::{Iort, IortNode, NodeKind};
use iommu_smmuv3::StreamLookup;
use std::sync::Arc;

/// An IORT's SMMUv3 nodes and the mapping from a PCI function's id to one
/// of them.
#[derive(Clone, Debug)]
pub struct IortSmmus {
    iort: Iort,
}

impl IortSmmus {
    /// `iort`'s SMMUv3 nodes.
    pub fn resolve(iort: &Iort) -> IortSmmus {
        IortSmmus { iort: iort.clone() }
    }

    /// The SMMUv3 nodes, in table order (the driver's SMMU indices).
    fn smmus(&self) -> impl Iterator<Item = &IortNode> {
        self.iort
            .nodes
            .iter()
            .filter(|n| matches!(n.kind, NodeKind::Smmuv3 { .. }))
    }

    /// The SMMUv3 nodes' register bases, in table order.
    pub fn bases(&self) -> Vec<u64> {
        self.smmus()
            .filter_map(|n| match n.kind {
                NodeKind::Smmuv3 { base, .. } => Some(base),
                _ => None,
            })
            .collect()
    }

    /// The SMMUv3 (its index in [`bases`](Self::bases)) and stream id that
    /// id `id` (`segment << 16 | requester id`, as PCI devices' stream ids
    /// carry it) reaches through its root complex's ID mappings; `None` if
    /// they end at no SMMUv3 (an ITS group, an SMMUv1/v2, nowhere).
    pub fn stream_of(&self, id: u32) -> Option<(usize, u32)> {
        let (sid, node) = self.iort.pci_stream(id >> 16, id & 0xffff)?;
        let smmu = self.smmus().position(|n| core::ptr::eq(n, node))?;
        Some((smmu, sid))
    }

    /// [`stream_of`](Self::stream_of) as the driver's lookup.
    pub fn lookup(&self) -> StreamLookup {
        let me = self.clone();
        Arc::new(move |id: u32| me.stream_of(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommu_firmware::acpi::Header;
    use iommu_firmware::iort::IdMapping;

    fn node(offset: u32, kind: NodeKind, mappings: Vec<IdMapping>) -> IortNode {
        IortNode {
            offset,
            revision: 0,
            identifier: offset,
            kind,
            mappings,
        }
    }

    fn to(output_node: u32, input_base: u32, count: u64, output_base: u32) -> IdMapping {
        IdMapping {
            input_base,
            count,
            output_base,
            output_node,
            single: false,
        }
    }

    /// A root complex whose requester ids 00:00.0-00:1f.7 reach one SMMUv3
    /// (stream ids from 0x1000) and buses 1-255 another (one to one), and
    /// an SMMUv3 whose ids go on to an ITS group only.
    fn two_smmus() -> Iort {
        let smmu = |base| NodeKind::Smmuv3 {
            base,
            flags: 0,
            model: 0,
        };
        Iort {
            header: Header {
                signature: *b"IORT",
                revision: 5,
                oem_id: *b"IOMMRS",
                oem_table_id: *b"TWOSMMUS",
                oem_revision: 1,
                creator_id: *b"IOMR",
                creator_revision: 1,
            },
            nodes: vec![
                node(0x30, NodeKind::ItsGroup { its_ids: vec![0] }, vec![]),
                node(0x50, smmu(0x0905_0000), vec![to(0x30, 0, 0x1_0000, 0)]),
                node(0xa0, smmu(0x0906_0000), vec![to(0x30, 0, 0x1_0000, 0)]),
                node(
                    0xf0,
                    NodeKind::RootComplex {
                        segment: 0,
                        ats: false,
                        coherent: true,
                    },
                    vec![to(0x50, 0, 0x100, 0x1000), to(0xa0, 0x100, 0xff00, 0x100)],
                ),
            ],
        }
    }

    #[test]
    fn a_root_complex_split_over_two_smmus_maps_each_function_to_its_own() {
        let s = IortSmmus::resolve(&two_smmus());
        assert_eq!(s.bases(), vec![0x0905_0000, 0x0906_0000]);
        assert_eq!(s.stream_of(0x0010), Some((0, 0x1010)));
        assert_eq!(s.stream_of(0x0100), Some((1, 0x0100)));
        assert_eq!(s.lookup()(0x0300), Some((1, 0x0300)));
        assert_eq!(
            s.stream_of(1 << 16 | 0x10),
            None,
            "no root complex of segment 1"
        );
    }
}
