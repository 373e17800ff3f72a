//! Event queues a program reads through a descriptor (Linux's
//! `eventq.c`): fault queues of I/O page faults a HWPT's devices raise
//! (`IOMMU_FAULT_QUEUE_ALLOC`), answered by writing page responses, and
//! vEVENTQs of a vIOMMU's events for the guest (`IOMMU_VEVENTQ_ALLOC`).
//!
//! The read and write rules are Linux's, errno for errno:
//! - A fault queue is read in whole `struct iommu_hwpt_pgfault` records
//!   (`ESPIPE` for a count that is not a multiple), a group of faults at a
//!   time (`EINVAL` when the first group does not fit); each group read
//!   gets a cookie, and a `struct iommu_hwpt_page_response` written with
//!   it answers the group (`EINVAL` for an unknown cookie or code).
//! - A vEVENTQ holds at most its depth of events. One more is lost, and a
//!   header with `IOMMU_VEVENTQ_FLAG_LOST_EVENTS` takes its place at the
//!   end of the queue; every header has the next sequence number (31
//!   bits). A read returns whole events (`EINVAL` for a count below a
//!   header, or when the first event does not fit).

use crate::ctx::{lock, File, Ictx, Object};
use crate::uapi;
use crate::viommu::ViommuObj;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::any::Any;
use iommu_types::Errno;
use std::sync::Mutex;
use zerocopy::IntoBytes;

/// `IOMMU_PGFAULT_FLAGS_PASID_VALID`.
pub const PGFAULT_FLAGS_PASID_VALID: u32 = 1 << 0;
/// `IOMMU_PGFAULT_FLAGS_LAST_PAGE`.
pub const PGFAULT_FLAGS_LAST_PAGE: u32 = 1 << 1;
/// `IOMMUFD_PAGE_RESP_SUCCESS`.
pub const PAGE_RESP_SUCCESS: u32 = 0;
/// `IOMMUFD_PAGE_RESP_INVALID`.
pub const PAGE_RESP_INVALID: u32 = 1;
/// `IOMMU_VEVENTQ_FLAG_LOST_EVENTS`.
pub const VEVENTQ_FLAG_LOST_EVENTS: u32 = 1 << 0;
/// The deepest vEVENTQ (Linux's `VEVENTQ_MAX_DEPTH`).
pub const VEVENTQ_MAX_DEPTH: u32 = 1 << 19;
/// The most bytes one read of a queue fills: a bound on the memory a
/// read of any count costs.
const MAX_READ: usize = 1 << 20;

/// One I/O page fault (Linux's `struct iommu_fault_page_request`).
#[derive(Clone, Copy, Debug)]
pub struct PageFault {
    /// `IOMMU_PGFAULT_FLAGS_*`.
    pub flags: u32,
    /// The PASID, when `PASID_VALID`.
    pub pasid: u32,
    /// The page request group.
    pub grpid: u32,
    /// `IOMMU_PGFAULT_PERM_*`.
    pub perm: u32,
    /// The faulting address.
    pub addr: u64,
}

/// Faults of one page request group from one device.
#[derive(Clone, Debug)]
struct FaultGroup {
    dev_id: u32,
    faults: Vec<PageFault>,
}

#[derive(Debug, Default)]
struct FaultState {
    deliver: VecDeque<FaultGroup>,
    response: BTreeMap<u32, FaultGroup>,
    next_cookie: u32,
}

/// A fault queue (Linux's `struct iommufd_fault`).
#[derive(Debug, Default)]
pub struct Fault {
    state: Mutex<FaultState>,
}

impl Fault {
    /// Queues a group of faults device `dev_id` raised.
    pub fn report(&self, dev_id: u32, faults: Vec<PageFault>) {
        lock(&self.state)
            .deliver
            .push_back(FaultGroup { dev_id, faults });
    }

    /// Groups read and not answered yet.
    pub fn pending_responses(&self) -> usize {
        lock(&self.state).response.len()
    }

    /// Reads whole groups into `count` bytes (Linux's
    /// `iommufd_fault_fops_read`).
    ///
    /// # Errors
    /// `ESPIPE` for a count that is not a whole number of records;
    /// `EINVAL` when the first group does not fit.
    pub fn read(&self, count: usize) -> Result<Vec<u8>, Errno> {
        let size = core::mem::size_of::<uapi::HwptPgfault>();
        if !count.is_multiple_of(size) {
            return Err(Errno::ESPIPE);
        }
        let count = count.min(MAX_READ / size * size);
        let mut st = lock(&self.state);
        let mut out = Vec::new();
        while let Some(g) = st.deliver.front() {
            if g.faults.len() * size > count - out.len() {
                if out.is_empty() {
                    return Err(Errno::EINVAL);
                }
                break;
            }
            let g = st.deliver.pop_front().expect("a group");
            let cookie = st.next_cookie;
            st.next_cookie = st.next_cookie.wrapping_add(1);
            for f in &g.faults {
                let rec = uapi::HwptPgfault {
                    flags: f.flags,
                    dev_id: g.dev_id,
                    pasid: f.pasid,
                    grpid: f.grpid,
                    perm: f.perm,
                    reserved: 0,
                    addr: f.addr,
                    length: 0,
                    cookie,
                };
                out.extend_from_slice(rec.as_bytes());
            }
            st.response.insert(cookie, g);
        }
        Ok(out)
    }

    /// Answers groups read before (Linux's `iommufd_fault_fops_write`);
    /// returns the bytes taken.
    ///
    /// # Errors
    /// `ESPIPE` for a count that is not a whole number of responses;
    /// `EINVAL` for an unknown code or cookie (after the responses before
    /// it were taken, their bytes returned instead).
    pub fn write(&self, data: &[u8]) -> Result<usize, Errno> {
        let size = core::mem::size_of::<uapi::HwptPageResponse>();
        if !data.len().is_multiple_of(size) {
            return Err(Errno::ESPIPE);
        }
        let mut st = lock(&self.state);
        let mut done = 0;
        for r in data.chunks_exact(size) {
            let cookie = u32::from_ne_bytes([r[0], r[1], r[2], r[3]]);
            let code = u32::from_ne_bytes([r[4], r[5], r[6], r[7]]);
            let bad = (code != PAGE_RESP_SUCCESS && code != PAGE_RESP_INVALID)
                || st.response.remove(&cookie).is_none();
            if bad {
                return if done == 0 {
                    Err(Errno::EINVAL)
                } else {
                    Ok(done)
                };
            }
            done += size;
        }
        Ok(done)
    }
}

/// A fault queue's descriptor.
pub(crate) struct FaultFile(pub(crate) Weak<Fault>);

impl File for FaultFile {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
    fn read(&self, count: usize) -> Result<Vec<u8>, Errno> {
        match self.0.upgrade() {
            Some(f) => f.read(count),
            None => Ok(Vec::new()),
        }
    }
    fn write(&self, data: &[u8]) -> Result<usize, Errno> {
        self.0.upgrade().ok_or(Errno::EINVAL)?.write(data)
    }
}

#[derive(Debug)]
struct Vevent {
    lost: bool,
    sequence: u32,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct VeventqState {
    deliver: VecDeque<Vevent>,
    num_events: u32,
    sequence: u32,
}

/// A vEVENTQ (Linux's `struct iommufd_veventq`).
#[derive(Debug)]
pub struct Veventq {
    /// Its vIOMMU.
    pub viommu: Arc<ViommuObj>,
    /// `IOMMU_VEVENTQ_TYPE_*`.
    pub ty: u32,
    /// The most events it holds.
    pub depth: u32,
    state: Mutex<VeventqState>,
}

impl Veventq {
    /// Queues an event, or the lost-events header when full (Linux's
    /// `iommufd_viommu_report_event` and `iommufd_vevent_handler`).
    pub fn report(&self, data: &[u8]) {
        let mut st = lock(&self.state);
        let full = st.num_events == self.depth;
        // The lost-events header, if last, makes way for the new node
        // (which may be the header again, with a new sequence).
        if st.deliver.back().is_some_and(|e| e.lost) {
            st.deliver.pop_back();
        }
        let sequence = st.sequence;
        st.sequence = (st.sequence + 1) & (i32::MAX as u32);
        if full {
            st.deliver.push_back(Vevent {
                lost: true,
                sequence,
                data: Vec::new(),
            });
        } else {
            st.num_events += 1;
            st.deliver.push_back(Vevent {
                lost: false,
                sequence,
                data: data.to_vec(),
            });
        }
    }

    /// Reads whole events into `count` bytes (Linux's
    /// `iommufd_veventq_fops_read`).
    ///
    /// # Errors
    /// `EINVAL` for a count below a header, or when the first event does
    /// not fit.
    pub fn read(&self, count: usize) -> Result<Vec<u8>, Errno> {
        const HDR: usize = 8;
        if count < HDR {
            return Err(Errno::EINVAL);
        }
        let count = count.min(MAX_READ);
        let mut st = lock(&self.state);
        let mut out = Vec::new();
        while let Some(e) = st.deliver.front() {
            if out.len() >= count || HDR > count - out.len() {
                break;
            }
            if !e.lost && HDR + e.data.len() > count - out.len() {
                if out.is_empty() {
                    return Err(Errno::EINVAL);
                }
                break;
            }
            let e = st.deliver.pop_front().expect("an event");
            let flags = if e.lost { VEVENTQ_FLAG_LOST_EVENTS } else { 0 };
            out.extend_from_slice(&flags.to_ne_bytes());
            out.extend_from_slice(&e.sequence.to_ne_bytes());
            out.extend_from_slice(&e.data);
            if !e.lost {
                st.num_events -= 1;
            }
        }
        Ok(out)
    }
}

/// A vEVENTQ's descriptor.
pub(crate) struct VeventqFile(pub(crate) Weak<Veventq>);

impl File for VeventqFile {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
    fn read(&self, count: usize) -> Result<Vec<u8>, Errno> {
        match self.0.upgrade() {
            Some(q) => q.read(count),
            None => Ok(Vec::new()),
        }
    }
}

impl Ictx {
    /// The fault queue `id`.
    ///
    /// # Errors
    /// `ENOENT` for no such fault queue.
    pub fn fault(&self, id: u32) -> Result<Arc<Fault>, Errno> {
        match self.object(id) {
            Some(Object::Fault(f)) => Ok(f),
            _ => Err(Errno::ENOENT),
        }
    }

    /// `IOMMU_FAULT_QUEUE_ALLOC`: a fault queue and its descriptor.
    pub(crate) fn fault_alloc(&self, c: &mut uapi::FaultAlloc) -> Result<(), Errno> {
        if c.flags != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let files = self.files.get().ok_or(Errno::EOPNOTSUPP)?;
        let fault = Arc::new(Fault::default());
        let id = self.insert(Object::Fault(Arc::clone(&fault)))?;
        match files.install(Arc::new(FaultFile(Arc::downgrade(&fault)))) {
            Ok(fd) => {
                c.out_fault_id = id;
                c.out_fault_fd = fd as u32;
                Ok(())
            }
            Err(e) => {
                self.remove(id);
                Err(e)
            }
        }
    }

    /// `IOMMU_VEVENTQ_ALLOC`: a vEVENTQ of a vIOMMU and its descriptor.
    pub(crate) fn veventq_alloc(&self, c: &mut uapi::VeventqAlloc) -> Result<(), Errno> {
        if c.flags != 0 || c.reserved != 0 || c.r#type == 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        if c.veventq_depth == 0 || c.veventq_depth > VEVENTQ_MAX_DEPTH {
            return Err(Errno::EINVAL);
        }
        let viommu = self.viommu(c.viommu_id)?;
        let files = self.files.get().ok_or(Errno::EOPNOTSUPP)?;
        let mut queues = lock(&viommu.veventqs);
        queues.retain(|w| w.strong_count() > 0);
        if queues
            .iter()
            .filter_map(Weak::upgrade)
            .any(|q| q.ty == c.r#type)
        {
            return Err(Errno::EEXIST);
        }
        let q = Arc::new(Veventq {
            viommu: Arc::clone(&viommu),
            ty: c.r#type,
            depth: c.veventq_depth,
            state: Mutex::new(VeventqState::default()),
        });
        let id = self.insert(Object::Veventq(Arc::clone(&q)))?;
        match files.install(Arc::new(VeventqFile(Arc::downgrade(&q)))) {
            Ok(fd) => {
                queues.push(Arc::downgrade(&q));
                c.out_veventq_id = id;
                c.out_veventq_fd = fd as u32;
                Ok(())
            }
            Err(e) => {
                self.remove(id);
                Err(e)
            }
        }
    }

    /// Reports an event of type `ty` to the vEVENTQ of that type of the
    /// vIOMMU over the core's `viommu` (Linux's
    /// `iommufd_viommu_report_event`).
    ///
    /// # Errors
    /// `EOPNOTSUPP` when the vIOMMU has no vEVENTQ of that type; `ENOENT`
    /// when no vIOMMU of this context is `viommu`.
    pub fn report_vevent(
        &self,
        viommu: &iommu_core::Viommu,
        ty: u32,
        data: &[u8],
    ) -> Result<(), Errno> {
        let v = self
            .ids()
            .into_iter()
            .find_map(|id| match self.object(id) {
                Some(Object::Viommu(v)) if v.viommu == *viommu => Some(v),
                _ => None,
            })
            .ok_or(Errno::ENOENT)?;
        let q = lock(&v.veventqs)
            .iter()
            .filter_map(Weak::upgrade)
            .find(|q| q.ty == ty)
            .ok_or(Errno::EOPNOTSUPP)?;
        q.report(data);
        Ok(())
    }
}
