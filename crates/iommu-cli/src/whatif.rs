//! `--what-if`: the groups before and after a change, side by side, with
//! the groups that split or merge marked.
//!
//! A change is a kernel parameter (`pcie_acs_override=downstream`,
//! `pci=noacs`, `pci=disable_acs_redir=...`, `pci=config_acs=...`),
//! `move DEVICE to SLOT` (a function `bb:dd.f`, or all functions of a
//! slot `bb:dd`, to a free slot `bb:dd` or below a bridge `bb:dd.f`), or
//! `enable ACS on DEVICE` / `disable ACS on DEVICE`.

use iommu_pci::{short_name, AcsFlags, Analysis, Bdf, Function, Machine, Platform, REQ_ACS_FLAGS};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// One change to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A kernel parameter.
    Param(String),
    /// Functions to move: `(segment, bus, dev, Some(func))` or a whole slot.
    Move {
        /// What moves.
        from: Slot,
        /// Where to.
        to: Target,
    },
    /// ACS switched on (SV RR CR UF) or off on a function.
    Acs {
        /// The function.
        dev: Bdf,
        /// On or off.
        enable: bool,
    },
}

/// A slot, or one function of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    segment: u32,
    bus: u8,
    dev: u8,
    func: Option<u8>,
}

/// Where moved functions go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A slot (`bb:dd`).
    Slot(Slot),
    /// Below a bridge (`bb:dd.f`): its secondary bus, device 0.
    Below(Bdf),
}

const FORMS: &str = "expected a kernel parameter (pcie_acs_override=..., pci=noacs, \
pci=disable_acs_redir=..., pci=config_acs=...), `move DEVICE to SLOT`, \
`enable ACS on DEVICE` or `disable ACS on DEVICE`";

fn parse_slot(s: &str) -> Option<Slot> {
    if let Ok(b) = s.parse::<Bdf>() {
        return Some(Slot {
            segment: b.segment,
            bus: b.bus,
            dev: b.dev(),
            func: Some(b.func()),
        });
    }
    // `bb:dd` or `ssss:bb:dd`: parse as function 0 and drop it.
    let b = format!("{s}.0").parse::<Bdf>().ok()?;
    Some(Slot {
        segment: b.segment,
        bus: b.bus,
        dev: b.dev(),
        func: None,
    })
}

impl Change {
    /// Reads a change.
    ///
    /// # Errors
    /// The forms a change may take, when `s` is none of them.
    pub fn parse(s: &str) -> Result<Change, String> {
        let words: Vec<&str> = s.split_whitespace().collect();
        match words.as_slice() {
            [w] if w.contains('=') => {
                let ignored = iommu_pci::KernelParams::default()
                    .apply_reporting(w)
                    .map_err(|e| e.to_string())?;
                if let Some(why) = ignored {
                    crate::input::note(&format!("what-if `{w}` ignored: {why}"));
                }
                Ok(Change::Param((*w).to_string()))
            }
            ["move", from, "to", to] => {
                let from =
                    parse_slot(from).ok_or_else(|| format!("`{from}` is not a device or slot"))?;
                let to = match to.parse::<Bdf>() {
                    Ok(b) => Target::Below(b),
                    Err(_) => {
                        Target::Slot(parse_slot(to).filter(|s| s.func.is_none()).ok_or_else(
                            || format!("`{to}` is not a slot (bb:dd) or a bridge (bb:dd.f)"),
                        )?)
                    }
                };
                Ok(Change::Move { from, to })
            }
            [verb @ ("enable" | "disable"), acs, "on", dev] if acs.eq_ignore_ascii_case("acs") => {
                let dev = dev
                    .parse::<Bdf>()
                    .map_err(|_| format!("`{dev}` is not a function (bb:dd.f)"))?;
                Ok(Change::Acs {
                    dev,
                    enable: *verb == "enable",
                })
            }
            _ => Err(format!("what-if `{s}`: {FORMS}")),
        }
    }
}

/// A machine and platform after changes, and the new address of every
/// function that moved (new address to old).
pub struct Applied {
    /// The functions.
    pub machine: Machine,
    /// The platform.
    pub platform: Platform,
    /// Moved functions: new address to old.
    pub renamed: BTreeMap<Bdf, Bdf>,
}

/// Applies `changes` in order.
///
/// # Errors
/// A change that cannot apply to this machine: a device it lacks, a
/// target slot taken, a bridge to move, ACS on a conventional function.
pub fn apply(
    machine: &Machine,
    platform: &Platform,
    changes: &[Change],
) -> Result<Applied, String> {
    let mut m = machine.clone();
    let mut p = platform.clone();
    let mut renamed: BTreeMap<Bdf, Bdf> = BTreeMap::new();
    for c in changes {
        match c {
            Change::Param(w) => p.params.apply(w).map_err(|e| e.to_string())?,
            Change::Acs { dev, enable } => {
                let d = m
                    .devices
                    .iter_mut()
                    .find(|d| d.function.bdf == *dev)
                    .ok_or_else(|| format!("the machine has no function {}", short_name(*dev)))?;
                let f = &mut d.function;
                if *enable {
                    f.add_acs(REQ_ACS_FLAGS, REQ_ACS_FLAGS).map_err(|_| {
                        format!(
                            "{} cannot take an ACS capability (not a PCI Express function with extended configuration space)",
                            short_name(*dev)
                        )
                    })?;
                } else if f.acs.is_some() {
                    f.set_acs_ctrl(AcsFlags(0));
                    // The kernel's set-up would turn the controls back on;
                    // keep them off as config_acs does.
                    p.params
                        .apply(&format!("pci=config_acs=0000000@{dev}"))
                        .map_err(|e| e.to_string())?;
                } else {
                    return Err(format!(
                        "{} has no ACS capability to disable",
                        short_name(*dev)
                    ));
                }
            }
            Change::Move { from, to } => {
                let moving: Vec<usize> = m
                    .devices
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| {
                        let b = d.function.bdf;
                        b.segment == from.segment
                            && b.bus == from.bus
                            && b.dev() == from.dev
                            && from.func.is_none_or(|f| f == b.func())
                    })
                    .map(|(i, _)| i)
                    .collect();
                if moving.is_empty() {
                    return Err("nothing to move: the machine has no such device".into());
                }
                let (seg, bus, dev) = match to {
                    Target::Slot(s) => (s.segment, s.bus, s.dev),
                    Target::Below(b) => {
                        let bridge = m.device(*b).ok_or_else(|| {
                            format!("the machine has no bridge {}", short_name(*b))
                        })?;
                        let buses = bridge
                            .function
                            .bridge
                            .ok_or_else(|| format!("{} is not a bridge", short_name(*b)))?;
                        (b.segment, buses.secondary, 0)
                    }
                };
                let mut news = Vec::new();
                for &i in &moving {
                    let f = &m.devices[i].function;
                    if f.bridge.is_some() {
                        return Err(format!(
                            "{} is a bridge: moving it would move the buses below it",
                            short_name(f.bdf)
                        ));
                    }
                    if f.sriov.is_some_and(|s| s.vf_enable && s.num_vfs > 0) {
                        return Err(format!(
                            "{} has virtual functions enabled; move a function without them",
                            short_name(f.bdf)
                        ));
                    }
                    let new = Bdf::new(seg, bus, dev, f.bdf.func()).expect("valid parts");
                    news.push((i, new));
                }
                for &(i, new) in &news {
                    let taken = m
                        .devices
                        .iter()
                        .enumerate()
                        .any(|(j, d)| d.function.bdf == new && !moving.contains(&j));
                    if taken {
                        return Err(format!("{} is taken", short_name(new)));
                    }
                    let old = m.devices[i].function.bdf;
                    let mut f = Function::parse(new, &m.devices[i].function.config)
                        .map_err(|e| e.to_string())?;
                    f.reconstructed = m.devices[i].function.reconstructed;
                    f.multifunction = m.devices[i].function.multifunction;
                    m.devices[i].function = f;
                    let original = renamed.remove(&old).unwrap_or(old);
                    renamed.insert(new, original);
                }
            }
        }
    }
    Ok(Applied {
        machine: m,
        platform: p,
        renamed,
    })
}

/// How a group fared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fate {
    /// The same devices.
    Unchanged,
    /// Its devices are now in several groups.
    Split,
    /// Its devices are now in a group with others.
    Merged,
    /// Both.
    Regrouped,
    /// Its devices no longer have a group.
    Gone,
}

/// One group before, and where its devices are after.
#[derive(Debug, Serialize)]
pub struct Row {
    /// The group before; in JSON `{group, devices}`.
    #[serde(serialize_with = "side_json")]
    pub before: (usize, Vec<String>),
    /// What happened.
    pub fate: Fate,
    /// The groups after that hold its devices (addresses after); in JSON
    /// `{group, devices}` objects.
    #[serde(serialize_with = "sides_json")]
    pub after: Vec<(usize, Vec<String>)>,
}

/// One side of a row in JSON: the group and its devices' full addresses.
#[derive(Serialize)]
struct JsonSide {
    group: usize,
    devices: Vec<String>,
}

impl JsonSide {
    fn of((group, devices): &(usize, Vec<String>)) -> JsonSide {
        JsonSide {
            group: *group,
            devices: devices
                .iter()
                .map(|a| {
                    a.parse::<Bdf>()
                        .map_or_else(|_| a.clone(), |b| b.to_string())
                })
                .collect(),
        }
    }
}

fn side_json<S: serde::Serializer>(v: &(usize, Vec<String>), s: S) -> Result<S::Ok, S::Error> {
    JsonSide::of(v).serialize(s)
}

fn sides_json<S: serde::Serializer>(v: &[(usize, Vec<String>)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(JsonSide::of))
}

/// Compares the groups of `before` and `after`.
pub fn rows(before: &Analysis, after: &Analysis, renamed: &BTreeMap<Bdf, Bdf>) -> Vec<Row> {
    let old_of = |b: Bdf| renamed.get(&b).copied().unwrap_or(b);
    // Group after of each device, by its address before.
    let mut after_of: BTreeMap<Bdf, usize> = BTreeMap::new();
    let mut after_members: BTreeMap<usize, Vec<Bdf>> = BTreeMap::new();
    for (g, m) in after.groups.members.iter().enumerate() {
        for &i in m {
            let b = after.topology.functions()[i].bdf;
            after_of.insert(old_of(b), g);
            after_members.entry(g).or_default().push(b);
        }
    }
    let mut before_of: BTreeMap<Bdf, usize> = BTreeMap::new();
    for (g, m) in before.groups.members.iter().enumerate() {
        for &i in m {
            before_of.insert(before.topology.functions()[i].bdf, g);
        }
    }
    let names = |v: &[Bdf]| -> Vec<String> {
        let mut v = v.to_vec();
        v.sort();
        v.into_iter().map(short_name).collect()
    };
    let mut out = Vec::new();
    for (g, m) in before.groups.members.iter().enumerate() {
        let devs: Vec<Bdf> = m
            .iter()
            .map(|&i| before.topology.functions()[i].bdf)
            .collect();
        let targets: BTreeSet<usize> = devs
            .iter()
            .filter_map(|b| after_of.get(b).copied())
            .collect();
        let merged = targets.iter().any(|t| {
            after_members[t]
                .iter()
                .any(|&b| before_of.get(&old_of(b)) != Some(&g))
        });
        let fate = match (targets.len(), merged) {
            (0, _) => Fate::Gone,
            (1, false) => {
                let t = *targets.first().expect("one");
                if after_members[&t].len() == devs.len() {
                    Fate::Unchanged
                } else {
                    Fate::Split
                }
            }
            (1, true) => Fate::Merged,
            (_, false) => Fate::Split,
            (_, true) => Fate::Regrouped,
        };
        out.push(Row {
            before: (g, names(&devs)),
            fate,
            after: targets
                .iter()
                .map(|&t| (t, names(&after_members[&t])))
                .collect(),
        });
    }
    out
}

/// The rows side by side: changed groups in full, then a count of the
/// unchanged ones.
pub fn render(title: &str, rows: &[Row]) -> String {
    let cell = |(g, devs): &(usize, Vec<String>)| format!("{g:>3}: {}", devs.join(" "));
    let width = rows
        .iter()
        .filter(|r| r.fate != Fate::Unchanged)
        .map(|r| cell(&r.before).len())
        .max()
        .unwrap_or(20)
        .clamp(20, 60);
    let mut s = format!("== what if: {title}\n");
    let _ = writeln!(s, "  {:<width$}  {:<9}  after", "before", "");
    let mut unchanged = 0;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in rows {
        if r.fate == Fate::Unchanged {
            unchanged += 1;
            continue;
        }
        let mark = match r.fate {
            Fate::Split => "split",
            Fate::Merged => "merged",
            Fate::Regrouped => "regrouped",
            Fate::Gone => "no group",
            Fate::Unchanged => "",
        };
        *counts.entry(mark).or_default() += 1;
        let left = cell(&r.before);
        let mut afters = r.after.iter();
        let first = afters.next().map(cell).unwrap_or_default();
        let _ = writeln!(s, "  {left:<width$}  {mark:<9}  {first}");
        for a in afters {
            let _ = writeln!(s, "  {:<width$}  {:<9}  {}", "", "", cell(a));
        }
    }
    let mut summary: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    summary.push(format!("{unchanged} unchanged"));
    let _ = writeln!(s, "  ({} of the groups before)", summary.join(", "));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_parse_or_say_which_forms_exist() {
        assert_eq!(
            Change::parse("pcie_acs_override=downstream").unwrap(),
            Change::Param("pcie_acs_override=downstream".into())
        );
        assert!(matches!(
            Change::parse("move 01:00 to 06:00").unwrap(),
            Change::Move {
                from: Slot { func: None, .. },
                to: Target::Slot(_)
            }
        ));
        assert!(matches!(
            Change::parse("move 01:00.1 to 00:1d.0").unwrap(),
            Change::Move {
                from: Slot { func: Some(1), .. },
                to: Target::Below(_)
            }
        ));
        assert!(matches!(
            Change::parse("enable ACS on 00:1c.0").unwrap(),
            Change::Acs { enable: true, .. }
        ));
        assert!(Change::parse("pcie_acs_override=sideways").is_err());
        assert!(Change::parse("frobnicate")
            .unwrap_err()
            .contains("move DEVICE to SLOT"));
        assert!(Change::parse("move zz to 01:00").is_err());
    }
}
