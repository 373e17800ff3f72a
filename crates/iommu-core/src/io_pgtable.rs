//! [`PagingOps`] for `iommu-pgtable`'s tables (feature `pgtable`).
//!
//! A driver whose paging domains are an [`IoPageTable`] returns the table
//! itself from [`DomainOps::paging`](crate::DomainOps::paging), as a Linux
//! driver hands the core its `io_pgtable_ops`: the table's own walker maps,
//! unmaps (never splitting a leaf) and looks up, and the core knows no
//! format.

use crate::{MapPagesError, PagingOps};
use iommu_pgtable::{Format, IoPageTable, TableMemory};
use iommu_types::{IotlbGather, Iova, PhysAddr, Prot, Unmapped};

impl<F: Format, M: TableMemory> PagingOps for IoPageTable<F, M> {
    fn map_pages(
        &self,
        iova: Iova,
        paddr: PhysAddr,
        pgsize: u64,
        pgcount: usize,
        prot: Prot,
    ) -> Result<u64, MapPagesError> {
        IoPageTable::map_pages(self, iova, paddr, pgsize, pgcount, prot)
            .map_err(|e| MapPagesError::from(e.errno()))
    }

    fn unmap_pages(
        &self,
        iova: Iova,
        pgsize: u64,
        pgcount: usize,
        gather: &mut IotlbGather,
    ) -> Unmapped {
        self.unmap_leaves(iova, pgsize, pgcount, gather)
    }

    fn iova_to_phys(&self, iova: Iova) -> Option<PhysAddr> {
        IoPageTable::iova_to_phys(self, iova)
    }

    fn first_mapping(&self, start: Iova, last: Iova) -> Option<(Iova, u64)> {
        self.first_leaf(start, last).map(|m| (m.iova, m.size))
    }
}
