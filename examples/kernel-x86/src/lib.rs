//! # Using the no_std IOMMU core in a kernel
//!
//! `iommu-core` with its default features off is `no_std` + `alloc`. What
//! a kernel provides:
//!
//! - **an allocator**: a `#[global_allocator]` (groups, domains and the
//!   driver's bookkeeping are heap objects), and memory for I/O page
//!   tables through [`iommu_pgtable::TableMemory`]: zeroed, size-aligned
//!   blocks whose physical address the IOMMU walks. A kernel whose heap
//!   is identity-mapped (or reached through a direct map) can use
//!   [`iommu_pgtable::HeapMemory`]; otherwise implement `TableMemory`
//!   over its page allocator and its phys-to-virt translation.
//! - **locks**: without `std` the core takes `spin` locks; nothing sleeps,
//!   so the core may be called with preemption off, but not from an
//!   interrupt handler that can interrupt a holder on the same CPU.
//! - **a timer**, only for lazy invalidation: the DMA layer's flush queue
//!   drains on a timeout (`iommu_dma::fq::FqTimer`). `iommu-dma` needs
//!   `std` today (its locks, clock and hash maps); the core does not.
//! - **the hardware**: MMIO to the IOMMU's registers and DMA-able memory
//!   for its tables and queues. That is the driver's business, behind the
//!   two traits the core calls: [`IommuOps`] (one per IOMMU: devices,
//!   groups, domain allocation, page sizes) and [`DomainOps`] (one per
//!   domain: attach, detach, invalidation). A paging domain hands the
//!   core its page table ([`IoPageTable`] implements the core's
//!   `PagingOps`), so map and unmap need no driver code at all.
//! - **devices**: the kernel's PCI enumeration adds each function to a
//!   [`Bus`] with its requester id as stream id; the core groups them
//!   (the driver's `device_group`) and gives each group its default
//!   domain when the bus gets its ops.
//!
//! [`KernelIommu`] below is such a driver for a VT-d-like IOMMU: second-
//! level tables in VT-d's format, the hardware reached through the
//! [`Hardware`] trait a real driver fills with register writes. It builds
//! for `x86_64-unknown-none` (`src/main.rs` is a bare-metal program using
//! it) and runs on the host in this crate's tests:
//!
//! ```
//! use iommu_kernel_example::{bring_up, Hardware};
//! use iommu_types::{Errno, PhysAddr};
//! use std::sync::Mutex;
//!
//! /// What a real driver would write to the IOMMU, recorded.
//! #[derive(Default)]
//! struct Recorder(Mutex<Vec<String>>);
//!
//! impl Hardware for Recorder {
//!     fn set_context(&self, rid: u16, domain_id: u16, root: Option<PhysAddr>) {
//!         self.0.lock().unwrap().push(format!("context {rid:#06x} -> domain {domain_id} root {root:?}"));
//!     }
//!     fn invalidate(&self, domain_id: u16, iova: u64, size: u64) -> Result<(), Errno> {
//!         self.0.lock().unwrap().push(format!("invalidate domain {domain_id} {iova:#x}+{size:#x}"));
//!         Ok(())
//!     }
//! }
//!
//! // The driver lives as long as the kernel: 'static.
//! let hw: &'static Recorder = Box::leak(Box::default());
//! // The NIC at 00:02.0 (requester id 0x10), its first DMA buffer mapped.
//! let up = bring_up(hw, &[("0000:00:02.0", 0x10)]).unwrap();
//! let log = hw.0.lock().unwrap();
//! assert!(log.iter().any(|l| l.starts_with("context 0x0010 -> domain 1 root Some(")));
//! drop(log);
//! let iova = iommu_types::Iova::new(0x10_0000);
//! assert_eq!(up.domain.iova_to_phys(iova), Some(PhysAddr::new(0x8000_0000)));
//! // A strict unmap: the IOTLB is invalidated before it returns.
//! assert_eq!(up.domain.unmap(iova, 0x1000), Ok(0x1000));
//! assert!(hw.0.lock().unwrap().iter().any(|l| l == "invalidate domain 1 0x100000+0x1000"));
//! assert_eq!(up.domain.iova_to_phys(iova), None);
//! ```
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::boxed::Box;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU16, Ordering};
use iommu_core::{
    Bus, DeviceBuilder, Domain, DomainOps, DomainType, Iommu, IommuConfig, IommuOps, PagingOps,
};
use iommu_pgtable::vtd::VtdSl;
use iommu_pgtable::{HeapMemory, IoPageTable};
use iommu_types::{Errno, IotlbGather, Iova, PhysAddr, Prot};

/// What the driver needs from the IOMMU hardware: a real driver writes
/// context entries and queues invalidation descriptors here.
pub trait Hardware: Send + Sync {
    /// Points requester id `rid` at `domain_id`'s second-level table
    /// `root`, or blocks its DMA (`None`).
    fn set_context(&self, rid: u16, domain_id: u16, root: Option<PhysAddr>);
    /// Invalidates `domain_id`'s IOTLB for `iova..iova + size` and waits
    /// for it; an error when the hardware does not complete it.
    ///
    /// # Errors
    /// The hardware did not complete the invalidation (`ETIMEDOUT`).
    fn invalidate(&self, domain_id: u16, iova: u64, size: u64) -> Result<(), Errno>;
}

/// A VT-d-like IOMMU driver for the core.
pub struct KernelIommu<H: Hardware + 'static> {
    hw: &'static H,
    next_domain: AtomicU16,
}

impl<H: Hardware + 'static> KernelIommu<H> {
    /// The driver for the IOMMU `hw` reaches.
    pub fn new(hw: &'static H) -> KernelIommu<H> {
        KernelIommu {
            hw,
            next_domain: AtomicU16::new(1),
        }
    }
}

/// One domain: its id, and its table when it translates.
struct KernelDomain<H: Hardware + 'static> {
    hw: &'static H,
    id: u16,
    table: Option<IoPageTable<VtdSl, HeapMemory>>,
}

impl<H: Hardware + 'static> IommuOps for KernelIommu<H> {
    fn name(&self) -> &str {
        "kernel-example"
    }

    fn add_device(&self, iommu: &Iommu, dev: &Arc<iommu_core::Device>) -> Result<(), Errno> {
        // Every device this IOMMU's DRHD scope covers: here, all of them.
        iommu.group_get_for_dev(dev).map(|_| ())
    }

    fn domain_alloc(&self, ty: DomainType) -> Result<Box<dyn DomainOps>, Errno> {
        let id = self.next_domain.fetch_add(1, Ordering::Relaxed);
        if id == 0 {
            return Err(Errno::ENOSPC); // domain ids wrapped
        }
        let table = match ty {
            DomainType::Blocked | DomainType::Identity => None,
            // 4-level second-level tables, 48-bit addresses.
            _ => Some(
                IoPageTable::new(VtdSl::new(4, 48).map_err(Errno::from)?, HeapMemory::new())
                    .map_err(Errno::from)?,
            ),
        };
        Ok(Box::new(KernelDomain {
            hw: self.hw,
            id,
            table,
        }))
    }

    fn pgsize_bitmap(&self) -> u64 {
        (1 << 12) | (1 << 21) | (1 << 30)
    }
}

impl<H: Hardware + 'static> DomainOps for KernelDomain<H> {
    fn attach_dev(&self, _domain: &Domain, dev: &Arc<iommu_core::Device>) -> Result<(), Errno> {
        let root = self.table.as_ref().map(|t| t.root());
        for &sid in dev.stream_ids() {
            let rid = u16::try_from(sid & 0xffff).map_err(|_| Errno::EINVAL)?;
            self.hw.set_context(rid, self.id, root);
        }
        Ok(())
    }

    fn paging(&self) -> Option<&dyn PagingOps> {
        self.table.as_ref().map(|t| t as &dyn PagingOps)
    }

    fn iotlb_sync(&self, gather: &IotlbGather) -> Result<(), Errno> {
        match gather.range() {
            Some((start, end)) => {
                self.hw
                    .invalidate(self.id, start.raw(), end.raw() - start.raw() + 1)
            }
            None => Ok(()),
        }
    }

    fn flush_iotlb_all(&self) -> Result<(), Errno> {
        self.hw.invalidate(self.id, 0, u64::MAX)
    }
}

/// What [`bring_up`] leaves running.
pub struct BroughtUp {
    /// The core.
    pub iommu: Iommu,
    /// The PCI bus.
    pub bus: Bus,
    /// The first device's default domain.
    pub domain: Domain,
}

/// A kernel's IOMMU bring-up: the core, the PCI bus with `devices`
/// (address, requester id) as the kernel's enumeration found them, the
/// driver as the bus's ops (which groups the devices and gives each group
/// its strict DMA default domain), and a first DMA buffer mapped for the
/// first device: IOVA 0x100000 to physical 0x80000000.
///
/// # Errors
/// What the core or the driver refuses.
pub fn bring_up<H: Hardware + 'static>(
    hw: &'static H,
    devices: &[(&str, u32)],
) -> Result<BroughtUp, Errno> {
    let iommu = Iommu::new(IommuConfig {
        passthrough: false,
        strict: true,
    });
    let bus = Bus::new(&iommu, "pci")?;
    let mut first = None;
    for &(name, rid) in devices {
        let dev = bus.add_device(DeviceBuilder::new(name).stream_ids([rid]).pci(true))?;
        first.get_or_insert(dev);
    }
    iommu.bus_set_iommu(&bus, Arc::new(KernelIommu::new(hw)))?;
    let dev = first.ok_or(Errno::ENODEV)?;
    let domain = dev
        .iommu_group()
        .and_then(|g| g.default_domain())
        .ok_or(Errno::ENODEV)?;
    domain.map(
        Iova::new(0x10_0000),
        PhysAddr::new(0x8000_0000),
        0x1000,
        Prot::RW,
    )?;
    Ok(BroughtUp { iommu, bus, domain })
}
