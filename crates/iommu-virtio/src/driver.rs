//! The guest's side: a virtio-iommu driver for this project's IOMMU core,
//! as Linux's `drivers/iommu/virtio-iommu.c` is for Linux's.
//!
//! [`Viommu`] implements the core's [`IommuOps`]: it negotiates features
//! and reads the configuration through a [`Transport`], keeps its request
//! and event virtqueues ([`DriverQueue`]) in a region of guest memory it
//! owns, probes each endpoint's reserved regions with PROBE, allocates
//! domain ids within `domain_range`, and takes its page sizes from
//! `page_size_mask` and its aperture from `input_range`. Its domains
//! ([`ViommuDomain`]) turn `map_pages` and `unmap_pages` into MAP and
//! UNMAP requests, queued without waiting and completed together by the
//! core's `iotlb_sync_map` and `iotlb_sync` (a batch per core call);
//! attach becomes ATTACH, an identity domain a bypass ATTACH where the
//! device offers `BYPASS_CONFIG` (identity mappings of the aperture
//! otherwise), and fault events reach the core's fault reporting through
//! [`Viommu::handle_events`].
//!
//! Like Linux's driver, each domain keeps its own record of its mappings
//! (for `iova_to_phys`, for UNMAP, which may not split a mapping, and to
//! send them again when a domain that lost its last endpoint is attached
//! anew: the device forgets a domain with its last endpoint). Unlike it,
//! a batched request the device refuses is not ignored: a refused MAP
//! fails the core's map (which then unmaps it), a refused UNMAP is logged
//! as an error and counted in [`Viommu::stats`].
//!
//! `Loopback` (feature `vmm`) is a transport to a `VirtioIommu` in the same process,
//! so that the whole path — core, this driver, virtqueues in guest memory,
//! the device, translation — runs and is tested in one process.

use crate::config::offset;
use crate::request::{u32_at, u64_at};
pub use crate::ring::{DriverMemory, QueueLayout};
use crate::ring::{DriverQueue, DriverQueueError, EVENT_QUEUE, REQUEST_QUEUE};
use crate::spec::{attach, feature, map, probe, resv, size, Status};
use crate::{Fault, Request};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use iommu_core::sync::{Mutex, MutexGuard};
use iommu_core::{
    Capability, Device, DomainGeometry, DomainOps, DomainType, Errno, FaultAccess, Group, Iommu,
    IommuOps, IotlbGather, Iova, MapPagesError, PagingOps, PhysAddr, Prot, ReservedRegion,
    ResvType, WedgeReport,
};
use iommu_types::Unmapped;

/// The guest's view of the virtio transport (the registers of virtio-mmio
/// or virtio-pci): features, configuration space, queue set-up and
/// notification.
pub trait Transport: Send + Sync {
    /// The features the device offers.
    fn device_features(&self) -> u64;

    /// Writes the driver's features and sets FEATURES_OK.
    ///
    /// # Errors
    /// `ENODEV` when the device does not accept them.
    fn set_driver_features(&self, features: u64) -> Result<(), Errno>;

    /// Reads configuration space from byte `at`.
    fn read_config(&self, at: usize, buf: &mut [u8]);

    /// Tells the device where queue `index` is and makes it ready.
    ///
    /// # Errors
    /// `EINVAL` when the device refuses the layout.
    fn queue_ready(&self, index: u16, layout: QueueLayout) -> Result<(), Errno>;

    /// Notifies the device that queue `index` has new buffers.
    fn notify(&self, index: u16);

    /// The most entries queue `index` may have, where the transport can
    /// tell (`None`: no limit known; `Some(0)`: the device has no such
    /// queue). The driver shrinks its queues to fit.
    fn queue_max_size(&self, index: u16) -> Option<u16> {
        let _ = index;
        None
    }

    /// Tells the device the driver is ready (DRIVER_OK): called once, after
    /// both queues are ready and before the first notification. Transports
    /// without a status register need not do anything.
    fn driver_ok(&self) {}

    /// Writes configuration space from byte `at` (the `bypass` field is
    /// the only one a driver writes).
    ///
    /// # Errors
    /// `EOPNOTSUPP` when the transport cannot write configuration space.
    fn write_config(&self, at: usize, data: &[u8]) -> Result<(), Errno> {
        let _ = (at, data);
        Err(Errno::EOPNOTSUPP)
    }
}

/// How the driver sizes its queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViommuConfig {
    /// Entries of the request queue (two descriptors per request).
    pub request_queue_size: u16,
    /// Entries of the event queue (one buffer each).
    pub event_queue_size: u16,
    /// How many times the driver polls the request queue's used ring for
    /// the device's answers after a notification before it gives up on
    /// the requests still out (they fail with `EIO`). A device served in
    /// the notification itself (QEMU under TCG, `Loopback`) has answered
    /// before the first poll; one on another thread or in hardware (an
    /// ioeventfd, vhost) answers later. Linux waits without a bound; a
    /// bound keeps a dead device from hanging the kernel.
    pub completion_polls: u32,
}

impl Default for ViommuConfig {
    fn default() -> Self {
        ViommuConfig {
            request_queue_size: 256,
            event_queue_size: 64,
            completion_polls: 1 << 24,
        }
    }
}

/// Where Linux puts the software MSI window when the device reports no
/// MSI region (`MSI_IOVA_BASE`, `MSI_IOVA_LENGTH`).
pub const SW_MSI_BASE: u64 = 0x800_0000;
/// The software MSI window's length.
pub const SW_MSI_LENGTH: u64 = 0x10_0000;

/// The guest's page size: the largest granule the driver can use.
const PAGE_SIZE: u64 = 4096;

/// One request's buffer: its bytes, then its tail.
const SLOT: u64 = 64;
const TAIL_AT: u64 = 48;
/// One event buffer.
const EVENT: u64 = 32;

/// What the driver has counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViommuStats {
    /// Requests sent, by type (ATTACH, DETACH, MAP, UNMAP, PROBE).
    pub requests: [u64; 5],
    /// Times the driver notified the request queue.
    pub kicks: u64,
    /// Requests the device answered with another status than OK.
    pub refused: u64,
    /// Fault events received.
    pub faults: u64,
}

/// The driver's record of one of its mappings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VMapping {
    end: u64,
    phys: u64,
    flags: u32,
}

/// A domain's state the driver shares between the core's domain object
/// and its endpoints.
#[derive(Debug)]
struct DomainState {
    id: u32,
    bypass: bool,
    identity: bool,
    /// Endpoints (core devices) attached, under `Inner::endpoints`.
    nr_endpoints: Mutex<usize>,
    mappings: Mutex<BTreeMap<u64, VMapping>>,
    /// UNMAPs the device did not complete (`start -> end`): the device may
    /// still translate them. Sent again before anything else of the
    /// domain's, until one completes.
    owed: Mutex<BTreeMap<u64, u64>>,
    /// A DETACH was refused: the device may still hold this domain, so
    /// its id is never given to another (nor while UNMAPs are owed).
    tainted: core::sync::atomic::AtomicBool,
}

/// An endpoint (a device behind the virtio-iommu) as the driver knows it.
#[derive(Debug)]
struct Endpoint {
    ids: Vec<u32>,
    resv: Vec<ReservedRegion>,
    domain: Option<Arc<DomainState>>,
    dev: Weak<Device>,
}

/// The request queue and the requests in flight on it.
#[derive(Debug)]
struct Requests {
    q: DriverQueue,
    slots_at: u64,
    free_slots: Vec<u16>,
    /// Head descriptor -> (slot, request).
    in_flight: BTreeMap<u16, (u16, Request)>,
    /// The first status other than OK of a batched request, by domain.
    refused: BTreeMap<u32, Status>,
    /// UNMAPs not completed, by domain, until that domain's next sync
    /// takes them up into its `owed`.
    unmaps_failed: BTreeMap<u32, Vec<(u64, u64)>>,
    probe_at: u64,
}

#[derive(Debug)]
struct Events {
    q: DriverQueue,
    buffers_at: u64,
}

/// The negotiated features and the configuration read at probe.
#[derive(Clone, Copy, Debug)]
struct Negotiated {
    features: u64,
    pgsize_bitmap: u64,
    geometry: DomainGeometry,
    first_domain: u32,
    last_domain: u32,
    probe_size: u32,
    map_flags: u32,
    completion_polls: u32,
}

struct Inner<M> {
    transport: Arc<dyn Transport>,
    mem: M,
    cfg: Negotiated,
    requests: Mutex<Requests>,
    events: Mutex<Events>,
    endpoints: Mutex<BTreeMap<String, Endpoint>>,
    /// Endpoint id -> device name, for fault events.
    by_id: Mutex<BTreeMap<u32, String>>,
    domain_ids: Mutex<BTreeSet<u32>>,
    stats: Mutex<ViommuStats>,
    /// Says once that UNMAPs stopped completing, and once that they do again.
    wedge: WedgeReport,
}

/// The virtio-iommu driver: set it on a bus with
/// [`Iommu::bus_set_iommu`]. Clones share the driver.
pub struct Viommu<M> {
    inner: Arc<Inner<M>>,
}

impl<M> Clone for Viommu<M> {
    fn clone(&self) -> Self {
        Viommu {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<M> core::fmt::Debug for Viommu<M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Viommu")
            .field("features", &format_args!("{:#x}", self.inner.cfg.features))
            .field(
                "pgsize_bitmap",
                &format_args!("{:#x}", self.inner.cfg.pgsize_bitmap),
            )
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
}

/// The errno Linux's driver gives each status.
pub fn status_errno(s: Status) -> Errno {
    match s {
        Status::Ok | Status::IoErr | Status::DevErr => Errno::EIO,
        Status::Unsupp => Errno::ENOSYS,
        Status::Inval => Errno::EINVAL,
        Status::Range => Errno::ERANGE,
        Status::NoEnt => Errno::ENOENT,
        Status::Fault => Errno::EFAULT,
        Status::NoMem => Errno::ENOMEM,
    }
}

fn queue_errno(e: DriverQueueError) -> Errno {
    match e {
        DriverQueueError::Full { .. } => Errno::ENOSPC,
        DriverQueueError::BadUsed(_) => Errno::EIO,
        DriverQueueError::BadChain | DriverQueueError::Layout => Errno::EINVAL,
    }
}

impl<M: DriverMemory + Send + Sync + 'static> Viommu<M> {
    /// Guest memory the driver needs for its queues and buffers with
    /// `cfg` and a device whose `probe_size` is `probe_size`.
    pub fn memory_needed(cfg: ViommuConfig, probe_size: u32) -> u64 {
        Self::layout(cfg, probe_size).4
    }

    /// (request rings, event rings, event buffers, request slots, end,
    /// probe buffer), offsets from the region's start.
    fn layout(cfg: ViommuConfig, probe_size: u32) -> (u64, u64, u64, u64, u64, u64) {
        let rq = 0;
        let eq = (rq + DriverQueue::area_size(cfg.request_queue_size)).next_multiple_of(16);
        let ev = (eq + DriverQueue::area_size(cfg.event_queue_size)).next_multiple_of(16);
        let slots = ev + EVENT * u64::from(cfg.event_queue_size);
        let probe_at = slots + SLOT * u64::from(cfg.request_queue_size / 2);
        let end = probe_at + size::PROBE as u64 + u64::from(probe_size) + size::TAIL as u64;
        (rq, eq, ev, slots, end, probe_at)
    }

    /// Probes the device behind `transport` (Linux's `viommu_probe`):
    /// negotiates features, reads the configuration, sets up both queues
    /// in `[region, region + len)` of `mem` (which the driver then owns)
    /// and posts the event buffers.
    ///
    /// # Errors
    /// `ENODEV` without VERSION_1 and MAP_UNMAP, when the device
    /// refuses the features or has no request or event queue; `EINVAL`
    /// for a configuration no device may present (no page size, an empty
    /// range, a `probe_size` over 64 KiB), a queue size that is not a
    /// power of two, or a device whose request queue holds one entry.
    /// Queues larger than the device's are shrunk to its maximum; `ENOMEM` when the
    /// region is smaller than [`memory_needed`](Self::memory_needed) or
    /// outside `mem`.
    pub fn probe(
        transport: Arc<dyn Transport>,
        mem: M,
        region: u64,
        len: u64,
        cfg: ViommuConfig,
    ) -> Result<Viommu<M>, Errno> {
        let offered = transport.device_features();
        if offered & feature::VERSION_1 == 0 || offered & feature::MAP_UNMAP == 0 {
            return Err(Errno::ENODEV);
        }
        let wanted = feature::VERSION_1
            | feature::MAP_UNMAP
            | feature::INPUT_RANGE
            | feature::DOMAIN_RANGE
            | feature::PROBE
            | feature::MMIO
            | feature::BYPASS_CONFIG;
        let features = offered & wanted;
        transport.set_driver_features(features)?;
        let mut c = [0u8; size::CONFIG];
        transport.read_config(0, &mut c);
        let has = |f: u64| features & f != 0;
        let pgsize_bitmap = u64_at(&c, offset::PAGE_SIZE_MASK);
        let (input_start, input_end) = if has(feature::INPUT_RANGE) {
            (
                u64_at(&c, offset::INPUT_START),
                u64_at(&c, offset::INPUT_END),
            )
        } else {
            (0, u64::MAX)
        };
        let (first_domain, last_domain) = if has(feature::DOMAIN_RANGE) {
            (
                u32_at(&c, offset::DOMAIN_START),
                u32_at(&c, offset::DOMAIN_END),
            )
        } else {
            (0, u32::MAX)
        };
        let probe_size = if has(feature::PROBE) {
            u32_at(&c, offset::PROBE_SIZE)
        } else {
            0
        };
        if pgsize_bitmap == 0
            || input_start > input_end
            || first_domain > last_domain
            || probe_size > crate::config::MAX_PROBE_SIZE
        {
            return Err(Errno::EINVAL);
        }
        if !cfg.request_queue_size.is_power_of_two()
            || cfg.request_queue_size < 2
            || !cfg.event_queue_size.is_power_of_two()
        {
            return Err(Errno::EINVAL);
        }
        // Queues no larger than the device's (split queue sizes are
        // powers of two, so the largest power of two under its maximum).
        let mut cfg = cfg;
        for (index, size) in [
            (REQUEST_QUEUE, &mut cfg.request_queue_size),
            (EVENT_QUEUE, &mut cfg.event_queue_size),
        ] {
            match transport.queue_max_size(index) {
                Some(0) => return Err(Errno::ENODEV),
                Some(max) if max < *size => *size = 1 << (15 - max.leading_zeros()),
                _ => {}
            }
        }
        if cfg.request_queue_size < 2 {
            return Err(Errno::EINVAL);
        }
        let (rq, eq, ev, slots, end, probe_at) = Self::layout(cfg, probe_size);
        if len < end || region.checked_add(end).is_none() || !region.is_multiple_of(16) {
            return Err(Errno::ENOMEM);
        }
        let at = |off: u64| region + off;
        let requests =
            DriverQueue::new(&mem, cfg.request_queue_size, at(rq)).map_err(|_| Errno::ENOMEM)?;
        let events =
            DriverQueue::new(&mem, cfg.event_queue_size, at(eq)).map_err(|_| Errno::ENOMEM)?;
        for (index, q) in [(REQUEST_QUEUE, &requests), (EVENT_QUEUE, &events)] {
            transport.queue_ready(index, q.layout())?;
        }
        let mut map_flags = map::READ | map::WRITE;
        if has(feature::MMIO) {
            map_flags |= map::MMIO;
        }
        let inner = Inner {
            transport,
            cfg: Negotiated {
                features,
                pgsize_bitmap,
                geometry: DomainGeometry {
                    aperture_start: Iova::new(input_start),
                    aperture_end: Iova::new(input_end),
                    force_aperture: true,
                },
                first_domain,
                last_domain,
                probe_size,
                map_flags,
                completion_polls: cfg.completion_polls,
            },
            requests: Mutex::new(Requests {
                q: requests,
                slots_at: region + slots,
                free_slots: (0..cfg.request_queue_size / 2).rev().collect(),
                in_flight: BTreeMap::new(),
                refused: BTreeMap::new(),
                unmaps_failed: BTreeMap::new(),
                probe_at: region + probe_at,
            }),
            events: Mutex::new(Events {
                q: events,
                buffers_at: region + ev,
            }),
            endpoints: Mutex::new(BTreeMap::new()),
            by_id: Mutex::new(BTreeMap::new()),
            domain_ids: Mutex::new(BTreeSet::new()),
            stats: Mutex::new(ViommuStats::default()),
            wedge: WedgeReport::default(),
            mem,
        };
        {
            let mut e = lock(&inner.events);
            for i in 0..cfg.event_queue_size {
                let buf = e.buffers_at + EVENT * u64::from(i);
                e.q.add(&inner.mem, &[], &[(buf, EVENT as u32)])
                    .map_err(queue_errno)?;
            }
        }
        inner.transport.driver_ok();
        inner.transport.notify(EVENT_QUEUE);
        tracing::debug!(
            features = format_args!("{features:#x}"),
            pgsize_bitmap = format_args!("{pgsize_bitmap:#x}"),
            input = format_args!("{input_start:#x}-{input_end:#x}"),
            domains = format_args!("{first_domain}-{last_domain}"),
            probe_size,
            "viommu_probe"
        );
        Ok(Viommu {
            inner: Arc::new(inner),
        })
    }

    /// Sets the device's `bypass` configuration field: what the DMA of
    /// endpoints attached to no domain does (`true`: it reaches
    /// guest-physical addresses untranslated; `false`: the device blocks
    /// it and reports a fault). Linux's driver leaves the field as the
    /// firmware set it; a kernel that wants no DMA past the IOMMU before
    /// its devices are attached clears it.
    ///
    /// # Errors
    /// `EOPNOTSUPP` when BYPASS_CONFIG was not negotiated or the
    /// transport cannot write configuration space; `EIO` when the field
    /// does not read back as written.
    pub fn set_bypass(&self, bypass: bool) -> Result<(), Errno> {
        let inner = &*self.inner;
        if inner.cfg.features & feature::BYPASS_CONFIG == 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        inner
            .transport
            .write_config(offset::BYPASS, &[u8::from(bypass)])?;
        let mut now = [0u8; 1];
        inner.transport.read_config(offset::BYPASS, &mut now);
        if now[0] != u8::from(bypass) {
            return Err(Errno::EIO);
        }
        Ok(())
    }

    /// The device's `bypass` configuration field as it stands (`None`
    /// without BYPASS_CONFIG).
    pub fn bypass(&self) -> Option<bool> {
        let inner = &*self.inner;
        if inner.cfg.features & feature::BYPASS_CONFIG == 0 {
            return None;
        }
        let mut now = [0u8; 1];
        inner.transport.read_config(offset::BYPASS, &mut now);
        Some(now[0] == 1)
    }

    /// The input range the device translates, first and last address
    /// (`input_range`, or all of it without INPUT_RANGE): every domain's
    /// aperture. The page sizes are [`IommuOps::pgsize_bitmap`].
    pub fn input_range(&self) -> (u64, u64) {
        let g = self.inner.cfg.geometry;
        (g.aperture_start.raw(), g.aperture_end.raw())
    }

    /// The features negotiated.
    pub fn features(&self) -> u64 {
        self.inner.cfg.features
    }

    /// What the driver has counted.
    pub fn stats(&self) -> ViommuStats {
        *lock(&self.inner.stats)
    }

    /// The reserved regions PROBE reported for `dev` (without the
    /// software MSI window the driver adds when there is no MSI region).
    pub fn probed_regions(&self, dev: &Device) -> Vec<ReservedRegion> {
        lock(&self.inner.endpoints)
            .get(dev.name())
            .map(|e| e.resv.clone())
            .unwrap_or_default()
    }

    /// Takes the fault reports the device has written into event buffers
    /// (the event queue's interrupt handler): each is reported to the
    /// core, through the faulting device's current domain, and returned;
    /// the buffers go back to the device.
    pub fn handle_events(&self) -> Vec<Fault> {
        let inner = &*self.inner;
        let mut faults = Vec::new();
        {
            let mut e = lock(&inner.events);
            loop {
                let (head, len) = match e.q.pop_used(&inner.mem) {
                    Ok(Some(u)) => u,
                    Ok(None) => break,
                    Err(err) => {
                        tracing::error!(%err, "event queue");
                        break;
                    }
                };
                let buf = e.buffers_at + EVENT * u64::from(head);
                let mut b = [0u8; size::FAULT];
                let read = inner.mem.read(buf, &mut b);
                if read && len as usize >= size::FAULT {
                    faults.push(Fault::decode(&b));
                } else {
                    tracing::warn!(len, "event buffer returned without a fault report");
                }
                if let Err(err) = e.q.add(&inner.mem, &[], &[(buf, EVENT as u32)]) {
                    tracing::error!(%err, "could not post an event buffer again");
                }
            }
        }
        inner.transport.notify(EVENT_QUEUE);
        lock(&inner.stats).faults += faults.len() as u64;
        for f in &faults {
            self.report(f);
        }
        faults
    }

    fn report(&self, f: &Fault) {
        let inner = &*self.inner;
        let name = lock(&inner.by_id).get(&f.endpoint).cloned();
        let dev = name.and_then(|n| lock(&inner.endpoints).get(&n).and_then(|e| e.dev.upgrade()));
        let access = if f.flags & crate::spec::fault::F_WRITE != 0 {
            FaultAccess::Write
        } else {
            FaultAccess::Read
        };
        let _s = tracing::debug_span!(
            "viommu_fault",
            endpoint = f.endpoint,
            reason = f.reason,
            address = format_args!("{:#x}", f.address)
        )
        .entered();
        let domain = dev
            .as_ref()
            .and_then(|d| d.iommu_group())
            .and_then(|g: Group| g.domain());
        match (dev, domain) {
            (Some(dev), Some(domain)) => {
                let _ = domain.report_fault(&dev, Iova::new(f.address), access);
            }
            _ => tracing::warn!(
                endpoint = f.endpoint,
                "fault from an endpoint without a domain"
            ),
        }
    }

    /// Sends PROBE for `endpoint` and reads its RESV_MEM properties.
    fn probe_endpoint(&self, endpoint: u32) -> Result<Vec<ReservedRegion>, Errno> {
        let inner = &*self.inner;
        let ps = inner.cfg.probe_size as usize;
        let mut r = lock(&inner.requests);
        self.sync_locked(&mut r);
        let request = Request::Probe { endpoint };
        let bytes = request.encode();
        let readable = r.probe_at;
        let writable = r.probe_at + bytes.len() as u64;
        let mem = &inner.mem;
        let io = || {
            tracing::error!("probe buffer outside the driver's memory");
            Errno::EIO
        };
        if !mem.write(readable, &bytes) || !mem.write(writable, &alloc::vec![0u8; ps + size::TAIL])
        {
            return Err(io());
        }
        let wlen = (ps + size::TAIL) as u32;
        let _s = tracing::debug_span!("virtio_request", kind = "PROBE", endpoint).entered();
        let head =
            r.q.add(mem, &[(readable, bytes.len() as u32)], &[(writable, wlen)])
                .map_err(queue_errno)?;
        r.in_flight.insert(head, (u16::MAX, request));
        let used = self.complete_locked(&mut r, head)?;
        let mut out = alloc::vec![0u8; ps + size::TAIL];
        if !mem.read(writable, &mut out) {
            return Err(io());
        }
        let status = if (used as usize) < size::TAIL {
            Status::IoErr
        } else {
            Status::from_u8(out[ps]).unwrap_or(Status::DevErr)
        };
        tracing::debug!(status = status.name(), used, "virtio_reply");
        if status != Status::Ok {
            return Err(status_errno(status));
        }
        parse_properties(&out[..ps])
    }

    /// Queues `request` without waiting; when the queue is full, the
    /// requests in it are completed first.
    fn add_request(&self, request: Request) -> Result<(), Errno> {
        let inner = &*self.inner;
        let mut r = lock(&inner.requests);
        if r.free_slots.is_empty() || r.q.free() < 2 {
            self.sync_locked(&mut r);
        }
        let slot = r.free_slots.pop().ok_or(Errno::ENOSPC)?;
        let at = r.slots_at + SLOT * u64::from(slot);
        let bytes = request.encode();
        let tail = at + TAIL_AT;
        let written = inner.mem.write(at, &bytes) && inner.mem.write(tail, &[0xff; 4]);
        let head = if written {
            r.q.add(
                &inner.mem,
                &[(at, bytes.len() as u32)],
                &[(tail, size::TAIL as u32)],
            )
            .map_err(queue_errno)
        } else {
            Err(Errno::EIO)
        };
        let head = match head {
            Ok(h) => h,
            Err(e) => {
                r.free_slots.push(slot);
                return Err(e);
            }
        };
        tracing::trace!(%request, "queued");
        r.in_flight.insert(head, (slot, request));
        let kind = usize::from(request.kind()).saturating_sub(1).min(4);
        lock(&inner.stats).requests[kind] += 1;
        Ok(())
    }

    /// Sends `request` and waits for its status.
    fn send_sync(&self, request: Request) -> Result<(), Errno> {
        let inner = &*self.inner;
        self.add_request(request)?;
        let mut r = lock(&inner.requests);
        self.sync_locked(&mut r);
        match r.refused.remove(&request_domain(&request)) {
            Some(s) => Err(status_errno(s)),
            None => Ok(()),
        }
    }

    /// Notifies the device and takes back every request in flight,
    /// recording the refused ones by domain.
    fn sync_locked(&self, r: &mut Requests) {
        if r.in_flight.is_empty() {
            return;
        }
        let inner = &*self.inner;
        let _s = tracing::debug_span!("viommu_sync_req", requests = r.in_flight.len()).entered();
        lock(&inner.stats).kicks += 1;
        inner.transport.notify(REQUEST_QUEUE);
        self.drain_locked(r, None);
        let mut polls = 0;
        while !r.in_flight.is_empty() && polls < inner.cfg.completion_polls {
            core::hint::spin_loop();
            self.drain_locked(r, None);
            polls += 1;
        }
        if !r.in_flight.is_empty() {
            // A device that keeps buffers this long is broken. Its
            // requests stay in flight (their memory is the device's) and
            // fail.
            tracing::error!(
                left = r.in_flight.len(),
                "the device did not complete the requests"
            );
            let left: Vec<Request> = r.in_flight.values().map(|(_, q)| *q).collect();
            for q in left {
                r.refused.entry(request_domain(&q)).or_insert(Status::IoErr);
                note_failed_unmap(r, &q);
            }
        }
    }

    /// Completes the PROBE at `head` (and whatever else is in flight);
    /// returns its used length.
    fn complete_locked(&self, r: &mut Requests, head: u16) -> Result<u32, Errno> {
        let inner = &*self.inner;
        {
            let mut stats = lock(&inner.stats);
            stats.kicks += 1;
            stats.requests[4] += 1;
        }
        inner.transport.notify(REQUEST_QUEUE);
        let mut used = self.drain_locked(r, Some(head));
        let mut polls = 0;
        while used.is_none() && polls < inner.cfg.completion_polls {
            core::hint::spin_loop();
            used = self.drain_locked(r, Some(head));
            polls += 1;
        }
        used.ok_or(Errno::EIO)
    }

    fn drain_locked(&self, r: &mut Requests, want: Option<u16>) -> Option<u32> {
        let inner = &*self.inner;
        let mut wanted = None;
        loop {
            let (head, len) = match r.q.pop_used(&inner.mem) {
                Ok(Some(u)) => u,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(%e, "request queue");
                    break;
                }
            };
            let Some((slot, request)) = r.in_flight.remove(&head) else {
                continue;
            };
            if Some(head) == want {
                wanted = Some(len);
                continue;
            }
            let at = r.slots_at + SLOT * u64::from(slot);
            let mut t = [0u8; 4];
            let status = if (len as usize) < size::TAIL || !inner.mem.read(at + TAIL_AT, &mut t) {
                Status::IoErr
            } else {
                Status::from_u8(t[0]).unwrap_or(Status::DevErr)
            };
            r.free_slots.push(slot);
            tracing::debug!(%request, status = status.name(), "reply");
            // An UNMAP of a domain the device no longer has removed
            // nothing because nothing is there: done.
            let gone = status == Status::NoEnt && matches!(request, Request::Unmap { .. });
            if status != Status::Ok && !gone {
                lock(&inner.stats).refused += 1;
                if matches!(request, Request::Unmap { .. } | Request::Detach { .. }) {
                    tracing::error!(%request, status = status.name(), "the device refused to take a translation away");
                }
                r.refused.entry(request_domain(&request)).or_insert(status);
                note_failed_unmap(r, &request);
            }
        }
        wanted
    }

    /// Completes the requests in flight; the first refusal for `domain`
    /// since the last call, if any.
    fn sync_domain(&self, domain: u32) -> Result<(), Errno> {
        let mut r = lock(&self.inner.requests);
        self.sync_locked(&mut r);
        match r.refused.remove(&domain) {
            Some(s) => Err(status_errno(s)),
            None => Ok(()),
        }
    }

    /// Queues again the UNMAPs of `d` the device did not complete, so that
    /// they run before whatever the domain sends next.
    ///
    /// # Errors
    /// A request could not be queued (the UNMAPs not queued stay owed).
    fn resend_owed(&self, d: &DomainState) -> Result<(), Errno> {
        let owed = core::mem::take(&mut *lock(&d.owed));
        let mut left = owed.into_iter();
        for (start, end) in left.by_ref() {
            if let Err(e) = self.add_request(Request::Unmap {
                domain: d.id,
                virt_start: start,
                virt_end: end,
                reserved: 0,
            }) {
                let mut o = lock(&d.owed);
                o.insert(start, end);
                o.extend(left);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Sends what `d` owes, completes the requests in flight, and takes up
    /// `d`'s UNMAPs that failed into its debt: `Err` when any refusal of
    /// `d`'s came back, or an UNMAP is still owed.
    fn sync_owed(&self, d: &DomainState) -> Result<(), Errno> {
        let queued = self.resend_owed(d);
        let synced = self.sync_domain(d.id);
        let failed = lock(&self.inner.requests).unmaps_failed.remove(&d.id);
        let mut owed = lock(&d.owed);
        if let Some(failed) = failed {
            owed.extend(failed);
        }
        let still_owed = !owed.is_empty();
        drop(owed);
        if still_owed {
            self.inner.wedge.failed("virtio-iommu", Errno::EIO);
        } else if synced.is_ok() {
            self.inner.wedge.completed("virtio-iommu");
        }
        queued?;
        synced?;
        if still_owed {
            return Err(Errno::EIO);
        }
        Ok(())
    }

    fn alloc_domain_id(&self) -> Result<u32, Errno> {
        let mut ids = lock(&self.inner.domain_ids);
        let (first, last) = (self.inner.cfg.first_domain, self.inner.cfg.last_domain);
        // The lowest free id: after the last run of taken ids from `first`.
        let mut id = first;
        for &taken in ids.range(first..=last) {
            if taken != id {
                break;
            }
            id = id.checked_add(1).ok_or(Errno::ENOSPC)?;
        }
        if id > last || (id == last && ids.contains(&last)) {
            return Err(Errno::ENOSPC);
        }
        ids.insert(id);
        Ok(id)
    }

    /// Moves `ids` of an endpoint into `to` (or out of any domain).
    fn send_attach(&self, ids: &[u32], to: &DomainState) -> Result<usize, (usize, Errno)> {
        for (n, &endpoint) in ids.iter().enumerate() {
            let req = Request::Attach {
                domain: to.id,
                endpoint,
                flags: if to.bypass { attach::BYPASS } else { 0 },
                reserved: 0,
            };
            let _s = tracing::debug_span!("viommu_attach", domain = to.id, endpoint).entered();
            if let Err(e) = self.send_sync(req) {
                return Err((n, e));
            }
        }
        Ok(ids.len())
    }

    /// Counts one more endpoint in `d`; for its first, sends MAP for
    /// every mapping `d` records (the device forgot them with the domain's
    /// last endpoint, or never had them). The mappings stay locked until
    /// the count is up, so that a concurrent `map_pages` either is among
    /// them or sees the domain live and sends its own MAP.
    fn count_in(&self, d: &DomainState) -> Result<(), Errno> {
        let m = lock(&d.mappings);
        let mut n = lock(&d.nr_endpoints);
        *n += 1;
        if *n > 1 || m.is_empty() {
            return Ok(());
        }
        drop(n);
        let _s =
            tracing::debug_span!("viommu_replay_mappings", domain = d.id, n = m.len()).entered();
        // UNMAPs still owed go first: the device may still hold the domain.
        let result = self.resend_owed(d).and_then(|()| {
            m.iter().try_for_each(|(&start, v)| {
                self.add_request(Request::Map {
                    domain: d.id,
                    virt_start: start,
                    virt_end: v.end,
                    phys_start: v.phys,
                    flags: v.flags,
                })
            })
        });
        drop(m);
        let result = result.and_then(|()| self.sync_owed(d));
        if result.is_err() {
            *lock(&d.nr_endpoints) -= 1;
        }
        result
    }

    fn attach(&self, to: &Arc<DomainState>, dev: &Arc<Device>) -> Result<(), Errno> {
        let inner = &*self.inner;
        let mut eps = lock(&inner.endpoints);
        let ep = eps.get_mut(dev.name()).ok_or(Errno::ENODEV)?;
        if ep.domain.as_ref().is_some_and(|d| Arc::ptr_eq(d, to)) {
            return Ok(());
        }
        if to.identity && !to.bypass {
            fill_identity(to, &ep.resv, inner.cfg.pgsize_bitmap, inner.cfg.geometry);
        }
        let ids = ep.ids.clone();
        if let Err((moved, e)) = self.send_attach(&ids, to) {
            // The ids already moved go back where they were.
            if let Some(old) = ep.domain.clone() {
                let _ = self.send_attach(&ids[..moved], &old);
            } else {
                for &endpoint in &ids[..moved] {
                    let _ = self.send_sync(Request::Detach {
                        domain: to.id,
                        endpoint,
                    });
                }
            }
            return Err(e);
        }
        if let Err(e) = self.count_in(to) {
            // The device holds part of the domain: take the endpoint out
            // again (the device forgets the domain with it) and back to
            // where it was.
            for &endpoint in &ids {
                let _ = self.send_sync(Request::Detach {
                    domain: to.id,
                    endpoint,
                });
            }
            if let Some(old) = ep.domain.clone() {
                // The device forgot the old domain if the endpoint was
                // all it had.
                let alone = *lock(&old.nr_endpoints) == 1;
                if self.send_attach(&ids, &old).is_ok() && alone {
                    *lock(&old.nr_endpoints) -= 1;
                    if self.count_in(&old).is_err() {
                        ep.domain = None;
                        return Err(e);
                    }
                }
            }
            return Err(e);
        }
        if let Some(old) = ep.domain.replace(Arc::clone(to)) {
            let mut n = lock(&old.nr_endpoints);
            *n = n.saturating_sub(1);
        }
        Ok(())
    }

    fn detach(&self, from: &Arc<DomainState>, dev: &Device) {
        let inner = &*self.inner;
        let mut eps = lock(&inner.endpoints);
        let Some(ep) = eps.get_mut(dev.name()) else {
            return;
        };
        if !ep.domain.as_ref().is_some_and(|d| Arc::ptr_eq(d, from)) {
            return;
        }
        for &endpoint in &ep.ids {
            let _s = tracing::debug_span!("viommu_detach", domain = from.id, endpoint).entered();
            if let Err(e) = self.send_sync(Request::Detach {
                domain: from.id,
                endpoint,
            }) {
                tracing::error!(%e, endpoint, "DETACH refused");
                from.tainted
                    .store(true, core::sync::atomic::Ordering::Relaxed);
            }
        }
        ep.domain = None;
        let mut n = lock(&from.nr_endpoints);
        *n = n.saturating_sub(1);
    }
}

/// Keeps a failed UNMAP for its domain's next sync to take up.
fn note_failed_unmap(r: &mut Requests, q: &Request) {
    if let Request::Unmap {
        domain,
        virt_start,
        virt_end,
        ..
    } = *q
    {
        let failed = r.unmaps_failed.entry(domain).or_default();
        if failed.len() < MAX_OWED_UNMAPS {
            failed.push((virt_start, virt_end));
        }
    }
}

/// UNMAPs a domain may owe before new ones are refused (see `unmap_pages`).
const MAX_OWED_UNMAPS: usize = 1024;

/// The domain a request concerns, for its refusal to reach the right
/// caller (PROBE and requests without one: `u32::MAX`).
fn request_domain(r: &Request) -> u32 {
    match *r {
        Request::Attach { domain, .. }
        | Request::Detach { domain, .. }
        | Request::Map { domain, .. }
        | Request::Unmap { domain, .. } => domain,
        Request::Probe { .. } => u32::MAX,
    }
}

/// RESV_MEM properties of a PROBE reply, as reserved regions, sorted.
/// A property that runs past the buffer, or a region whose end is below
/// its start, is a malformed reply (`EINVAL`); unknown property types are
/// skipped; an unknown subtype is taken as RESERVED, as Linux does.
pub fn parse_properties(props: &[u8]) -> Result<Vec<ReservedRegion>, Errno> {
    let mut out: Vec<ReservedRegion> = Vec::new();
    let mut cur = 0usize;
    while cur + size::PROPERTY_HEAD <= props.len() {
        let ty = u16::from_le_bytes([props[cur], props[cur + 1]]) & probe::TYPE_MASK;
        if ty == probe::NONE {
            break;
        }
        let len = usize::from(u16::from_le_bytes([props[cur + 2], props[cur + 3]]));
        let body = cur + size::PROPERTY_HEAD;
        let next = body.checked_add(len).ok_or(Errno::EINVAL)?;
        if next > props.len() {
            return Err(Errno::EINVAL);
        }
        if ty == probe::RESV_MEM {
            if len < size::RESV_MEM - size::PROPERTY_HEAD {
                return Err(Errno::EINVAL);
            }
            let b = &props[body..next];
            let start = u64_at(b, 4);
            let end = u64_at(b, 12);
            if end < start {
                return Err(Errno::EINVAL);
            }
            let length = (end - start).checked_add(1).ok_or(Errno::EOVERFLOW)?;
            let region = match b[0] {
                resv::MSI => ReservedRegion::new(
                    start,
                    length,
                    Prot::WRITE | Prot::NOEXEC | Prot::MMIO,
                    ResvType::Msi,
                ),
                _ => ReservedRegion::new(start, length, Prot::NONE, ResvType::Reserved),
            };
            let at = out.partition_point(|r| r.start.raw() <= start);
            out.insert(at, region);
        } else {
            tracing::debug!(ty, "unknown PROBE property skipped");
        }
        cur = next;
    }
    Ok(out)
}

/// Fills an identity domain of a device without BYPASS_CONFIG with 1:1
/// mappings of the aperture, around `resv` (Linux's
/// `viommu_domain_map_identity`), once.
///
/// Every bound is an inclusive end, so a region or an aperture that ends
/// at 2^64 - 1 is one more range, not an overflow.
fn fill_identity(d: &DomainState, resv: &[ReservedRegion], pgsize_bitmap: u64, g: DomainGeometry) {
    let mut m = lock(&d.mappings);
    if !m.is_empty() {
        return;
    }
    let flags = map::READ | map::WRITE;
    for (first, last) in identity_ranges(resv, pgsize_bitmap, g) {
        m.insert(
            first,
            VMapping {
                end: last,
                phys: first,
                flags,
            },
        );
    }
}

/// The whole granules of the aperture outside every region of `resv`, as
/// `(first, last)` ranges in address order.
pub(crate) fn identity_ranges(
    resv: &[ReservedRegion],
    pgsize_bitmap: u64,
    g: DomainGeometry,
) -> Vec<(u64, u64)> {
    let granule = pgsize_bitmap & pgsize_bitmap.wrapping_neg();
    let mask = granule.wrapping_sub(1);
    let mut out = Vec::new();
    // The aperture's whole granules: first rounded up, last rounded down.
    let Some(mut next) = g.aperture_start.raw().checked_next_multiple_of(granule) else {
        return out;
    };
    let end = g.aperture_end.raw();
    let limit = if end & mask == mask {
        end
    } else {
        match (end & !mask).checked_sub(1) {
            Some(l) => l,
            None => return out,
        }
    };
    let mut regions: Vec<(u64, u64)> = resv
        .iter()
        .filter(|r| r.length != 0)
        .map(|r| (r.start.raw() & !mask, r.last() | mask))
        .collect();
    regions.sort_unstable();
    for (rs, re) in regions {
        if next > limit {
            return out;
        }
        if re < next || rs > limit {
            continue;
        }
        if rs > next {
            out.push((next, rs - 1));
        }
        if re >= limit {
            // The region reaches the end of the aperture.
            return out;
        }
        next = re + 1;
    }
    if next <= limit {
        out.push((next, limit));
    }
    out
}

impl<M: DriverMemory + Send + Sync + 'static> IommuOps for Viommu<M> {
    fn name(&self) -> &str {
        "virtio-iommu"
    }

    /// Probes the endpoint (PROBE for its first id, as Linux does) and
    /// gives it a group. A device without ids is not behind this IOMMU.
    fn add_device(&self, iommu: &Iommu, dev: &Arc<Device>) -> Result<(), Errno> {
        let Some(&first) = dev.stream_ids().first() else {
            return Ok(());
        };
        let resv = if self.inner.cfg.probe_size > 0 {
            self.probe_endpoint(first)?
        } else {
            Vec::new()
        };
        lock(&self.inner.endpoints).insert(
            String::from(dev.name()),
            Endpoint {
                ids: dev.stream_ids().to_vec(),
                resv,
                domain: None,
                dev: Arc::downgrade(dev),
            },
        );
        {
            let mut by_id = lock(&self.inner.by_id);
            for &id in dev.stream_ids() {
                by_id.insert(id, String::from(dev.name()));
            }
        }
        iommu.group_get_for_dev(dev).map(drop).inspect_err(|_| {
            self.forget(dev);
        })
    }

    fn remove_device(&self, iommu: &Iommu, dev: &Arc<Device>) {
        iommu.group_remove_device(dev);
        let current = lock(&self.inner.endpoints)
            .get(dev.name())
            .and_then(|e| e.domain.clone());
        if let Some(d) = current {
            self.detach(&d, dev);
        }
        self.forget(dev);
    }

    fn domain_alloc(&self, ty: DomainType) -> Result<Box<dyn DomainOps>, Errno> {
        if !(ty.is_paging() || ty == DomainType::Identity) {
            return Err(Errno::EOPNOTSUPP);
        }
        let granule = self.inner.cfg.pgsize_bitmap & self.inner.cfg.pgsize_bitmap.wrapping_neg();
        if granule > PAGE_SIZE {
            return Err(Errno::ENODEV);
        }
        let id = self.alloc_domain_id()?;
        let bypass =
            ty == DomainType::Identity && self.inner.cfg.features & feature::BYPASS_CONFIG != 0;
        Ok(Box::new(ViommuDomain {
            viommu: self.clone(),
            state: Arc::new(DomainState {
                id,
                bypass,
                identity: ty == DomainType::Identity,
                nr_endpoints: Mutex::new(0),
                mappings: Mutex::new(BTreeMap::new()),
                owed: Mutex::new(BTreeMap::new()),
                tainted: core::sync::atomic::AtomicBool::new(false),
            }),
        }))
    }

    fn get_resv_regions(&self, dev: &Device) -> Vec<ReservedRegion> {
        let mut v = dev.firmware_resv_regions().to_vec();
        let probed = self.probed_regions(dev);
        let has_msi = probed.iter().any(|r| r.ty == ResvType::Msi);
        v.extend(probed);
        if !has_msi {
            v.push(ReservedRegion::new(
                SW_MSI_BASE,
                SW_MSI_LENGTH,
                Prot::WRITE | Prot::NOEXEC | Prot::MMIO,
                ResvType::SwMsi,
            ));
        }
        v
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.inner.cfg.pgsize_bitmap
    }

    fn capable(&self, cap: Capability) -> bool {
        matches!(cap, Capability::CacheCoherency | Capability::DeferredFlush)
    }
}

impl<M> Viommu<M> {
    fn forget(&self, dev: &Device) {
        lock(&self.inner.endpoints).remove(dev.name());
        let mut by_id = lock(&self.inner.by_id);
        for id in dev.stream_ids() {
            if by_id.get(id).is_some_and(|n| n == dev.name()) {
                by_id.remove(id);
            }
        }
    }
}

/// A domain of the virtio-iommu driver.
pub struct ViommuDomain<M: DriverMemory + Send + Sync + 'static> {
    viommu: Viommu<M>,
    state: Arc<DomainState>,
}

impl<M: DriverMemory + Send + Sync + 'static> ViommuDomain<M> {
    /// The domain's id on the device.
    pub fn id(&self) -> u32 {
        self.state.id
    }

    /// Whether the domain is a bypass domain on the device.
    pub fn is_bypass(&self) -> bool {
        self.state.bypass
    }

    /// The mappings the driver records (what it sent in MAP requests, or
    /// will send when the domain is attached), by address.
    pub fn mappings(&self) -> Vec<crate::Mapping> {
        lock(&self.state.mappings)
            .iter()
            .map(|(&s, m)| crate::Mapping {
                virt_start: s,
                virt_end: m.end,
                phys_start: m.phys,
                flags: m.flags,
            })
            .collect()
    }

    fn live(&self) -> bool {
        *lock(&self.state.nr_endpoints) > 0
    }
}

impl<M: DriverMemory + Send + Sync + 'static> Drop for ViommuDomain<M> {
    fn drop(&mut self) {
        // Last chance for what it owes; a device that still holds the
        // domain keeps its id from any other.
        if !lock(&self.state.owed).is_empty() {
            let _ = self.viommu.sync_owed(&self.state);
        }
        if self
            .state
            .tainted
            .load(core::sync::atomic::Ordering::Relaxed)
            || !lock(&self.state.owed).is_empty()
        {
            tracing::error!(
                domain = self.state.id,
                "the device may still hold this domain: its id is not reused"
            );
            return;
        }
        lock(&self.viommu.inner.domain_ids).remove(&self.state.id);
    }
}

impl<M: DriverMemory + Send + Sync + 'static> DomainOps for ViommuDomain<M> {
    fn attach_dev(&self, _domain: &iommu_core::Domain, dev: &Arc<Device>) -> Result<(), Errno> {
        self.viommu.attach(&self.state, dev)
    }

    fn detach_dev(&self, _domain: &iommu_core::Domain, dev: &Arc<Device>) {
        self.viommu.detach(&self.state, dev);
    }

    fn paging(&self) -> Option<&dyn PagingOps> {
        (!self.state.identity).then_some(self as &dyn PagingOps)
    }

    fn geometry(&self) -> Option<DomainGeometry> {
        Some(self.viommu.inner.cfg.geometry)
    }

    fn iotlb_sync_map(&self, _iova: Iova, _size: u64) -> Result<(), Errno> {
        if !self.live() {
            return Ok(());
        }
        self.viommu.sync_owed(&self.state)
    }

    /// Completes the queued UNMAPs; one the device did not complete stays
    /// owed (the device may still translate it) and is sent again first
    /// at the domain's next sync.
    fn iotlb_sync(&self, _gather: &IotlbGather) -> Result<(), Errno> {
        self.viommu.sync_owed(&self.state)
    }

    /// MAP and UNMAP complete one by one, so the device caches nothing
    /// beyond them: what a flush-all owes is the UNMAPs that failed.
    fn flush_iotlb_all(&self) -> Result<(), Errno> {
        if !self.live() && lock(&self.state.owed).is_empty() {
            return Ok(());
        }
        self.viommu.sync_owed(&self.state)
    }

    fn as_any(&self) -> Option<&dyn core::any::Any> {
        Some(self)
    }
}

impl<M: DriverMemory + Send + Sync + 'static> PagingOps for ViommuDomain<M> {
    fn map_pages(
        &self,
        iova: Iova,
        paddr: PhysAddr,
        pgsize: u64,
        pgcount: usize,
        prot: Prot,
    ) -> Result<u64, MapPagesError> {
        let size = pgsize
            .checked_mul(pgcount as u64)
            .filter(|&s| s != 0)
            .ok_or(Errno::EOVERFLOW)?;
        let end = iova.raw().checked_add(size - 1).ok_or(Errno::EOVERFLOW)?;
        let mut flags = 0;
        if prot.contains(Prot::READ) {
            flags |= map::READ;
        }
        if prot.contains(Prot::WRITE) {
            flags |= map::WRITE;
        }
        if prot.contains(Prot::MMIO) {
            flags |= map::MMIO;
        }
        if flags & !self.viommu.inner.cfg.map_flags != 0 {
            return Err(Errno::EINVAL.into());
        }
        let mut m = lock(&self.state.mappings);
        let clash = m
            .range(..=end)
            .next_back()
            .is_some_and(|(_, v)| v.end >= iova.raw());
        if clash {
            return Err(Errno::EEXIST.into());
        }
        m.insert(
            iova.raw(),
            VMapping {
                end,
                phys: paddr.raw(),
                flags,
            },
        );
        if self.live() {
            // An UNMAP still owed over this range must run first, or the
            // device would refuse the MAP as overlapping.
            let overlaps = lock(&self.state.owed)
                .range(..=end)
                .next_back()
                .is_some_and(|(_, &e)| e >= iova.raw());
            if overlaps {
                if let Err(e) = self.viommu.resend_owed(&self.state) {
                    m.remove(&iova.raw());
                    return Err(e.into());
                }
            }
            let r = self.viommu.add_request(Request::Map {
                domain: self.state.id,
                virt_start: iova.raw(),
                virt_end: end,
                phys_start: paddr.raw(),
                flags,
            });
            if let Err(e) = r {
                m.remove(&iova.raw());
                return Err(e.into());
            }
        }
        Ok(size)
    }

    /// Removes whole mappings from the one holding `iova` on, as long as
    /// they follow each other without a hole and start in the range: an
    /// UNMAP may not split a mapping, so one that starts below `iova` or
    /// runs past the range goes whole, as a large page does.
    fn unmap_pages(
        &self,
        iova: Iova,
        pgsize: u64,
        pgcount: usize,
        gather: &mut IotlbGather,
    ) -> Unmapped {
        let last = iova
            .raw()
            .saturating_add(pgsize.saturating_mul(pgcount as u64).saturating_sub(1));
        if lock(&self.state.owed).len() >= MAX_OWED_UNMAPS {
            // The device completes none of this domain's UNMAPs: keep the
            // mapping recorded (it is still there) rather than owe more.
            tracing::error!(
                domain = self.state.id,
                "too many UNMAPs owed; not unmapping"
            );
            return Unmapped::NOTHING;
        }
        let mut m = lock(&self.state.mappings);
        let Some((&start, &first)) = m
            .range(..=iova.raw())
            .next_back()
            .filter(|(_, v)| v.end >= iova.raw())
        else {
            return Unmapped::NOTHING;
        };
        let mut removed = alloc::vec![(start, first)];
        let mut end = first.end;
        while end < last {
            let Some((&s, &v)) = m.range(end + 1..).next() else {
                break;
            };
            if s != end + 1 || s > last {
                break;
            }
            removed.push((s, v));
            end = v.end;
        }
        for (s, _) in &removed {
            m.remove(s);
        }
        if self.live() {
            let r = self.viommu.add_request(Request::Unmap {
                domain: self.state.id,
                virt_start: start,
                virt_end: end,
                reserved: 0,
            });
            if let Err(e) = r {
                tracing::error!(%e, "could not queue UNMAP");
                for (s, v) in removed {
                    m.insert(s, v);
                }
                return Unmapped::NOTHING;
            }
        }
        let size = (end - start).saturating_add(1);
        gather.add_range(Iova::new(start), size);
        Unmapped::new(Iova::new(start), size)
    }

    fn iova_to_phys(&self, iova: Iova) -> Option<PhysAddr> {
        let m = lock(&self.state.mappings);
        let (&s, v) = m.range(..=iova.raw()).next_back()?;
        (v.end >= iova.raw()).then(|| PhysAddr::new(v.phys + (iova.raw() - s)))
    }

    fn first_mapping(&self, start: Iova, last: Iova) -> Option<(Iova, u64)> {
        let m = lock(&self.state.mappings);
        let holding = m
            .range(..=start.raw())
            .next_back()
            .filter(|(_, v)| v.end >= start.raw());
        let (&s, v) = holding.or_else(|| m.range(start.raw()..=last.raw()).next())?;
        Some((Iova::new(s), (v.end - s).saturating_add(1)))
    }
}

/// A transport to a [`VirtioIommu`](crate::VirtioIommu) in the same process: a notification
/// serves the queue at once, as a VMM's queue handler would.
#[cfg(feature = "vmm")]
pub struct Loopback<M> {
    iommu: Arc<crate::VirtioIommu>,
    mem: M,
    queues: Mutex<[Option<virtio_queue::Queue>; 2]>,
    /// Notifications of the request queue go unserved while set.
    paused: core::sync::atomic::AtomicBool,
}

#[cfg(feature = "vmm")]
impl<M> core::fmt::Debug for Loopback<M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Loopback").finish_non_exhaustive()
    }
}

#[cfg(feature = "vmm")]
impl<M: vm_memory::GuestMemory + Send + Sync> Loopback<M> {
    /// A transport to `iommu` over `mem`.
    pub fn new(iommu: Arc<crate::VirtioIommu>, mem: M) -> Loopback<M> {
        Loopback {
            iommu,
            mem,
            queues: Mutex::new([None, None]),
            paused: core::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Stops (or resumes) serving the request queue, as a VMM whose
    /// virtio-iommu thread is stuck: requests stay in flight until a
    /// notification after the pause ends. For failure tests.
    pub fn pause(&self, paused: bool) {
        self.paused
            .store(paused, core::sync::atomic::Ordering::SeqCst);
    }

    /// The device.
    pub fn device(&self) -> &Arc<crate::VirtioIommu> {
        &self.iommu
    }

    /// Writes pending fault reports into the event buffers the driver
    /// posted (what the VMM does when a fault is reported); returns how
    /// many it wrote.
    pub fn deliver_events(&self) -> u32 {
        let mut q = lock(&self.queues);
        match q[usize::from(EVENT_QUEUE)].as_mut() {
            Some(q) => match self.iommu.process_events(q, &self.mem) {
                Ok(s) => s.used,
                Err(e) => {
                    tracing::error!(%e, "event queue");
                    0
                }
            },
            None => 0,
        }
    }
}

#[cfg(feature = "vmm")]
impl<M: vm_memory::GuestMemory + Send + Sync> Transport for Loopback<M> {
    fn device_features(&self) -> u64 {
        self.iommu.with_device(|d| d.offered())
    }

    fn set_driver_features(&self, features: u64) -> Result<(), Errno> {
        self.iommu
            .with_device(|d| d.negotiate(features))
            .map(drop)
            .map_err(|_| Errno::ENODEV)
    }

    fn read_config(&self, at: usize, buf: &mut [u8]) {
        self.iommu.with_device(|d| d.read_config(at, buf));
    }

    fn write_config(&self, at: usize, data: &[u8]) -> Result<(), Errno> {
        self.iommu.with_device(|d| d.write_config(at, data));
        Ok(())
    }

    fn queue_ready(&self, index: u16, l: QueueLayout) -> Result<(), Errno> {
        use vm_memory::GuestAddress;
        let q = crate::queue::ready_queue(
            l.size,
            GuestAddress(l.desc),
            GuestAddress(l.avail),
            GuestAddress(l.used),
        )
        .map_err(|_| Errno::EINVAL)?;
        let mut qs = lock(&self.queues);
        let slot = qs.get_mut(usize::from(index)).ok_or(Errno::EINVAL)?;
        *slot = Some(q);
        Ok(())
    }

    fn notify(&self, index: u16) {
        let mut qs = lock(&self.queues);
        let Some(q) = qs.get_mut(usize::from(index)).and_then(Option::as_mut) else {
            return;
        };
        if index == REQUEST_QUEUE && self.paused.load(core::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let served = if index == REQUEST_QUEUE {
            self.iommu.process_requests(q, &self.mem)
        } else {
            self.iommu.process_events(q, &self.mem)
        };
        if let Err(e) = served {
            tracing::error!(%e, index, "virtqueue");
        }
    }
}
