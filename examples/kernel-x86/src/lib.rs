//! # Using the no_std IOMMU core in a kernel
//!
//! `iommu-core` and `iommu-dma` with their default features off are
//! `no_std` + `alloc`. What a kernel provides:
//!
//! - **an allocator**: a `#[global_allocator]` (groups, domains, IOVA
//!   caches and the driver's bookkeeping are heap objects), and memory for
//!   I/O page tables through [`iommu_pgtable::TableMemory`]: zeroed,
//!   size-aligned blocks whose physical address the IOMMU walks. A kernel
//!   whose heap is identity-mapped (or reached through a direct map) can
//!   use [`iommu_pgtable::HeapMemory`]; otherwise implement `TableMemory`
//!   over its page allocator and its phys-to-virt translation.
//! - **locks**: without `std` the core and the DMA layer take `spin` locks
//!   ([`iommu_core::sync`]); nothing sleeps, so both may be called with
//!   preemption off, but not from an interrupt handler that can interrupt
//!   a holder on the same CPU.
//! - **CPU ids**: the DMA layer keeps its IOVA caches and flush queues per
//!   CPU and asks an [`iommu_iova::CpuId`] which CPU runs ([`KernelCpus`]:
//!   a per-CPU register read). Without one every CPU shares one cache.
//! - **a timer**, only for lazy invalidation: a DMA-FQ domain's flush
//!   queue drains on a timeout ([`iommu_dma::fq::FqTimer`];
//!   [`KernelTimer`] runs off the kernel's clock tick). Without one, DMA-FQ
//!   domains unmap strictly.
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
//!   domain when the bus gets its ops. A device driver then binds its
//!   device to the DMA layer ([`DmaDevice::bind`]) and maps buffers.
//!
//! [`KernelIommu`] below is such a driver for a VT-d-like IOMMU: second-
//! level tables in VT-d's format, the hardware reached through the
//! [`Hardware`] trait a real driver fills with register writes. It builds
//! for `x86_64-unknown-none` (`src/main.rs` is a bare-metal program using
//! it) and runs on the host in this crate's tests:
//!
//! ```
//! use iommu_dma::DmaDirection;
//! use iommu_kernel_example::{bring_up, Hardware, Kernel};
//! use iommu_types::{Errno, PhysAddr};
//! use std::sync::atomic::{AtomicU64, Ordering};
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
//! // The kernel's clock (nanoseconds) and CPU register, played by statics.
//! static NOW: AtomicU64 = AtomicU64::new(0);
//! fn clock() -> u64 { NOW.load(Ordering::Relaxed) }
//! fn this_cpu() -> usize { 0 }
//!
//! // The driver lives as long as the kernel: 'static.
//! let hw: &'static Recorder = Box::leak(Box::default());
//! let kernel = Kernel::new(2, this_cpu, clock);
//! // The NIC at 00:02.0 (requester id 0x10), bound for DMA.
//! let up = bring_up(hw, &[("0000:00:02.0", 0x10)], &kernel).unwrap();
//! assert!(hw.0.lock().unwrap().iter().any(|l| l.starts_with("context 0x0010 -> domain 1 root Some(")));
//!
//! // A receive buffer for the NIC: the IOVA translates to it.
//! let buf = PhysAddr::new(0x8000_0000);
//! let addr = up.nic.map_single(buf, 2048, DmaDirection::FromDevice).unwrap();
//! assert_eq!(up.domain.iova_to_phys(addr.into()), Some(buf));
//!
//! // A lazy unmap (the default domain is DMA-FQ): the table entry is gone
//! // at once, the IOTLB invalidation waits for the flush queue's timer.
//! up.nic.unmap_single(addr, 2048, DmaDirection::FromDevice).unwrap();
//! assert_eq!(up.domain.iova_to_phys(addr.into()), None);
//! assert!(!hw.0.lock().unwrap().iter().any(|l| l.starts_with("invalidate")));
//! assert_eq!(up.nic.domain_stats().fq.queued, 1);
//!
//! // 10 ms later the kernel's tick runs the timer: one flush-all, and the
//! // IOVA may be handed out again.
//! NOW.store(10_000_000, Ordering::Relaxed);
//! assert_eq!(kernel.timer.run_expired(), 1);
//! assert!(hw.0.lock().unwrap().iter().any(|l| l.starts_with("invalidate domain 1 0x0+")));
//! assert_eq!(up.nic.domain_stats().fq.queued, 0);
//! ```
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::boxed::Box;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU16, Ordering};
use core::time::Duration;
use iommu_core::sync::Mutex;
use iommu_core::{
    Bus, Capability, DeviceBuilder, Domain, DomainOps, DomainType, Iommu, IommuConfig, IommuOps,
    PagingOps,
};
use iommu_dma::fq::{FqTimeout, FqTimer};
use iommu_dma::{DmaCpus, DmaDevice, DmaOptions};
use iommu_iova::CpuId;
use iommu_pgtable::vtd::VtdSl;
use iommu_pgtable::{HeapMemory, IoPageTable};
use iommu_types::{Errno, IotlbGather, PhysAddr};

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

    fn capable(&self, cap: Capability) -> bool {
        // Unmaps may leave their invalidation to a flush queue: the
        // hardware has a global invalidation (`flush_iotlb_all`).
        matches!(cap, Capability::DeferredFlush)
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

/// The kernel's CPU ids for the DMA layer's per-CPU caches and queues.
pub struct KernelCpus {
    nr: usize,
    /// Reads the running CPU's index (the APIC id through a per-CPU
    /// variable, with preemption off).
    current: fn() -> usize,
}

impl CpuId for KernelCpus {
    fn nr_cpus(&self) -> usize {
        self.nr
    }
    fn current(&self) -> usize {
        (self.current)()
    }
}

/// The kernel's flush-queue timer: deadlines on the kernel's clock, run by
/// its tick ([`run_expired`](Self::run_expired) from a softirq or a kernel
/// thread; not from a hard interrupt that may have interrupted an unmap).
pub struct KernelTimer {
    /// Nanoseconds since boot.
    clock: fn() -> u64,
    due: Mutex<Vec<(u64, Weak<dyn FqTimeout>)>>,
}

impl KernelTimer {
    /// Runs every timeout whose deadline passed; returns how many ran.
    pub fn run_expired(&self) -> usize {
        let now = (self.clock)();
        let expired: Vec<_> = {
            let mut due = self.due.lock();
            let (gone, kept) = core::mem::take(&mut *due)
                .into_iter()
                .partition(|(at, _)| *at <= now);
            *due = kept;
            gone
        };
        // Outside the lock: a timeout may queue the next deadline.
        let mut ran = 0;
        for (_, target) in expired {
            // A domain freed since it armed the timer is skipped.
            if let Some(t) = target.upgrade() {
                t.timeout();
                ran += 1;
            }
        }
        ran
    }
}

impl FqTimer for KernelTimer {
    fn schedule(&self, after: Duration, target: Weak<dyn FqTimeout>) {
        let nanos = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX);
        let at = (self.clock)().saturating_add(nanos);
        self.due.lock().push((at, target));
    }
}

/// What the kernel lends the DMA layer: its CPU ids and its timer.
pub struct Kernel {
    /// The CPU ids.
    pub cpus: Arc<KernelCpus>,
    /// The timer (the kernel's tick calls its `run_expired`).
    pub timer: Arc<KernelTimer>,
}

impl Kernel {
    /// `nr_cpus` CPUs, `current` reading the running one, `clock` the time
    /// since boot in nanoseconds.
    pub fn new(nr_cpus: usize, current: fn() -> usize, clock: fn() -> u64) -> Kernel {
        Kernel {
            cpus: Arc::new(KernelCpus {
                nr: nr_cpus.max(1),
                current,
            }),
            timer: Arc::new(KernelTimer {
                clock,
                due: Mutex::new(Vec::new()),
            }),
        }
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
    /// The first device, bound for DMA (its driver maps buffers here).
    pub nic: DmaDevice,
}

/// A kernel's IOMMU bring-up: the core, the PCI bus with `devices`
/// (address, requester id) as the kernel's enumeration found them, the
/// driver as the bus's ops (which groups the devices and gives each group
/// its lazy DMA-FQ default domain, as x86 kernels default to), and the
/// first device bound to the DMA layer with the kernel's CPU ids and timer.
///
/// # Errors
/// What the core, the driver or the DMA layer refuses.
pub fn bring_up<H: Hardware + 'static>(
    hw: &'static H,
    devices: &[(&str, u32)],
    kernel: &Kernel,
) -> Result<BroughtUp, Errno> {
    let iommu = Iommu::new(IommuConfig {
        passthrough: false,
        strict: false,
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
    let cpus: Arc<dyn CpuId> = kernel.cpus.clone();
    let nic = DmaDevice::bind(
        &iommu,
        &dev,
        DmaOptions {
            cpus: DmaCpus::Kernel(cpus),
            fq_timer: Some(kernel.timer.clone()),
            ..DmaOptions::default()
        },
    )
    .map_err(Errno::from)?;
    Ok(BroughtUp {
        iommu,
        bus,
        domain,
        nic,
    })
}
