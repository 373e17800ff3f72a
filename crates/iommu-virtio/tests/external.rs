//! Passthrough endpoints: every change the guest makes is forwarded to an
//! external mapper, which holds exactly the endpoint's domain after every
//! request; what the mapper refuses is refused whole.

use iommu_virtio::spec::{map, Status};
use iommu_virtio::testing::RecordingMapper;
use iommu_virtio::{
    CoreDomainMapper, Device, DeviceConfig, ExternalError, Mapping, Request, VirtioIommu,
};
use proptest::prelude::*;
use std::sync::Arc;

const PASS: u32 = 7;
const EMU: u32 = 8;

fn setup() -> (Arc<VirtioIommu>, RecordingMapper) {
    let mut d = Device::new(DeviceConfig::default()).unwrap();
    d.add_endpoint(PASS, &[]).unwrap();
    d.add_endpoint(EMU, &[]).unwrap();
    d.negotiate(d.offered()).unwrap();
    let iommu = VirtioIommu::new(d);
    let rec = RecordingMapper::default();
    iommu
        .set_external_mapper(PASS, Box::new(rec.clone()))
        .unwrap();
    (iommu, rec)
}

fn send(iommu: &VirtioIommu, r: Request) -> Status {
    let mut tail = [0xaa; 4];
    assert_eq!(iommu.handle(&r.encode(), &mut tail), 4);
    Status::from_u8(tail[0]).unwrap()
}

fn attach(domain: u32, endpoint: u32) -> Request {
    Request::Attach {
        domain,
        endpoint,
        flags: 0,
        reserved: 0,
    }
}

fn map(domain: u32, page: u64, pages: u64, phys_page: u64) -> Request {
    Request::Map {
        domain,
        virt_start: page << 12,
        virt_end: ((page + pages) << 12) - 1,
        phys_start: phys_page << 12,
        flags: map::READ | map::WRITE,
    }
}

fn unmap(domain: u32, page: u64, pages: u64) -> Request {
    Request::Unmap {
        domain,
        virt_start: page << 12,
        virt_end: ((page + pages) << 12) - 1,
        reserved: 0,
    }
}

fn device(iommu: &VirtioIommu) -> Device {
    iommu.with_device(|d| d.clone())
}

/// The rule: the mapper holds exactly its endpoint's domain.
fn expected(d: &Device, endpoint: u32) -> Vec<Mapping> {
    match d.domain_of(endpoint) {
        Some(dom) if d.is_bypass_domain(dom) == Some(false) => d.mappings(dom).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn the_guests_map_and_unmap_reach_the_mapper() {
    let (iommu, rec) = setup();
    assert_eq!(send(&iommu, attach(1, PASS)), Status::Ok);
    assert_eq!(send(&iommu, map(1, 0x10, 4, 0x400)), Status::Ok);
    assert_eq!(send(&iommu, map(1, 0x20, 1, 0x500)), Status::Ok);
    assert_eq!(rec.held(), expected(&device(&iommu), PASS));
    assert_eq!(rec.held().len(), 2);
    assert_eq!(send(&iommu, unmap(1, 0, 0x100)), Status::Ok);
    assert!(rec.held().is_empty());
    assert_eq!(iommu.external_failures(), 0);
}

#[test]
fn what_the_domain_maps_already_is_forwarded_when_the_mapper_comes() {
    let mut d = Device::new(DeviceConfig::default()).unwrap();
    d.add_endpoint(PASS, &[]).unwrap();
    d.negotiate(d.offered()).unwrap();
    let iommu = VirtioIommu::new(d);
    assert_eq!(send(&iommu, attach(1, PASS)), Status::Ok);
    assert_eq!(send(&iommu, map(1, 0x10, 4, 0x400)), Status::Ok);
    let rec = RecordingMapper::default();
    iommu
        .set_external_mapper(PASS, Box::new(rec.clone()))
        .unwrap();
    assert_eq!(rec.held(), expected(&device(&iommu), PASS));
    assert_eq!(
        iommu
            .set_external_mapper(PASS, Box::new(RecordingMapper::default()))
            .unwrap_err(),
        ExternalError::InUse(PASS)
    );
    // Taken away: it holds nothing any more.
    assert!(iommu.take_external_mapper(PASS).is_some());
    assert!(rec.held().is_empty());
    // A mapper that cannot take the domain is not installed, and keeps
    // nothing of it.
    let failing = RecordingMapper::default();
    assert_eq!(send(&iommu, map(1, 0x20, 1, 0x500)), Status::Ok);
    failing.with(|h| h.maps_before_failure = Some(1));
    assert_eq!(
        iommu
            .set_external_mapper(PASS, Box::new(failing.clone()))
            .unwrap_err(),
        ExternalError::NoMemory
    );
    assert!(failing.held().is_empty());
    assert!(iommu.external_mappings(PASS).is_none());
}

#[test]
fn a_map_one_mapper_refuses_is_refused_and_taken_back_from_all() {
    let (iommu, first) = setup();
    let second = RecordingMapper::default();
    iommu.with_device(|dev| dev.add_endpoint(9, &[]).unwrap());
    iommu
        .set_external_mapper(9, Box::new(second.clone()))
        .unwrap();
    for ep in [PASS, 9, EMU] {
        assert_eq!(send(&iommu, attach(1, ep)), Status::Ok);
    }
    assert_eq!(send(&iommu, map(1, 0x10, 1, 0x400)), Status::Ok);
    let d = device(&iommu);
    // Whichever mapper is asked second fails: the first gives it back.
    first.with(|h| h.maps_before_failure = Some(1));
    second.with(|h| h.maps_before_failure = Some(0));
    assert_eq!(send(&iommu, map(1, 0x20, 4, 0x800)), Status::NoMem);
    assert_eq!(device(&iommu), d, "the device is as it was");
    assert_eq!(first.held(), expected(&d, PASS));
    assert_eq!(second.held(), expected(&d, 9));
    assert_eq!(iommu.external_failures(), 0);
}

#[test]
fn an_attach_the_mapper_cannot_follow_is_taken_back() {
    for target_exists in [false, true] {
        let (iommu, rec) = setup();
        assert_eq!(send(&iommu, attach(1, PASS)), Status::Ok);
        assert_eq!(send(&iommu, map(1, 0x10, 1, 0x400)), Status::Ok);
        assert_eq!(send(&iommu, map(1, 0x30, 1, 0x410)), Status::Ok);
        if target_exists {
            assert_eq!(send(&iommu, attach(2, EMU)), Status::Ok);
            for p in 0..3 {
                assert_eq!(send(&iommu, map(2, 0x10 + p, 1, 0x600 + p)), Status::Ok);
            }
        }
        let before = device(&iommu);
        // The move unmaps domain 1 from the mapper, then fails on the
        // second mapping of domain 2 (or on none, when it has none).
        rec.with(|h| h.maps_before_failure = Some(1));
        let status = send(&iommu, attach(2, PASS));
        if target_exists {
            assert_eq!(status, Status::NoMem);
            assert_eq!(device(&iommu), before, "domain 1 is back, whole");
            assert_eq!(rec.held(), expected(&before, PASS));
            assert_eq!(rec.held().len(), 2);
        } else {
            // An empty domain 2 costs the mapper nothing.
            assert_eq!(status, Status::Ok);
            assert!(rec.held().is_empty());
        }
        assert_eq!(iommu.external_failures(), 0);
    }
}

#[test]
fn a_mapper_that_cannot_take_the_old_domain_back_holds_less_never_more() {
    let (iommu, rec) = setup();
    assert_eq!(send(&iommu, attach(1, PASS)), Status::Ok);
    assert_eq!(send(&iommu, map(1, 0x10, 1, 0x400)), Status::Ok);
    assert_eq!(send(&iommu, attach(2, EMU)), Status::Ok);
    assert_eq!(send(&iommu, map(2, 0x20, 1, 0x500)), Status::Ok);
    let before = device(&iommu);
    rec.with(|h| h.maps_fail = true);
    assert_eq!(send(&iommu, attach(2, PASS)), Status::DevErr);
    assert_eq!(iommu.external_failures(), 1, "the way back failed too");
    assert!(rec.held().is_empty(), "neither domain: less than domain 1");
    assert_eq!(device(&iommu), before);
    rec.with(|h| h.maps_fail = false);
    iommu.with_device(|_| ());
    assert_eq!(rec.held(), expected(&before, PASS));
}

#[test]
fn a_bypass_attach_needs_a_mapper_that_can_bypass() {
    let (iommu, rec) = setup();
    assert_eq!(send(&iommu, attach(1, PASS)), Status::Ok);
    assert_eq!(send(&iommu, map(1, 0x10, 1, 0x400)), Status::Ok);
    let before = device(&iommu);
    let bypass = Request::Attach {
        domain: 5,
        endpoint: PASS,
        flags: iommu_virtio::spec::attach::BYPASS,
        reserved: 0,
    };
    assert_eq!(send(&iommu, bypass), Status::Unsupp);
    assert_eq!(device(&iommu), before);
    assert_eq!(rec.held(), expected(&before, PASS));
    rec.with(|h| h.can_bypass = true);
    assert_eq!(send(&iommu, bypass), Status::Ok);
    assert!(rec.held().is_empty());
    assert!(rec.with(|h| h.bypass));
    assert_eq!(iommu.external_mappings(PASS), Some((Vec::new(), true)));
    // Back into a translated domain: bypass off first.
    assert_eq!(send(&iommu, attach(1, PASS)), Status::Ok);
    assert!(!rec.with(|h| h.bypass));
}

#[test]
fn detach_reset_and_unplug_leave_the_mapper_empty() {
    let (iommu, rec) = setup();
    let fill = |iommu: &VirtioIommu| {
        assert_eq!(send(iommu, attach(1, PASS)), Status::Ok);
        assert_eq!(send(iommu, map(1, 0x10, 1, 0x400)), Status::Ok);
        assert_eq!(rec.held().len(), 1);
    };
    fill(&iommu);
    let detach = Request::Detach {
        domain: 1,
        endpoint: PASS,
    };
    assert_eq!(send(&iommu, detach), Status::Ok);
    assert!(rec.held().is_empty());
    fill(&iommu);
    iommu.with_device(Device::reset);
    assert!(rec.held().is_empty());
    iommu.with_device(|d| {
        d.negotiate(d.offered()).unwrap();
    });
    fill(&iommu);
    iommu.with_device(|d| d.remove_endpoint(PASS).unwrap());
    assert!(rec.held().is_empty());
    // Plugged back in under the same id, it starts with nothing and
    // follows its domain again.
    iommu.with_device(|d| d.add_endpoint(PASS, &[]).unwrap());
    fill(&iommu);
    assert_eq!(iommu.external_failures(), 0);
}

#[test]
fn an_unmap_the_mapper_fails_is_reported_and_retried() {
    let (iommu, rec) = setup();
    assert_eq!(send(&iommu, attach(1, PASS)), Status::Ok);
    assert_eq!(send(&iommu, map(1, 0x10, 1, 0x400)), Status::Ok);
    rec.with(|h| h.unmaps_fail = true);
    assert_eq!(send(&iommu, unmap(1, 0x10, 1)), Status::DevErr);
    assert_eq!(iommu.external_failures(), 1);
    // Still held, as far as anyone can tell; the device has let it go.
    assert_eq!(rec.held().len(), 1);
    assert_eq!(iommu.external_mappings(PASS).unwrap().0.len(), 1);
    assert_eq!(device(&iommu).mapping_count(), 0);
    rec.with(|h| h.unmaps_fail = false);
    iommu.with_device(|_| ());
    assert!(rec.held().is_empty(), "the next sync takes it out");
    assert!(iommu.external_mappings(PASS).unwrap().0.is_empty());
}

/// The default platform's GPU claimed by a VFIO-style user and attached
/// to an unmanaged host domain: a passthrough device for a guest.
fn assigned_gpu() -> (
    iommu_platform::DefaultPlatform,
    std::sync::Arc<iommu_core::Device>,
    iommu_core::Domain,
) {
    use iommu_core::{DmaOwner, DomainType};
    let p = iommu_platform::DefaultPlatform::build().unwrap();
    let gpu = p.device("0000:01:00.0").unwrap();
    let group = gpu.iommu_group().unwrap();
    let host = p.iommu.domain_alloc(&p.bus, DomainType::Unmanaged).unwrap();
    p.iommu
        .group_claim_dma_owner(&group, DmaOwner::new())
        .unwrap();
    p.iommu.attach_group(&host, &group).unwrap();
    (p, gpu, host)
}

/// A passthrough device behind the virtio-iommu whose DMA the host's
/// IOMMU translates: the guest's MAP lands in the host domain's page
/// tables, and its UNMAP takes it out of them.
#[test]
fn a_passthrough_device_translates_through_the_host_page_tables() {
    use iommu_core::{Iova, PhysAddr};
    use iommu_soft::Access;

    let (p, gpu, host) = assigned_gpu();

    // The mapper comes before the endpoint is plugged in: it holds
    // nothing until the guest attaches the endpoint.
    let (iommu, _) = setup();
    iommu
        .set_external_mapper(1, Box::new(CoreDomainMapper::new(host.clone())))
        .unwrap();
    assert_eq!(iommu.external_mappings(1), Some((Vec::new(), false)));
    iommu.with_device(|d| d.add_endpoint(1, &[]).unwrap());
    assert_eq!(send(&iommu, attach(4, 1)), Status::Ok);
    assert_eq!(send(&iommu, map(4, 0x100, 16, 0x8_0000)), Status::Ok);
    assert_eq!(
        p.hw.translate(&gpu, Iova::new(0x10_0abc), Access::Write),
        Ok(PhysAddr::new(0x8000_0abc))
    );
    assert_eq!(send(&iommu, unmap(4, 0x100, 16)), Status::Ok);
    assert!(p
        .soft()
        .unwrap()
        .translate(&gpu, Iova::new(0x10_0abc), Access::Read)
        .is_err());
    // A granule the host cannot map: the guest's MAP is refused with RANGE
    // and stays out of the device too.
    let mut d = Device::new(DeviceConfig {
        page_size_mask: 0x200,
        ..DeviceConfig::default()
    })
    .unwrap();
    d.add_endpoint(1, &[]).unwrap();
    d.negotiate(d.offered()).unwrap();
    let small = VirtioIommu::new(d);
    small
        .set_external_mapper(1, Box::new(CoreDomainMapper::new(host.clone())))
        .unwrap();
    assert_eq!(send(&small, attach(4, 1)), Status::Ok);
    let half_page = Request::Map {
        domain: 4,
        virt_start: 0x20_0000,
        virt_end: 0x20_01ff,
        phys_start: 0x9_0000,
        flags: map::READ,
    };
    assert_eq!(send(&small, half_page), Status::Range);
    assert_eq!(device(&small).mapping_count(), 0);
    assert!(host.iova_to_phys(Iova::new(0x20_0000)).is_none());
}

/// The host IOMMU behind a passthrough endpoint stops completing
/// invalidations: the guest's UNMAP is not OK until the host's is, so the
/// guest keeps it owed and its IOVA held, and a retry once the host is
/// back completes it.
#[test]
fn an_unmap_the_host_iommu_cannot_invalidate_is_not_ok_until_it_can() {
    use iommu_core::{Iova, PhysAddr};
    use iommu_soft::Access;

    let (p, gpu, host) = assigned_gpu();
    let (iommu, _) = setup();
    iommu
        .set_external_mapper(1, Box::new(CoreDomainMapper::new(host.clone())))
        .unwrap();
    iommu.with_device(|d| d.add_endpoint(1, &[]).unwrap());
    assert_eq!(send(&iommu, attach(4, 1)), Status::Ok);
    assert_eq!(send(&iommu, map(4, 0x100, 1, 0x8_0000)), Status::Ok);
    let at = Iova::new(0x10_0000);
    assert_eq!(
        p.hw.translate(&gpu, at, Access::Read),
        Ok(PhysAddr::new(0x8000_0000))
    );
    p.hw.set_wedged(true);
    assert_eq!(send(&iommu, unmap(4, 0x100, 1)), Status::DevErr);
    assert!(host.invalidation_owed());
    // The guest's retry is refused while the host cannot invalidate.
    assert_eq!(send(&iommu, unmap(4, 0x100, 1)), Status::DevErr);
    assert_eq!(iommu.external_mappings(1).unwrap().0.len(), 1, "still held");
    p.hw.set_wedged(false);
    assert_eq!(send(&iommu, unmap(4, 0x100, 1)), Status::Ok);
    assert!(!host.invalidation_owed());
    assert!(iommu.external_mappings(1).unwrap().0.is_empty());
    assert!(p.hw.translate(&gpu, at, Access::Read).is_err());
}

#[derive(Clone, Debug)]
enum Op {
    Attach(u32, u32),
    Detach(u32, u32),
    Map(u32, u64, u64),
    Unmap(u32, u64, u64),
    FailMapsAfter(usize, usize),
    Reset,
}

fn op() -> impl Strategy<Value = Op> {
    let ep = 0u32..4;
    let dom = 1u32..4;
    prop_oneof![
        1 => (dom.clone(), ep.clone()).prop_map(|(d, e)| Op::Attach(d, e)),
        1 => (dom.clone(), ep).prop_map(|(d, e)| Op::Detach(d, e)),
        3 => (dom.clone(), 0u64..16, 1u64..4).prop_map(|(d, p, n)| Op::Map(d, p, n)),
        2 => (dom, 0u64..16, 1u64..6).prop_map(|(d, p, n)| Op::Unmap(d, p, n)),
        1 => (0usize..2, 0usize..3).prop_map(|(m, n)| Op::FailMapsAfter(m, n)),
        1 => Just(Op::Reset),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 400 }))]

    /// Random requests among four endpoints, two of them passthrough with
    /// mappers that fail at random: after every request each mapper holds
    /// exactly its endpoint's domain, a refused request changed nothing,
    /// and the device's own answers are those of a device without mappers
    /// whenever the mappers agreed.
    #[test]
    fn mappers_hold_exactly_their_domain_after_every_request(ops in prop::collection::vec(op(), 1..60)) {
        let mut plain = Device::new(DeviceConfig::default()).unwrap();
        for ep in 0..4 {
            plain.add_endpoint(ep, &[]).unwrap();
        }
        plain.negotiate(plain.offered()).unwrap();
        let iommu = VirtioIommu::new(plain.clone());
        let mappers = [RecordingMapper::default(), RecordingMapper::default()];
        for (ep, m) in mappers.iter().enumerate() {
            iommu.set_external_mapper(ep as u32, Box::new(m.clone())).unwrap();
        }
        for op in ops {
            let request = match op {
                Op::Attach(d, e) => attach(d, e),
                Op::Detach(domain, endpoint) => Request::Detach { domain, endpoint },
                Op::Map(d, p, n) => map(d, p, n, 0x100 + p),
                Op::Unmap(d, p, n) => unmap(d, p, n),
                Op::FailMapsAfter(m, n) => {
                    mappers[m].with(|h| h.maps_before_failure = Some(n as u8));
                    continue;
                }
                Op::Reset => {
                    iommu.with_device(|d| { d.reset(); d.negotiate(d.offered()).unwrap(); });
                    plain.reset();
                    plain.negotiate(plain.offered()).unwrap();
                    for m in &mappers { m.with(|h| h.maps_before_failure = None); }
                    continue;
                }
            };
            let before = device(&iommu);
            let status = send(&iommu, request);
            let after = device(&iommu);
            let mut tail = [0; 4];
            plain.handle(&request.encode(), &mut tail);
            let plain_status = Status::from_u8(tail[0]).unwrap();
            if status == plain_status {
                prop_assert_eq!(&after, &plain);
            } else {
                prop_assert_eq!(plain_status, Status::Ok);
                prop_assert_eq!(status, Status::NoMem);
                prop_assert_eq!(&after, &before, "a refused request changed the device");
                plain = before;
            }
            for (ep, m) in mappers.iter().enumerate() {
                prop_assert_eq!(m.held(), expected(&after, ep as u32), "endpoint {}", ep);
            }
        }
        prop_assert_eq!(iommu.external_failures(), 0);
    }
}

mod decoded {
    use super::*;
    use iommu_virtio::testing::run_external;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 3000 }))]

        /// The fuzz target's oracle on random bytes.
        #[test]
        fn external_sequences_keep_the_mappers_rule(data in prop::collection::vec(any::<u8>(), 0..400)) {
            run_external(&data);
        }
    }

    /// Seeds for `fuzz/fuzz_targets/virtio_external.rs` (written to
    /// `$IOMMU_FUZZ_SEEDS/virtio_external` when set): each runs clean.
    #[test]
    fn the_external_seeds_hold() {
        let mut seeds: Vec<Vec<u8>> = Vec::new();
        for s in 0..24u8 {
            // Attach endpoint 0 to domain 1, map, fail a map, move, unmap.
            seeds.push(vec![
                s % 2,
                0,
                1,
                0,
                0,
                0,
                0, //
                1,
                0,
                2,
                1,
                3,
                3, //
                0,
                0,
                0,
                0,
                7,
                0,
                s % 3,
                0, //
                2,
                0,
                4,
                1,
                0,
                0,
                0, //
                1,
                0,
                5,
                2,
                5, //
            ]);
        }
        let dir = std::env::var_os("IOMMU_FUZZ_SEEDS").map(|d| {
            let d = std::path::PathBuf::from(d).join("virtio_external");
            std::fs::create_dir_all(&d).unwrap();
            d
        });
        for (i, s) in seeds.iter().enumerate() {
            run_external(s);
            if let Some(d) = &dir {
                std::fs::write(d.join(format!("seed-{i}")), s).unwrap();
            }
        }
    }
}
