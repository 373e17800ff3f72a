//! The device in a VMM: shared by the request queue's handler and by the
//! DMA of the devices behind it, which reaches guest memory through
//! rust-vmm's `vm_memory::iommu::IommuMemory` with an [`EndpointIommu`] per
//! endpoint.
//!
//! Each endpoint has an IOTLB (`vm_memory::iommu::Iotlb`): a hit needs
//! only its read lock; a miss looks the mapping up in the device and
//! caches the whole of it. A request that takes translations away (UNMAP,
//! DETACH, an ATTACH that moves an endpoint, a bypass change, a reset, an
//! unplug) invalidates the IOTLBs it concerns before
//! [`VirtioIommu::handle`] returns, under the IOTLB's write lock, so it
//! also waits for accesses still using the old translation: once the
//! request completes, nothing reaches what it unmapped.
//!
//! `Iommu::translate` must answer with vm-memory's `Iotlb` and its
//! iterator, which search the IOTLB twice per hit (about 40 ns with the
//! lock). [`EndpointIommu::translate_contiguous`] is the faster interface
//! beside it for a range one mapping holds: the same read lock, a look at
//! the few whole segments recent misses brought in (about 14 ns), and the
//! guard handed to the caller, so an UNMAP still waits for the access.
//!
//! Endpoints whose DMA an external mapper performs (passthrough devices)
//! get every change forwarded to it; see [`ExternalMapper`].
//!
//! Lock order: the device, then the external mappers, then an IOTLB.

extern crate std;

use crate::device::{Access, Device, Fault, Segment};
use crate::external::{ExternalError, ExternalMapper, Externals};
use crate::request::Request;
use crate::spec::{fault, Status};
use crate::Mapping;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard};
use vm_memory::iommu::{Error, Iommu, Iotlb, IotlbIterator, IovaRange};
use vm_memory::{GuestAddress, Permissions};

/// A virtio-iommu device shared between its request queue and the
/// devices whose DMA it translates.
#[derive(Debug)]
pub struct VirtioIommu {
    device: Mutex<Device>,
    external: Mutex<Externals>,
    /// Whether any endpoint has an external mapper (so that requests
    /// without one skip the mappers' lock).
    has_external: AtomicBool,
    iotlbs: Mutex<BTreeMap<u32, Arc<RwLock<EndpointTlb>>>>,
    observer: OnceLock<Observer>,
    /// Failure injection (feature `test-utils`): IOTLBs are left as they
    /// are, so a test can show its oracle sees stale translations.
    skip_invalidation: AtomicBool,
}

/// The wire tap of [`VirtioIommu::observe`].
struct Observer(Box<ObserverFn>);

/// What an observer is called with: a request and the device's status.
type ObserverFn = dyn Fn(&Request, Status) + Send + Sync;

impl core::fmt::Debug for Observer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Observer")
    }
}

impl VirtioIommu {
    /// Shares `device`.
    pub fn new(device: Device) -> Arc<VirtioIommu> {
        Arc::new(VirtioIommu {
            device: Mutex::new(device),
            external: Mutex::new(Externals::default()),
            has_external: AtomicBool::new(false),
            observer: OnceLock::new(),
            iotlbs: Mutex::new(BTreeMap::new()),
            skip_invalidation: AtomicBool::new(false),
        })
    }

    pub(crate) fn device(&self) -> MutexGuard<'_, Device> {
        // A panic elsewhere leaves the state as consistent as it was: every
        // change is made only after every check.
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn external(&self) -> MutexGuard<'_, Externals> {
        self.external.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the device (to add or remove endpoints, negotiate,
    /// reset, write configuration, restore), then invalidates every IOTLB
    /// and brings every external mapper to what the device now holds,
    /// whatever `f` changed: a control path, rare enough not to be worth
    /// telling which changes take translations away. A mapper that cannot
    /// follow is counted in [`external_failures`](Self::external_failures)
    /// and holds less than the device, never more.
    pub fn with_device<R>(&self, f: impl FnOnce(&mut Device) -> R) -> R {
        let mut d = self.device();
        let r = f(&mut d);
        let mut x = self.external();
        if !x.is_empty() {
            x.sync_all(&d);
        }
        self.invalidate_all();
        r
    }

    /// Forwards `endpoint`'s mappings to `mapper` from now on (a
    /// passthrough device whose DMA the host IOMMU translates); what its
    /// domain maps already is mapped first. The endpoint need not exist
    /// yet (hot-plug): the mapper then holds nothing until it is attached.
    ///
    /// # Errors
    /// [`ExternalError::InUse`] when the endpoint has a mapper, or the
    /// mapper's error, with everything it had mapped unmapped again.
    pub fn set_external_mapper(
        &self,
        endpoint: u32,
        mapper: alloc::boxed::Box<dyn ExternalMapper>,
    ) -> Result<(), ExternalError> {
        let d = self.device();
        let mut x = self.external();
        let r = x.insert(&d, endpoint, mapper);
        self.has_external.store(!x.is_empty(), Ordering::Release);
        r
    }

    /// Stops forwarding `endpoint`'s mappings: everything its mapper holds
    /// is unmapped, and the mapper is handed back.
    pub fn take_external_mapper(
        &self,
        endpoint: u32,
    ) -> Option<alloc::boxed::Box<dyn ExternalMapper>> {
        let _d = self.device();
        let mut x = self.external();
        let m = x.remove(endpoint);
        self.has_external.store(!x.is_empty(), Ordering::Release);
        m
    }

    /// What `endpoint`'s external mapper holds: its mappings by address
    /// and whether it is in bypass.
    pub fn external_mappings(&self, endpoint: u32) -> Option<(Vec<Mapping>, bool)> {
        let _d = self.device();
        self.external().held(endpoint)
    }

    /// How many times an external mapper failed to follow an UNMAP, a
    /// DETACH or a control-path change (each also answered DEVERR where a
    /// request caused it).
    pub fn external_failures(&self) -> u64 {
        let _d = self.device();
        self.external().failures
    }

    fn iotlb(&self, endpoint: u32) -> Arc<RwLock<EndpointTlb>> {
        let mut t = self.iotlbs.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(t.entry(endpoint).or_default())
    }

    /// Leaves every IOTLB as it is from now on (or, with `false`, no
    /// longer): the deliberate bug a concurrency test must catch.
    #[cfg(feature = "test-utils")]
    pub fn skip_invalidations(&self, skip: bool) {
        self.skip_invalidation.store(skip, Ordering::SeqCst);
    }

    fn invalidate(&self, endpoint: u32, range: Option<(u64, u64)>) {
        if self.skip_invalidation.load(Ordering::Relaxed) {
            return;
        }
        let tlb = self
            .iotlbs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&endpoint)
            .cloned();
        if let Some(tlb) = tlb {
            tlb.write()
                .unwrap_or_else(|p| p.into_inner())
                .invalidate(range);
        }
    }

    fn invalidate_all(&self) {
        if self.skip_invalidation.load(Ordering::Relaxed) {
            return;
        }
        let all: Vec<Arc<RwLock<EndpointTlb>>> = self
            .iotlbs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for t in all {
            t.write()
                .unwrap_or_else(|p| p.into_inner())
                .invalidate(None);
        }
    }

    /// Handles one request from the request queue, as
    /// [`Device::handle`] does, and invalidates what it took away before
    /// returning the used length.
    pub fn handle(&self, readable: &[u8], writable: &mut [u8]) -> usize {
        let Ok(request) = Request::parse(readable) else {
            return 0;
        };
        let mut d = self.device();
        // The flag changes only under the device's lock, which is held.
        let mut x = self
            .has_external
            .load(Ordering::Acquire)
            .then(|| self.external());
        let follow = x.as_ref().and_then(|x| x.follow(&d, &request));
        let used = d.handle_request(request, writable);
        if used == 0 {
            return 0;
        }
        let ok = writable.first() == Some(&(Status::Ok as u8))
            || matches!(request, Request::Probe { .. });
        if !ok {
            drop(x);
            self.tell(&request, writable, used);
            return used;
        }
        if let (Some(follow), Some(x)) = (follow, x.as_mut()) {
            if let Err(e) = x.apply(&mut d, follow) {
                // Not a PROBE: the status is the first byte of the tail.
                writable[0] = e.status() as u8;
            }
        }
        drop(x);
        match request {
            Request::Attach { endpoint, .. } | Request::Detach { endpoint, .. } => {
                self.invalidate(endpoint, None);
            }
            Request::Unmap {
                domain,
                virt_start,
                virt_end,
                ..
            } => {
                for ep in d.endpoints_of(domain) {
                    self.invalidate(ep, Some((virt_start, virt_end)));
                }
            }
            Request::Map { .. } | Request::Probe { .. } => {}
        }
        self.tell(&request, writable, used);
        used
    }

    /// Calls `observer` with every request the device parses and the
    /// status it answered (a tap on the wire, for logs and tools), from
    /// now on. There is one observer; a second call changes nothing and
    /// returns false.
    pub fn observe(&self, observer: impl Fn(&Request, Status) + Send + Sync + 'static) -> bool {
        self.observer.set(Observer(Box::new(observer))).is_ok()
    }

    fn tell(&self, request: &Request, writable: &[u8], used: usize) {
        if let Some(o) = self.observer.get() {
            // The status is the last byte group of what was written.
            let at = used.saturating_sub(crate::spec::size::TAIL);
            let status = writable
                .get(at)
                .and_then(|&b| Status::from_u8(b))
                .unwrap_or(Status::DevErr);
            (o.0)(request, status);
        }
    }

    /// The translation for `endpoint`'s DMA, to give to
    /// `vm_memory::iommu::IommuMemory`.
    pub fn endpoint(self: &Arc<Self>, endpoint: u32) -> EndpointIommu {
        EndpointIommu {
            iotlb: self.iotlb(endpoint),
            iommu: Arc::clone(self),
            endpoint,
        }
    }

    /// The oldest pending fault, for a buffer the driver posted on the
    /// event queue.
    pub fn next_event(&self) -> Option<Fault> {
        self.device().next_event()
    }

    /// Faults waiting for event-queue buffers.
    pub fn pending_events(&self) -> usize {
        self.device().pending_events()
    }
}

/// `len` bytes from `start`, cut so that `start + len` stays in the space.
fn cap(start: u64, len: u64) -> usize {
    usize::try_from(len.min(u64::MAX - start)).unwrap_or(usize::MAX)
}

fn permissions(s: &Segment) -> Permissions {
    match (s.read, s.write) {
        (true, true) => Permissions::ReadWrite,
        (true, false) => Permissions::Read,
        (false, true) => Permissions::Write,
        (false, false) => Permissions::No,
    }
}

/// Segments kept beside the IOTLB for [`EndpointIommu::translate_contiguous`].
const RECENT: usize = 4;

/// One whole segment the device gave (a mapping, or the part of it that
/// translates alike), in atomics so that a reader under the read lock may
/// record one; empty when `start > last`.
#[derive(Debug)]
struct RecentSegment {
    start: AtomicU64,
    last: AtomicU64,
    phys: AtomicU64,
    /// Bit 0 read, bit 1 write.
    perm: AtomicU64,
}

impl RecentSegment {
    fn empty() -> Self {
        RecentSegment {
            start: AtomicU64::new(1),
            last: AtomicU64::new(0),
            phys: AtomicU64::new(0),
            perm: AtomicU64::new(0),
        }
    }
}

/// One endpoint's IOTLB: vm-memory's, which `Iommu::translate` must
/// return, and the few segments recent misses filled, which
/// [`EndpointIommu::translate_contiguous`] looks at first. Both change
/// only under the write lock (a fill, an invalidation) and are read under
/// the read lock.
#[derive(Debug)]
pub(crate) struct EndpointTlb {
    iotlb: Iotlb,
    recent: [RecentSegment; RECENT],
    /// Where the next fill goes (round robin).
    next: usize,
}

impl Default for EndpointTlb {
    fn default() -> Self {
        Self {
            iotlb: Iotlb::new(),
            recent: core::array::from_fn(|_| RecentSegment::empty()),
            next: 0,
        }
    }
}

impl EndpointTlb {
    /// Drops what `[start, end]` (everything with `None`) translated, from
    /// the IOTLB and the recent segments.
    fn invalidate(&mut self, range: Option<(u64, u64)>) {
        for r in &self.recent {
            r.start.store(1, Ordering::Relaxed);
            r.last.store(0, Ordering::Relaxed);
        }
        match range {
            Some((start, end)) => {
                // The IOTLB's ranges are half-open; the top byte of the
                // space is never cached.
                let len = end.saturating_sub(start).saturating_add(1);
                self.iotlb
                    .invalidate_mapping(GuestAddress(start), cap(start, len));
            }
            None => self.iotlb.invalidate_all(),
        }
    }

    fn remember(&mut self, seg: &Segment) {
        let r = &self.recent[self.next % RECENT];
        self.next = self.next.wrapping_add(1);
        r.start.store(seg.start, Ordering::Relaxed);
        r.last.store(seg.end, Ordering::Relaxed);
        r.phys.store(seg.phys, Ordering::Relaxed);
        r.perm.store(
            u64::from(seg.read) | u64::from(seg.write) << 1,
            Ordering::Relaxed,
        );
    }

    /// The guest-physical address of `[iova, last]` if one recent segment
    /// holds all of it with `need` (bit 0 read, bit 1 write).
    #[inline]
    fn recent(&self, iova: u64, last: u64, need: u64) -> Option<u64> {
        self.recent.iter().find_map(|r| {
            let start = r.start.load(Ordering::Relaxed);
            (start <= iova
                && last <= r.last.load(Ordering::Relaxed)
                && r.perm.load(Ordering::Relaxed) & need == need)
                .then(|| r.phys.load(Ordering::Relaxed) + (iova - start))
        })
    }
}

/// vm-memory's view of an endpoint's IOTLB under its read lock: what
/// `Iommu::translate`'s iterator holds while the caller accesses memory.
pub struct IotlbRead<'a>(RwLockReadGuard<'a, EndpointTlb>);

impl core::ops::Deref for IotlbRead<'_> {
    type Target = Iotlb;
    fn deref(&self) -> &Iotlb {
        &self.0.iotlb
    }
}

/// A range one mapping holds, translated by
/// [`EndpointIommu::translate_contiguous`]: its guest-physical address,
/// with the endpoint's IOTLB read lock held. Access the memory before
/// dropping it: a request that takes the mapping away waits for that, as
/// it waits for `Iommu::translate`'s iterator.
pub struct Contiguous<'a> {
    phys: u64,
    _read: RwLockReadGuard<'a, EndpointTlb>,
}

impl Contiguous<'_> {
    /// The guest-physical address of the range's first byte.
    pub fn phys(&self) -> GuestAddress {
        GuestAddress(self.phys)
    }
}

/// One endpoint's view of the device: implements `vm_memory`'s `Iommu`.
#[derive(Debug)]
pub struct EndpointIommu {
    iommu: Arc<VirtioIommu>,
    endpoint: u32,
    iotlb: Arc<RwLock<EndpointTlb>>,
}

impl EndpointIommu {
    /// The endpoint.
    pub fn id(&self) -> u32 {
        self.endpoint
    }

    fn read(&self) -> IotlbRead<'_> {
        IotlbRead(self.read_tlb())
    }

    fn read_tlb(&self) -> RwLockReadGuard<'_, EndpointTlb> {
        self.iotlb.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Translates `[iova, iova + length)` when one mapping holds all of it
    /// with `access`: its guest-physical address, without vm-memory's
    /// iterator. A hit is the read lock and a look at the few whole
    /// segments recent misses brought in, where `Iommu::translate` must
    /// search vm-memory's IOTLB twice and build its iterator; a miss fills
    /// both from the device, as `translate` does.
    ///
    /// # Errors
    /// As `Iommu::translate`, and `CannotResolve` for a range across
    /// mappings (use `Iommu::translate` for those).
    pub fn translate_contiguous(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<Contiguous<'_>, Error> {
        let range = IovaRange { base: iova, length };
        let len = length as u64;
        // Up to the last byte of the space (the IOTLB's half-open ranges
        // stop one short).
        let Some(last) = iova.0.checked_add(len.wrapping_sub(1)).filter(|_| len != 0) else {
            return Err(Error::CannotResolve {
                iova_range: range,
                reason: format!("{length} bytes at {:#x} are not a range", iova.0),
            });
        };
        let need = match access {
            Permissions::No => 0,
            Permissions::Read => 1,
            Permissions::Write => 2,
            Permissions::ReadWrite => 3,
        };
        let t = self.read_tlb();
        if let Some(phys) = t.recent(iova.0, last, need) {
            return Ok(Contiguous { phys, _read: t });
        }
        drop(t);
        self.fill_for(&range, access)?;
        let t = self.read_tlb();
        match t.recent(iova.0, last, need) {
            Some(phys) => Ok(Contiguous { phys, _read: t }),
            None => Err(Error::CannotResolve {
                iova_range: range,
                reason: "the range crosses mappings".into(),
            }),
        }
    }

    /// Fills the IOTLB for `range` with `access`: a write first when it
    /// writes, then a read when it also reads (both must translate).
    fn fill_for(&self, range: &IovaRange, access: Permissions) -> Result<(), Error> {
        let dirs: &[Access] = match access {
            Permissions::ReadWrite => &[Access::Write, Access::Read],
            Permissions::Write => &[Access::Write],
            _ => &[Access::Read],
        };
        for &dir in dirs {
            self.fill(range.base.0, range.length as u64, dir)
                .map_err(|f| Error::CannotResolve {
                    iova_range: range.clone(),
                    reason: fault_text(&f),
                })?;
        }
        Ok(())
    }

    /// Fills the IOTLB for `[iova, iova + length)` from the device, or
    /// reports the fault of the first address that does not translate.
    fn fill(&self, iova: u64, length: u64, access: Access) -> Result<(), Fault> {
        let mut d = self.iommu.device();
        let mut t = self.iotlb.write().unwrap_or_else(|p| p.into_inner());
        let end = iova + length; // exclusive; the caller checked it fits
        let mut at = iova;
        while at < end {
            let seg = match d.lookup(self.endpoint, at, access) {
                Ok(s) => s,
                Err(f) => {
                    d.report(f);
                    return Err(f);
                }
            };
            t.remember(&seg);
            let len = seg.end - seg.start;
            let len = cap(seg.start, len.saturating_add(1));
            let _ = t.iotlb.set_mapping(
                GuestAddress(seg.start),
                GuestAddress(seg.phys),
                len,
                permissions(&seg),
            );
            if seg.end >= end - 1 || seg.end == u64::MAX {
                break;
            }
            at = seg.end + 1;
        }
        Ok(())
    }
}

impl Iommu for EndpointIommu {
    type IotlbGuard<'a> = IotlbRead<'a>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, Error> {
        let range = IovaRange { base: iova, length };
        if length == 0 || iova.0.checked_add(length as u64).is_none() {
            return Err(Error::CannotResolve {
                iova_range: range,
                reason: format!("{length} bytes at {:#x} are not a range", iova.0),
            });
        }
        if let Ok(it) = Iotlb::lookup(self.read(), iova, length, access) {
            return Ok(it);
        }
        self.fill_for(&range, access)?;
        Iotlb::lookup(self.read(), iova, length, access).map_err(|fails| Error::CannotResolve {
            iova_range: range,
            reason: format!(
                "{} unmapped and {} forbidden ranges",
                fails.misses.len(),
                fails.access_fails.len()
            ),
        })
    }
}

fn fault_text(f: &Fault) -> alloc::string::String {
    let why = match f.reason {
        fault::R_DOMAIN => "attached to no domain",
        fault::R_MAPPING => "no mapping with that access",
        _ => "unknown to the device",
    };
    format!("endpoint {:#x}: {why} at {:#x}", f.endpoint, f.address)
}
