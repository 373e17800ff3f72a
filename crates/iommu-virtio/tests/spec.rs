//! One test per device requirement of the virtio specification's IOMMU
//! device (virtio 1.2 and later), named after what it requires. Each
//! cites its section by the specification's label ("Device Types / IOMMU
//! Device / ..."). Requests go through `Device::handle` as bytes, the way
//! a transport delivers them, unless the test is about the state alone.

use iommu_virtio::spec::{attach, fault, feature, map, probe, resv, size, Status};
use iommu_virtio::{Access, ConfigError, Device, DeviceConfig, EndpointError, Request, ResvMem};

const EP: u32 = 8;
const EP2: u32 = 9;
const MSI: ResvMem = ResvMem {
    subtype: resv::MSI,
    start: 0xfee0_0000,
    end: 0xfeef_ffff,
};

/// A device with endpoints 8 and 9 (8 with an MSI doorbell region) and
/// every offered feature negotiated.
fn device() -> Device {
    device_with(DeviceConfig::default())
}

fn device_with(config: DeviceConfig) -> Device {
    let mut d = Device::new(config).unwrap();
    d.add_endpoint(EP, &[MSI]).unwrap();
    d.add_endpoint(EP2, &[]).unwrap();
    d.negotiate(d.offered()).unwrap();
    d
}

/// Sends `r` as bytes and returns the status in the tail (the tail's
/// reserved bytes are checked to be zero on the way).
fn send(d: &mut Device, r: Request) -> Status {
    let mut tail = [0xaa; 4];
    assert_eq!(d.handle(&r.encode(), &mut tail), 4, "{r:?}");
    assert_eq!(&tail[1..], &[0, 0, 0], "the tail's reserved bytes are zero");
    Status::from_u8(tail[0]).expect("a status")
}

fn attach(domain: u32, endpoint: u32) -> Request {
    Request::Attach {
        domain,
        endpoint,
        flags: 0,
        reserved: 0,
    }
}

fn detach(domain: u32, endpoint: u32) -> Request {
    Request::Detach { domain, endpoint }
}

fn map_rw(domain: u32, virt_start: u64, virt_end: u64, phys_start: u64) -> Request {
    Request::Map {
        domain,
        virt_start,
        virt_end,
        phys_start,
        flags: map::READ | map::WRITE,
    }
}

fn unmap(domain: u32, virt_start: u64, virt_end: u64) -> Request {
    Request::Unmap {
        domain,
        virt_start,
        virt_end,
        reserved: 0,
    }
}

/// Sends `r` and checks that a refusal changed nothing.
fn refused(d: &mut Device, r: Request, want: Status) {
    let before = d.clone();
    assert_eq!(send(d, r), want, "{r:?}");
    assert_eq!(*d, before, "a refused {r:?} changed the device");
}

// ---- Feature bits (device requirements) ----

#[test]
fn feature_bits_the_device_should_offer_map_unmap() {
    // § Device Types / IOMMU Device / Feature bits
    assert_ne!(DeviceConfig::default().features & feature::MAP_UNMAP, 0);
}

#[test]
fn feature_bits_bypass_and_bypass_config_are_not_offered_together() {
    // § Device Types / IOMMU Device / Feature bits: devices SHOULD NOT
    // offer both, and new devices SHOULD NOT offer BYPASS.
    let both = DeviceConfig {
        features: DeviceConfig::default().features | feature::BYPASS,
        ..DeviceConfig::default()
    };
    assert_eq!(Device::new(both).unwrap_err(), ConfigError::BothBypass);
    assert_eq!(DeviceConfig::default().features & feature::BYPASS, 0);
}

// ---- Device configuration layout ----

#[test]
fn config_page_size_mask_has_at_least_one_bit() {
    // § Device Types / IOMMU Device / Device configuration layout
    let none = DeviceConfig {
        page_size_mask: 0,
        ..DeviceConfig::default()
    };
    assert_eq!(Device::new(none).unwrap_err(), ConfigError::NoPageSize);
}

#[test]
fn config_probe_size_is_bounded() {
    // Not the specification's rule: a PROBE reply is built in host memory,
    // so an absurd probe_size is refused when the device is made.
    let huge = DeviceConfig {
        probe_size: u32::MAX,
        ..DeviceConfig::default()
    };
    assert_eq!(
        Device::new(huge).unwrap_err(),
        ConfigError::ProbeSize(u32::MAX)
    );
    let largest = DeviceConfig {
        probe_size: iommu_virtio::config::MAX_PROBE_SIZE,
        ..DeviceConfig::default()
    };
    assert!(Device::new(largest).is_ok());
}

#[test]
fn config_reads_as_the_layout_of_struct_virtio_iommu_config() {
    let d = device();
    let mut b = [0u8; size::CONFIG + 4];
    d.read_config(0, &mut b);
    let c = DeviceConfig::default();
    assert_eq!(b[0..8], c.page_size_mask.to_le_bytes());
    assert_eq!(b[8..16], c.input_range.0.to_le_bytes());
    assert_eq!(b[16..24], c.input_range.1.to_le_bytes());
    assert_eq!(b[24..28], c.domain_range.0.to_le_bytes());
    assert_eq!(b[28..32], c.domain_range.1.to_le_bytes());
    assert_eq!(b[32..36], c.probe_size.to_le_bytes());
    assert_eq!(b[36..], [0; 8], "bypass 0, reserved and past the end zero");
}

#[test]
fn config_bypass_may_start_at_1_only_with_bypass_config() {
    // § ... / Device configuration layout: the device MAY initialize
    // bypass to 1 if it offers BYPASS_CONFIG.
    let on = DeviceConfig {
        bypass: true,
        ..DeviceConfig::default()
    };
    assert!(Device::new(on).unwrap().bypass_field());
    let without = DeviceConfig {
        bypass: true,
        features: feature::MAP_UNMAP,
        ..DeviceConfig::default()
    };
    assert_eq!(
        Device::new(without).unwrap_err(),
        ConfigError::BypassWithoutFeature
    );
}

#[test]
fn config_bypass_survives_device_reset_and_not_system_reset() {
    // § ... / Device configuration layout: bypass SHOULD NOT change on
    // device reset, but SHOULD be restored on system reset.
    let mut d = device();
    d.write_config(36, &[1]);
    assert!(d.bypass_field());
    d.reset();
    assert!(d.bypass_field());
    d.system_reset();
    assert!(!d.bypass_field());
}

#[test]
fn config_bypass_is_only_ever_0_or_1() {
    // § ... / Device configuration layout: the device MUST NOT present a
    // value other than 0 or 1; a driver's write of another is refused.
    let mut d = device();
    for v in 2..=255u8 {
        d.write_config(36, &[v]);
        let mut b = [0u8; 1];
        d.read_config(36, &mut b);
        assert_eq!(b[0], 0);
    }
}

#[test]
fn config_bypass_is_writable_only_with_bypass_config_negotiated() {
    // § ... / Device configuration layout (driver): the driver MAY write
    // bypass when BYPASS_CONFIG is negotiated, and no other field.
    let mut d = Device::new(DeviceConfig::default()).unwrap();
    d.negotiate(feature::VERSION_1 | feature::MAP_UNMAP)
        .unwrap();
    d.write_config(36, &[1]);
    assert!(!d.bypass_field());
    let mut d = device();
    let before = d.clone();
    d.write_config(0, &[0xff; 8]);
    d.write_config(32, &1u32.to_le_bytes());
    assert_eq!(d, before, "other fields are read-only");
}

// ---- Device initialization ----

#[test]
fn init_reset_leaves_no_endpoint_attached() {
    // § Device Types / IOMMU Device / Device initialization
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    d.reset();
    assert_eq!(d.domain_of(EP), None);
    assert_eq!(d.domains().count(), 0);
}

// ---- Device operations ----

#[test]
fn ops_a_request_that_succeeds_gets_ok() {
    // § Device Types / IOMMU Device / Device operations
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
}

#[test]
fn ops_an_unknown_type_is_not_written_and_used_length_is_0() {
    // § ... / Device operations: SHOULD NOT write the buffer, used length 0.
    let mut d = device();
    for kind in [0u8, 6, 7, 0xff] {
        let mut bytes = attach(1, EP).encode();
        bytes[0] = kind;
        let mut tail = [0xaa; 4];
        assert_eq!(d.handle(&bytes, &mut tail), 0);
        assert_eq!(tail, [0xaa; 4]);
    }
}

#[test]
fn ops_a_request_too_small_for_its_type_is_not_written() {
    // § ... / Device operations: a request the device cannot parse (too
    // small for its type, no tail) returns its buffers unwritten.
    let mut d = device();
    let before = d.clone();
    for r in [
        attach(1, EP),
        detach(1, EP),
        map_rw(1, 0, 0xfff, 0),
        unmap(1, 0, 1),
    ] {
        let bytes = r.encode();
        for cut in 0..bytes.len() {
            let mut tail = [0xaa; 4];
            assert_eq!(d.handle(&bytes[..cut], &mut tail), 0);
            assert_eq!(tail, [0xaa; 4]);
        }
        let mut short = [0xaa; 3];
        assert_eq!(d.handle(&bytes, &mut short), 0, "no room for the tail");
        assert_eq!(short, [0xaa; 3]);
    }
    assert_eq!(d, before);
}

#[test]
fn ops_the_head_reserved_bytes_are_ignored() {
    // § ... / Device operations: the device MUST ignore reserved of the head.
    let mut d = device();
    let mut bytes = attach(1, EP).encode();
    bytes[1..4].copy_from_slice(&[1, 2, 3]);
    let mut tail = [0xaa; 4];
    assert_eq!(d.handle(&bytes, &mut tail), 4);
    assert_eq!(tail, [Status::Ok as u8, 0, 0, 0]);
}

#[test]
fn ops_unattached_endpoints_not_in_bypass_reach_nothing() {
    // § ... / Device operations: the device SHOULD NOT let unattached
    // endpoints that are not in bypass mode access guest memory.
    let d = device();
    let f = d.translate(EP2, 0x1000, Access::Read).unwrap_err();
    assert_eq!(f.reason, fault::R_DOMAIN);
}

#[test]
fn ops_bypass_field_puts_unattached_endpoints_in_bypass_even_unnegotiated() {
    // § ... / Device operations: with BYPASS_CONFIG offered, bypass = 1
    // and unattached means bypass, even if the driver did not accept the
    // feature.
    let mut d = device_with(DeviceConfig {
        bypass: true,
        ..DeviceConfig::default()
    });
    d.negotiate(feature::VERSION_1 | feature::MAP_UNMAP)
        .unwrap();
    let t = d.translate(EP2, 0x1234, Access::Write).unwrap();
    assert!(t.bypass);
    assert_eq!(t.phys, 0x1234);
    assert_eq!(send(&mut d, attach(1, EP2)), Status::Ok);
    assert!(!d.in_bypass(EP2), "attached, so no longer in bypass");
}

#[test]
fn ops_legacy_bypass_feature_bypasses_unattached_endpoints() {
    // § ... / Device operations: BYPASS negotiated and unattached.
    let config = DeviceConfig {
        features: feature::MAP_UNMAP | feature::BYPASS,
        ..DeviceConfig::default()
    };
    let d = device_with(config);
    assert!(d.in_bypass(EP2));
}

// ---- ATTACH ----

#[test]
fn attach_reserved_not_zero_is_inval() {
    // § ... / ATTACH request: MUST reject with INVAL.
    let mut d = device();
    for reserved in [1, 0x100, 0x8000_0000] {
        let r = Request::Attach {
            domain: 1,
            endpoint: EP,
            flags: 0,
            reserved,
        };
        refused(&mut d, r, Status::Inval);
    }
}

#[test]
fn attach_unknown_flag_is_inval() {
    // § ... / ATTACH request: a flags bit the device does not recognize.
    let mut d = device();
    for flags in [2, 0x80, 0x8000_0000] {
        let r = Request::Attach {
            domain: 1,
            endpoint: EP,
            flags,
            reserved: 0,
        };
        refused(&mut d, r, Status::Inval);
    }
    // BYPASS is only a flag with BYPASS_CONFIG negotiated.
    let mut d = Device::new(DeviceConfig::default()).unwrap();
    d.add_endpoint(EP, &[]).unwrap();
    d.negotiate(feature::VERSION_1 | feature::MAP_UNMAP)
        .unwrap();
    let r = Request::Attach {
        domain: 1,
        endpoint: EP,
        flags: attach::BYPASS,
        reserved: 0,
    };
    refused(&mut d, r, Status::Inval);
}

#[test]
fn attach_unknown_endpoint_is_noent() {
    // § ... / ATTACH request: MUST reject with NOENT.
    let mut d = device();
    refused(&mut d, attach(1, 77), Status::NoEnt);
}

#[test]
fn attach_a_second_endpoint_joins_the_domain() {
    // § ... / ATTACH request: the device MAY attach another endpoint to a
    // domain that has one; this one does.
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    assert_eq!(send(&mut d, attach(1, EP2)), Status::Ok);
    assert_eq!(send(&mut d, map_rw(1, 0x1000, 0x1fff, 0x8000)), Status::Ok);
    for ep in [EP, EP2] {
        assert_eq!(d.translate(ep, 0x1000, Access::Read).unwrap().phys, 0x8000);
    }
}

#[test]
fn attach_bypass_flag_must_match_the_domain() {
    // § ... / ATTACH request: a flag inconsistent with an existing domain
    // SHOULD be rejected with INVAL.
    let mut d = device();
    let bypass = |endpoint| Request::Attach {
        domain: 1,
        endpoint,
        flags: attach::BYPASS,
        reserved: 0,
    };
    assert_eq!(send(&mut d, bypass(EP)), Status::Ok);
    refused(&mut d, attach(1, EP2), Status::Inval);
    assert_eq!(send(&mut d, attach(2, EP2)), Status::Ok);
    let mut into_2 = bypass(EP);
    if let Request::Attach { domain, .. } = &mut into_2 {
        *domain = 2;
    }
    refused(&mut d, into_2, Status::Inval);
}

#[test]
fn attach_to_another_domain_detaches_from_the_first() {
    // § ... / ATTACH request: as if DETACH then ATTACH; the first domain,
    // left empty, ceases to exist with its mappings.
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    assert_eq!(send(&mut d, map_rw(1, 0, 0xfff, 0x4000)), Status::Ok);
    assert_eq!(send(&mut d, attach(2, EP)), Status::Ok);
    assert_eq!(d.domain_of(EP), Some(2));
    assert_eq!(d.is_bypass_domain(1), None, "domain 1 is gone");
    assert_eq!(d.mapping_count(), 0);
    assert_eq!(
        d.translate(EP, 0, Access::Read).unwrap_err().reason,
        fault::R_MAPPING
    );
}

#[test]
fn attach_twice_to_the_same_domain_is_ok_and_keeps_its_mappings() {
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    assert_eq!(send(&mut d, map_rw(1, 0, 0xfff, 0x4000)), Status::Ok);
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    assert_eq!(d.mapping_count(), 1);
}

#[test]
fn attach_to_a_domain_it_cannot_join_is_unsupp_and_changes_nothing() {
    // § ... / ATTACH request: a device that cannot attach the endpoint to
    // a domain other endpoints hold MUST reject it with UNSUPP. This one
    // cannot when the domain maps what the endpoint reserves (a MAP there
    // is INVAL for an attached endpoint, so joining would break the rule).
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP2)), Status::Ok);
    let over_msi = Request::Map {
        domain: 1,
        virt_start: MSI.start,
        virt_end: MSI.start + 0xfff,
        phys_start: 0x8000,
        flags: map::WRITE,
    };
    assert_eq!(send(&mut d, over_msi), Status::Ok);
    let before = d.clone();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Unsupp);
    assert_eq!(d, before);
    // Once the mapping is gone, it can.
    let unmap = Request::Unmap {
        domain: 1,
        virt_start: MSI.start,
        virt_end: MSI.start + 0xfff,
        reserved: 0,
    };
    assert_eq!(send(&mut d, unmap), Status::Ok);
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
}

#[test]
fn attach_not_rejected_means_attached() {
    // § ... / ATTACH request: a device that does not reject MUST attach.
    let mut d = device();
    assert_eq!(send(&mut d, attach(5, EP2)), Status::Ok);
    assert_eq!(d.domain_of(EP2), Some(5));
}

#[test]
fn attach_outside_domain_range_is_range() {
    // § ... / Device operations: with DOMAIN_RANGE, domain_range bounds
    // the domain ids.
    let mut d = device_with(DeviceConfig {
        domain_range: (1, 16),
        ..DeviceConfig::default()
    });
    refused(&mut d, attach(0, EP), Status::Range);
    refused(&mut d, attach(17, EP), Status::Range);
    assert_eq!(send(&mut d, attach(16, EP)), Status::Ok);
}

// ---- DETACH ----

#[test]
fn detach_reserved_is_ignored() {
    // § ... / DETACH request: the device MUST ignore reserved.
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    let mut bytes = detach(1, EP).encode();
    bytes[12..20].copy_from_slice(&[0xff; 8]);
    let mut tail = [0; 4];
    assert_eq!(d.handle(&bytes, &mut tail), 4);
    assert_eq!(tail[0], Status::Ok as u8);
}

#[test]
fn detach_unknown_endpoint_is_noent() {
    // § ... / DETACH request: MUST reject with NOENT.
    let mut d = device();
    refused(&mut d, detach(1, 77), Status::NoEnt);
}

#[test]
fn detach_from_a_domain_it_is_not_in_is_inval() {
    // § ... / DETACH request: the device MAY set INVAL; this one does.
    let mut d = device();
    refused(&mut d, detach(1, EP), Status::Inval);
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    refused(&mut d, detach(2, EP), Status::Inval);
}

#[test]
fn detach_then_no_mapping_of_the_domain_translates() {
    // § ... / DETACH request: the device MUST ensure the endpoint cannot
    // access any mapping of that domain after DETACH.
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    assert_eq!(send(&mut d, attach(1, EP2)), Status::Ok);
    assert_eq!(send(&mut d, map_rw(1, 0x1000, 0x1fff, 0x8000)), Status::Ok);
    assert_eq!(send(&mut d, detach(1, EP)), Status::Ok);
    assert_eq!(
        d.translate(EP, 0x1000, Access::Read).unwrap_err().reason,
        fault::R_DOMAIN
    );
    assert!(
        d.translate(EP2, 0x1000, Access::Read).is_ok(),
        "EP2 still sees it"
    );
}

#[test]
fn detach_of_the_last_endpoint_frees_the_domain_id() {
    // § ... / DETACH request: the domain ceases to exist, its id reusable.
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    assert_eq!(send(&mut d, map_rw(1, 0, 0xfff, 0)), Status::Ok);
    assert_eq!(send(&mut d, detach(1, EP)), Status::Ok);
    assert_eq!(d.domains().count(), 0);
    let bypass = Request::Attach {
        domain: 1,
        endpoint: EP,
        flags: attach::BYPASS,
        reserved: 0,
    };
    assert_eq!(
        send(&mut d, bypass),
        Status::Ok,
        "a new domain 1, of another kind"
    );
}

// ---- MAP ----

#[test]
fn map_needs_map_unmap_negotiated() {
    // § ... / MAP request: only available with MAP_UNMAP negotiated.
    let mut d = Device::new(DeviceConfig::default()).unwrap();
    d.add_endpoint(EP, &[]).unwrap();
    d.negotiate(feature::VERSION_1).unwrap();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    refused(&mut d, map_rw(1, 0, 0xfff, 0), Status::Unsupp);
    refused(&mut d, unmap(1, 0, 0xfff), Status::Unsupp);
}

#[test]
fn map_translates_pa_as_va_minus_virt_start_plus_phys_start() {
    // § ... / MAP request: PA = VA - virt_start + phys_start, over the
    // inclusive range.
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    assert_eq!(
        send(&mut d, map_rw(1, 0x10000, 0x13fff, 0x7_0000)),
        Status::Ok
    );
    let t = d.translate(EP, 0x13fff, Access::Read).unwrap();
    assert_eq!((t.phys, t.len), (0x7_3fff, 1));
    let t = d.translate(EP, 0x10000, Access::Write).unwrap();
    assert_eq!((t.phys, t.len), (0x7_0000, 0x4000));
    assert!(d.translate(EP, 0x14000, Access::Read).is_err());
    assert!(d.translate(EP, 0xffff, Access::Read).is_err());
}

#[test]
fn map_unaligned_is_range() {
    // § ... / MAP request: virt_start, phys_start or virt_end + 1 not on
    // the granule SHOULD be RANGE.
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    for (vs, ve, ps) in [
        (0x800, 0x17ff, 0),
        (0, 0xfff, 0x800),
        (0, 0x17ff, 0),
        (0, 0xffe, 0),
    ] {
        refused(&mut d, map_rw(1, vs, ve, ps), Status::Range);
    }
}

#[test]
fn map_with_a_one_byte_granule_maps_single_bytes() {
    // § ... / Device operations: the smallest granule is one byte.
    let mut d = device_with(DeviceConfig {
        page_size_mask: 1,
        ..DeviceConfig::default()
    });
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    assert_eq!(send(&mut d, map_rw(1, 3, 4, 0x101)), Status::Ok);
    assert_eq!(d.translate(EP, 4, Access::Read).unwrap().phys, 0x102);
    assert!(d.translate(EP, 5, Access::Read).is_err());
}

#[test]
fn map_end_not_above_start_is_inval() {
    // § ... / MAP request (driver): virt_end MUST be strictly greater.
    let mut d = device_with(DeviceConfig {
        page_size_mask: 1,
        ..DeviceConfig::default()
    });
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    refused(&mut d, map_rw(1, 5, 5, 0), Status::Inval);
    refused(&mut d, map_rw(1, 6, 5, 0), Status::Inval);
}

#[test]
fn map_over_an_existing_mapping_is_inval() {
    // § ... / MAP request: a mapping already in the range SHOULD be INVAL.
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    assert_eq!(send(&mut d, map_rw(1, 0x2000, 0x3fff, 0)), Status::Ok);
    for (vs, ve) in [
        (0x2000, 0x3fff),
        (0x1000, 0x2fff),
        (0x3000, 0x4fff),
        (0x1000, 0x4fff),
        (0x3000, 0x3fff),
    ] {
        refused(&mut d, map_rw(1, vs, ve, 0x10000), Status::Inval);
    }
    assert_eq!(
        send(&mut d, map_rw(1, 0x1000, 0x1fff, 0)),
        Status::Ok,
        "adjacent"
    );
    assert_eq!(
        send(&mut d, map_rw(1, 0x4000, 0x4fff, 0)),
        Status::Ok,
        "adjacent"
    );
}

#[test]
fn map_unknown_flag_is_inval() {
    // § ... / MAP request: a flags bit the device does not recognize
    // MUST be INVAL; MMIO is one without the MMIO feature.
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    for flags in [1 << 3, 1 << 31] {
        let r = Request::Map {
            domain: 1,
            virt_start: 0,
            virt_end: 0xfff,
            phys_start: 0,
            flags,
        };
        refused(&mut d, r, Status::Inval);
    }
    let mut d = Device::new(DeviceConfig::default()).unwrap();
    d.add_endpoint(EP, &[]).unwrap();
    d.negotiate(feature::VERSION_1 | feature::MAP_UNMAP)
        .unwrap();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    let mmio = Request::Map {
        domain: 1,
        virt_start: 0,
        virt_end: 0xfff,
        phys_start: 0,
        flags: map::READ | map::MMIO,
    };
    refused(&mut d, mmio, Status::Inval);
}

#[test]
fn map_into_a_missing_domain_is_noent() {
    // § ... / MAP request: SHOULD be NOENT.
    let mut d = device();
    refused(&mut d, map_rw(3, 0, 0xfff, 0), Status::NoEnt);
}

#[test]
fn map_into_a_bypass_domain_is_inval() {
    // § ... / MAP request: SHOULD be INVAL.
    let mut d = device();
    let r = Request::Attach {
        domain: 1,
        endpoint: EP,
        flags: attach::BYPASS,
        reserved: 0,
    };
    assert_eq!(send(&mut d, r), Status::Ok);
    refused(&mut d, map_rw(1, 0, 0xfff, 0), Status::Inval);
}

#[test]
fn map_without_write_never_lets_a_write_through() {
    // § ... / MAP request: the device MUST NOT allow writes to a range
    // mapped without WRITE (and this device keeps write-only ranges
    // write-only).
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    let ro = Request::Map {
        domain: 1,
        virt_start: 0,
        virt_end: 0xfff,
        phys_start: 0x5000,
        flags: map::READ,
    };
    let wo = Request::Map {
        domain: 1,
        virt_start: 0x1000,
        virt_end: 0x1fff,
        phys_start: 0x6000,
        flags: map::WRITE,
    };
    assert_eq!(send(&mut d, ro), Status::Ok);
    assert_eq!(send(&mut d, wo), Status::Ok);
    let f = d.translate(EP, 0x10, Access::Write).unwrap_err();
    assert_eq!(
        (f.reason, f.flags),
        (fault::R_MAPPING, fault::F_WRITE | fault::F_ADDRESS)
    );
    assert!(d.translate(EP, 0x10, Access::Read).is_ok());
    assert!(d.translate(EP, 0x1010, Access::Write).is_ok());
    assert_eq!(
        d.translate(EP, 0x1010, Access::Read).unwrap_err().reason,
        fault::R_MAPPING
    );
}

#[test]
fn map_outside_input_range_is_range() {
    // § ... / Device operations: with INPUT_RANGE, any mapping request
    // outside input_range fails.
    let mut d = device_with(DeviceConfig {
        input_range: (0x1000, 0xffff_ffff),
        ..DeviceConfig::default()
    });
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    refused(&mut d, map_rw(1, 0, 0xfff, 0), Status::Range);
    refused(
        &mut d,
        map_rw(1, 0xffff_f000, 0x1_0000_0fff, 0),
        Status::Range,
    );
    assert_eq!(send(&mut d, map_rw(1, 0x1000, 0x1fff, 0)), Status::Ok);
}

#[test]
fn map_outside_guest_physical_memory_is_range() {
    // § ... / MAP request: the physical range should be within the
    // guest-physical address space (set by the host).
    let mut d = device_with(DeviceConfig {
        phys_range: (0, 0x3fff_ffff),
        ..DeviceConfig::default()
    });
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    refused(&mut d, map_rw(1, 0, 0x1fff, 0x3fff_f000), Status::Range);
    refused(&mut d, map_rw(1, 0, 0xfff, u64::MAX - 0xfff), Status::Range);
    assert_eq!(send(&mut d, map_rw(1, 0, 0xfff, 0x3fff_f000)), Status::Ok);
}

#[test]
fn map_reaches_the_top_of_the_address_space() {
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    let top = map_rw(1, u64::MAX - 0xfff, u64::MAX, 0x1000);
    assert_eq!(send(&mut d, top), Status::Ok);
    let t = d.translate(EP, u64::MAX, Access::Read).unwrap();
    assert_eq!((t.phys, t.len), (0x1fff, 1));
    assert_eq!(send(&mut d, unmap(1, 0, u64::MAX)), Status::Ok);
    assert_eq!(d.mapping_count(), 0);
}

// ---- UNMAP ----

#[test]
fn unmap_reserved_not_zero_is_inval_and_unmaps_nothing() {
    // § ... / UNMAP request: the device MAY set INVAL (and MAY then
    // unmap); this one refuses without unmapping.
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    assert_eq!(send(&mut d, map_rw(1, 0, 0xfff, 0)), Status::Ok);
    let r = Request::Unmap {
        domain: 1,
        virt_start: 0,
        virt_end: 0xfff,
        reserved: 1,
    };
    refused(&mut d, r, Status::Inval);
}

#[test]
fn unmap_in_a_missing_domain_is_noent() {
    // § ... / UNMAP request: SHOULD be NOENT.
    let mut d = device();
    refused(&mut d, unmap(4, 0, 0xfff), Status::NoEnt);
}

#[test]
fn unmap_in_a_bypass_domain_is_inval() {
    // § ... / UNMAP request: SHOULD be INVAL.
    let mut d = device();
    let r = Request::Attach {
        domain: 1,
        endpoint: EP,
        flags: attach::BYPASS,
        reserved: 0,
    };
    assert_eq!(send(&mut d, r), Status::Ok);
    refused(&mut d, unmap(1, 0, 0xfff), Status::Inval);
}

#[test]
fn unmap_that_would_split_a_mapping_is_range_and_removes_none() {
    // § ... / UNMAP request: SHOULD be RANGE, SHOULD NOT remove any.
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    assert_eq!(send(&mut d, map_rw(1, 0x0000, 0x0fff, 0)), Status::Ok);
    assert_eq!(send(&mut d, map_rw(1, 0x1000, 0x2fff, 0)), Status::Ok);
    assert_eq!(send(&mut d, map_rw(1, 0x3000, 0x3fff, 0)), Status::Ok);
    // Whole first mapping, part of the second: nothing goes.
    refused(&mut d, unmap(1, 0, 0x1fff), Status::Range);
    refused(&mut d, unmap(1, 0x2000, 0x3fff), Status::Range);
    refused(&mut d, unmap(1, 0x1800, 0x27ff), Status::Range);
    assert_eq!(d.mapping_count(), 3);
}

#[test]
fn unmap_over_holes_removes_what_it_covers() {
    // § ... / UNMAP request: where part or all of the range has no
    // mapping, the device SHOULD remove all mappings affected and say OK.
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    assert_eq!(send(&mut d, map_rw(1, 0x1000, 0x1fff, 0)), Status::Ok);
    assert_eq!(send(&mut d, map_rw(1, 0x5000, 0x5fff, 0)), Status::Ok);
    assert_eq!(send(&mut d, map_rw(1, 0x9000, 0x9fff, 0)), Status::Ok);
    assert_eq!(send(&mut d, unmap(1, 0, 0x6fff)), Status::Ok);
    let left: Vec<u64> = d.mappings(1).map(|m| m.virt_start).collect();
    assert_eq!(left, [0x9000]);
}

/// The specification's seven UNMAP examples, word for word, on a one-byte
/// granule (each sequence starts with a blank address space).
#[test]
fn unmap_the_specifications_seven_examples() {
    fn blank() -> Device {
        let mut d = device_with(DeviceConfig {
            page_size_mask: 1,
            ..DeviceConfig::default()
        });
        assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
        d
    }
    let map = |d: &mut Device, s, e| assert_eq!(send(d, map_rw(1, s, e, 0x1000 + s)), Status::Ok);
    let left = |d: &Device| {
        d.mappings(1)
            .map(|m| (m.virt_start, m.virt_end))
            .collect::<Vec<_>>()
    };

    // (1) unmap(virt_start=0, virt_end=4) -> succeeds, doesn't unmap anything
    let mut d = blank();
    assert_eq!(send(&mut d, unmap(1, 0, 4)), Status::Ok);
    assert_eq!(left(&d), []);

    // (2) a = map(virt_start=0, virt_end=9); unmap(0, 9) -> succeeds, unmaps a
    let mut d = blank();
    map(&mut d, 0, 9);
    assert_eq!(send(&mut d, unmap(1, 0, 9)), Status::Ok);
    assert_eq!(left(&d), []);

    // (3) a = map(0, 4); b = map(5, 9); unmap(0, 9) -> succeeds, unmaps a and b
    let mut d = blank();
    map(&mut d, 0, 4);
    map(&mut d, 5, 9);
    assert_eq!(send(&mut d, unmap(1, 0, 9)), Status::Ok);
    assert_eq!(left(&d), []);

    // (4) a = map(0, 9); unmap(0, 4) -> fails, doesn't unmap anything
    let mut d = blank();
    map(&mut d, 0, 9);
    assert_eq!(send(&mut d, unmap(1, 0, 4)), Status::Range);
    assert_eq!(left(&d), [(0, 9)]);

    // (5) a = map(0, 4); b = map(5, 9); unmap(0, 4) -> succeeds, unmaps a
    let mut d = blank();
    map(&mut d, 0, 4);
    map(&mut d, 5, 9);
    assert_eq!(send(&mut d, unmap(1, 0, 4)), Status::Ok);
    assert_eq!(left(&d), [(5, 9)]);

    // (6) a = map(0, 4); unmap(0, 9) -> succeeds, unmaps a
    let mut d = blank();
    map(&mut d, 0, 4);
    assert_eq!(send(&mut d, unmap(1, 0, 9)), Status::Ok);
    assert_eq!(left(&d), []);

    // (7) a = map(0, 4); b = map(10, 14); unmap(0, 14) -> succeeds, unmaps a and b
    let mut d = blank();
    map(&mut d, 0, 4);
    map(&mut d, 10, 14);
    assert_eq!(send(&mut d, unmap(1, 0, 14)), Status::Ok);
    assert_eq!(left(&d), []);
}

// ---- PROBE ----

/// Sends a PROBE with `writable` device-writable bytes; returns the used
/// length and the bytes.
fn probe_with(d: &mut Device, endpoint: u32, writable: usize) -> (usize, Vec<u8>) {
    let mut buf = vec![0xaa; writable];
    let used = d.handle(&Request::Probe { endpoint }.encode(), &mut buf);
    (used, buf)
}

#[test]
fn probe_reserved_is_ignored() {
    // § ... / PROBE request: the device MUST ignore reserved.
    let mut d = device();
    let mut bytes = Request::Probe { endpoint: EP }.encode();
    bytes[8..72].fill(0x5a);
    let mut buf = vec![0; 512 + 4];
    assert_eq!(d.handle(&bytes, &mut buf), 516);
    assert_eq!(buf[512], Status::Ok as u8);
}

#[test]
fn probe_unknown_endpoint_is_noent() {
    // § ... / PROBE request: SHOULD be NOENT.
    let mut d = device();
    let (used, buf) = probe_with(&mut d, 77, 516);
    assert_eq!(used, 516);
    assert_eq!(buf[512], Status::NoEnt as u8);
    assert!(buf[..512].iter().all(|&b| b == 0));
}

#[test]
fn probe_without_the_feature_is_not_written() {
    // § ... / PROBE request: a device that does not offer PROBE SHOULD NOT
    // write the buffer; used length 0.
    let mut d = device_with(DeviceConfig {
        features: feature::MAP_UNMAP,
        ..DeviceConfig::default()
    });
    let (used, buf) = probe_with(&mut d, EP, 516);
    assert_eq!(used, 0);
    assert!(buf.iter().all(|&b| b == 0xaa));
}

#[test]
fn probe_resv_mem_property_layout() {
    // § ... / PROBE request and / PROBE properties / RESVMEM: reserved
    // zero, length without the header, the next property length + 4 bytes
    // on, and zeroes after the last.
    let mut d = Device::new(DeviceConfig::default()).unwrap();
    let regions = [
        ResvMem {
            subtype: resv::RESERVED,
            start: 0x1000,
            end: 0x1fff,
        },
        MSI,
    ];
    d.add_endpoint(EP, &regions).unwrap();
    d.negotiate(d.offered()).unwrap();
    let (used, buf) = probe_with(&mut d, EP, 516);
    assert_eq!(used, 516);
    assert_eq!(buf[512..], [Status::Ok as u8, 0, 0, 0]);
    for (i, r) in regions.iter().enumerate() {
        let p = &buf[i * 24..(i + 1) * 24];
        let head = u16::from_le_bytes([p[0], p[1]]);
        assert_eq!(head & probe::TYPE_MASK, probe::RESV_MEM);
        assert_eq!(head >> 12, 0, "reserved bits of the type field");
        let length = u16::from_le_bytes([p[2], p[3]]) as usize;
        assert_eq!(length + 4, 24, "the next property is length + 4 bytes on");
        assert_eq!(p[4], r.subtype);
        assert_eq!(p[5..8], [0, 0, 0], "reserved");
        assert_eq!(u64::from_le_bytes(p[8..16].try_into().unwrap()), r.start);
        assert_eq!(u64::from_le_bytes(p[16..24].try_into().unwrap()), r.end);
    }
    assert!(
        buf[48..512].iter().all(|&b| b == 0),
        "zeroes after the list"
    );
}

#[test]
fn probe_smaller_than_probe_size_is_inval_without_properties() {
    // § ... / PROBE request: properties shorter than probe_size: no
    // property written, INVAL.
    let mut d = device();
    let (used, buf) = probe_with(&mut d, EP, 100);
    assert_eq!(used, 100);
    assert_eq!(buf[96..], [Status::Inval as u8, 0, 0, 0]);
    assert!(buf[..96].iter().all(|&b| b == 0xaa));
}

// ---- Property RESV_MEM ----

#[test]
fn resv_mem_one_msi_region_per_endpoint() {
    // § ... / Property RESV_MEM: SHOULD NOT present more than one MSI.
    let mut d = Device::new(DeviceConfig::default()).unwrap();
    let two = [
        MSI,
        ResvMem {
            start: 0x1000,
            end: 0x1fff,
            ..MSI
        },
    ];
    assert_eq!(d.add_endpoint(1, &two), Err(EndpointError::TwoMsi));
}

#[test]
fn resv_mem_regions_of_an_endpoint_do_not_overlap() {
    // § ... / Property RESV_MEM: SHOULD NOT present overlapping regions.
    let mut d = Device::new(DeviceConfig::default()).unwrap();
    let r = |start, end| ResvMem {
        subtype: resv::RESERVED,
        start,
        end,
    };
    assert_eq!(
        d.add_endpoint(1, &[r(0, 0xfff), r(0xfff, 0x1fff)]),
        Err(EndpointError::Overlap(0, 0xfff))
    );
    assert!(d.add_endpoint(1, &[r(0, 0xfff), r(0x1000, 0x1fff)]).is_ok());
}

#[test]
fn resv_mem_map_over_a_reserved_region_is_refused() {
    // § ... / Property RESV_MEM: SHOULD reject a MAP overlapping one.
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    refused(
        &mut d,
        map_rw(1, 0xfee0_0000, 0xfee0_0fff, 0),
        Status::Inval,
    );
    refused(
        &mut d,
        map_rw(1, 0xfedf_f000, 0xfee0_0fff, 0),
        Status::Inval,
    );
    // Another endpoint's region does not stand in this domain's way.
    assert_eq!(send(&mut d, attach(2, EP2)), Status::Ok);
    assert_eq!(
        send(&mut d, map_rw(2, 0xfee0_0000, 0xfee0_0fff, 0)),
        Status::Ok
    );
}

#[test]
fn resv_mem_msi_writes_reach_the_doorbell_and_nothing_else_does() {
    // § ... / Property RESV_MEM: accesses to the regions affect only the
    // endpoint and the driver: MSI writes go to the doorbell as they are,
    // reads of it and accesses to reserved regions fault.
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    let t = d.translate(EP, 0xfee0_1004, Access::Write).unwrap();
    assert_eq!(
        (t.phys, t.len),
        (0xfee0_1004, 0xfeef_ffff - 0xfee0_1004 + 1)
    );
    assert_eq!(
        d.translate(EP, 0xfee0_1004, Access::Read)
            .unwrap_err()
            .reason,
        fault::R_MAPPING
    );
}

// ---- Fault reporting ----

#[test]
fn fault_report_layout_has_zero_reserved_fields_and_a_valid_endpoint() {
    // § ... / Fault reporting: reserved and reserved1 zero, undefined flags
    // zero, a valid endpoint id.
    let d = device();
    let f = d.translate(EP2, 0xdead_b000, Access::Write).unwrap_err();
    let b = f.encode();
    assert_eq!(b.len(), 24);
    assert_eq!(b[0], fault::R_DOMAIN);
    assert_eq!(b[1..4], [0, 0, 0]);
    let flags = u32::from_le_bytes(b[4..8].try_into().unwrap());
    assert_eq!(flags, fault::F_WRITE | fault::F_ADDRESS);
    assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), EP2);
    assert_eq!(b[12..16], [0; 4]);
    assert_eq!(
        u64::from_le_bytes(b[16..24].try_into().unwrap()),
        0xdead_b000
    );
}

#[test]
fn fault_for_each_reason() {
    let mut d = device();
    assert_eq!(
        d.translate(77, 0, Access::Read).unwrap_err().reason,
        fault::R_UNKNOWN,
        "an endpoint the device does not know"
    );
    assert_eq!(
        d.translate(EP, 0, Access::Read).unwrap_err().reason,
        fault::R_DOMAIN
    );
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    assert_eq!(
        d.translate(EP, 0, Access::Read).unwrap_err().reason,
        fault::R_MAPPING
    );
}

#[test]
fn fault_backlog_is_bounded_and_drops_are_counted() {
    let mut d = device();
    for i in 0..iommu_virtio::EVENT_BACKLOG as u64 + 10 {
        let f = d.translate(EP2, i, Access::Read).unwrap_err();
        d.report(f);
    }
    assert_eq!(d.events_dropped(), 10);
    assert_eq!(d.next_event().unwrap().address, 0, "oldest first");
}

// ---- Hardening ----

#[test]
fn limits_past_them_are_nomem_and_change_nothing() {
    let mut d = device_with(DeviceConfig {
        limits: iommu_virtio::Limits {
            domains: 1,
            mappings_per_domain: 2,
            mappings: 3,
        },
        ..DeviceConfig::default()
    });
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    refused(&mut d, attach(2, EP2), Status::NoMem);
    // Moving the only endpoint of the only domain frees its slot.
    assert_eq!(send(&mut d, attach(2, EP)), Status::Ok);
    assert_eq!(send(&mut d, map_rw(2, 0, 0xfff, 0)), Status::Ok);
    assert_eq!(send(&mut d, map_rw(2, 0x1000, 0x1fff, 0)), Status::Ok);
    refused(&mut d, map_rw(2, 0x2000, 0x2fff, 0), Status::NoMem);
}

#[test]
fn hot_unplug_detaches_at_once() {
    let mut d = device();
    assert_eq!(send(&mut d, attach(1, EP)), Status::Ok);
    assert_eq!(send(&mut d, map_rw(1, 0, 0xfff, 0)), Status::Ok);
    d.remove_endpoint(EP).unwrap();
    assert_eq!(
        d.translate(EP, 0, Access::Read).unwrap_err().reason,
        fault::R_UNKNOWN
    );
    assert_eq!(d.domains().count(), 0, "its domain held only it");
    assert_eq!(send(&mut d, attach(1, EP)), Status::NoEnt);
    assert_eq!(d.remove_endpoint(EP), Err(EndpointError::NoEndpoint(EP)));
}

#[test]
fn feature_negotiation_refuses_what_was_not_offered() {
    let mut d = Device::new(DeviceConfig::default()).unwrap();
    assert!(d.negotiate(feature::VERSION_1 | feature::BYPASS).is_err());
    assert!(d.negotiate(feature::MAP_UNMAP).is_err(), "no VERSION_1");
    assert_eq!(d.negotiated(), 0);
}
