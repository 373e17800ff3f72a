//! A real Linux guest's virtio-iommu traffic, replayed on this device.
//!
//! `judge/viommu-linux/record.py` boots Debian's Linux 6.12 on QEMU's q35
//! with QEMU's virtio-iommu-pci and four endpoints, in strict, lazy and
//! passthrough mode, and keeps QEMU's own trace of every request its device
//! accepted (`tests/data/linux/*.txt`). Each recording is replayed here, in
//! order, on a device configured as QEMU's was (its features, configuration
//! space and endpoints; the x86 MSI window this crate gives VMMs as each
//! endpoint's reserved region):
//!
//! - every answer is OK, as QEMU's were (the guest reported no failure);
//! - a PROBE reply carries exactly the properties QEMU's did;
//! - after every request, each endpoint is attached where it is on QEMU's
//!   device, translates or bypasses as it does there, and each domain
//!   holds exactly QEMU's mappings: an endpoint reaches through this device
//!   what it reached through QEMU's.
//!
//! QEMU traces a MAP only once accepted and an UNMAP with each mapping it
//! removed, so its state is rebuilt from the trace alone. `IOMMU_LINUX_REPLAY_DIRS`
//! (paths separated as in `PATH`) adds recordings made elsewhere.

use iommu_virtio::spec::{attach, feature, probe, resv, size, Status};
use iommu_virtio::{Device, DeviceConfig, Mapping, Request, ResvMem};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One line of QEMU's trace, as the replay needs it.
#[derive(Clone, Debug, PartialEq)]
enum Event {
    /// The device's features (`get_features`).
    Features(u64),
    /// The configuration space the driver read (`get_config`).
    Config {
        page_size_mask: u64,
        input_range: (u64, u64),
        domain_range: (u32, u32),
        probe_size: u32,
        bypass: bool,
    },
    /// An endpoint's address space now translates (`true`) or bypasses.
    Switch {
        endpoint: u32,
        translating: bool,
    },
    /// One RESV_MEM property of a PROBE reply.
    ProbeProperty {
        endpoint: u32,
        subtype: u8,
        start: u64,
        end: u64,
    },
    Attach {
        domain: u32,
        endpoint: u32,
    },
    Detach {
        domain: u32,
        endpoint: u32,
    },
    Map {
        domain: u32,
        virt_start: u64,
        virt_end: u64,
        phys_start: u64,
        flags: u32,
    },
    Unmap {
        domain: u32,
        virt_start: u64,
        virt_end: u64,
    },
    /// A mapping the last UNMAP removed.
    UnmapDone {
        domain: u32,
        virt_start: u64,
        virt_end: u64,
    },
    /// A fault QEMU's device reported on its event queue.
    Fault(String),
}

/// `key=value` fields of a trace line (QEMU's formats put a space or a
/// comma after each, and sometimes a space after the `=`).
fn fields(line: &str) -> HashMap<String, String> {
    let line = line.replace("= ", "=").replace(',', " ");
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn num(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// `00:02.0` as an endpoint id (QEMU's virtio-iommu uses the requester id).
fn bdf(s: &str) -> u32 {
    let (bus, rest) = s.split_once(':').expect("bus:dev.fn");
    let (dev, func) = rest.split_once('.').expect("dev.fn");
    let n = |x: &str| u32::from_str_radix(x, 16).expect("hex");
    (n(bus) << 8) | (n(dev) << 3) | n(func)
}

fn parse_event(line: &str) -> Option<Event> {
    let (name, _) = line.split_once(' ').unwrap_or((line, ""));
    let f = fields(line);
    let get = |k: &str| {
        num(f
            .get(k)
            .unwrap_or_else(|| panic!("{k} missing in {line:?}")))
    };
    let dom = || get("domain") as u32;
    Some(match name {
        "virtio_iommu_get_features" => Event::Features(get("features")),
        "virtio_iommu_get_config" => {
            // "input range start=.. input range end=.. domain range start=.."
            let nums: Vec<u64> = line
                .split_whitespace()
                .filter_map(|w| w.split_once('=').map(|(_, v)| num(v)))
                .collect();
            assert_eq!(nums.len(), 7, "get_config fields in {line:?}");
            Event::Config {
                page_size_mask: nums[0],
                input_range: (nums[1], nums[2]),
                domain_range: (nums[3] as u32, nums[4] as u32),
                probe_size: nums[5] as u32,
                bypass: nums[6] != 0,
            }
        }
        "virtio_iommu_switch_address_space" => {
            let dev = line.split_whitespace().nth(2).expect("Device bb:dd.f");
            Event::Switch {
                endpoint: bdf(dev),
                translating: line.contains("iommu enabled=1"),
            }
        }
        "virtio_iommu_fill_resv_property" => Event::ProbeProperty {
            endpoint: get("dev") as u32,
            subtype: get("type") as u8,
            start: get("start"),
            end: get("end"),
        },
        "virtio_iommu_attach" => Event::Attach {
            domain: dom(),
            endpoint: get("endpoint") as u32,
        },
        "virtio_iommu_detach" => Event::Detach {
            domain: dom(),
            endpoint: get("endpoint") as u32,
        },
        "virtio_iommu_map" => Event::Map {
            domain: dom(),
            virt_start: get("virt_start"),
            virt_end: get("virt_end"),
            phys_start: get("phys_start"),
            flags: get("flags") as u32,
        },
        "virtio_iommu_unmap" => Event::Unmap {
            domain: dom(),
            virt_start: get("virt_start"),
            virt_end: get("virt_end"),
        },
        "virtio_iommu_unmap_done" => Event::UnmapDone {
            domain: dom(),
            virt_start: get("virt_start"),
            virt_end: get("virt_end"),
        },
        "virtio_iommu_report_fault" => Event::Fault(line.to_string()),
        // Events that say nothing about requests.
        _ => return None,
    })
}

struct Recording {
    name: String,
    mode: String,
    events: Vec<Event>,
    /// The guest's `/sys/kernel/iommu_groups`: (type, devices).
    groups: Vec<(String, String)>,
    dmesg: Vec<String>,
}

fn load(path: &Path) -> Recording {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut sections: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut current = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("=== ") {
            current = Some(name);
            sections.entry(name).or_default();
        } else if let Some(name) = current {
            sections.entry(name).or_default().push(line);
        }
    }
    let meta = |key: &str| {
        sections["meta"]
            .iter()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    Recording {
        name: path.display().to_string(),
        mode: meta("mode "),
        events: sections["trace"]
            .iter()
            .filter_map(|l| parse_event(l))
            .collect(),
        groups: sections
            .get("guest-groups")
            .into_iter()
            .flatten()
            .filter_map(|l| {
                let (_, rest) = l.split_once(" type ")?;
                let (ty, devices) = rest.split_once(" devices ")?;
                Some((ty.to_string(), devices.trim().to_string()))
            })
            .collect(),
        dmesg: sections
            .get("guest-dmesg")
            .into_iter()
            .flatten()
            .map(|l| l.to_string())
            .collect(),
    }
}

fn recordings() -> Vec<PathBuf> {
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/linux")];
    if let Some(extra) = std::env::var_os("IOMMU_LINUX_REPLAY_DIRS") {
        dirs.extend(std::env::split_paths(&extra));
    }
    let mut files = Vec::new();
    for dir in dirs {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for e in entries {
            let p = e.expect("directory entry").path();
            if p.extension().is_some_and(|x| x == "txt") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// QEMU's device as its trace shows it.
#[derive(Default)]
struct QemuState {
    /// Endpoint -> domain.
    attached: BTreeMap<u32, u32>,
    /// Endpoint -> whether its accesses are translated.
    translating: BTreeMap<u32, bool>,
    /// Domain -> its mappings by first address.
    mappings: BTreeMap<u32, BTreeMap<u64, Mapping>>,
}

/// Request counts by type, for the summary.
#[derive(Default, Debug)]
struct Counts {
    probe: usize,
    attach: usize,
    attach_bypass: usize,
    detach: usize,
    map: usize,
    unmap: usize,
}

fn send(dev: &mut Device, request: &Request) -> Status {
    let mut tail = [0xffu8; size::TAIL];
    assert_eq!(
        dev.handle(&request.encode(), &mut tail),
        size::TAIL,
        "{request:?}"
    );
    assert_eq!(tail[1..], [0, 0, 0], "the tail's reserved bytes");
    decode_status(tail[0])
}

fn decode_status(b: u8) -> Status {
    [
        Status::Ok,
        Status::IoErr,
        Status::Unsupp,
        Status::DevErr,
        Status::Inval,
        Status::Range,
        Status::NoEnt,
        Status::Fault,
        Status::NoMem,
    ]
    .into_iter()
    .find(|s| *s as u8 == b)
    .unwrap_or_else(|| panic!("status {b} is not one the specification defines"))
}

/// What a PROBE reply carries: (subtype, start, end) per RESV_MEM property.
fn probe(dev: &mut Device, endpoint: u32, probe_size: usize) -> (Status, Vec<(u8, u64, u64)>) {
    let mut reply = vec![0xffu8; probe_size + size::TAIL];
    let used = dev.handle(&Request::Probe { endpoint }.encode(), &mut reply);
    assert_eq!(
        used,
        reply.len(),
        "a PROBE reply fills probe_size and the tail"
    );
    let status = decode_status(reply[probe_size]);
    let mut props = Vec::new();
    let mut at = 0;
    while at + size::PROPERTY_HEAD <= probe_size {
        let ty = u16::from_le_bytes([reply[at], reply[at + 1]]) & probe::TYPE_MASK;
        let len = u16::from_le_bytes([reply[at + 2], reply[at + 3]]) as usize;
        if ty == probe::NONE {
            break;
        }
        assert_eq!(ty, probe::RESV_MEM, "only RESV_MEM properties");
        let body = &reply[at + size::PROPERTY_HEAD..at + size::PROPERTY_HEAD + len];
        let u64_at = |o: usize| u64::from_le_bytes(body[o..o + 8].try_into().unwrap());
        props.push((body[0], u64_at(4), u64_at(12)));
        at += size::PROPERTY_HEAD + len;
    }
    (status, props)
}

/// Checks that this device holds what QEMU's did after request `at`.
fn same_state(rec: &Recording, at: usize, dev: &Device, qemu: &QemuState, endpoints: &[u32]) {
    for &ep in endpoints {
        assert_eq!(
            dev.domain_of(ep),
            qemu.attached.get(&ep).copied(),
            "{}: after request {at}, endpoint {ep:#x} is attached elsewhere",
            rec.name
        );
        if let Some(&t) = qemu.translating.get(&ep) {
            assert_eq!(
                !dev.in_bypass(ep),
                t,
                "{}: after request {at}, endpoint {ep:#x} translates on one device and bypasses on the other",
                rec.name
            );
        }
    }
    let ours: Vec<u32> = dev.domains().collect();
    let theirs: Vec<u32> = qemu.mappings.keys().copied().collect();
    assert_eq!(
        ours, theirs,
        "{}: after request {at}, the domains",
        rec.name
    );
    for (domain, maps) in &qemu.mappings {
        let ours: Vec<Mapping> = dev.mappings(*domain).collect();
        let theirs: Vec<Mapping> = maps.values().copied().collect();
        assert!(
            ours == theirs,
            "{}: after request {at}, domain {domain} holds {} mappings here and {} on QEMU's device (first difference: {:?})",
            rec.name,
            ours.len(),
            theirs.len(),
            ours.iter().zip(&theirs).find(|(a, b)| a != b)
        );
    }
}

fn replay(rec: &Recording) -> Counts {
    let features = rec
        .events
        .iter()
        .find_map(|e| match e {
            Event::Features(f) => Some(*f),
            _ => None,
        })
        .expect("the recording has the device's features");
    let Some(&Event::Config {
        page_size_mask,
        input_range,
        domain_range,
        probe_size,
        bypass,
    }) = rec
        .events
        .iter()
        .find(|e| matches!(e, Event::Config { .. }))
    else {
        panic!("{}: no configuration in the recording", rec.name);
    };
    // The device-specific feature bits (0 to 23) QEMU offered; the
    // transport's are the VMM's business.
    let device_features = features & 0xff_ffff;
    let mut dev = Device::new(DeviceConfig {
        features: device_features | feature::VERSION_1,
        page_size_mask,
        input_range,
        domain_range,
        probe_size,
        bypass,
        ..DeviceConfig::default()
    })
    .unwrap_or_else(|e| panic!("{}: QEMU's configuration refused: {e}", rec.name));
    // QEMU's endpoints: every function that has an address space before
    // the driver sends anything.
    let mut endpoints: Vec<u32> = rec
        .events
        .iter()
        .take_while(|e| !matches!(e, Event::ProbeProperty { .. } | Event::Attach { .. }))
        .filter_map(|e| match e {
            Event::Switch { endpoint, .. } => Some(*endpoint),
            _ => None,
        })
        .collect();
    endpoints.sort_unstable();
    endpoints.dedup();
    assert!(!endpoints.is_empty(), "{}: no endpoints", rec.name);
    for &ep in &endpoints {
        dev.add_endpoint(ep, &[ResvMem::X86_MSI]).unwrap();
    }
    // Linux's driver accepts every feature QEMU offers.
    assert_eq!(dev.negotiate(dev.offered()).unwrap(), dev.offered());

    let mut qemu = QemuState::default();
    for &ep in &endpoints {
        qemu.translating.insert(ep, !bypass);
    }
    let mut counts = Counts::default();
    let events = &rec.events;
    let mut i = 0;
    let mut request = 0;
    while i < events.len() {
        match events[i] {
            Event::ProbeProperty { endpoint, .. } => {
                let mut theirs = Vec::new();
                while let Some(&Event::ProbeProperty {
                    endpoint: e,
                    subtype,
                    start,
                    end,
                }) = events.get(i)
                {
                    if e != endpoint {
                        break;
                    }
                    theirs.push((subtype, start, end));
                    i += 1;
                }
                let (status, ours) = probe(&mut dev, endpoint, probe_size as usize);
                assert_eq!(status, Status::Ok, "{}: PROBE of {endpoint:#x}", rec.name);
                assert_eq!(
                    ours, theirs,
                    "{}: PROBE of {endpoint:#x}: the reply's properties",
                    rec.name
                );
                assert!(theirs.iter().all(|p| p.0 == resv::MSI));
                counts.probe += 1;
            }
            Event::Attach { domain, endpoint } => {
                i += 1;
                // QEMU switches the endpoint's address space once attached:
                // its bypass state is the request's BYPASS flag.
                let translating = match events.get(i) {
                    Some(&Event::Switch {
                        endpoint: e,
                        translating,
                    }) if e == endpoint => {
                        i += 1;
                        translating
                    }
                    other => panic!(
                        "{}: ATTACH of {endpoint:#x} not followed by its switch: {other:?}",
                        rec.name
                    ),
                };
                let flags = if translating { 0 } else { attach::BYPASS };
                let status = send(
                    &mut dev,
                    &Request::Attach {
                        domain,
                        endpoint,
                        flags,
                        reserved: 0,
                    },
                );
                assert_eq!(
                    status,
                    Status::Ok,
                    "{}: ATTACH {endpoint:#x} to {domain}",
                    rec.name
                );
                // QEMU frees a domain its last endpoint left.
                if let Some(old) = qemu.attached.insert(endpoint, domain) {
                    if old != domain && !qemu.attached.values().any(|&d| d == old) {
                        qemu.mappings.remove(&old);
                    }
                }
                qemu.mappings.entry(domain).or_default();
                qemu.translating.insert(endpoint, translating);
                counts.attach += 1;
                counts.attach_bypass += usize::from(!translating);
            }
            Event::Detach { domain, endpoint } => {
                i += 1;
                let status = send(&mut dev, &Request::Detach { domain, endpoint });
                assert_eq!(
                    status,
                    Status::Ok,
                    "{}: DETACH {endpoint:#x} from {domain}",
                    rec.name
                );
                qemu.attached.remove(&endpoint);
                if !qemu.attached.values().any(|&d| d == domain) {
                    qemu.mappings.remove(&domain);
                }
                if let Some(&Event::Switch {
                    endpoint: e,
                    translating,
                }) = events.get(i)
                {
                    if e == endpoint {
                        qemu.translating.insert(endpoint, translating);
                        i += 1;
                    }
                }
                counts.detach += 1;
            }
            Event::Map {
                domain,
                virt_start,
                virt_end,
                phys_start,
                flags,
            } => {
                i += 1;
                let status = send(
                    &mut dev,
                    &Request::Map {
                        domain,
                        virt_start,
                        virt_end,
                        phys_start,
                        flags,
                    },
                );
                assert_eq!(
                    status,
                    Status::Ok,
                    "{}: MAP {virt_start:#x}-{virt_end:#x} in {domain}",
                    rec.name
                );
                let m = Mapping {
                    virt_start,
                    virt_end,
                    phys_start,
                    flags,
                };
                qemu.mappings
                    .get_mut(&domain)
                    .expect("QEMU maps only into live domains")
                    .insert(virt_start, m);
                counts.map += 1;
            }
            Event::Unmap {
                domain,
                virt_start,
                virt_end,
            } => {
                i += 1;
                let maps = qemu.mappings.get_mut(&domain).expect("a live domain");
                while let Some(&Event::UnmapDone {
                    domain: d,
                    virt_start: s,
                    virt_end: e,
                }) = events.get(i)
                {
                    assert_eq!(d, domain);
                    let gone = maps.remove(&s).expect("QEMU removed a mapping it held");
                    assert_eq!(gone.virt_end, e);
                    i += 1;
                }
                // A mapping the range still overlaps after QEMU's removals:
                // QEMU stopped at a mapping the range splits and answered RANGE.
                let straddles = maps
                    .values()
                    .any(|m| m.virt_start <= virt_end && m.virt_end >= virt_start);
                let theirs = if straddles { Status::Range } else { Status::Ok };
                let ours = send(
                    &mut dev,
                    &Request::Unmap {
                        domain,
                        virt_start,
                        virt_end,
                        reserved: 0,
                    },
                );
                assert_eq!(
                    ours, theirs,
                    "{}: UNMAP {virt_start:#x}-{virt_end:#x} in {domain}",
                    rec.name
                );
                counts.unmap += 1;
            }
            Event::Switch {
                endpoint,
                translating,
            } => {
                // Outside a request: a reset or the bypass field.
                qemu.translating.insert(endpoint, translating);
                i += 1;
                continue;
            }
            Event::Fault(ref line) => panic!("{}: QEMU reported a fault: {line}", rec.name),
            Event::Features(_) | Event::Config { .. } | Event::UnmapDone { .. } => {
                i += 1;
                continue;
            }
        }
        request += 1;
        same_state(rec, request, &dev, &qemu, &endpoints);
    }
    counts
}

#[test]
fn linux_requests_recorded_on_qemus_device_get_the_same_answers_and_state_here() {
    let files = recordings();
    assert!(
        files.len() >= 3,
        "the strict, lazy and passthrough recordings"
    );
    for path in files {
        let rec = load(&path);
        let counts = replay(&rec);
        println!("{}: {} mode: {counts:?}", rec.name, rec.mode);
        // What the guest built, as the mode asks.
        let want = match rec.mode.as_str() {
            "strict" => "DMA",
            "lazy" => "DMA-FQ",
            "passthrough" => "identity",
            other => panic!("{}: unknown mode {other:?}", rec.name),
        };
        assert!(
            !rec.groups.is_empty(),
            "{}: the guest made no groups",
            rec.name
        );
        for (ty, devices) in &rec.groups {
            assert_eq!(ty, want, "{}: group of {devices}", rec.name);
        }
        // Every group's device was probed and attached once.
        assert_eq!(counts.probe, rec.groups.len(), "{}", rec.name);
        assert_eq!(counts.attach, rec.groups.len(), "{}", rec.name);
        if rec.mode == "passthrough" {
            assert_eq!(
                counts.attach_bypass, counts.attach,
                "{}: identity domains bypass",
                rec.name
            );
            assert_eq!(counts.map, 0, "{}: no MAP in passthrough", rec.name);
        } else {
            assert_eq!(counts.attach_bypass, 0, "{}", rec.name);
            assert!(
                counts.map > 0 && counts.unmap > 0,
                "{}: DMA went through the IOMMU",
                rec.name
            );
        }
        // The guest's driver saw no failed request.
        let failures: Vec<_> = rec
            .dmesg
            .iter()
            .filter(|l| l.contains("virtio_iommu") && (l.contains("fail") || l.contains("error")))
            .collect();
        assert!(failures.is_empty(), "{}: {failures:?}", rec.name);
    }
}

/// The parser reads QEMU's formats field by field (a change in them must
/// fail here, not silently skip events).
#[test]
fn qemus_trace_lines_parse_into_the_events_they_name() {
    assert_eq!(
        parse_event(
            "virtio_iommu_fill_resv_property dev= 16, type=1 start=0xfee00000 end=0xfeefffff"
        ),
        Some(Event::ProbeProperty {
            endpoint: 16,
            subtype: 1,
            start: 0xfee0_0000,
            end: 0xfeef_ffff
        })
    );
    assert_eq!(
        parse_event("virtio_iommu_switch_address_space Device 00:1f.3 switching address space (iommu enabled=1)"),
        Some(Event::Switch { endpoint: 0xfb, translating: true })
    );
    assert_eq!(
        parse_event("virtio_iommu_map domain=3 virt_start=0xfffff000 virt_end=0xffffffff phys_start=0x1fdf000 flags=3"),
        Some(Event::Map { domain: 3, virt_start: 0xffff_f000, virt_end: 0xffff_ffff, phys_start: 0x1fd_f000, flags: 3 })
    );
    assert_eq!(
        parse_event("virtio_iommu_get_config page_size_mask=0xfffffffffffff000 input range start=0x0 input range end=0x7fffffffff domain range start=0 domain range end=4294967295 probe_size=0x200 bypass=0x1"),
        Some(Event::Config {
            page_size_mask: 0xffff_ffff_ffff_f000,
            input_range: (0, 0x7f_ffff_ffff),
            domain_range: (0, u32::MAX),
            probe_size: 0x200,
            bypass: true
        })
    );
    assert_eq!(parse_event("virtio_iommu_translate mr=x"), None);
}
