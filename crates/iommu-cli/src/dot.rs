//! `--dot` and `--svg`: the PCI tree as Graphviz DOT, each group a
//! coloured cluster (numbered as the kernel numbered it, where the input
//! says), devices the IOMMU does not cover outside any, a legend, and in
//! red only the ports and functions whose missing ACS is what makes their
//! group shared.

use crate::Failure;
use iommu_pci::{short_name, Analysis, Machine, Rule};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// Pastel fills that tell neighbouring clusters apart.
const COLOURS: [&str; 12] = [
    "#a6cee3", "#b2df8a", "#fb9a99", "#fdbf6f", "#cab2d6", "#ffff99", "#8dd3c7", "#fccde5",
    "#d9d9d9", "#bebada", "#ccebc5", "#ffed6f",
];

/// Where a description line is wrapped: names stay whole, `[vvvv:dddd]`
/// and the revision are never cut.
const WRAP: usize = 40;

fn id(b: iommu_pci::Bdf) -> String {
    format!("\"{b}\"")
}

/// The node of the root bus `b` is on.
fn root_id(b: iommu_pci::Bdf) -> String {
    format!("\"pci{:04x}:{:02x}\"", b.segment, b.bus)
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `text` in lines of at most [`WRAP`] characters, broken between words
/// (a word longer than a line gets a line of its own).
fn wrap(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > WRAP {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// The functions whose missing ACS makes a group shared: the bridge a
/// no-ACS-path reason names, the functions of a multifunction device
/// grouped for lack of ACS.
fn acs_culprits(a: &Analysis) -> BTreeSet<iommu_pci::Bdf> {
    let mut out = BTreeSet::new();
    for g in 0..a.groups.members.len() {
        for r in a.explain_group(g) {
            match r.rule {
                Rule::NoAcsPath => {
                    out.insert(r.device);
                }
                Rule::MultifunctionWithoutAcs => {
                    out.insert(r.device);
                    out.extend(r.members.iter().copied());
                }
                _ => {}
            }
        }
    }
    out
}

/// The DOT text of the machine's tree and groups.
pub fn render(a: &Analysis, machine: &Machine) -> String {
    let topo = &a.topology;
    let culprits = acs_culprits(a);
    let mut s = String::from("digraph pci {\n  rankdir=LR;\n");
    s.push_str(
        "  node [shape=box, style=filled, fillcolor=white, fontname=\"monospace\", fontsize=10];\n",
    );
    let label = |i: usize| {
        let f = &topo.functions()[i];
        let kind = match f.port_type() {
            Some(p) => p.to_string(),
            None if f.bridge.is_some() => "PCI bridge".into(),
            None if f.bdf.bus == 0 || f.class >> 8 == 0x0600 => "integrated".into(),
            None => "conventional PCI".into(),
        };
        let mut l = format!("{}  ({kind})", short_name(f.bdf));
        for line in wrap(&machine.describe(f.bdf)) {
            let _ = write!(l, "\\n{}", escape(&line));
        }
        if let Some(d) = machine.device(f.bdf).and_then(|d| d.driver.as_deref()) {
            let _ = write!(l, "\\ndriver: {}", escape(d));
        }
        if culprits.contains(&f.bdf) {
            l.push_str("\\nno ACS: shares its group");
        }
        l
    };
    let node = |s: &mut String, i: usize, indent: &str| {
        let f = &topo.functions()[i];
        let extra = if culprits.contains(&f.bdf) {
            ", color=red, fontcolor=red, penwidth=2"
        } else {
            ""
        };
        let _ = writeln!(s, "{indent}{} [label=\"{}\"{extra}];", id(f.bdf), label(i));
    };
    for (g, members) in a.groups.members.iter().enumerate() {
        // The kernel's number when every member has the same one.
        let kernel: BTreeSet<Option<u32>> = members
            .iter()
            .map(|&i| {
                machine
                    .device(topo.functions()[i].bdf)
                    .and_then(|d| d.kernel_group)
            })
            .collect();
        let title = match kernel.iter().next() {
            Some(Some(k)) if kernel.len() == 1 => format!("IOMMU group {k}"),
            _ if kernel.iter().any(Option::is_some) => {
                format!("IOMMU group {g} (predicted; the kernel differs)")
            }
            _ => format!("IOMMU group {g}"),
        };
        let _ = writeln!(
            s,
            "  subgraph cluster_{g} {{\n    label=\"{title}\";\n    style=filled;\n    fillcolor=\"{}\";",
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
    let mut roots = BTreeSet::new();
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
                let root = root_id(f.bdf);
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
    // Each root bus's tree starts in the column after the previous tree's
    // deepest one (an invisible edge as long as that tree is deep), so the
    // trees stand side by side and a machine of several root buses reads
    // as a wide picture instead of one long strip.
    let mut tree_depth: std::collections::BTreeMap<String, usize> =
        std::collections::BTreeMap::new();
    for i in 0..topo.len() {
        // Up to the root bus (through a VF's PF), counting the columns.
        let (mut top, mut depth) = (i, 1);
        while let Some(u) = topo.physfn(top).or_else(|| topo.upstream(top)) {
            top = u;
            depth += 1;
        }
        let d = tree_depth
            .entry(root_id(topo.functions()[top].bdf))
            .or_default();
        *d = (*d).max(depth);
    }
    let trees: Vec<(&String, &usize)> = tree_depth.iter().collect();
    for w in trees.windows(2) {
        let _ = writeln!(
            s,
            "  {} -> {} [style=invis, minlen={}];",
            w[0].0,
            w[1].0,
            w[0].1 + 1
        );
    }
    s.push_str(LEGEND);
    s.push_str("}\n");
    s
}

/// What the picture's marks mean.
const LEGEND: &str = "  subgraph cluster_legend {\n    label=\"legend\";\n    style=rounded;\n    fontname=\"monospace\";\n    legend_group [label=\"a coloured box: one IOMMU group\", fillcolor=\"#d9d9d9\"];\n    legend_acs [label=\"red: missing ACS is what\\nmakes this group shared\", color=red, fontcolor=red, penwidth=2];\n    legend_none [label=\"dashed: no IOMMU group\\n(the IOMMU does not cover it)\", style=dashed];\n    legend_vf [label=\"dotted arrow: PF to its VF\", shape=plaintext, fillcolor=none];\n    legend_group -> legend_acs -> legend_none -> legend_vf [style=invis];\n  }\n";

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
