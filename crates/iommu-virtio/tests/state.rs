//! Save and restore: a restored device is the saved one, through a real
//! serialisation, and a state no device could hold is refused with the
//! reason. (Every model-based sequence also restores after each request;
//! see `testing::run_ops`.)

use iommu_virtio::spec::{attach, feature, map, resv, Status};
use iommu_virtio::{
    Access, ConfigError, Device, DeviceConfig, DeviceState, EndpointError, FeatureError, Mapping,
    Request, RestoreError, ResvMem, VirtioIommu, EVENT_BACKLOG,
};
use vm_memory::iommu::Iommu;
use vm_memory::{GuestAddress, Permissions};

const MSI: ResvMem = ResvMem {
    subtype: resv::MSI,
    start: 0x800_0000,
    end: 0x80f_ffff,
};

fn ok(d: &mut Device, r: Request) {
    assert_eq!(d.execute(&r), Status::Ok, "{r:?}");
}

fn attach(domain: u32, endpoint: u32, flags: u32) -> Request {
    Request::Attach {
        domain,
        endpoint,
        flags,
        reserved: 0,
    }
}

fn map(domain: u32, virt_start: u64, virt_end: u64, phys_start: u64) -> Request {
    Request::Map {
        domain,
        virt_start,
        virt_end,
        phys_start,
        flags: map::READ | map::WRITE,
    }
}

/// A device with two shared domains, a bypass domain, mappings, the bypass
/// field flipped, an MSI region and pending faults.
fn busy() -> Device {
    let mut d = Device::new(DeviceConfig {
        features: DeviceConfig::default().features & !feature::BYPASS | feature::BYPASS_CONFIG,
        ..DeviceConfig::default()
    })
    .unwrap();
    d.add_endpoint(1, &[MSI]).unwrap();
    d.add_endpoint(2, &[]).unwrap();
    d.add_endpoint(3, &[]).unwrap();
    d.add_endpoint(4, &[]).unwrap();
    d.negotiate(d.offered()).unwrap();
    ok(&mut d, attach(10, 1, 0));
    ok(&mut d, attach(10, 2, 0));
    ok(&mut d, attach(11, 3, 0));
    ok(&mut d, attach(12, 4, attach::BYPASS));
    ok(&mut d, map(10, 0x1000, 0x3fff, 0x10_0000));
    ok(&mut d, map(10, 0x10000, 0x10fff, 0x20_0000));
    ok(&mut d, map(11, 0x1000, 0x1fff, 0x30_0000));
    d.write_config(iommu_virtio::config::offset::BYPASS, &[1]);
    for a in [0x5000, 0x6000] {
        let f = d.translate(1, a, Access::Write).unwrap_err();
        d.report(f);
    }
    d
}

#[test]
fn a_restored_device_is_the_saved_one_through_json() {
    let d = busy();
    let json = serde_json::to_string(&d.save()).unwrap();
    let state: DeviceState = serde_json::from_str(&json).unwrap();
    let r = Device::restore(&state).unwrap();
    assert_eq!(r, d);
    assert_eq!(r.save(), d.save());
    assert_eq!(r.pending_events(), 2);
    assert!(r.bypass_field());
    assert_eq!(
        r.translate(2, 0x1234, Access::Read).unwrap().phys,
        0x10_0234
    );
}

#[test]
fn a_restored_device_answers_the_next_requests_as_the_saved_one() {
    let mut a = busy();
    let mut b = Device::restore(&a.save()).unwrap();
    let next = [
        map(10, 0x2000, 0x2fff, 0),
        map(10, 0x4000, 0x4fff, 0x40_0000),
        Request::Unmap {
            domain: 10,
            virt_start: 0x1000,
            virt_end: 0x2fff,
            reserved: 0,
        },
        Request::Detach {
            domain: 11,
            endpoint: 3,
        },
        attach(10, 3, 0),
        map(12, 0, 0xfff, 0),
    ];
    for r in next {
        assert_eq!(a.execute(&r), b.execute(&r), "{r:?}");
        assert_eq!(a, b);
    }
}

#[test]
fn a_domain_mapping_a_reserved_region_of_its_endpoint_is_refused() {
    let mut d = Device::new(DeviceConfig::default()).unwrap();
    d.add_endpoint(1, &[]).unwrap();
    d.add_endpoint(2, &[MSI]).unwrap();
    d.negotiate(d.offered()).unwrap();
    ok(&mut d, attach(1, 1, 0));
    ok(&mut d, map(1, MSI.start, MSI.start + 0xfff, 0));
    // No request gets endpoint 2 into that domain...
    assert_eq!(d.execute(&attach(1, 2, 0)), Status::Unsupp);
    // ...so no snapshot may have it there.
    let mut s = d.save();
    s.endpoints.iter_mut().find(|e| e.id == 2).unwrap().domain = Some(1);
    assert_eq!(
        Device::restore(&s).unwrap_err(),
        RestoreError::ReservedMapped {
            endpoint: 2,
            domain: 1
        }
    );
}

#[test]
fn the_virtio_iommu_restores_and_translates() {
    let saved = busy().save();
    let iommu = VirtioIommu::new(Device::restore(&saved).unwrap());
    let ep = iommu.endpoint(3);
    let mut it = ep
        .translate(GuestAddress(0x1010), 16, Permissions::Read)
        .unwrap();
    assert_eq!(it.next().unwrap().base, GuestAddress(0x30_0010));
}

/// `busy()`'s state with `f` applied must be refused with `want`.
fn refused(f: impl FnOnce(&mut DeviceState), want: RestoreError) {
    let mut s = busy().save();
    f(&mut s);
    assert_eq!(Device::restore(&s).unwrap_err(), want);
}

#[test]
fn states_no_device_could_hold_are_refused() {
    refused(
        |s| s.config.page_size_mask = 0,
        RestoreError::Config(ConfigError::NoPageSize),
    );
    refused(
        |s| s.negotiated = feature::MAP_UNMAP,
        RestoreError::Features(FeatureError::NoVersion1),
    );
    refused(
        |s| s.negotiated |= 1 << 40,
        RestoreError::Features(FeatureError::NotOffered(1 << 40)),
    );
    refused(
        |s| {
            s.config.features &= !feature::BYPASS_CONFIG;
            s.config.bypass = false;
            s.negotiated &= !feature::BYPASS_CONFIG;
        },
        RestoreError::Bypass,
    );
    refused(
        |s| s.endpoints[1].id = 1,
        RestoreError::Endpoint(EndpointError::Exists(1)),
    );
    refused(
        |s| s.endpoints[1].resv = vec![MSI, MSI],
        RestoreError::Endpoint(EndpointError::Overlap(MSI.start, MSI.start)),
    );
    refused(|s| s.domains[1].id = 10, RestoreError::DuplicateDomain(10));
    refused(
        |s| s.endpoints[2].domain = None,
        RestoreError::EmptyDomain(11),
    );
    refused(
        |s| s.endpoints[2].domain = Some(99),
        RestoreError::MissingDomain {
            endpoint: 3,
            domain: 99,
        },
    );
    refused(|s| s.config.limits.domains = 2, RestoreError::Domain(12));
    refused(
        |s| s.negotiated &= !feature::BYPASS_CONFIG,
        RestoreError::Domain(12),
    );
    refused(
        |s| {
            s.config.features |= feature::DOMAIN_RANGE;
            s.config.domain_range = (0, 10);
        },
        RestoreError::Domain(11),
    );
    refused(
        |s| s.config.limits.mappings = 2,
        RestoreError::TooManyMappings,
    );
    refused(
        |s| s.config.limits.mappings_per_domain = 1,
        RestoreError::TooManyMappings,
    );
    refused(
        |s| s.events = vec![s.events[0]; EVENT_BACKLOG + 1],
        RestoreError::TooManyEvents(EVENT_BACKLOG + 1),
    );
}

#[test]
fn mappings_no_map_could_make_are_refused() {
    let bad = |domain: u32, virt_start: u64| RestoreError::Mapping { domain, virt_start };
    let with = |m: Mapping| {
        move |s: &mut DeviceState| {
            s.domains[0].mappings[0] = m;
        }
    };
    let good = Mapping {
        virt_start: 0x1000,
        virt_end: 0x3fff,
        phys_start: 0x10_0000,
        flags: map::READ,
    };
    // Overlapping the next one, or after it.
    refused(
        with(Mapping {
            virt_end: 0x10fff,
            ..good
        }),
        bad(10, 0x10000),
    );
    refused(|s| s.domains[0].mappings.swap(0, 1), bad(10, 0x1000));
    // Misaligned, empty, reversed.
    for m in [
        Mapping {
            virt_start: 0x1001,
            ..good
        },
        Mapping {
            phys_start: 0x10_0800,
            ..good
        },
        Mapping {
            virt_end: 0x3ffe,
            ..good
        },
        Mapping {
            virt_end: 0x1000,
            virt_start: 0x1000,
            ..good
        },
        Mapping {
            virt_end: 0x0fff,
            ..good
        },
    ] {
        refused(with(m), bad(10, m.virt_start));
    }
    // Unknown flags; MMIO without the feature.
    refused(
        with(Mapping {
            flags: 1 << 7,
            ..good
        }),
        bad(10, 0x1000),
    );
    refused(
        |s| {
            s.negotiated &= !feature::MMIO;
            s.domains[0].mappings[0].flags = map::MMIO;
        },
        bad(10, 0x1000),
    );
    // Physical addresses that wrap.
    refused(
        with(Mapping {
            phys_start: u64::MAX - 0xfff,
            ..good
        }),
        bad(10, 0x1000),
    );
    // Outside input_range.
    refused(
        |s| {
            s.config.input_range = (0x2000, u64::MAX);
        },
        bad(10, 0x1000),
    );
    // Mappings in a bypass domain; any mapping without MAP_UNMAP.
    refused(|s| s.domains[2].mappings.push(good), bad(12, 0x1000));
    refused(|s| s.negotiated &= !feature::MAP_UNMAP, bad(10, 0x1000));
}

/// Regions `n` apart, 4 KiB each, from `base`.
fn regions(n: usize, base: u64) -> Vec<ResvMem> {
    (0..n as u64)
        .map(|i| ResvMem {
            subtype: resv::RESERVED,
            start: base + i * 0x2000,
            end: base + i * 0x2000 + 0xfff,
        })
        .collect()
}

#[test]
fn an_endpoint_has_at_most_max_resv_regions_whatever_the_features() {
    let limit = iommu_virtio::MAX_RESV_REGIONS;
    for features in [
        DeviceConfig::default().features & !feature::PROBE,
        DeviceConfig::default().features,
    ] {
        let mut d = Device::new(DeviceConfig {
            features,
            probe_size: 8192,
            ..DeviceConfig::default()
        })
        .unwrap();
        d.add_endpoint(1, &regions(limit, 0x1_0000_0000)).unwrap();
        assert_eq!(
            d.add_endpoint(2, &regions(limit + 1, 0x1_0000_0000)),
            Err(EndpointError::TooManyRegions {
                count: limit + 1,
                limit
            })
        );
    }
}

/// 160,000 regions took 9 seconds to restore when only PROBE's size bound
/// them; now the state is refused before any overlap is looked for.
#[test]
fn a_saved_state_with_more_regions_than_an_endpoint_may_have_is_refused() {
    let mut st = busy().save();
    st.config.features &= !feature::PROBE;
    st.negotiated &= !feature::PROBE;
    st.endpoints[1].resv = regions(160_000, 0x1_0000_0000);
    assert_eq!(
        Device::restore(&st),
        Err(RestoreError::Endpoint(EndpointError::TooManyRegions {
            count: 160_000,
            limit: iommu_virtio::MAX_RESV_REGIONS
        }))
    );
}

#[test]
fn overlapping_regions_are_found_in_any_order() {
    let mut r = regions(200, 0x1_0000_0000);
    // The 151st overlaps the 100th, and the list is out of order.
    r[150] = ResvMem {
        subtype: resv::RESERVED,
        start: r[99].start + 0x800,
        end: r[99].end + 0x800,
    };
    r.reverse();
    let mut d = Device::new(DeviceConfig {
        probe_size: 8192,
        ..DeviceConfig::default()
    })
    .unwrap();
    assert_eq!(
        d.add_endpoint(1, &r),
        Err(EndpointError::Overlap(
            0x1_0000_0000 + 99 * 0x2000,
            0x1_0000_0000 + 99 * 0x2000 + 0x800
        ))
    );
    // Touching is not overlapping.
    let touching = [
        ResvMem {
            subtype: resv::RESERVED,
            start: 0x1000,
            end: 0x1fff,
        },
        ResvMem {
            subtype: resv::MSI,
            start: 0x2000,
            end: 0x2fff,
        },
    ];
    d.add_endpoint(2, &touching).unwrap();
}

/// MAP refuses a range over any region of an attached endpoint, and
/// writes reach the MSI region, with the regions looked up by address.
#[test]
fn map_and_msi_writes_see_every_region_of_a_full_endpoint() {
    let limit = iommu_virtio::MAX_RESV_REGIONS;
    let mut r = regions(limit - 1, 0x1_0000_0000);
    r.push(ResvMem {
        subtype: resv::MSI,
        start: 0xffff_ffff_ffff_f000,
        end: u64::MAX,
    });
    let mut d = Device::new(DeviceConfig {
        probe_size: 8192,
        ..DeviceConfig::default()
    })
    .unwrap();
    d.add_endpoint(1, &r).unwrap();
    d.negotiate(d.offered()).unwrap();
    ok(&mut d, attach(1, 1, 0));
    for (i, region) in r.iter().enumerate().step_by(17) {
        let hit = map(
            1,
            region.start & !0xfff,
            (region.start & !0xfff) + 0xfff,
            0x10_0000,
        );
        assert_eq!(d.execute(&hit), Status::Inval, "region {i}");
    }
    // Between regions, a MAP goes through.
    ok(&mut d, map(1, 0x1_0000_1000, 0x1_0000_1fff, 0x10_0000));
    let t = d.translate(1, u64::MAX - 7, Access::Write).unwrap();
    assert_eq!(t.phys, u64::MAX - 7);
    assert!(d.translate(1, u64::MAX - 7, Access::Read).is_err());
}

mod decoded {
    use iommu_virtio::testing::{decode_state, run_restore};
    use iommu_virtio::Device;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn decoded_states_restore_to_themselves_or_are_refused(
            data in prop::collection::vec(any::<u8>(), 0..400)
        ) {
            run_restore(&data);
        }
    }

    /// A simple generator (xorshift), so the seeds are the same each run.
    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Enough decoded states restore for the fuzz target to get past the
    /// checks; the first of them are its seeds.
    #[test]
    fn the_restore_seeds_hold() {
        let restored: Vec<Vec<u8>> = (0..4000u64)
            .map(|s| bytes(s, 200))
            .filter(|d| {
                let st = decode_state(d);
                Device::restore(&st).is_ok() && !st.domains.is_empty()
            })
            .collect();
        assert!(restored.len() >= 40, "only {} restore", restored.len());
        // And states whose endpoints have more regions than allowed, or
        // regions at the top of the space that restore.
        let many = (0..20_000u64).map(|s| bytes(s, 1200)).find(|d| {
            decode_state(d)
                .endpoints
                .iter()
                .any(|e| e.resv.len() > iommu_virtio::MAX_RESV_REGIONS)
        });
        let top = (0..20_000u64).map(|s| bytes(s, 200)).find(|d| {
            let st = decode_state(d);
            Device::restore(&st).is_ok()
                && st
                    .endpoints
                    .iter()
                    .any(|e| e.resv.iter().any(|r| r.end == u64::MAX))
        });
        let many = many.expect("a state with too many regions");
        let top = top.expect("a state with a region at the top that restores");
        assert!(Device::restore(&decode_state(&many)).is_err());
        let mut seeds: Vec<&Vec<u8>> = restored[..16].iter().collect();
        seeds.extend([&many, &top]);
        for d in &seeds {
            run_restore(d);
        }
        if let Some(dir) = std::env::var_os("IOMMU_FUZZ_SEEDS") {
            let dir = std::path::Path::new(&dir).join("virtio_restore");
            std::fs::create_dir_all(&dir).unwrap();
            for (i, s) in seeds.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
            }
        }
    }
}
