//! Save and restore: the whole device state as plain data, for VMM
//! snapshots and live migration.
//!
//! [`Device::save`] gives a [`DeviceState`]; [`Device::restore`] checks one
//! (it may come from a file, or from another host) and gives back a device
//! that answers every request and translation exactly as the saved one.
//! With the `serde` feature the state is `Serialize` and `Deserialize`, so
//! a VMM writes it in whatever format its snapshots use. The virtqueues'
//! own state (`virtio_queue::QueueState`) belongs to the transport and is
//! saved beside it.

use crate::config::{ConfigError, DeviceConfig};
use crate::device::{
    Device, Domain, EndpointError, Entry, Fault, FeatureError, Mapping, ResvMem, EVENT_BACKLOG,
};
use crate::spec::{feature, map};
use alloc::vec::Vec;

/// An endpoint as saved.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct EndpointState {
    /// Its id.
    pub id: u32,
    /// The domain it is attached to.
    pub domain: Option<u32>,
    /// Its reserved regions.
    pub resv: Vec<ResvMem>,
}

/// A domain as saved; its endpoints are those that name it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DomainState {
    /// Its id.
    pub id: u32,
    /// Whether it was made by an ATTACH with the bypass flag.
    pub bypass: bool,
    /// Its mappings, by address.
    pub mappings: Vec<Mapping>,
}

/// Everything a device holds.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DeviceState {
    /// The configuration the device was made with.
    pub config: DeviceConfig,
    /// The features negotiated (0 before the driver did).
    pub negotiated: u64,
    /// The `bypass` configuration field.
    pub bypass: bool,
    /// Endpoints, by id.
    pub endpoints: Vec<EndpointState>,
    /// Domains, by id.
    pub domains: Vec<DomainState>,
    /// Faults waiting for event buffers, oldest first.
    pub events: Vec<Fault>,
    /// Faults dropped so far.
    pub events_dropped: u64,
}

/// Why a state cannot be restored; nothing is built then.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The configuration is not one a device presents.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// The negotiated features are not a driver's acceptable answer.
    #[error("negotiated features: {0}")]
    Features(#[from] FeatureError),
    /// `bypass` set while BYPASS_CONFIG is not offered.
    #[error("bypass is set but BYPASS_CONFIG is not offered")]
    Bypass,
    /// An endpoint the device would not have added.
    #[error("endpoint: {0}")]
    Endpoint(#[from] EndpointError),
    /// Two domains with one id.
    #[error("domain {0} appears twice")]
    DuplicateDomain(u32),
    /// A domain the device would not have made: outside `domain_range`, a
    /// bypass domain without BYPASS_CONFIG negotiated, or more domains
    /// than the limit.
    #[error("domain {0} cannot exist on this device")]
    Domain(u32),
    /// A domain no endpoint is attached to (the device frees those).
    #[error("domain {0} has no endpoint")]
    EmptyDomain(u32),
    /// An endpoint attached to a domain the state does not have.
    #[error("endpoint {endpoint:#x} is attached to missing domain {domain}")]
    MissingDomain {
        /// The endpoint.
        endpoint: u32,
        /// The domain it names.
        domain: u32,
    },
    /// A mapping a MAP could not have made (flags, alignment, ranges, a
    /// bypass domain), or one that overlaps another or is out of order.
    #[error("domain {domain}: mapping at {virt_start:#x} cannot exist on this device")]
    Mapping {
        /// The domain.
        domain: u32,
        /// The mapping's first address.
        virt_start: u64,
    },
    /// A domain maps what one of its endpoints reserves (neither MAP nor
    /// ATTACH lets a device get there).
    #[error("domain {domain} maps a reserved region of endpoint {endpoint:#x}")]
    ReservedMapped {
        /// The endpoint.
        endpoint: u32,
        /// Its domain.
        domain: u32,
    },
    /// More mappings than the limits allow.
    #[error("more mappings than the limits allow")]
    TooManyMappings,
    /// More pending faults than the backlog holds.
    #[error("{0} pending faults, more than the backlog of {EVENT_BACKLOG}")]
    TooManyEvents(usize),
}

impl Device {
    /// The whole state, for a snapshot.
    pub fn save(&self) -> DeviceState {
        DeviceState {
            config: *self.config(),
            negotiated: self.negotiated(),
            bypass: self.bypass_field(),
            endpoints: self
                .endpoints
                .iter()
                .map(|(&id, e)| EndpointState {
                    id,
                    domain: e.domain,
                    resv: e.resv.as_slice().to_vec(),
                })
                .collect(),
            domains: self
                .domains
                .iter()
                .map(|(&id, d)| DomainState {
                    id,
                    bypass: d.bypass,
                    mappings: self.mappings(id).collect(),
                })
                .collect(),
            events: self.events.iter().copied().collect(),
            events_dropped: self.events_dropped,
        }
    }

    /// A device in `state`, checked as the device checks the requests
    /// that could have built it. Mappings over reserved regions are kept:
    /// an endpoint attached after the MAP makes those legitimately.
    ///
    /// # Errors
    /// The [`RestoreError`] of the first thing no device could hold.
    pub fn restore(state: &DeviceState) -> Result<Device, RestoreError> {
        let mut d = Device::new(state.config)?;
        let config = *d.config();
        if state.negotiated != 0 {
            d.negotiate(state.negotiated)?;
        }
        if state.bypass && config.features & feature::BYPASS_CONFIG == 0 {
            return Err(RestoreError::Bypass);
        }
        d.bypass = state.bypass;
        for e in &state.endpoints {
            d.add_endpoint(e.id, &e.resv)?;
        }
        if state.domains.len() > config.limits.domains {
            let extra = state.domains[config.limits.domains].id;
            return Err(RestoreError::Domain(extra));
        }
        for s in &state.domains {
            d.restore_domain(s)?;
        }
        for e in &state.endpoints {
            let Some(domain) = e.domain else { continue };
            let Some(dom) = d.domains.get_mut(&domain) else {
                return Err(RestoreError::MissingDomain {
                    endpoint: e.id,
                    domain,
                });
            };
            if e.resv.iter().any(|r| dom.meets(r.start, r.end)) {
                return Err(RestoreError::ReservedMapped {
                    endpoint: e.id,
                    domain,
                });
            }
            dom.endpoints.insert(e.id);
            if let Some(ep) = d.endpoints.get_mut(&e.id) {
                ep.domain = Some(domain);
            }
        }
        if let Some((&id, _)) = d.domains.iter().find(|(_, dom)| dom.endpoints.is_empty()) {
            return Err(RestoreError::EmptyDomain(id));
        }
        if state.events.len() > EVENT_BACKLOG {
            return Err(RestoreError::TooManyEvents(state.events.len()));
        }
        d.events = state.events.iter().copied().collect();
        d.events_dropped = state.events_dropped;
        Ok(d)
    }

    fn restore_domain(&mut self, s: &DomainState) -> Result<(), RestoreError> {
        let config = *self.config();
        let negotiated = self.negotiated();
        let in_range = config.features & feature::DOMAIN_RANGE == 0
            || (config.domain_range.0..=config.domain_range.1).contains(&s.id);
        let bypass_ok = !s.bypass || negotiated & feature::BYPASS_CONFIG != 0;
        if !in_range || !bypass_ok {
            return Err(RestoreError::Domain(s.id));
        }
        if self.domains.contains_key(&s.id) {
            return Err(RestoreError::DuplicateDomain(s.id));
        }
        let limits = config.limits;
        if s.mappings.len() > limits.mappings_per_domain
            || self.mappings + s.mappings.len() > limits.mappings
        {
            return Err(RestoreError::TooManyMappings);
        }
        let mut dom = Domain {
            bypass: s.bypass,
            ..Domain::default()
        };
        let mut prev_end: Option<u64> = None;
        for m in &s.mappings {
            let bad = RestoreError::Mapping {
                domain: s.id,
                virt_start: m.virt_start,
            };
            // In order and apart: each starts after the previous ends.
            let apart = prev_end.is_none_or(|e| e < m.virt_start);
            if s.bypass || !apart || !mappable(&config, negotiated, m) {
                return Err(bad);
            }
            prev_end = Some(m.virt_end);
            dom.mappings.insert(
                m.virt_start,
                Entry {
                    end: m.virt_end,
                    phys: m.phys_start,
                    flags: m.flags,
                },
            );
        }
        self.mappings += s.mappings.len();
        self.domains.insert(s.id, dom);
        Ok(())
    }
}

/// Whether a MAP of `m` passes the checks that do not depend on the
/// domain's other mappings or endpoints.
fn mappable(config: &DeviceConfig, negotiated: u64, m: &Mapping) -> bool {
    let mut known = map::READ | map::WRITE;
    if negotiated & feature::MMIO != 0 {
        known |= map::MMIO;
    }
    let g = config.granule();
    let input_ok = config.features & feature::INPUT_RANGE == 0
        || (m.virt_start >= config.input_range.0 && m.virt_end <= config.input_range.1);
    let phys_ok = m
        .phys_start
        .checked_add(m.virt_end.wrapping_sub(m.virt_start))
        .is_some_and(|end| m.phys_start >= config.phys_range.0 && end <= config.phys_range.1);
    negotiated & feature::MAP_UNMAP != 0
        && m.flags & !known == 0
        && m.virt_end > m.virt_start
        && m.virt_start.is_multiple_of(g)
        && m.phys_start.is_multiple_of(g)
        && m.virt_end.wrapping_add(1).is_multiple_of(g)
        && input_ok
        && phys_ok
}
