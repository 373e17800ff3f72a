//! The mock driver's paging domains follow a real page table's rules: the
//! same random maps and unmaps through the core, once on a `MockIommu`
//! domain and once on a domain backed by `iommu-pgtable`'s LPAE walker,
//! give the same results and leave the same leaves.

use iommu_core::testing::MockIommu;
use iommu_core::{
    Bus, Device, Domain, DomainGeometry, DomainOps, DomainType, Errno, Iommu, IommuOps,
    IotlbGather, Iova, MapPagesError, PagingOps, PhysAddr, Prot,
};
use iommu_pgtable::{lpae::Lpae, HeapMemory, IoPageTable};
use iommu_types::Unmapped;
use proptest::prelude::*;
use std::sync::Arc;

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;

/// The smallest driver over the real walker.
struct PtIommu;

struct PtDomain(IoPageTable<Lpae, HeapMemory>);

impl IommuOps for PtIommu {
    fn domain_alloc(&self, _ty: DomainType) -> Result<Box<dyn DomainOps>, Errno> {
        let fmt = Lpae::stage1_4k(48, 48).map_err(Errno::from)?;
        Ok(Box::new(PtDomain(
            IoPageTable::new(fmt, HeapMemory::new()).map_err(Errno::from)?,
        )))
    }
    fn pgsize_bitmap(&self) -> u64 {
        K4 | M2 | G1
    }
}

impl DomainOps for PtDomain {
    fn attach_dev(&self, _domain: &Domain, _dev: &Arc<Device>) -> Result<(), Errno> {
        Ok(())
    }
    fn paging(&self) -> Option<&dyn PagingOps> {
        Some(self)
    }
    fn geometry(&self) -> Option<DomainGeometry> {
        Some(DomainGeometry::bits(48))
    }
    fn iotlb_sync(&self, gather: &IotlbGather) -> Result<(), Errno> {
        self.0.release_gathered(gather);
        Ok(())
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl PagingOps for PtDomain {
    fn map_pages(
        &self,
        iova: Iova,
        paddr: PhysAddr,
        pgsize: u64,
        pgcount: usize,
        prot: Prot,
    ) -> Result<u64, MapPagesError> {
        self.0
            .map_pages(iova, paddr, pgsize, pgcount, prot)
            .map_err(|e| MapPagesError::from(e.errno()))
    }
    fn unmap_pages(
        &self,
        iova: Iova,
        pgsize: u64,
        pgcount: usize,
        g: &mut IotlbGather,
    ) -> Unmapped {
        self.0.unmap_leaves(iova, pgsize, pgcount, g)
    }
    fn iova_to_phys(&self, iova: Iova) -> Option<PhysAddr> {
        self.0.iova_to_phys(iova)
    }
    fn first_mapping(&self, start: Iova, last: Iova) -> Option<(Iova, u64)> {
        self.0.first_leaf(start, last).map(|m| (m.iova, m.size))
    }
}

fn leaves_of_pt(d: &Domain) -> Vec<(u64, u64, u64)> {
    let pt = d
        .ops()
        .as_any()
        .unwrap()
        .downcast_ref::<PtDomain>()
        .unwrap();
    pt.0.walk(Iova::ZERO, 1 << 48)
        .iter()
        .map(|m| (m.iova.raw(), m.size, m.pa.raw()))
        .collect()
}

fn leaves_of_mock(d: &Domain) -> Vec<(u64, u64, u64)> {
    MockIommu::mappings(d)
        .iter()
        .map(|&(i, s, p, _)| (i, s, p))
        .collect()
}

fn domain(iommu: &Iommu, name: &str, ops: Arc<dyn IommuOps>) -> (Bus, Domain) {
    let bus = Bus::new(iommu, name).unwrap();
    iommu.bus_set_iommu(&bus, ops).unwrap();
    let d = iommu.domain_alloc(&bus, DomainType::Unmanaged).unwrap();
    (bus, d)
}

#[derive(Clone, Debug)]
enum Op {
    Map { iova: u64, pa: u64, size: u64 },
    Unmap { iova: u64, size: u64 },
}

/// An address in a 4 GiB window, biased to 2 MiB and 1 GiB boundaries so
/// that blocks, tables torn down whole and blocks cut in the middle all
/// happen.
fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0..4u64).prop_map(|g| g * G1),
        (0..2048u64).prop_map(|m| m * M2),
        (0..2048u64, 0..512u64).prop_map(|(m, p)| m * M2 + p * K4),
    ]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        (1..16u64).prop_map(|p| p * K4),
        (1..4u64).prop_map(|m| m * M2),
        (1..3u64, 0..8u64).prop_map(|(m, p)| m * M2 + p * K4),
        Just(G1),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (addr(), addr(), size()).prop_map(|(iova, pa, size)| {
            // Addresses of different alignment map 4 KiB pages only: keep
            // those runs short so a case stays cheap.
            let size = if (iova ^ pa) & (M2 - 1) != 0 {
                size.min(2 * M2 + 8 * K4)
            } else {
                size
            };
            Op::Map { iova, pa, size }
        }),
        (addr(), size()).prop_map(|(iova, size)| Op::Unmap { iova, size }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 256 }))]

    #[test]
    fn the_mock_driver_follows_the_real_page_table_rules(ops in prop::collection::vec(op(), 1..40)) {
        let iommu = Iommu::default();
        let (_b1, mock) = domain(&iommu, "mock", Arc::new(MockIommu::new()));
        let (_b2, real) = domain(&iommu, "real", Arc::new(PtIommu));
        for op in &ops {
            match *op {
                Op::Map { iova, pa, size } => {
                    let m = mock.map(Iova::new(iova), PhysAddr::new(pa), size, Prot::RW);
                    let r = real.map(Iova::new(iova), PhysAddr::new(pa), size, Prot::RW);
                    prop_assert_eq!(m, r, "{:?}", op);
                }
                Op::Unmap { iova, size } => {
                    let m = mock.unmap(Iova::new(iova), size);
                    let r = real.unmap(Iova::new(iova), size);
                    prop_assert_eq!(m, r, "{:?}", op);
                }
            }
            prop_assert_eq!(leaves_of_mock(&mock), leaves_of_pt(&real), "after {:?}", op);
        }
    }
}
