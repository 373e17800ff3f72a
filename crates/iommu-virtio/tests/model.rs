//! Model-based test: random request sequences run on the device and on a
//! plain reference of the specification's semantics (lists scanned end to
//! end, no ordered maps); every status and every translation must agree,
//! and a refused request must leave the device as it was.

use iommu_virtio::spec::{attach, feature, map, Status};
use iommu_virtio::{Access, Device, DeviceConfig, Limits, Request, ResvMem};
use proptest::prelude::*;

/// Endpoints 0 to 2 exist (endpoint 0 has a reserved region at 40-47);
/// endpoint 3 does not.
const ENDPOINTS: u32 = 3;
const RESV: (u64, u64) = (40, 47);

#[derive(Clone, Debug)]
enum Op {
    Req(Request),
    Translate(u32, u64, bool),
}

#[derive(Clone, Debug, Default)]
struct Model {
    /// (domain, bypass, endpoints)
    domains: Vec<(u32, bool, Vec<u32>)>,
    /// (domain, start, end, phys, flags)
    maps: Vec<(u32, u64, u64, u64, u32)>,
}

const LIMITS: Limits = Limits {
    domains: 3,
    mappings_per_domain: 6,
    mappings: 10,
};

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
    fn exec(&mut self, r: Request) -> Status {
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
                    Some(_) => {}
                    None => {
                        let frees = self
                            .domain_of(endpoint)
                            .is_some_and(|d| self.domains[self.domain(d).unwrap()].2.len() == 1);
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
    /// Some(phys) or None (a fault).
    fn translate(&self, ep: u32, addr: u64, write: bool) -> Option<u64> {
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

fn op() -> impl Strategy<Value = Op> {
    let dom = 0u32..4;
    let ep = 0u32..4;
    let addr = 0u64..64;
    prop_oneof![
        (
            dom.clone(),
            ep.clone(),
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.05)
        )
            .prop_map(|(domain, endpoint, b, r)| Op::Req(Request::Attach {
                domain,
                endpoint,
                flags: if b { attach::BYPASS } else { 0 },
                reserved: u32::from(r),
            })),
        (dom.clone(), ep.clone())
            .prop_map(|(domain, endpoint)| Op::Req(Request::Detach { domain, endpoint })),
        (dom.clone(), addr.clone(), 0u64..12, 0u64..1000, 0u32..8).prop_map(
            |(domain, s, len, p, flags)| Op::Req(Request::Map {
                domain,
                virt_start: s,
                virt_end: s + len,
                phys_start: p,
                flags,
            })
        ),
        (dom, addr.clone(), 0u64..24, prop::bool::weighted(0.05)).prop_map(
            |(domain, s, len, r)| Op::Req(Request::Unmap {
                domain,
                virt_start: s,
                virt_end: s + len,
                reserved: u32::from(r),
            })
        ),
        (ep, addr, any::<bool>()).prop_map(|(e, a, w)| Op::Translate(e, a, w)),
    ]
}

fn device() -> Device {
    let mut d = Device::new(DeviceConfig {
        page_size_mask: 1,
        limits: LIMITS,
        ..DeviceConfig::default()
    })
    .unwrap();
    let resv = ResvMem {
        subtype: iommu_virtio::spec::resv::RESERVED,
        start: RESV.0,
        end: RESV.1,
    };
    d.add_endpoint(0, &[resv]).unwrap();
    d.add_endpoint(1, &[]).unwrap();
    d.add_endpoint(2, &[]).unwrap();
    d.negotiate(d.offered()).unwrap();
    assert_ne!(d.negotiated() & feature::MMIO, 0);
    d
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn random_sequences_agree_with_the_reference(ops in prop::collection::vec(op(), 1..80)) {
        let mut dev = device();
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Req(r) => {
                    let before = dev.clone();
                    let mut tail = [0xaa; 4];
                    prop_assert_eq!(dev.handle(&r.encode(), &mut tail), 4);
                    let got = Status::from_u8(tail[0]).unwrap();
                    let want = model.exec(r);
                    prop_assert_eq!(got, want, "{:?}", r);
                    if got != Status::Ok {
                        prop_assert_eq!(&dev, &before, "refused {:?} changed the device", r);
                    }
                    prop_assert_eq!(dev.mapping_count(), model.maps.len());
                }
                Op::Translate(ep, addr, write) => {
                    let access = if write { Access::Write } else { Access::Read };
                    let got = dev.translate(ep, addr, access).ok().map(|t| t.phys);
                    prop_assert_eq!(got, model.translate(ep, addr, write), "ep {} addr {}", ep, addr);
                }
            }
        }
    }
}
