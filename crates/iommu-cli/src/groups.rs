//! `iommu groups` and `iommu sysfs`: a machine's groups (predicted by
//! Linux's rules and made by the core behind the soft IOMMU), explained,
//! changed, compared with the kernel's, drawn, and its sysfs tree shown
//! or exported.

use crate::out::out;
use crate::run::{device_line, platform_groups, sysfs_entries, ListedGroup, JSON_VERSION};
use crate::whatif::{self, Change, Row};
use crate::{dot, input, Failure, GroupsArgs, SysfsArgs};
use iommu_pci::{compare, short_name, Bdf, Comparison, Reason};
use iommu_platform::PciPlatform;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A reason, as JSON.
#[derive(Debug, Serialize)]
struct JsonReason {
    rule: &'static str,
    device: String,
    members: Vec<String>,
    text: String,
}

impl From<&Reason> for JsonReason {
    fn from(r: &Reason) -> Self {
        JsonReason {
            rule: r.rule.name(),
            device: r.device.to_string(),
            members: r.members.iter().map(Bdf::to_string).collect(),
            text: r.text.clone(),
        }
    }
}

/// The reasons of each core group id.
fn reasons_by_group(p: &PciPlatform) -> BTreeMap<u32, Vec<Reason>> {
    let a = &p.analysis;
    let mut out = BTreeMap::new();
    for (g, members) in a.groups.members.iter().enumerate() {
        let Some(&first) = members.first() else {
            continue;
        };
        let name = a.topology.functions()[first].bdf.to_string();
        let Some(core) = p.device(&name).and_then(|d| d.iommu_group()) else {
            continue;
        };
        let reasons = a.explain_group(g);
        if !reasons.is_empty() {
            out.insert(core.id(), reasons);
        }
    }
    out
}

/// A listed group as it is shown: its number (the kernel's where the
/// input has the kernel's groups and the prediction is exactly one of
/// them, else the prediction's) and its heading.
struct Shown<'a> {
    number: u32,
    heading: String,
    group: &'a ListedGroup,
}

/// The listed groups in the order to print them: where the input carries
/// the kernel's groups, a predicted group that is exactly one kernel group
/// takes the kernel's number (what the machine's own sysfs shows) and the
/// kernel's order; a predicted group the kernel made differently keeps its
/// own number, marked, after them.
fn headed<'a>(
    groups: &'a [ListedGroup],
    kernel_id: &dyn Fn(Bdf) -> Option<u32>,
    has_kernel: bool,
) -> Vec<Shown<'a>> {
    let own = |g: &'a ListedGroup| Shown {
        number: g.id,
        heading: format!("IOMMU Group {}", g.id),
        group: g,
    };
    if !has_kernel {
        return groups.iter().map(own).collect();
    }
    // The kernel groups of each predicted group's devices.
    let ids: Vec<Vec<Option<u32>>> = groups
        .iter()
        .map(|g| {
            let mut v: Vec<Option<u32>> = g
                .devices
                .iter()
                .map(|(n, _)| n.parse().ok().and_then(kernel_id))
                .collect();
            v.sort();
            v.dedup();
            v
        })
        .collect();
    let mut claims: BTreeMap<u32, usize> = BTreeMap::new();
    for k in ids.iter().flatten().flatten() {
        *claims.entry(*k).or_default() += 1;
    }
    let mut agreed = Vec::new();
    let mut differ = Vec::new();
    for (g, ks) in groups.iter().zip(&ids) {
        match ks.as_slice() {
            [Some(k)] if claims[k] == 1 => agreed.push(Shown {
                number: *k,
                heading: format!("IOMMU Group {k}"),
                group: g,
            }),
            ks => {
                let kernel: Vec<String> = ks.iter().flatten().map(u32::to_string).collect();
                let what = if kernel.is_empty() {
                    "the kernel gave these no group".to_string()
                } else if ks.contains(&None) {
                    format!(
                        "the kernel: group {}, and no group for the rest",
                        kernel.join(", ")
                    )
                } else {
                    format!("the kernel: group {}", kernel.join(", "))
                };
                let mut shown = own(g);
                shown.heading = format!("IOMMU Group {} (predicted; {what})", g.id);
                differ.push(shown);
            }
        }
    }
    agreed.sort_by_key(|s| s.number);
    agreed.extend(differ);
    agreed
}

/// The function `--vfio` names: an address, or `vendor:device` ids that
/// exactly one function has.
fn resolve_device(arg: &str, machine: &iommu_pci::Machine) -> Result<Bdf, Failure> {
    if let Ok(b) = arg.parse::<Bdf>() {
        return machine
            .device(b)
            .map(|_| b)
            .ok_or_else(|| Failure::Input(format!("--vfio {arg}: no such function in the input")));
    }
    let ids = arg
        .split_once(':')
        .and_then(|(v, d)| Some((u16::from_str_radix(v, 16).ok()?, u16::from_str_radix(d, 16).ok()?)))
        .filter(|_| arg.len() == 9)
        .ok_or_else(|| {
            Failure::Input(format!(
                "--vfio {arg}: not an address (`01:00.0`, `0000:01:00.0`) or `vendor:device` ids (`10de:2204`)"
            ))
        })?;
    let found: Vec<Bdf> = machine
        .devices
        .iter()
        .filter(|d| (d.function.vendor, d.function.device) == ids)
        .map(|d| d.function.bdf)
        .collect();
    match found.as_slice() {
        [b] => Ok(*b),
        [] => Err(Failure::Input(format!(
            "--vfio {arg}: no function with these ids"
        ))),
        many => Err(Failure::Input(format!(
            "--vfio {arg}: {} functions have these ids ({}); name one by its address",
            many.len(),
            names(many)
        ))),
    }
}

/// Whether a shown group passes the class and group filters.
fn passes(g: &Shown<'_>, args: &GroupsArgs, machine: &iommu_pci::Machine) -> bool {
    if args.group.is_some_and(|n| n != g.number) {
        return false;
    }
    if !(args.gpu || args.usb || args.net || args.storage) {
        return true;
    }
    // A class code (base class, subclass) one of the filters asks for.
    let wanted = |c: u32| {
        (args.gpu && c >> 8 == 0x03)
            || (args.usb && c == 0x0c03)
            || (args.net && c >> 8 == 0x02)
            || (args.storage && c >> 8 == 0x01)
    };
    g.group
        .devices
        .iter()
        .filter_map(|(n, _)| n.parse().ok().and_then(|b| machine.device(b)))
        .any(|d| wanted(d.function.class >> 8))
}

/// The listing under its headings, each device with its driver when the
/// input names it, and each group's reasons when `reasons` has them.
fn render_headed(
    groups: &[Shown<'_>],
    reasons: &BTreeMap<u32, Vec<Reason>>,
    driver: &dyn Fn(&str) -> Option<String>,
) -> String {
    let mut s = String::new();
    for shown in groups {
        let _ = writeln!(s, "{}:", shown.heading);
        for (name, desc) in &shown.group.devices {
            s.push_str(&device_line(name, desc));
            if let Some(d) = driver(name) {
                let _ = write!(s, " (driver: {d})");
            }
            s.push('\n');
        }
        for r in reasons.get(&shown.group.id).into_iter().flatten() {
            let _ = writeln!(s, "\twhy: {}", r.text);
        }
    }
    s
}

/// The functions without a group, and why, as `--explain` prints them.
fn render_ungrouped(p: &PciPlatform) -> String {
    let mut s = String::new();
    let ungrouped = p.analysis.ungrouped();
    if ungrouped.is_empty() {
        return s;
    }
    s.push_str("No group:\n");
    for u in &ungrouped {
        let name = u.device.to_string();
        let desc = p
            .device(&name)
            .map(|d| d.description().to_string())
            .unwrap_or_default();
        let _ = writeln!(s, "\t{} {desc}", short_name(u.device));
        let _ = writeln!(s, "\twhy: {}", u.text);
    }
    s
}

/// The predicted partition, from the core's groups.
fn predicted_partition(groups: &[ListedGroup]) -> Vec<Vec<Bdf>> {
    let mut p: Vec<Vec<Bdf>> = groups
        .iter()
        .map(|g| {
            let mut v: Vec<Bdf> = g
                .devices
                .iter()
                .filter_map(|(n, _)| n.parse().ok())
                .collect();
            v.sort();
            v
        })
        .collect();
    p.sort();
    p
}

fn names(v: &[Bdf]) -> String {
    v.iter()
        .map(|&b| short_name(b))
        .collect::<Vec<_>>()
        .join(" ")
}

fn render_comparison(
    source: &str,
    c: &Comparison,
    kernel_id: &dyn Fn(Bdf) -> Option<u32>,
) -> String {
    let mut s = format!("== compared with the kernel's groups in {source}\n");
    if c.is_same() {
        s.push_str("  the same partition\n");
        return s;
    }
    for m in &c.mismatches {
        s.push_str("  differ:\n");
        for k in &m.kernel {
            let id = k
                .first()
                .and_then(|&b| kernel_id(b))
                .map_or("?".into(), |i| i.to_string());
            let _ = writeln!(s, "    kernel group {id}: {}", names(k));
        }
        for p in &m.predicted {
            let _ = writeln!(s, "    predicted:       {}", names(p));
        }
    }
    for b in &c.only_kernel {
        let _ = writeln!(
            s,
            "  {} is in kernel group {} but predicted in none",
            short_name(*b),
            kernel_id(*b).map_or("?".into(), |i| i.to_string())
        );
    }
    for b in &c.only_predicted {
        let _ = writeln!(
            s,
            "  {} has no group in the input (outside the IOMMU's scope?) but is predicted in one",
            short_name(*b)
        );
    }
    s
}

/// Kernels whose rules differ from 6.12's, one of each set of rules, with
/// what changed since.
const OLDER_RULES: &[(iommu_pci::KernelVersion, &str)] = &[(
    iommu_pci::KernelVersion { major: 6, minor: 11 },
    "before 6.12, arm-smmu-v3 refused a device whose stream ids hold one id twice (behind a PCIe-to-PCI bridge whose alias is the device's own id)",
)];

/// When a comparison differs: whether an older kernel's rules give exactly
/// the kernel's groups, said (one sentence) with what changed and the flag
/// to use.
fn older_kernel_explains(
    machine: &iommu_pci::Machine,
    platform: &iommu_pci::Platform,
) -> Option<String> {
    OLDER_RULES.iter().find_map(|&(version, what)| {
        if platform.kernel <= version {
            return None;
        }
        let mut older = platform.clone();
        older.kernel = version;
        let a = machine.analyze(older).ok()?;
        compare(&a.groups.partition(&a.topology), &machine.kernel_partition())
            .is_same()
            .then(|| {
                format!(
                    "the kernel's groups are exactly what Linux {version} and earlier make \
                     ({what}); the listing comes from such a kernel: compare with `--kernel` and its version"
                )
            })
    })
}

/// Why the IOMMU is off: a kernel parameter, or a live machine whose
/// kernel made no groups.
#[derive(Clone, Copy, Debug)]
enum Off {
    Param(&'static str),
    Live,
}

impl Off {
    /// What JSON says.
    fn json(self) -> &'static str {
        match self {
            Off::Param(word) => word,
            Off::Live => "no IOMMU groups on the machine",
        }
    }
}

/// What to say when the IOMMU is off: the kernel makes no groups, how to
/// turn it on, and that what follows is the prediction for then.
fn iommu_off_notice(kind: iommu_pci::IommuKind, off: Off) -> String {
    let (firmware, param) = match kind {
        iommu_pci::IommuKind::IntelVtd => (
            "VT-d (Intel Virtualization Technology for Directed I/O)",
            " and boot with `intel_iommu=on` if the kernel does not turn it on by itself",
        ),
        iommu_pci::IommuKind::AmdVi => ("the AMD IOMMU (AMD-Vi, often called \"IOMMU\")", ""),
        _ => ("the IOMMU", ""),
    };
    match off {
        Off::Param(word) => format!(
            "# The IOMMU is off (`{word}` on the command line): the kernel makes no IOMMU groups.\n\
             # To turn it on, remove `{word}` and enable {firmware} in the firmware setup.\n\
             # Once it is on, the groups would be:\n"
        ),
        Off::Live => format!(
            "# The IOMMU is off on this machine: its kernel made no IOMMU groups.\n\
             # To turn it on, enable {firmware} in the firmware setup{param}.\n\
             # Once it is on, the groups would be:\n"
        ),
    }
}

/// The platform with the IOMMU on, and the parameter that kept it off.
fn with_iommu_on(platform: iommu_pci::Platform) -> (iommu_pci::Platform, Option<&'static str>) {
    let off = platform.params.off.word_for(platform.iommu);
    let mut on = platform;
    on.params.off = iommu_pci::IommuOff::default();
    (on, off)
}

/// `iommu groups`.
pub fn groups(args: &GroupsArgs) -> Result<(), Failure> {
    let loaded = input::load(&args.machine, &args.platform)?;
    let (platform, off_param) = with_iommu_on(input::platform(&loaded, &args.platform)?);
    let iommu_off = off_param
        .map(Off::Param)
        .or(loaded.iommu_off.then_some(Off::Live));
    if args.compare && !loaded.machine.has_kernel_groups() {
        return Err(Failure::Input(format!(
            "{}: no kernel groups to compare with (a listing made with the IOMMU on has `IOMMU group:` lines; a sysfs tree has iommu_group links)",
            loaded.source
        )));
    }
    let changes = args
        .what_if
        .iter()
        .map(|w| Change::parse(w))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::Input)?;
    let p = input::build(&loaded, platform.clone(), &args.policy)?;
    let listed = platform_groups(&p)?;
    let reasons = if args.explain || args.json {
        reasons_by_group(&p)
    } else {
        BTreeMap::new()
    };
    let what_if = if changes.is_empty() {
        None
    } else {
        let applied =
            whatif::apply(&loaded.machine, &platform, &changes).map_err(Failure::Input)?;
        let after = applied
            .machine
            .analyze(applied.platform)
            .map_err(|e| Failure::Input(format!("after the change: {e}")))?;
        Some(whatif::rows(&p.analysis, &after, &applied.renamed))
    };
    let comparison = args.compare.then(|| {
        compare(
            &predicted_partition(&listed),
            &loaded.machine.kernel_partition(),
        )
    });
    let kernel_id = |b: Bdf| loaded.machine.device(b).and_then(|d| d.kernel_group);
    let has_kernel = loaded.machine.has_kernel_groups();
    let driver = |name: &str| {
        name.parse()
            .ok()
            .and_then(|b| loaded.machine.device(b))
            .and_then(|d| d.driver.clone())
    };
    if let Some(dev) = &args.vfio {
        let target = resolve_device(dev, &loaded.machine)?;
        let Some(g) = listed
            .iter()
            .find(|g| g.devices.iter().any(|(n, _)| n.parse() == Ok(target)))
        else {
            let why = p
                .analysis
                .ungrouped()
                .into_iter()
                .find(|u| u.device == target)
                .map_or_else(|| "the IOMMU does not translate it".to_string(), |u| u.text);
            return Err(Failure::Input(format!(
                "{target} has no IOMMU group, so VFIO cannot use it: {why}"
            )));
        };
        let members: Vec<Bdf> = g
            .devices
            .iter()
            .filter_map(|(n, _)| n.parse().ok())
            .collect();
        let (number, kernel) = match (has_kernel, kernel_id(target)) {
            (true, Some(k)) => (k, true),
            _ => (g.id, false),
        };
        let group_of = |b: Bdf| -> Option<u32> {
            if has_kernel {
                return kernel_id(b);
            }
            listed
                .iter()
                .find(|g| g.devices.iter().any(|(n, _)| n.parse() == Ok(b)))
                .map(|g| g.id)
        };
        // The members the firmware keeps doing DMA for: the model refuses
        // to block them, as Linux does.
        let firmware_direct = members
            .iter()
            .filter_map(|&b| {
                let dev = p.device(&b.to_string())?;
                let direct: Vec<(u64, u64)> = p
                    .iommu
                    .get_resv_regions(&dev)
                    .iter()
                    .filter(|r| r.ty == iommu_core::ResvType::Direct && r.length != 0)
                    .map(|r| (r.start.raw(), r.length))
                    .collect();
                (!direct.is_empty()).then(|| crate::vfio::FirmwareDirect::new(b, &direct))
            })
            .collect();
        let r = crate::vfio::report(
            &loaded.machine,
            target,
            number,
            kernel,
            &members,
            &group_of,
            iommu_off.is_some(),
            firmware_direct,
        );
        if args.json {
            #[derive(Serialize)]
            struct Out<'a> {
                version: u32,
                source: &'a str,
                vfio: &'a crate::vfio::Report,
            }
            out!(
                "{}\n",
                serde_json::to_string_pretty(&Out {
                    version: JSON_VERSION,
                    source: &loaded.source,
                    vfio: &r,
                })
                .expect("plain data")
            );
        } else {
            if let Some(off) = iommu_off {
                out!("{}", iommu_off_notice(platform.iommu, off));
            }
            out!("{}", crate::vfio::render(&r));
        }
        return Ok(());
    }
    let shown: Vec<Shown<'_>> = headed(&listed, &kernel_id, has_kernel)
        .into_iter()
        .filter(|g| passes(g, args, &loaded.machine))
        .collect();
    let filtered = shown.len() != listed.len();

    if args.dot || args.svg.is_some() {
        let text = dot::render(&p.analysis, &loaded.machine);
        if let Some(path) = &args.svg {
            dot::svg(&text, path)?;
        }
        if args.dot {
            // Alone: clap refuses it with the other outputs.
            out!("{text}");
            return Ok(());
        }
    }
    if args.json {
        #[derive(Serialize)]
        struct JsonGroup<'a> {
            id: u32,
            devices: Vec<JsonDevice<'a>>,
            #[serde(skip_serializing_if = "Vec::is_empty")]
            reasons: Vec<JsonReason>,
        }
        #[derive(Serialize)]
        struct JsonDevice<'a> {
            address: &'a str,
            description: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            kernel_group: Option<u32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            driver: Option<String>,
        }
        #[derive(Serialize)]
        struct JsonMismatch {
            kernel: Vec<Vec<String>>,
            predicted: Vec<Vec<String>>,
        }
        #[derive(Serialize)]
        struct JsonComparison {
            same: bool,
            mismatches: Vec<JsonMismatch>,
            only_kernel: Vec<String>,
            only_predicted: Vec<String>,
            /// An older kernel's rules that give the kernel's groups.
            #[serde(skip_serializing_if = "Option::is_none")]
            explained: Option<String>,
        }
        #[derive(Serialize)]
        struct JsonWhatIf<'a> {
            changes: &'a [String],
            groups: &'a [Row],
        }
        #[derive(Serialize)]
        struct JsonUngrouped {
            address: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            clashes_with: Option<String>,
            why: String,
        }
        #[derive(Serialize)]
        struct Out<'a> {
            version: u32,
            source: &'a str,
            iommu: String,
            /// The parameter that keeps the IOMMU off: the groups are the
            /// prediction for when it is on.
            #[serde(skip_serializing_if = "Option::is_none")]
            iommu_off: Option<&'a str>,
            cmdline: String,
            groups: Vec<JsonGroup<'a>>,
            ungrouped: Vec<JsonUngrouped>,
            #[serde(skip_serializing_if = "Option::is_none")]
            comparison: Option<JsonComparison>,
            #[serde(skip_serializing_if = "Option::is_none")]
            what_if: Option<JsonWhatIf<'a>>,
        }
        let strs = |v: &[Vec<Bdf>]| -> Vec<Vec<String>> {
            v.iter()
                .map(|g| g.iter().map(Bdf::to_string).collect())
                .collect()
        };
        let doc = Out {
            version: JSON_VERSION,
            source: &loaded.source,
            iommu: platform.iommu.to_string(),
            iommu_off: iommu_off.map(Off::json),
            cmdline: platform.params.to_string(),
            groups: shown
                .iter()
                .map(|Shown { group: g, .. }| JsonGroup {
                    id: g.id,
                    devices: g
                        .devices
                        .iter()
                        .map(|(n, d)| JsonDevice {
                            address: n,
                            description: d,
                            kernel_group: n.parse().ok().and_then(kernel_id),
                            driver: driver(n),
                        })
                        .collect(),
                    reasons: reasons
                        .get(&g.id)
                        .map(|rs| rs.iter().map(JsonReason::from).collect())
                        .unwrap_or_default(),
                })
                .collect(),
            ungrouped: p
                .analysis
                .ungrouped()
                .into_iter()
                .map(|u| JsonUngrouped {
                    address: u.device.to_string(),
                    clashes_with: u.clashes_with.map(|b| b.to_string()),
                    why: u.text,
                })
                .collect(),
            comparison: comparison.as_ref().map(|c| JsonComparison {
                same: c.is_same(),
                mismatches: c
                    .mismatches
                    .iter()
                    .map(|m| JsonMismatch {
                        kernel: strs(&m.kernel),
                        predicted: strs(&m.predicted),
                    })
                    .collect(),
                only_kernel: c.only_kernel.iter().map(Bdf::to_string).collect(),
                only_predicted: c.only_predicted.iter().map(Bdf::to_string).collect(),
                explained: (!c.is_same())
                    .then(|| older_kernel_explains(&loaded.machine, &platform))
                    .flatten(),
            }),
            what_if: what_if.as_ref().map(|rows| JsonWhatIf {
                changes: &args.what_if,
                groups: rows,
            }),
        };
        out!(
            "{}\n",
            serde_json::to_string_pretty(&doc).expect("plain data")
        );
    } else {
        if let Some(off) = iommu_off {
            out!("{}", iommu_off_notice(platform.iommu, off));
        }
        if args.explain {
            out!("{}", render_headed(&shown, &reasons, &driver));
            if !filtered {
                out!("{}", render_ungrouped(&p));
            }
        } else if what_if.is_none() && comparison.is_none() {
            out!("{}", render_headed(&shown, &BTreeMap::new(), &driver));
        }
        if let Some(rows) = &what_if {
            out!("{}", whatif::render(&args.what_if.join(", "), rows));
        }
        if let Some(c) = &comparison {
            out!("{}", render_comparison(&loaded.source, c, &kernel_id));
            if !c.is_same() {
                if let Some(why) = older_kernel_explains(&loaded.machine, &platform) {
                    out!("  explained: {why}\n");
                }
            }
        }
    }
    match comparison {
        Some(c) if !c.is_same() => Err(Failure::Differs),
        _ => Ok(()),
    }
}

/// `iommu sysfs`.
pub fn sysfs(args: &SysfsArgs) -> Result<(), Failure> {
    let loaded = input::load(&args.machine, &args.platform)?;
    let (platform, iommu_off) = with_iommu_on(input::platform(&loaded, &args.platform)?);
    if let Some(word) = iommu_off {
        input::note(&format!(
            "the IOMMU is off (`{word}`): the kernel would have no kernel/iommu_groups; this is the tree once it is on"
        ));
    } else if loaded.iommu_off {
        input::note(&format!(
            "the IOMMU is off on {}: its kernel made no kernel/iommu_groups; this is the tree once it is on",
            loaded.source
        ));
    }
    let p = input::build(&loaded, platform, &args.policy)?;
    if let Some(dir) = &args.export {
        p.export_sysfs(dir)
            .map_err(|e| Failure::Env(e.to_string()))?;
    }
    if args.json {
        #[derive(Serialize)]
        struct Out<'a> {
            version: u32,
            source: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            exported_to: Option<String>,
            entries: Vec<crate::run::SysfsEntry>,
        }
        let doc = Out {
            version: JSON_VERSION,
            source: &loaded.source,
            exported_to: args.export.as_ref().map(|d| d.display().to_string()),
            entries: sysfs_entries(&p.iommu),
        };
        out!(
            "{}\n",
            serde_json::to_string_pretty(&doc).expect("plain data")
        );
    } else if args.export.is_none() {
        out!("{}", p.iommu.sysfs().render());
    } else if let Some(dir) = &args.export {
        out!(
            "exported {} devices in {} groups to {}\n",
            p.bus.devices().len(),
            p.iommu.group_ids().len(),
            dir.display()
        );
    }
    Ok(())
}
