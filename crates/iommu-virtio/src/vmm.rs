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
use core::sync::atomic::{AtomicBool, Ordering};
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
    iotlbs: Mutex<BTreeMap<u32, Arc<RwLock<Iotlb>>>>,
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

    fn iotlb(&self, endpoint: u32) -> Arc<RwLock<Iotlb>> {
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
            let mut t = tlb.write().unwrap_or_else(|p| p.into_inner());
            match range {
                Some((start, end)) => {
                    // The IOTLB's ranges are half-open; the top byte of
                    // the space is never cached.
                    let len = end.saturating_sub(start).saturating_add(1);
                    t.invalidate_mapping(GuestAddress(start), cap(start, len));
                }
                None => t.invalidate_all(),
            }
        }
    }

    fn invalidate_all(&self) {
        if self.skip_invalidation.load(Ordering::Relaxed) {
            return;
        }
        let all: Vec<Arc<RwLock<Iotlb>>> = self
            .iotlbs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for t in all {
            t.write()
                .unwrap_or_else(|p| p.into_inner())
                .invalidate_all();
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

/// One endpoint's view of the device: implements `vm_memory`'s `Iommu`.
#[derive(Debug)]
pub struct EndpointIommu {
    iommu: Arc<VirtioIommu>,
    endpoint: u32,
    iotlb: Arc<RwLock<Iotlb>>,
}

impl EndpointIommu {
    /// The endpoint.
    pub fn id(&self) -> u32 {
        self.endpoint
    }

    fn read(&self) -> RwLockReadGuard<'_, Iotlb> {
        self.iotlb.read().unwrap_or_else(|p| p.into_inner())
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
            let len = seg.end - seg.start;
            let len = cap(seg.start, len.saturating_add(1));
            let _ = t.set_mapping(
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
    type IotlbGuard<'a> = RwLockReadGuard<'a, Iotlb>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, Error> {
        let range = IovaRange { base: iova, length };
        let len = length as u64;
        if length == 0 || iova.0.checked_add(len).is_none() {
            return Err(Error::CannotResolve {
                iova_range: range,
                reason: format!("{length} bytes at {:#x} are not a range", iova.0),
            });
        }
        if let Ok(it) = Iotlb::lookup(self.read(), iova, length, access) {
            return Ok(it);
        }
        let dir = if access.has_write() {
            Access::Write
        } else {
            Access::Read
        };
        if let Err(f) = self.fill(iova.0, len, dir) {
            return Err(Error::CannotResolve {
                iova_range: range,
                reason: fault_text(&f),
            });
        }
        if access == Permissions::ReadWrite {
            if let Err(f) = self.fill(iova.0, len, Access::Read) {
                return Err(Error::CannotResolve {
                    iova_range: range,
                    reason: fault_text(&f),
                });
            }
        }
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
