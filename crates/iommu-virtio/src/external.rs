//! Endpoints whose DMA the VMM does not perform itself: a passthrough
//! device's translations live in an external mapper (a VFIO container, a
//! host IOMMU domain), and the device forwards to it what the guest maps.
//!
//! The rule kept after every request and every [`VirtioIommu::with_device`]:
//! an endpoint's mapper holds exactly the mappings of the endpoint's
//! domain, nothing when it has none, and is in bypass exactly when the
//! endpoint is. A MAP or an ATTACH the mapper cannot follow is taken back
//! whole, in the device and in every mapper, and the driver gets the
//! mapper's status; an UNMAP or a DETACH the mapper fails to follow is
//! reported (DEVERR, and [`VirtioIommu::external_failures`]) with the
//! mapping still counted as held, so it is retried by the next change of
//! that endpoint.
//!
//! [`VirtioIommu::with_device`]: crate::VirtioIommu::with_device
//! [`VirtioIommu::external_failures`]: crate::VirtioIommu::external_failures

extern crate std;

use crate::device::{AttachUndo, Device};
use crate::spec::Status;
use crate::Mapping;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// Why an external mapper did not follow a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExternalError {
    /// Out of memory or of mapping slots (reported to the driver as NOMEM).
    #[error("the external mapper is out of memory")]
    NoMemory,
    /// An address, size or alignment the mapper cannot map (RANGE).
    #[error("the external mapper cannot map that range")]
    Range,
    /// Something the mapper does not do, such as bypass (UNSUPP).
    #[error("the external mapper does not support this")]
    Unsupported,
    /// Any other failure, with the OS error number when there is one
    /// (DEVERR).
    #[error("the external mapper failed (error {0})")]
    Failed(i32),
    /// The endpoint already has a mapper.
    #[error("endpoint {0} already has an external mapper")]
    InUse(u32),
}

impl ExternalError {
    /// The status the driver gets for a request the mapper refused.
    pub fn status(self) -> Status {
        match self {
            ExternalError::NoMemory => Status::NoMem,
            ExternalError::Range => Status::Range,
            ExternalError::Unsupported => Status::Unsupp,
            ExternalError::Failed(_) | ExternalError::InUse(_) => Status::DevErr,
        }
    }
}

/// Where a passthrough endpoint's translations really are. Calls come
/// with the device locked, one at a time, in the order the guest made
/// them.
pub trait ExternalMapper: Send + core::fmt::Debug {
    /// Maps `m` (`map::READ`, `WRITE` and `MMIO` in `m.flags`). On error
    /// nothing of `m` may stay mapped.
    ///
    /// # Errors
    /// Why it could not.
    fn map(&mut self, m: &Mapping) -> Result<(), ExternalError>;

    /// Unmaps `m`, which [`map`](Self::map) mapped.
    ///
    /// # Errors
    /// Why it could not; `m` is then taken to be still mapped.
    fn unmap(&mut self, m: &Mapping) -> Result<(), ExternalError>;

    /// Turns identity translation of all guest memory on or off (an
    /// ATTACH to a bypass domain, or the `bypass` field for an endpoint
    /// without a domain). Mappers without it refuse, and a bypass ATTACH
    /// of their endpoint is refused with UNSUPP.
    ///
    /// # Errors
    /// Why it could not.
    fn set_bypass(&mut self, on: bool) -> Result<(), ExternalError> {
        let _ = on;
        Err(ExternalError::Unsupported)
    }
}

/// One endpoint's mapper and what it holds.
#[derive(Debug)]
pub(crate) struct External {
    mapper: Box<dyn ExternalMapper>,
    /// What the mapper holds, by first address.
    held: BTreeMap<u64, Mapping>,
    bypass: bool,
}

/// The mappers of a device's endpoints.
#[derive(Debug, Default)]
pub(crate) struct Externals {
    by_endpoint: BTreeMap<u32, External>,
    pub(crate) failures: u64,
}

/// What a request needs from the mappers once the device has done it.
#[derive(Debug)]
pub(crate) enum Follow {
    Map { domain: u32, mapping: Mapping },
    Unmap { domain: u32, start: u64, end: u64 },
    Attach(AttachUndo),
    Detach(u32),
}

impl Externals {
    pub(crate) fn is_empty(&self) -> bool {
        self.by_endpoint.is_empty()
    }

    fn has_any_of(&self, d: &Device, domain: u32) -> bool {
        d.endpoints_of(domain)
            .any(|e| self.by_endpoint.contains_key(&e))
    }

    /// What the mappers must do after `request`, if it succeeds.
    pub(crate) fn follow(&self, d: &Device, request: &crate::Request) -> Option<Follow> {
        use crate::Request;
        match *request {
            Request::Map {
                domain,
                virt_start,
                virt_end,
                phys_start,
                flags,
            } if self.has_any_of(d, domain) => Some(Follow::Map {
                domain,
                mapping: Mapping {
                    virt_start,
                    virt_end,
                    phys_start,
                    flags,
                },
            }),
            Request::Unmap {
                domain,
                virt_start,
                virt_end,
                ..
            } if self.has_any_of(d, domain) => Some(Follow::Unmap {
                domain,
                start: virt_start,
                end: virt_end,
            }),
            Request::Attach { endpoint, .. } if self.by_endpoint.contains_key(&endpoint) => {
                Some(Follow::Attach(d.attach_undo(endpoint)))
            }
            Request::Detach { endpoint, .. } if self.by_endpoint.contains_key(&endpoint) => {
                Some(Follow::Detach(endpoint))
            }
            _ => None,
        }
    }

    /// Makes the mappers follow a request the device completed with OK.
    /// A MAP or ATTACH they cannot follow is taken back in the device too.
    pub(crate) fn apply(&mut self, d: &mut Device, follow: Follow) -> Result<(), ExternalError> {
        match follow {
            Follow::Map { domain, mapping } => self.map(d, domain, &mapping),
            Follow::Unmap { domain, start, end } => {
                let eps: Vec<u32> = d.endpoints_of(domain).collect();
                let mut result = Ok(());
                for ep in eps {
                    let Some(x) = self.by_endpoint.get_mut(&ep) else {
                        continue;
                    };
                    let gone: Vec<Mapping> = x.held.range(start..=end).map(|(_, m)| *m).collect();
                    for m in gone {
                        match x.mapper.unmap(&m) {
                            Ok(()) => {
                                x.held.remove(&m.virt_start);
                            }
                            Err(e) => {
                                self.failures += 1;
                                result = result.and(Err(e));
                            }
                        }
                    }
                }
                result
            }
            Follow::Attach(undo) => {
                let ep = undo.endpoint;
                let Err(e) = self.sync(d, ep) else {
                    return Ok(());
                };
                d.undo_attach(undo);
                if self.sync(d, ep).is_err() {
                    // The mapper holds part of the old domain's mappings:
                    // less than the device allows, never more.
                    self.failures += 1;
                }
                Err(e)
            }
            Follow::Detach(ep) => self.sync(d, ep).inspect_err(|_| self.failures += 1),
        }
    }

    fn map(&mut self, d: &mut Device, domain: u32, m: &Mapping) -> Result<(), ExternalError> {
        let eps: Vec<u32> = d
            .endpoints_of(domain)
            .filter(|e| self.by_endpoint.contains_key(e))
            .collect();
        for (i, ep) in eps.iter().enumerate() {
            let Some(x) = self.by_endpoint.get_mut(ep) else {
                continue;
            };
            if let Err(e) = x.mapper.map(m) {
                // Take it back from the mappers that took it, then from
                // the device, where it is exactly one mapping.
                for done in &eps[..i] {
                    if let Some(x) = self.by_endpoint.get_mut(done) {
                        if x.mapper.unmap(m).is_ok() {
                            x.held.remove(&m.virt_start);
                        } else {
                            self.failures += 1;
                        }
                    }
                }
                let undo = crate::Request::Unmap {
                    domain,
                    virt_start: m.virt_start,
                    virt_end: m.virt_end,
                    reserved: 0,
                };
                let status = d.execute(&undo);
                debug_assert_eq!(status, Status::Ok);
                return Err(e);
            }
            x.held.insert(m.virt_start, *m);
        }
        Ok(())
    }

    /// Brings `endpoint`'s mapper to what the device says it must hold:
    /// stale mappings out first, then the missing ones in.
    pub(crate) fn sync(&mut self, d: &Device, endpoint: u32) -> Result<(), ExternalError> {
        let Some(x) = self.by_endpoint.get_mut(&endpoint) else {
            return Ok(());
        };
        let bypass = d.in_bypass(endpoint);
        let domain = d
            .domain_of(endpoint)
            .and_then(|id| d.domains.get(&id))
            .filter(|dom| !dom.bypass);
        if x.bypass && !bypass {
            x.mapper.set_bypass(false)?;
            x.bypass = false;
        }
        let stale: Vec<Mapping> = x
            .held
            .values()
            .filter(|m| {
                let kept = domain
                    .and_then(|dom| dom.mappings.get(m.virt_start))
                    .is_some_and(|e| {
                        e.end == m.virt_end && e.phys == m.phys_start && e.flags == m.flags
                    });
                !kept
            })
            .copied()
            .collect();
        let mut failed = None;
        for m in stale {
            match x.mapper.unmap(&m) {
                Ok(()) => {
                    x.held.remove(&m.virt_start);
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(dom) = domain {
            for (start, e) in dom.mappings.iter() {
                if x.held.contains_key(&start) {
                    continue;
                }
                let m = Mapping {
                    virt_start: start,
                    virt_end: e.end,
                    phys_start: e.phys,
                    flags: e.flags,
                };
                x.mapper.map(&m)?;
                x.held.insert(start, m);
            }
        }
        if bypass && !x.bypass {
            x.mapper.set_bypass(true)?;
            x.bypass = true;
        }
        Ok(())
    }

    /// Syncs every mapper, counting the ones that fail.
    pub(crate) fn sync_all(&mut self, d: &Device) {
        let eps: Vec<u32> = self.by_endpoint.keys().copied().collect();
        for ep in eps {
            if self.sync(d, ep).is_err() {
                self.failures += 1;
            }
        }
    }

    pub(crate) fn insert(
        &mut self,
        d: &Device,
        endpoint: u32,
        mapper: Box<dyn ExternalMapper>,
    ) -> Result<(), ExternalError> {
        if self.by_endpoint.contains_key(&endpoint) {
            return Err(ExternalError::InUse(endpoint));
        }
        self.by_endpoint.insert(
            endpoint,
            External {
                mapper,
                held: BTreeMap::new(),
                bypass: false,
            },
        );
        if let Err(e) = self.sync(d, endpoint) {
            if let Some(x) = self.by_endpoint.get_mut(&endpoint) {
                if x.clear().is_err() {
                    self.failures += 1;
                }
            }
            self.by_endpoint.remove(&endpoint);
            return Err(e);
        }
        Ok(())
    }

    pub(crate) fn remove(&mut self, endpoint: u32) -> Option<Box<dyn ExternalMapper>> {
        let mut x = self.by_endpoint.remove(&endpoint)?;
        if x.clear().is_err() {
            self.failures += 1;
        }
        Some(x.mapper)
    }

    /// What `endpoint`'s mapper holds, by first address.
    pub(crate) fn held(&self, endpoint: u32) -> Option<(Vec<Mapping>, bool)> {
        self.by_endpoint
            .get(&endpoint)
            .map(|x| (x.held.values().copied().collect(), x.bypass))
    }
}

impl External {
    /// Everything out of the mapper.
    fn clear(&mut self) -> Result<(), ExternalError> {
        let mut result = Ok(());
        if self.bypass {
            match self.mapper.set_bypass(false) {
                Ok(()) => self.bypass = false,
                Err(e) => result = Err(e),
            }
        }
        let all: Vec<Mapping> = self.held.values().copied().collect();
        for m in all {
            match self.mapper.unmap(&m) {
                Ok(()) => {
                    self.held.remove(&m.virt_start);
                }
                Err(e) => result = result.and(Err(e)),
            }
        }
        result
    }
}

#[cfg(feature = "core")]
pub use self::core_domain::CoreDomainMapper;

#[cfg(feature = "core")]
mod core_domain {
    use super::{ExternalError, ExternalMapper};
    use crate::spec::map;
    use crate::Mapping;
    use iommu_core::{Domain, Errno, Iova, PhysAddr, Prot};

    /// An external mapper that maps into a domain of this project's IOMMU
    /// core, as a VMM maps a passthrough device's guest mappings into the
    /// host IOMMU domain its VFIO container holds.
    #[derive(Debug)]
    pub struct CoreDomainMapper {
        domain: Domain,
    }

    impl CoreDomainMapper {
        /// Maps into `domain` (an unmanaged domain the passthrough
        /// device's group is attached to).
        pub fn new(domain: Domain) -> CoreDomainMapper {
            CoreDomainMapper { domain }
        }

        /// The domain.
        pub fn domain(&self) -> &Domain {
            &self.domain
        }
    }

    fn size(m: &Mapping) -> Result<u64, ExternalError> {
        (m.virt_end - m.virt_start)
            .checked_add(1)
            .ok_or(ExternalError::Range)
    }

    impl ExternalMapper for CoreDomainMapper {
        fn map(&mut self, m: &Mapping) -> Result<(), ExternalError> {
            let mut prot = Prot::NONE;
            if m.flags & map::READ != 0 {
                prot |= Prot::READ;
            }
            if m.flags & map::WRITE != 0 {
                prot |= Prot::WRITE;
            }
            if m.flags & map::MMIO != 0 {
                prot |= Prot::MMIO;
            }
            if m.flags & (map::READ | map::WRITE) == 0 {
                // Nothing may reach it: nothing to map (the core refuses
                // a mapping without access).
                return Ok(());
            }
            let size = size(m)?;
            self.domain
                .map(
                    Iova::new(m.virt_start),
                    PhysAddr::new(m.phys_start),
                    size,
                    prot,
                )
                .map_err(|e| match e {
                    Errno::ENOMEM | Errno::ENOSPC => ExternalError::NoMemory,
                    Errno::EINVAL | Errno::ERANGE | Errno::EOVERFLOW => ExternalError::Range,
                    e => ExternalError::Failed(e.code()),
                })
        }

        /// Unmaps and invalidates. An invalidation that did not complete is
        /// a failure (the device may still reach the range), and so the
        /// device retries: the retry first flushes what the domain owes,
        /// and succeeds once the range is gone from the tables and no
        /// invalidation is owed.
        fn unmap(&mut self, m: &Mapping) -> Result<(), ExternalError> {
            if m.flags & (map::READ | map::WRITE) == 0 {
                return Ok(());
            }
            let size = size(m)?;
            let failed = |e: Errno| ExternalError::Failed(e.code());
            if self.domain.invalidation_owed() {
                self.domain.flush_iotlb_all().map_err(failed)?;
            }
            let (first, last) = (Iova::new(m.virt_start), Iova::new(m.virt_end));
            match self.domain.unmap(first, size) {
                Err(e) => Err(failed(e.errno)),
                Ok(removed) if removed == size => Ok(()),
                // Part of it was gone already (an earlier attempt removed
                // it, then failed to invalidate): done once nothing is left.
                Ok(_) if self.domain.first_mapping(first, last).is_none() => Ok(()),
                Ok(_) => Err(failed(Errno::EIO)),
            }
        }
    }
}
