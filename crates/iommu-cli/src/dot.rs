//! `--dot` and `--svg`: the PCI tree as Graphviz DOT, each group a
//! coloured cluster, devices the IOMMU does not cover outside any, and
//! every port or multifunction device that lacks ACS drawn in red.

use crate::Failure;
use iommu_pci::{short_name, AcsVerdict, Analysis, Machine, PortType};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// Pastel fills that tell neighbouring clusters apart.
const COLOURS: [&str; 12] = [
    "#a6cee3", "#b2df8a", "#fb9a99", "#fdbf6f", "#cab2d6", "#ffff99", "#8dd3c7", "#fccde5",
    "#d9d9d9", "#bebada", "#ccebc5", "#ffed6f",
];

fn id(b: iommu_pci::Bdf) -> String {
    format!("\"{b}\"")
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Whether `i` is a device whose missing ACS matters: a port, or a
/// function of a multifunction device, that is not isolated.
fn lacks_acs(a: &Analysis, i: usize) -> bool {
    let f = &a.topology.functions()[i];
    let port = matches!(
        f.port_type(),
        Some(PortType::RootPort | PortType::DownstreamPort)
    );
    let matters = port || a.topology.multifunction(i);
    matters && !a.acs[i].enabled() && !matches!(a.acs[i], AcsVerdict::ExcludedPortType(_))
}

/// The DOT text of the machine's tree and groups.
pub fn render(a: &Analysis, machine: &Machine) -> String {
    let topo = &a.topology;
    let mut s = String::from("digraph pci {\n  rankdir=LR;\n  node [shape=box, style=filled, fillcolor=white, fontname=\"monospace\", fontsize=10];\n");
    let label = |i: usize| {
        let f = &topo.functions()[i];
        let kind = match f.port_type() {
            Some(p) => p.to_string(),
            None if f.bridge.is_some() => "PCI bridge".into(),
            None => "conventional PCI".into(),
        };
        let desc = machine.describe(f.bdf);
        let short: String = desc.chars().take(48).collect();
        let mut l = format!("{}\\n{kind}\\n{}", short_name(f.bdf), escape(&short));
        if lacks_acs(a, i) {
            l.push_str("\\nno ACS");
        }
        l
    };
    let node = |s: &mut String, i: usize, indent: &str| {
        let f = &topo.functions()[i];
        let extra = if lacks_acs(a, i) {
            ", color=red, fontcolor=red, penwidth=2"
        } else {
            ""
        };
        let _ = writeln!(s, "{indent}{} [label=\"{}\"{extra}];", id(f.bdf), label(i));
    };
    for (g, members) in a.groups.members.iter().enumerate() {
        let _ = writeln!(
            s,
            "  subgraph cluster_{g} {{\n    label=\"group {g}\";\n    style=filled;\n    fillcolor=\"{}\";",
            COLOURS[g % COLOURS.len()]
        );
        for &i in members {
            node(&mut s, i, "    ");
        }
        s.push_str("  }\n");
    }
    for i in 0..topo.len() {
        if a.groups.of[i].is_none() {
            node(&mut s, i, "  ");
            let _ = writeln!(
                s,
                "  {} [style=dashed, fillcolor=white];",
                id(topo.functions()[i].bdf)
            );
        }
    }
    let mut roots = std::collections::BTreeSet::new();
    for i in 0..topo.len() {
        let f = &topo.functions()[i];
        let parent = topo.upstream(topo.physfn(i).unwrap_or(i));
        match (topo.physfn(i), parent) {
            (Some(pf), _) => {
                let _ = writeln!(
                    s,
                    "  {} -> {} [style=dotted, label=\"VF\"];",
                    id(topo.functions()[pf].bdf),
                    id(f.bdf)
                );
            }
            (None, Some(up)) => {
                let _ = writeln!(s, "  {} -> {};", id(topo.functions()[up].bdf), id(f.bdf));
            }
            (None, None) => {
                let root = format!("\"pci{:04x}:{:02x}\"", f.bdf.segment, f.bdf.bus);
                if roots.insert(root.clone()) {
                    let _ = writeln!(
                        s,
                        "  {root} [shape=ellipse, label=\"root bus {:04x}:{:02x}\"];",
                        f.bdf.segment, f.bdf.bus
                    );
                }
                let _ = writeln!(s, "  {root} -> {};", id(f.bdf));
            }
        }
    }
    s.push_str("}\n");
    s
}

/// Renders `dot_text` to an SVG file with Graphviz's `dot`.
pub fn svg(dot_text: &str, path: &Path) -> Result<(), Failure> {
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .arg("-o")
        .arg(path)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Failure::Env(format!(
                "running Graphviz's `dot` ({e}): install graphviz to render --svg"
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(dot_text.as_bytes())
            .map_err(|e| Failure::Env(format!("writing to dot: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Failure::Env(format!("waiting for dot: {e}")))?;
    if !out.status.success() {
        return Err(Failure::Env(format!(
            "dot failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
