//! Oracles for the fuzz targets and the model-based test.
//!
//! [`run_request`] feeds any bytes to [`Device::handle`] and checks what a
//! handled request promises. [`run_ops`] replays an operation sequence on
//! the device and on [`Model`], a plain reference of the specification's
//! semantics (lists scanned end to end), and checks that every status and
//! translation agree and that a refused request changes nothing (and
//! that each state between requests saves and restores to itself).
//! [`run_restore`] restores states decoded from bytes, most of them close
//! to ones a device holds.

use crate::spec::{attach, feature, map, resv, size, Status};
use crate::{
    Access, Device, DeviceConfig, DeviceState, DomainState, EndpointState, Fault, Limits, Mapping,
    Request, ResvMem, EVENT_BACKLOG,
};
use alloc::vec;
use alloc::vec::Vec;

/// Endpoints 0 to 2 exist (0 with a reserved region at [`RESV`]); 3 does
/// not.
pub const ENDPOINTS: u32 = 3;
/// Endpoint 0's reserved region.
pub const RESV: (u64, u64) = (40, 47);
/// The bounds the oracle's device has.
pub const LIMITS: Limits = Limits {
    domains: 3,
    mappings_per_domain: 6,
    mappings: 10,
};

/// The device the oracles use: a one-byte granule, [`LIMITS`], endpoints
/// 0 to 2, every feature negotiated.
pub fn device() -> Device {
    let mut d = Device::new(DeviceConfig {
        page_size_mask: 1,
        probe_size: 64,
        limits: LIMITS,
        ..DeviceConfig::default()
    })
    .expect("a valid configuration");
    let r = ResvMem {
        subtype: resv::RESERVED,
        start: RESV.0,
        end: RESV.1,
    };
    d.add_endpoint(0, &[r]).expect("new");
    d.add_endpoint(1, &[]).expect("new");
    d.add_endpoint(2, &[]).expect("new");
    d.negotiate(d.offered()).expect("offered");
    d
}

/// One step of a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A request, sent as bytes.
    Req(Request),
    /// A translation: endpoint, address, write.
    Translate(u32, u64, bool),
}

/// Decodes bytes into operations, eight bytes each: kind, domain,
/// endpoint, start, length, phys, flags, extra. Small values, so that
/// sequences meet each other's ranges.
pub fn decode_ops(data: &[u8]) -> Vec<Op> {
    data.chunks_exact(8)
        .take(256)
        .map(|c| {
            let domain = u32::from(c[1] % 4);
            let endpoint = u32::from(c[2] % 4);
            let start = u64::from(c[3] % 64);
            let len = u64::from(c[4] % 24);
            let rare = c[7] % 32 == 0;
            match c[0] % 5 {
                0 => Op::Req(Request::Attach {
                    domain,
                    endpoint,
                    flags: if c[6] % 5 == 0 { attach::BYPASS } else { 0 } | u32::from(rare) << 1,
                    reserved: u32::from(c[7] % 64 == 1),
                }),
                1 => Op::Req(Request::Detach { domain, endpoint }),
                2 => Op::Req(Request::Map {
                    domain,
                    virt_start: start,
                    virt_end: start + len,
                    phys_start: u64::from(c[5]) * 16,
                    flags: u32::from(c[6] % 8) | u32::from(rare) << 3,
                }),
                3 => Op::Req(Request::Unmap {
                    domain,
                    virt_start: start,
                    virt_end: if rare {
                        start.saturating_sub(1)
                    } else {
                        start + len
                    },
                    reserved: u32::from(c[7] % 64 == 1),
                }),
                _ => Op::Translate(endpoint, start, c[6] % 2 == 1),
            }
        })
        .collect()
}

/// The specification's semantics, kept plainly: lists scanned end to end.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// (domain, bypass, endpoints)
    pub domains: Vec<(u32, bool, Vec<u32>)>,
    /// (domain, start, end, phys, flags)
    pub maps: Vec<(u32, u64, u64, u64, u32)>,
}

impl Model {
    fn domain(&self, id: u32) -> Option<usize> {
        self.domains.iter().position(|d| d.0 == id)
    }

    fn domain_of(&self, ep: u32) -> Option<u32> {
        self.domains.iter().find(|d| d.2.contains(&ep)).map(|d| d.0)
    }

    fn detach_ep(&mut self, ep: u32) {
        if let Some(i) = self.domains.iter().position(|d| d.2.contains(&ep)) {
            self.domains[i].2.retain(|&e| e != ep);
            if self.domains[i].2.is_empty() {
                let id = self.domains[i].0;
                self.domains.remove(i);
                self.maps.retain(|m| m.0 != id);
            }
        }
    }

    /// The status the specification gives `r` (PROBE aside).
    pub fn exec(&mut self, r: Request) -> Status {
        match r {
            Request::Attach {
                domain,
                endpoint,
                flags,
                reserved,
            } => {
                if reserved != 0 || flags & !attach::BYPASS != 0 {
                    return Status::Inval;
                }
                if endpoint >= ENDPOINTS {
                    return Status::NoEnt;
                }
                let bypass = flags != 0;
                match self.domain(domain) {
                    Some(i) if self.domains[i].1 != bypass => return Status::Inval,
                    Some(_) if self.domain_of(endpoint) == Some(domain) => return Status::Ok,
                    Some(_)
                        if endpoint == 0
                            && self
                                .maps
                                .iter()
                                .any(|m| m.0 == domain && m.1 <= RESV.1 && RESV.0 <= m.2) =>
                    {
                        return Status::Unsupp;
                    }
                    Some(_) => {}
                    None => {
                        let frees = self.domain_of(endpoint).is_some_and(|d| {
                            self.domain(d).is_some_and(|i| self.domains[i].2.len() == 1)
                        });
                        if self.domains.len() - usize::from(frees) >= LIMITS.domains {
                            return Status::NoMem;
                        }
                    }
                }
                self.detach_ep(endpoint);
                match self.domain(domain) {
                    Some(i) => self.domains[i].2.push(endpoint),
                    None => self.domains.push((domain, bypass, vec![endpoint])),
                }
                Status::Ok
            }
            Request::Detach { domain, endpoint } => {
                if endpoint >= ENDPOINTS {
                    return Status::NoEnt;
                }
                if self.domain_of(endpoint) != Some(domain) {
                    return Status::Inval;
                }
                self.detach_ep(endpoint);
                Status::Ok
            }
            Request::Map {
                domain,
                virt_start: s,
                virt_end: e,
                phys_start: p,
                flags,
            } => {
                if flags & !(map::READ | map::WRITE | map::MMIO) != 0 {
                    return Status::Inval;
                }
                let Some(i) = self.domain(domain) else {
                    return Status::NoEnt;
                };
                if self.domains[i].1 || e <= s {
                    return Status::Inval;
                }
                if self
                    .maps
                    .iter()
                    .any(|m| m.0 == domain && m.1 <= e && s <= m.2)
                {
                    return Status::Inval;
                }
                if self.domains[i].2.contains(&0) && RESV.0 <= e && s <= RESV.1 {
                    return Status::Inval;
                }
                let here = self.maps.iter().filter(|m| m.0 == domain).count();
                if here >= LIMITS.mappings_per_domain || self.maps.len() >= LIMITS.mappings {
                    return Status::NoMem;
                }
                self.maps.push((domain, s, e, p, flags));
                Status::Ok
            }
            Request::Unmap {
                domain,
                virt_start: s,
                virt_end: e,
                reserved,
            } => {
                if reserved != 0 {
                    return Status::Inval;
                }
                let Some(i) = self.domain(domain) else {
                    return Status::NoEnt;
                };
                if self.domains[i].1 || e < s {
                    return Status::Inval;
                }
                let touched =
                    |m: &&(u32, u64, u64, u64, u32)| m.0 == domain && m.1 <= e && s <= m.2;
                if self.maps.iter().filter(touched).any(|m| m.1 < s || m.2 > e) {
                    return Status::Range;
                }
                self.maps
                    .retain(|m| !(m.0 == domain && m.1 <= e && s <= m.2));
                Status::Ok
            }
            Request::Probe { .. } => Status::Inval,
        }
    }

    /// Where an access goes, or `None` for a fault.
    pub fn translate(&self, ep: u32, addr: u64, write: bool) -> Option<u64> {
        if ep >= ENDPOINTS {
            return None;
        }
        let d = self.domain_of(ep)?;
        let i = self.domain(d)?;
        if self.domains[i].1 {
            return Some(addr);
        }
        let m = self
            .maps
            .iter()
            .find(|m| m.0 == d && m.1 <= addr && addr <= m.2)?;
        let ok = if write {
            m.4 & map::WRITE != 0
        } else {
            m.4 & map::READ != 0
        };
        ok.then(|| m.3 + (addr - m.1))
    }
}

/// Replays `ops` on [`device`] and on [`Model`].
///
/// # Panics
/// When a status or a translation disagrees, a refused request changed
/// the device, or a snapshot does not restore to the same device: that is
/// the finding.
pub fn run_ops(ops: &[Op]) {
    let mut dev = device();
    assert_ne!(dev.negotiated() & feature::MMIO, 0);
    let mut model = Model::default();
    for &op in ops {
        match op {
            Op::Req(r) => {
                let before = dev.clone();
                let mut tail = [0xaa; size::TAIL];
                assert_eq!(dev.handle(&r.encode(), &mut tail), size::TAIL);
                assert_eq!(tail[1..], [0, 0, 0]);
                let got = Status::from_u8(tail[0]).expect("a status");
                let want = model.exec(r);
                assert_eq!(got, want, "{r:?}");
                if got != Status::Ok {
                    assert_eq!(dev, before, "refused {r:?} changed the device");
                }
                assert_eq!(dev.mapping_count(), model.maps.len());
                // Carry on with the device restored from a snapshot: it
                // must be the same device and answer the same from here.
                let restored = Device::restore(&dev.save()).expect("a saved state restores");
                assert_eq!(restored, dev, "restored after {r:?}");
                dev = restored;
            }
            Op::Translate(ep, addr, write) => {
                let access = if write { Access::Write } else { Access::Read };
                let got = dev.translate(ep, addr, access).ok().map(|t| t.phys);
                assert_eq!(got, model.translate(ep, addr, write), "ep {ep} addr {addr}");
            }
        }
    }
}

/// Feeds `data` to [`Device::handle`]: its first byte sizes the
/// device-writable part, the rest is the device-readable part.
///
/// # Panics
/// When a handled request breaks a promise: the used length is 0 with the
/// buffer unwritten, or the tail holds a status with zero reserved bytes;
/// a refusal changes nothing; a parsed request encodes back to itself.
pub fn run_request(data: &[u8]) {
    let Some((&w, readable)) = data.split_first() else {
        return;
    };
    let mut dev = device();
    let _ = dev.handle(
        &Request::Attach {
            domain: 1,
            endpoint: 1,
            flags: 0,
            reserved: 0,
        }
        .encode(),
        &mut [0; 4],
    );
    let writable_len = usize::from(w) % 80;
    let mut writable = vec![0xaau8; writable_len];
    let before = dev.clone();
    let used = dev.handle(readable, &mut writable);
    if used == 0 {
        assert!(writable.iter().all(|&b| b == 0xaa), "used 0 but written");
        assert_eq!(dev, before);
        return;
    }
    assert!(used <= writable_len && used >= size::TAIL);
    let tail = &writable[used - size::TAIL..used];
    let status = Status::from_u8(tail[0]).expect("a status");
    assert_eq!(tail[1..], [0, 0, 0]);
    if status != Status::Ok {
        assert_eq!(dev, before, "a refusal changed the device");
    }
    let parsed = Request::parse(readable).expect("handled, so parsed");
    assert_eq!(Request::parse(&parsed.encode()), Ok(parsed));
}

/// Reads bytes one at a time, zero once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u8())
    }
}

/// Decodes bytes into a device state: small numbers, so that ids,
/// ranges and limits meet each other, and a rule broken now and then, so
/// that most states are close to ones a device holds.
pub fn decode_state(data: &[u8]) -> DeviceState {
    let mut b = Bytes(data);
    // True about one time in eight.
    let rare = |b: &mut Bytes| b.u8().is_multiple_of(8);
    let base = DeviceConfig::default();
    let mut features = base.features;
    if rare(&mut b) {
        features ^= (b.u64() | b.u64() << 8).rotate_left(1) & crate::config::IMPLEMENTED;
    }
    let granule_log = u32::from(b.u8() % 14);
    let g = 1u64 << granule_log;
    let config = DeviceConfig {
        features,
        page_size_mask: g | b.u64() << 20,
        input_range: (
            if rare(&mut b) { b.u64() * g } else { 0 },
            u64::MAX >> (b.u8() % 8 * 8),
        ),
        domain_range: (u32::from(rare(&mut b)), 3 + u32::from(b.u8() % 8)),
        probe_size: 24 * (1 + u32::from(b.u8() % 4)),
        bypass: false,
        phys_range: (0, u64::MAX >> (b.u8() % 8 * 8)),
        limits: Limits {
            domains: usize::from(2 + b.u8() % 5),
            mappings_per_domain: usize::from(2 + b.u8() % 8),
            mappings: usize::from(4 + b.u8() % 16),
        },
    };
    let negotiated = match b.u8() % 8 {
        0 => 0,
        1 => b.u64() << 56 | b.u64(),
        _ => features,
    };
    let domain_count = b.u8() % 5;
    let endpoints = (0..b.u8() % 5)
        .map(|i| EndpointState {
            id: u32::from(i + u8::from(rare(&mut b))),
            domain: (domain_count > 0 && b.u8() % 4 != 0).then(|| u32::from(b.u8() % domain_count)),
            resv: {
                // Now and then hundreds of regions (past the per-endpoint
                // bound), or regions counted down from the top of the space.
                let count = if rare(&mut b) {
                    usize::from(b.u8()) * 2
                } else {
                    usize::from(b.u8() % 3)
                };
                let from_top = rare(&mut b);
                let mut at = 0u64;
                (0..count)
                    .map(|_| {
                        let start = at + b.u64() * g;
                        at = start + (b.u64() % 4 + 1) * g;
                        let (start, end) = if from_top {
                            (u64::MAX - (at - 1), u64::MAX - start)
                        } else {
                            (start, at - 1)
                        };
                        ResvMem {
                            subtype: u8::from(b.u8() % 4 == 0) + u8::from(rare(&mut b)),
                            start,
                            end,
                        }
                    })
                    .collect()
            },
        })
        .collect();
    let domains = (0..domain_count)
        .map(|i| {
            let mut at = 0u64;
            DomainState {
                id: u32::from(i + u8::from(rare(&mut b))),
                bypass: b.u8() % 6 == 0,
                mappings: (0..b.u8() % 6)
                    .map(|_| {
                        let start = at + b.u64() * g;
                        let end = start + (b.u64() % 4 + 1) * g - 1;
                        at = end + 1;
                        Mapping {
                            virt_start: start + u64::from(rare(&mut b)),
                            virt_end: end,
                            phys_start: b.u64() * g,
                            flags: u32::from(b.u8() % 3 + 1) | u32::from(rare(&mut b)) << 2,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    let fault = Fault {
        reason: b.u8() % 3,
        flags: u32::from(b.u8()),
        endpoint: u32::from(b.u8() % 6),
        address: b.u64(),
    };
    let events = match b.u8() {
        255 => EVENT_BACKLOG + 1,
        n => usize::from(n % 4),
    };
    DeviceState {
        config,
        negotiated,
        bypass: rare(&mut b),
        endpoints,
        domains,
        events: vec![fault; events],
        events_dropped: b.u64(),
    }
}

/// Restores the state [`decode_state`] makes of `data`; a device it gives
/// must save and restore to itself, and serve requests decoded from the
/// rest of the bytes without breaking a promise.
///
/// # Panics
/// When a restored device is not what it saves, or its requests break
/// [`run_request`]'s promises: that is the finding.
pub fn run_restore(data: &[u8]) {
    let state = decode_state(data);
    let Ok(mut dev) = Device::restore(&state) else {
        return;
    };
    let again = Device::restore(&dev.save()).expect("a saved state restores");
    assert_eq!(again, dev);
    // Requests after the state's bytes: each is handled or refused without
    // a change, and every count stays consistent (a wrong one underflows).
    for chunk in data.chunks(40).skip(2).take(16) {
        let before = dev.clone();
        let mut out = [0xaau8; size::TAIL];
        if dev.handle(chunk, &mut out) == size::TAIL && out[0] != Status::Ok as u8 {
            assert_eq!(dev, before);
        }
        assert_eq!(
            dev.mapping_count(),
            dev.domains()
                .map(|d| dev.mappings(d).count())
                .sum::<usize>()
        );
    }
}

/// An external mapper for the oracle: it holds what it was given,
/// refuses a map that overlaps what it holds or an unmap of something it
/// does not hold (either would be an adapter bug), and fails when told to.
#[cfg(feature = "vmm")]
#[derive(Debug, Clone, Default)]
pub struct RecordingMapper(pub alloc::sync::Arc<std::sync::Mutex<RecordedMaps>>);

/// What a [`RecordingMapper`] holds, and its failures to come.
#[cfg(feature = "vmm")]
#[derive(Debug, Default)]
pub struct RecordedMaps {
    /// Mappings by first address.
    pub held: alloc::collections::BTreeMap<u64, Mapping>,
    /// Whether it is in bypass.
    pub bypass: bool,
    /// Maps that succeed before one fails (then back to `None`).
    pub maps_before_failure: Option<u8>,
    /// Unmaps that succeed before one fails (then back to `None`).
    pub unmaps_before_failure: Option<u8>,
    /// Every map fails (`Failed(12)`) while set.
    pub maps_fail: bool,
    /// Every unmap fails (`Failed(5)`) while set.
    pub unmaps_fail: bool,
    /// Whether it can bypass.
    pub can_bypass: bool,
}

#[cfg(feature = "vmm")]
extern crate std;

#[cfg(feature = "vmm")]
impl RecordingMapper {
    /// Runs `f` on what it holds and its failures to come.
    pub fn with<R>(&self, f: impl FnOnce(&mut RecordedMaps) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// What it holds, by address.
    pub fn held(&self) -> Vec<Mapping> {
        self.with(|h| h.held.values().copied().collect())
    }
}

#[cfg(feature = "vmm")]
fn countdown(n: &mut Option<u8>) -> bool {
    match n {
        Some(0) => {
            *n = None;
            true
        }
        Some(k) => {
            *k -= 1;
            false
        }
        None => false,
    }
}

#[cfg(feature = "vmm")]
impl crate::ExternalMapper for RecordingMapper {
    fn map(&mut self, m: &Mapping) -> Result<(), crate::ExternalError> {
        self.with(|h| {
            if h.maps_fail {
                return Err(crate::ExternalError::Failed(12));
            }
            if countdown(&mut h.maps_before_failure) {
                return Err(crate::ExternalError::NoMemory);
            }
            let overlaps = h
                .held
                .values()
                .any(|o| o.virt_start <= m.virt_end && m.virt_start <= o.virt_end);
            assert!(!overlaps, "{m:?} mapped over what the mapper holds");
            h.held.insert(m.virt_start, *m);
            Ok(())
        })
    }

    fn unmap(&mut self, m: &Mapping) -> Result<(), crate::ExternalError> {
        self.with(|h| {
            if h.unmaps_fail || countdown(&mut h.unmaps_before_failure) {
                return Err(crate::ExternalError::Failed(5));
            }
            assert_eq!(h.held.remove(&m.virt_start), Some(*m), "unmap of {m:?}");
            Ok(())
        })
    }

    fn set_bypass(&mut self, on: bool) -> Result<(), crate::ExternalError> {
        self.with(|h| {
            if !h.can_bypass {
                return Err(crate::ExternalError::Unsupported);
            }
            h.bypass = on;
            Ok(())
        })
    }
}

/// Requests, control-path changes and mapper failures decoded from bytes,
/// on a [`VirtioIommu`](crate::VirtioIommu) whose endpoints 0 and 1 have
/// external mappers. After every step: a request the mappers refused left
/// the device as it was; a mapper holds at most its endpoint's domain
/// (exactly it, and bypass exactly when the endpoint is, while no unmap
/// has failed since the last successful sync).
#[cfg(feature = "vmm")]
pub fn run_external(data: &[u8]) {
    use crate::VirtioIommu;
    let mut b = Bytes(data);
    let mut d = Device::new(DeviceConfig {
        limits: LIMITS,
        ..DeviceConfig::default()
    })
    .expect("a valid config");
    for ep in 0..ENDPOINTS {
        d.add_endpoint(ep, &[]).expect("a new endpoint");
    }
    d.negotiate(d.offered()).expect("all offered");
    let iommu = VirtioIommu::new(d);
    let mappers = [RecordingMapper::default(), RecordingMapper::default()];
    for (ep, m) in mappers.iter().enumerate() {
        m.with(|h| h.can_bypass = b.u8() & 1 == 0);
        iommu
            .set_external_mapper(ep as u32, alloc::boxed::Box::new(m.clone()))
            .expect("an empty domain maps nothing");
    }
    let mut failures = iommu.external_failures();
    for _ in 0..64 {
        if b.0.is_empty() {
            break;
        }
        let dom = u32::from(b.u8() % 4);
        let ep = u32::from(b.u8() % 4);
        let page = b.u64() % 16;
        let pages = 1 + b.u64() % 4;
        let request = match b.u8() % 9 {
            0 | 1 => Request::Attach {
                domain: dom,
                endpoint: ep,
                flags: if b.u8() % 4 == 0 { attach::BYPASS } else { 0 },
                reserved: 0,
            },
            2 => Request::Detach {
                domain: dom,
                endpoint: ep,
            },
            3 | 4 => Request::Map {
                domain: dom,
                virt_start: page << 12,
                virt_end: ((page + pages) << 12) - 1,
                phys_start: (page + 0x100) << 12,
                flags: u32::from(b.u8() % 4),
            },
            5 | 6 => Request::Unmap {
                domain: dom,
                virt_start: page << 12,
                virt_end: ((page + pages) << 12) - 1,
                reserved: 0,
            },
            7 => {
                let m = &mappers[usize::from(b.u8() % 2)];
                let n = b.u8() % 3;
                if b.u8() % 2 == 0 {
                    m.with(|h| h.maps_before_failure = Some(n));
                } else {
                    m.with(|h| h.unmaps_before_failure = Some(n));
                }
                continue;
            }
            _ => {
                match b.u8() % 3 {
                    0 => iommu.with_device(|d| {
                        d.reset();
                        d.negotiate(d.offered()).expect("all offered");
                    }),
                    1 => {
                        let _ = iommu.with_device(|d| d.remove_endpoint(ep));
                    }
                    _ => {
                        let _ = iommu.with_device(|d| d.add_endpoint(ep, &[]));
                    }
                }
                check_mappers(&iommu, &mappers, &mut failures);
                continue;
            }
        };
        let before = iommu.with_device(|d| d.clone());
        failures = iommu.external_failures();
        let mut plain = before.clone();
        let mut tail = [0u8; size::TAIL];
        let used = iommu.handle(&request.encode(), &mut tail);
        assert_eq!(used, size::TAIL);
        let status = Status::from_u8(tail[0]).expect("a status");
        let after = iommu.with_device(|d| d.clone());
        let plain_status = plain.execute(&request);
        if status == plain_status {
            assert_eq!(
                after, plain,
                "{request}: the device did what a plain one does"
            );
        } else if matches!(request, Request::Map { .. } | Request::Attach { .. }) {
            // Refused for a mapper: taken back whole, with its status.
            assert_eq!(plain_status, Status::Ok, "{request}");
            assert!(
                matches!(
                    status,
                    Status::NoMem | Status::DevErr | Status::Unsupp | Status::Range
                ),
                "{request}: {status}"
            );
            assert_eq!(after, before, "{request}: a refusal changed the device");
        } else {
            // An UNMAP or DETACH a mapper could not follow: the device did
            // it, and says DEVERR.
            assert_eq!(status, Status::DevErr, "{request}");
            assert_ne!(iommu.external_failures(), failures, "{request}: counted");
            assert_eq!(after, plain, "{request}");
        }
        check_mappers(&iommu, &mappers, &mut failures);
    }
}

/// A mapper holds exactly its endpoint's domain while no failure has been
/// counted since the last check; at most that domain's addresses...
/// otherwise nothing beyond what it held (failures keep mappings held).
#[cfg(feature = "vmm")]
fn check_mappers(iommu: &crate::VirtioIommu, mappers: &[RecordingMapper; 2], failures: &mut u64) {
    let d = iommu.with_device(|d| d.clone());
    let now = iommu.external_failures();
    for (ep, m) in mappers.iter().enumerate() {
        let ep = ep as u32;
        let (recorded, bypass) = iommu.external_mappings(ep).expect("installed");
        assert_eq!(
            m.held(),
            recorded,
            "the adapter knows what the mapper holds"
        );
        let want: Vec<Mapping> = match d.domain_of(ep) {
            Some(dom) if d.is_bypass_domain(dom) == Some(false) => d.mappings(dom).collect(),
            _ => Vec::new(),
        };
        if now == *failures {
            assert_eq!(recorded, want, "endpoint {ep} holds its domain");
            assert_eq!(bypass, d.in_bypass(ep), "endpoint {ep} bypass");
        }
    }
    *failures = now;
}

/// Any bytes as a PROBE reply's properties: reserved regions that are
/// sorted and well formed, or a typed refusal; never a panic. What reads
/// then fills identity domains of several apertures and granules (the
/// driver's fill for a device without BYPASS_CONFIG): exactly the whole
/// granules outside every region, with regions at either end of the
/// 64-bit space left out like any other.
#[cfg(feature = "driver")]
pub fn run_probe_reply(data: &[u8]) {
    let Ok(regions) = crate::driver::parse_properties(data) else {
        return;
    };
    for w in regions.windows(2) {
        assert!(w[0].start.raw() <= w[1].start.raw());
    }
    for r in &regions {
        assert!(r.length >= 1);
        assert!(r.start.raw().checked_add(r.length - 1).is_some());
    }
    assert!(regions.len() <= data.len() / size::RESV_MEM);
    let apertures = [
        (0, u64::MAX),
        (0, (1 << 48) - 1),
        (0x1000, 0xffff_ffff_ffff_efff),
        (0x8000_0800, 0xffff_ffff_ffff_fbff),
    ];
    for (first, last) in apertures {
        for bitmap in [!0xfffu64, 0xffff_0000, 1] {
            check_identity(&regions, bitmap, first, last);
        }
    }
    let mut merged = Vec::new();
    for r in &regions {
        iommu_core::insert_resv_region(&mut merged, *r);
    }
    for r in &merged {
        assert!(r.length >= 1 && r.start.raw().checked_add(r.length - 1).is_some());
    }
}

/// The driver's identity fill against the complement of the regions'
/// union, worked out on its own.
#[cfg(feature = "driver")]
fn check_identity(regions: &[iommu_core::ReservedRegion], bitmap: u64, first: u64, last: u64) {
    let g = iommu_core::DomainGeometry {
        aperture_start: iommu_core::Iova::new(first),
        aperture_end: iommu_core::Iova::new(last),
        force_aperture: true,
    };
    let got = crate::driver::identity_ranges(regions, bitmap, g);
    let granule = bitmap & bitmap.wrapping_neg();
    // Granule numbers, so that no bound needs 2^64.
    let shift = granule.trailing_zeros();
    let lo = (first >> shift) + u64::from(first & (granule - 1) != 0);
    let hi_incl = last >> shift;
    let hi = if last & (granule - 1) == granule - 1 {
        Some(hi_incl)
    } else {
        hi_incl.checked_sub(1)
    };
    let mut spans: Vec<(u64, u64)> = regions
        .iter()
        .map(|r| (r.start.raw() >> shift, r.last() >> shift))
        .collect();
    spans.sort_unstable();
    let mut want = Vec::new();
    if let Some(hi) = hi.filter(|&h| h >= lo) {
        let mut at = lo;
        let mut open = true;
        for (s, e) in spans {
            if !open || e < at {
                continue;
            }
            if s > hi {
                break;
            }
            if s > at {
                want.push((at, s - 1));
            }
            match e.checked_add(1) {
                Some(n) if e < hi => at = n,
                _ => open = false,
            }
        }
        if open && at <= hi {
            want.push((at, hi));
        }
    }
    let want: Vec<(u64, u64)> = want
        .into_iter()
        .map(|(a, b)| (a << shift, (b << shift) | (granule - 1)))
        .collect();
    assert_eq!(
        got, want,
        "identity fill of [{first:#x}, {last:#x}], granule {granule:#x}"
    );
}

/// The endpoint of [`bench_device`].
pub const BENCH_EP: u32 = 1;

/// The benchmarks' device (criterion's and `iommu bench virtio`'s):
/// endpoint [`BENCH_EP`] attached to domain 1, which holds `n` 4 KiB
/// mappings, every other page, to physical pages below 16 MiB.
///
/// # Panics
/// Never with the default configuration it uses.
pub fn bench_device(n: u64) -> Device {
    let mut d = Device::new(DeviceConfig::default()).expect("the default configuration");
    d.add_endpoint(BENCH_EP, &[]).expect("a new endpoint");
    d.negotiate(d.offered()).expect("all offered");
    let attach = Request::Attach {
        domain: 1,
        endpoint: BENCH_EP,
        flags: 0,
        reserved: 0,
    };
    assert_eq!(d.execute(&attach), Status::Ok);
    for i in 0..n {
        let r = Request::Map {
            domain: 1,
            virt_start: i * 0x2000,
            virt_end: i * 0x2000 + 0xfff,
            phys_start: (i % 4096) * 0x1000,
            flags: map::READ | map::WRITE,
        };
        assert_eq!(d.execute(&r), Status::Ok);
    }
    d
}

/// The bytes of the MAP and the UNMAP of the 4 KiB page the benchmarks
/// map and unmap in [`bench_device`]`(n)`'s domain: a free page in its
/// middle.
pub fn bench_map_unmap(n: u64) -> (Vec<u8>, Vec<u8>) {
    let iova = (n / 2) * 0x2000 + 0x1000;
    let map = Request::Map {
        domain: 1,
        virt_start: iova,
        virt_end: iova + 0xfff,
        phys_start: 0x40_0000,
        flags: map::READ | map::WRITE,
    };
    let unmap = Request::Unmap {
        domain: 1,
        virt_start: iova,
        virt_end: iova + 0xfff,
        reserved: 0,
    };
    (map.encode(), unmap.encode())
}

/// Writes `seeds` as `seed-0`, `seed-1`, … of fuzz target `target`'s
/// corpus, when `IOMMU_FUZZ_SEEDS` names the corpus directory (`.ci/run`
/// sets it).
#[cfg(feature = "vmm")]
pub fn write_seeds(target: &str, seeds: &[Vec<u8>]) {
    if let Some(dir) = std::env::var_os("IOMMU_FUZZ_SEEDS") {
        let dir = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&dir).expect("the seed directory");
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(alloc::format!("seed-{i}")), s).expect("a seed file");
        }
    }
}

/// Guest memory of the queue oracle: two adjacent regions (a ring may
/// cross from one to the other), a gap, and a third region.
#[cfg(feature = "vmm")]
pub const QUEUE_MEMORY: [(u64, usize); 3] = [(0, 0x8000), (0x8000, 0x8000), (0x2_0000, 0x1000)];

/// Bytes of [`run_queue`]'s header before the memory image.
#[cfg(feature = "vmm")]
pub const QUEUE_HEADER: usize = 11;

/// A hostile driver's request queue, from bytes: a header (queue size
/// exponent, event-index flag, descriptor table / available ring / used
/// ring addresses, next available and used indexes, all little-endian)
/// and an image of guest memory from address 0. The device serves the
/// queue; whatever the rings say (the used ring over the available one
/// included), the pass must end without a panic, return at most a queue
/// of chains, and move the available and used indexes by exactly the
/// chains returned. Returns
/// how many chains were returned, `None` for a queue refused.
#[cfg(feature = "vmm")]
pub fn run_queue(data: &[u8]) -> Option<u32> {
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    let mut h = [0u8; QUEUE_HEADER];
    for (d, s) in h.iter_mut().zip(data) {
        *d = *s;
    }
    let word = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
    let size = 1u16 << (h[0] % 9);
    let event_idx = h[0] & 0x80 != 0;
    let (desc, avail, used) = (
        u64::from(word(1)) & !0xf,
        u64::from(word(3)) & !0x1,
        u64::from(word(5)) & !0x3,
    );
    let (next_avail, next_used) = (word(7), u16::from(h[9]) | u16::from(h[10]) << 8);
    let ranges: Vec<(GuestAddress, usize)> = QUEUE_MEMORY
        .iter()
        .map(|&(a, l)| (GuestAddress(a), l))
        .collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).expect("the oracle's memory");
    let image = data.get(QUEUE_HEADER..).unwrap_or_default();
    let image = &image[..image.len().min(0x1_0000)];
    mem.write_slice(image, GuestAddress(0))
        .expect("the image fits");
    let mut q = Queue::new(size).expect("a power of two");
    // An address the queue refuses leaves its default, as a transport's would.
    let _ = q.try_set_desc_table_address(GuestAddress(desc));
    let _ = q.try_set_avail_ring_address(GuestAddress(avail));
    let _ = q.try_set_used_ring_address(GuestAddress(used));
    q.set_next_avail(next_avail);
    q.set_next_used(next_used);
    q.set_event_idx(event_idx);
    q.set_ready(true);
    let iommu = crate::VirtioIommu::new(device());
    match iommu.process_requests(&mut q, &mem) {
        Ok(served) => {
            let n = u16::try_from(served.used).expect("at most a queue of chains");
            assert!(n <= size, "{n} chains from a queue of {size}");
            assert_eq!(q.next_used(), next_used.wrapping_add(n));
            assert_eq!(q.next_avail(), next_avail.wrapping_add(n));
            Some(served.used)
        }
        // The queue is broken: nothing more to check than the return.
        Err(_) => None,
    }
}
