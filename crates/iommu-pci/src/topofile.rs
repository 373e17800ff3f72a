//! A platform described by hand: the project's topology file format.
//!
//! One function per line, `#` starts a comment:
//!
//! ```text
//! # address   kind            options
//! 00:00.0     host-bridge
//! 00:1c.0     root-port       buses=01-01 acs=none multifunction
//! 00:1c.4     root-port       buses=02-02 acs=SV,RR,CR,UF
//! 01:00.0     endpoint        id=10de:1b80 class=0300 multifunction group=3
//! 01:00.1     endpoint        id=10de:10f0 class=0403
//! 02:00.0     endpoint        sriov=4 vf-offset=0x80 vf-stride=1 vf-id=10ed
//! ```
//!
//! Kinds: `host-bridge`, `pci` (a conventional function), `pci-bridge`
//! (a conventional bridge), and the PCI Express port types `endpoint`,
//! `legacy-endpoint`, `rc-endpoint`, `rc-event-collector`, `root-port`,
//! `upstream-port`, `downstream-port`, `pcie-to-pci-bridge`,
//! `pci-to-pcie-bridge`.
//!
//! Options (`key=value`, values in hex where they are registers):
//!
//! | option | meaning |
//! |---|---|
//! | `id=vvvv:dddd` | vendor and device id (default `0de5:0001`, a vendor id no company holds) |
//! | `class=cccc` or `class=ccccpp` | class code (defaults by kind) |
//! | `subsystem=vvvv:dddd`, `rev=rr` | subsystem ids, revision |
//! | `buses=ss-uu` | a bridge's secondary and subordinate bus (hex); `00-00` for a bridge the firmware left unconfigured |
//! | `acs=FLAGS` | an ACS capability implementing and enabling FLAGS (`SV,TB,RR,CR,UF,EC,DT`, or `none` for a capability with nothing) |
//! | `acs-cap=FLAGS acs-ctrl=FLAGS` | the two registers apart |
//! | `multifunction` | the header's multifunction bit |
//! | `ari`, `pcix` | an ARI or a PCI-X capability |
//! | `sriov=N`, `vf-offset=N`, `vf-stride=N`, `vf-id=dddd` | SR-IOV with N VFs enabled; the VFs are made as functions unless listed |
//! | `name="..."` | what `lspci -nn` would print after the address |
//! | `group=N` | the kernel's group, to compare a prediction with |
//! | `not-covered` | the IOMMU does not translate this function |
//! | `alias=dd.f` | the function also issues DMA as `dd.f` on its bus (a firmware or quirk alias; repeatable) |
//! | `xlate-root` | translation starts at this bridge (DMA aliasing stops here) |
//! | `acs-provides=FLAGS` | the function's isolation, declared by hand (overrides its registers) |
//!
//! Every function becomes configuration space bytes, so a hand-made
//! platform is the same model as a dumped machine; [`write_topology`]
//! writes any machine back in this format.

use crate::config::{cap_id, ext_cap_id};
use crate::import::ImportError;
use crate::{AcsFlags, Bdf, ConfigSpace, DeviceQuirks, Function, Machine, MachineDevice, PortType};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// The vendor id of hand-made functions: below 0x1000, where PCI-SIG
/// assigns none, and in no public vendor list.
pub const SIM_VENDOR: u16 = 0x0de5;

/// A topology file read: the machine and what the platform declares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopologyFile {
    /// The functions.
    pub machine: Machine,
    /// Quirks declared per function (`alias=`, `xlate-root`,
    /// `acs-provides=`).
    pub quirks: BTreeMap<Bdf, DeviceQuirks>,
    /// Functions the IOMMU does not cover (`not-covered`).
    pub not_covered: Vec<Bdf>,
}

fn syntax(line: usize, reason: impl Into<String>) -> ImportError {
    ImportError::Syntax {
        line,
        reason: reason.into(),
    }
}

/// Reads `SV,RR,...` or `none`.
pub fn parse_acs_flags(s: &str) -> Option<AcsFlags> {
    if s == "none" {
        return Some(AcsFlags(0));
    }
    let mut bits = 0;
    for name in s.split(',') {
        bits |= match name {
            "SV" => AcsFlags::SV.0,
            "TB" => AcsFlags::TB.0,
            "RR" => AcsFlags::RR.0,
            "CR" => AcsFlags::CR.0,
            "UF" => AcsFlags::UF.0,
            "EC" => AcsFlags::EC.0,
            "DT" => AcsFlags::DT.0,
            _ => return None,
        };
    }
    Some(AcsFlags(bits))
}

/// Writes flags as `SV,RR,...` or `none`.
pub fn acs_flags_text(f: AcsFlags) -> String {
    const N: [(AcsFlags, &str); 7] = [
        (AcsFlags::SV, "SV"),
        (AcsFlags::TB, "TB"),
        (AcsFlags::RR, "RR"),
        (AcsFlags::CR, "CR"),
        (AcsFlags::UF, "UF"),
        (AcsFlags::EC, "EC"),
        (AcsFlags::DT, "DT"),
    ];
    let v: Vec<&str> = N
        .iter()
        .filter(|(fl, _)| f.contains(*fl))
        .map(|&(_, n)| n)
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(",")
    }
}

/// What one line describes.
#[derive(Clone, Debug, Default)]
struct Spec {
    bdf: Option<Bdf>,
    /// PCI Express port type, `None` for conventional.
    port: Option<PortType>,
    bridge: bool,
    class: u32,
    vendor: u16,
    device: u16,
    subsystem: (u16, u16),
    revision: u8,
    buses: Option<(u8, u8)>,
    acs: Option<(AcsFlags, AcsFlags)>,
    multifunction: bool,
    ari: bool,
    pcix: bool,
    sriov: Option<(u16, u16, u16, u16)>,
    name: Option<String>,
    group: Option<u32>,
}

impl Spec {
    /// The function's configuration space.
    fn build(&self, bdf: Bdf) -> ConfigSpace {
        let mut c = ConfigSpace::new_zeroed(if self.port.is_some() { 4096 } else { 256 });
        c.write_u16(0x00, self.vendor);
        c.write_u16(0x02, self.device);
        c.write_u8(0x08, self.revision);
        c.write_u8(0x09, self.class as u8);
        c.write_u16(0x0a, (self.class >> 8) as u16);
        c.write_u8(
            0x0e,
            u8::from(self.bridge) | if self.multifunction { 0x80 } else { 0 },
        );
        if let Some((sec, sub)) = self.buses {
            c.write_u8(0x18, bdf.bus);
            c.write_u8(0x19, sec);
            c.write_u8(0x1a, sub);
        } else if !self.bridge {
            c.write_u16(0x2c, self.subsystem.0);
            c.write_u16(0x2e, self.subsystem.1);
        }
        if let Some(port) = self.port {
            c.write_u16(0x06, 1 << 4);
            c.write_u8(0x34, 0x40);
            c.write_u8(0x40, cap_id::EXP);
            c.write_u16(0x42, 2 | u16::from(port.bits()) << 4);
            // The extended list starts at 0x100; each capability gets a
            // 0x40-byte slot (SR-IOV's size) in order.
            let mut ext: Vec<(u16, u16)> = Vec::new();
            for (present, id) in [
                (self.acs.is_some(), ext_cap_id::ACS),
                (self.ari, ext_cap_id::ARI),
                (self.sriov.is_some(), ext_cap_id::SRIOV),
            ] {
                if present {
                    ext.push((id, 0x100 + 0x40 * ext.len() as u16));
                }
            }
            let at = |id: u16| ext.iter().find(|e| e.0 == id).map_or(0, |e| e.1);
            for (k, &(id, off)) in ext.iter().enumerate() {
                let next = ext.get(k + 1).map_or(0, |n| n.1);
                c.write_u32(off, u32::from(id) | 1 << 16 | u32::from(next) << 20);
            }
            if let Some((cap, ctrl)) = self.acs {
                let o = at(ext_cap_id::ACS);
                c.write_u16(o + 4, cap.0);
                c.write_u16(o + 6, ctrl.0);
            }
            if let Some((n, off, stride, dev)) = self.sriov {
                let o = at(ext_cap_id::SRIOV);
                c.write_u16(o + 0x08, 1);
                c.write_u16(o + 0x0c, n);
                c.write_u16(o + 0x0e, n);
                c.write_u16(o + 0x10, n);
                c.write_u16(o + 0x14, off);
                c.write_u16(o + 0x16, stride);
                c.write_u16(o + 0x1a, dev);
            }
        } else if self.pcix {
            c.write_u16(0x06, 1 << 4);
            c.write_u8(0x34, 0x40);
            c.write_u8(0x40, cap_id::PCIX);
        }
        c
    }
}

fn kind(word: &str) -> Option<(Option<PortType>, bool, u32)> {
    Some(match word {
        "host-bridge" => (None, false, 0x060000),
        "pci" => (None, false, 0xff0000),
        "pci-bridge" => (None, true, 0x060400),
        "endpoint" => (Some(PortType::Endpoint), false, 0xff0000),
        "legacy-endpoint" => (Some(PortType::LegacyEndpoint), false, 0xff0000),
        "rc-endpoint" => (Some(PortType::RcIntegratedEndpoint), false, 0xff0000),
        "rc-event-collector" => (Some(PortType::RcEventCollector), false, 0x080700),
        "root-port" => (Some(PortType::RootPort), true, 0x060400),
        "upstream-port" => (Some(PortType::UpstreamPort), true, 0x060400),
        "downstream-port" => (Some(PortType::DownstreamPort), true, 0x060400),
        "pcie-to-pci-bridge" => (Some(PortType::PcieToPciBridge), true, 0x060400),
        "pci-to-pcie-bridge" => (Some(PortType::PciToPcieBridge), true, 0x060400),
        _ => return None,
    })
}

fn kind_word(f: &Function) -> &'static str {
    match (
        f.port_type(),
        f.bridge.is_some() || f.header_type != crate::HeaderType::Normal,
    ) {
        (None, true) => "pci-bridge",
        (None, false) if f.class >> 8 == 0x0600 => "host-bridge",
        (None, false) => "pci",
        (Some(PortType::LegacyEndpoint), _) => "legacy-endpoint",
        (Some(PortType::RcIntegratedEndpoint), _) => "rc-endpoint",
        (Some(PortType::RcEventCollector), _) => "rc-event-collector",
        (Some(PortType::RootPort), _) => "root-port",
        (Some(PortType::UpstreamPort), _) => "upstream-port",
        (Some(PortType::DownstreamPort), _) => "downstream-port",
        (Some(PortType::PcieToPciBridge), _) => "pcie-to-pci-bridge",
        (Some(PortType::PciToPcieBridge), _) => "pci-to-pcie-bridge",
        (Some(_), _) => "endpoint",
    }
}

/// Splits a line into words, keeping `name="two words"` together.
fn words(l: &str, line: usize) -> Result<Vec<String>, ImportError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in l.chars() {
        match ch {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(core::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if quoted {
        return Err(syntax(line, "a quoted value is not closed"));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

fn hex<T: TryFrom<u32>>(v: &str, line: usize, what: &str) -> Result<T, ImportError> {
    let t = v.strip_prefix("0x").unwrap_or(v);
    let n = if t.is_empty() || t.len() > 8 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        None
    } else {
        u32::from_str_radix(t, 16).ok()
    };
    n.and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| syntax(line, format!("`{v}` is not a valid {what} (hex)")))
}

fn id_pair(v: &str, line: usize, what: &str) -> Result<(u16, u16), ImportError> {
    let (a, b) = v
        .split_once(':')
        .ok_or_else(|| syntax(line, format!("{what} is vvvv:dddd")))?;
    Ok((hex(a, line, what)?, hex(b, line, what)?))
}

/// Reads a topology file.
///
/// # Errors
/// An [`ImportError`] naming the line: an unknown kind or option, a bad
/// value, an address given twice, a bridge kind without `buses=`, or
/// registers that do not make a function.
pub fn parse_topology(text: &str) -> Result<TopologyFile, ImportError> {
    let mut out = TopologyFile::default();
    let mut specs: Vec<(Spec, usize)> = Vec::new();
    let mut seen: BTreeMap<Bdf, usize> = BTreeMap::new();
    for (k, raw) in text.lines().enumerate() {
        let line = k + 1;
        let l = raw.split('#').next().unwrap_or("");
        let w = words(l, line)?;
        if w.is_empty() {
            continue;
        }
        if specs.len() >= crate::MAX_FUNCTIONS {
            return Err(ImportError::TooMany {
                limit: crate::MAX_FUNCTIONS,
            });
        }
        let bdf: Bdf = w[0]
            .parse()
            .map_err(|_| syntax(line, format!("`{}` is not an address (bb:dd.f)", w[0])))?;
        if let Some(first) = seen.insert(bdf, line) {
            return Err(syntax(
                line,
                format!("{bdf} is already described on line {first}"),
            ));
        }
        let kw = w
            .get(1)
            .ok_or_else(|| syntax(line, "expected a kind after the address"))?;
        let (port, bridge, class) =
            kind(kw).ok_or_else(|| syntax(line, format!("unknown kind `{kw}`")))?;
        let mut s = Spec {
            bdf: Some(bdf),
            port,
            bridge,
            class,
            vendor: SIM_VENDOR,
            device: 0x0001,
            ..Spec::default()
        };
        let mut q = DeviceQuirks::default();
        let (mut acs_cap, mut acs_ctrl) = (None, None);
        let (mut vf_offset, mut vf_stride, mut vf_id) = (1u16, 1u16, 0x0001u16);
        let mut sriov_n = None;
        for opt in &w[2..] {
            let (key, val) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt.as_str(), None),
            };
            let need = || val.ok_or_else(|| syntax(line, format!("`{key}` needs a value")));
            let flags = |v: &str| {
                parse_acs_flags(v).ok_or_else(|| {
                    syntax(
                        line,
                        format!("`{v}`: ACS flags are SV,TB,RR,CR,UF,EC,DT or none"),
                    )
                })
            };
            match key {
                "id" => (s.vendor, s.device) = id_pair(need()?, line, "id")?,
                "subsystem" => s.subsystem = id_pair(need()?, line, "subsystem")?,
                "class" => {
                    let v = need()?;
                    let c: u32 = hex(v, line, "class")?;
                    s.class = match v.trim_start_matches("0x").len() {
                        4 => c << 8,
                        6 => c,
                        _ => return Err(syntax(line, "class is cccc or ccccpp")),
                    };
                }
                "rev" => s.revision = hex(need()?, line, "revision")?,
                "buses" => {
                    let v = need()?;
                    let (a, b) = v
                        .split_once('-')
                        .ok_or_else(|| syntax(line, "buses is ss-uu"))?;
                    s.buses = Some((hex(a, line, "bus")?, hex(b, line, "bus")?));
                }
                "acs" => {
                    let f = flags(need()?)?;
                    (acs_cap, acs_ctrl) = (Some(f), Some(f));
                }
                "acs-cap" => acs_cap = Some(flags(need()?)?),
                "acs-ctrl" => acs_ctrl = Some(flags(need()?)?),
                "multifunction" => s.multifunction = true,
                "ari" => s.ari = true,
                "pcix" => s.pcix = true,
                "sriov" => {
                    let n: u16 = need()?
                        .parse()
                        .map_err(|_| syntax(line, "sriov is a decimal VF count"))?;
                    sriov_n = Some(n);
                }
                "vf-offset" | "vf-stride" => {
                    let v = need()?;
                    let n = match v.strip_prefix("0x") {
                        Some(h) => u16::from_str_radix(h, 16).ok(),
                        None => v.parse().ok(),
                    }
                    .ok_or_else(|| syntax(line, format!("`{key}` is a 16-bit number")))?;
                    if key == "vf-offset" {
                        vf_offset = n;
                    } else {
                        vf_stride = n;
                    }
                }
                "vf-id" => vf_id = hex(need()?, line, "VF device id")?,
                "name" => s.name = Some(need()?.to_string()),
                "group" => {
                    s.group = Some(
                        need()?
                            .parse()
                            .map_err(|_| syntax(line, "group is a decimal number"))?,
                    )
                }
                "not-covered" => out.not_covered.push(bdf),
                "alias" => {
                    let v = need()?;
                    let (d, f) = v
                        .split_once('.')
                        .ok_or_else(|| syntax(line, "alias is dd.f"))?;
                    let d: u8 = hex(d, line, "device number")?;
                    let f: u8 = hex(f, line, "function number")?;
                    if d >= 32 || f >= 8 {
                        return Err(syntax(line, "alias is dd.f with dd below 20 and f below 8"));
                    }
                    q.dma_aliases.push(d << 3 | f);
                }
                "xlate-root" => q.bridge_xlate_root = true,
                "acs-provides" => q.acs_provides = Some(flags(need()?)?),
                _ => return Err(syntax(line, format!("unknown option `{key}`"))),
            }
        }
        match (acs_cap, acs_ctrl) {
            (None, None) => {}
            (Some(c), Some(t)) => s.acs = Some((c, t)),
            (Some(c), None) => s.acs = Some((c, AcsFlags(0))),
            (None, Some(t)) => s.acs = Some((t, t)),
        }
        if s.port.is_none() && (s.acs.is_some() || s.ari || sriov_n.is_some()) {
            return Err(syntax(
                line,
                "ACS, ARI and SR-IOV are PCI Express capabilities; this kind is conventional PCI",
            ));
        }
        if s.port.is_some() && s.pcix {
            return Err(syntax(line, "pcix goes with a conventional kind"));
        }
        if s.bridge && s.buses.is_none() {
            return Err(syntax(line, "a bridge needs buses=ss-uu"));
        }
        if !s.bridge && s.buses.is_some() {
            return Err(syntax(line, "buses= goes with a bridge kind"));
        }
        s.sriov = sriov_n.map(|n| (n, vf_offset, vf_stride, vf_id));
        if q != DeviceQuirks::default() {
            out.quirks.insert(bdf, q);
        }
        specs.push((s, line));
    }
    // Virtual functions not listed are made from their PF.
    let mut vfs: Vec<(Spec, usize)> = Vec::new();
    for (s, line) in &specs {
        let Some((n, off, stride, dev)) = s.sriov else {
            continue;
        };
        let pf = s.bdf.expect("set");
        for k in 0..n {
            let rid =
                u32::from(pf.requester_id()) + u32::from(off) + u32::from(k) * u32::from(stride);
            let Ok(rid) = u16::try_from(rid) else {
                return Err(syntax(*line, "a VF's requester id is past ff:1f.7"));
            };
            let bdf = Bdf::from_requester_id(pf.segment, rid);
            if seen.contains_key(&bdf) {
                continue;
            }
            if specs.len() + vfs.len() >= crate::MAX_FUNCTIONS {
                return Err(ImportError::TooMany {
                    limit: crate::MAX_FUNCTIONS,
                });
            }
            seen.insert(bdf, *line);
            vfs.push((
                Spec {
                    bdf: Some(bdf),
                    port: Some(PortType::Endpoint),
                    class: s.class,
                    vendor: s.vendor,
                    device: dev,
                    ..Spec::default()
                },
                *line,
            ));
        }
    }
    specs.extend(vfs);
    for (s, line) in specs {
        let bdf = s.bdf.expect("set");
        let mut c = s.build(bdf);
        crate::acs::fill_unlisted_registers(&mut c, bdf, s.vendor, s.class);
        let mut function =
            Function::parse(bdf, &c).map_err(|error| ImportError::Config { line, error })?;
        function.reconstructed = true;
        out.machine.devices.push(MachineDevice {
            function,
            description: s.name,
            kernel_group: s.group,
            driver: None,
            line: Some(line),
        });
    }
    Ok(out)
}

/// Writes a machine in the topology format, so that a dumped machine can
/// be edited by hand and read back with [`parse_topology`] into the same
/// grouping-relevant registers.
pub fn write_topology(machine: &Machine) -> String {
    use core::fmt::Write as _;
    let mut s = String::from("# address kind options (see the iommu-pci topology format)\n");
    for d in &machine.devices {
        let f = &d.function;
        let _ = write!(s, "{} {}", f.bdf, kind_word(f));
        let _ = write!(s, " id={:04x}:{:04x}", f.vendor, f.device);
        let _ = write!(s, " class={:06x}", f.class);
        if f.revision != 0 {
            let _ = write!(s, " rev={:02x}", f.revision);
        }
        if f.subsystem != (0, 0) {
            let _ = write!(s, " subsystem={:04x}:{:04x}", f.subsystem.0, f.subsystem.1);
        }
        if let Some(b) = f.bridge {
            let _ = write!(s, " buses={:02x}-{:02x}", b.secondary, b.subordinate);
        } else if f.header_type != crate::HeaderType::Normal {
            // A bridge the firmware left without bus numbers.
            s.push_str(" buses=00-00");
        }
        if let Some(acs) = f.acs {
            let _ = write!(
                s,
                " acs-cap={} acs-ctrl={}",
                acs_flags_text(acs.cap),
                acs_flags_text(acs.ctrl)
            );
        }
        if f.multifunction {
            s.push_str(" multifunction");
        }
        if f.ari.is_some() {
            s.push_str(" ari");
        }
        if f.pcix.is_some() && !f.is_pcie() {
            s.push_str(" pcix");
        }
        if let Some(iov) = f.sriov.filter(|i| i.vf_enable && i.num_vfs > 0) {
            let _ = write!(
                s,
                " sriov={} vf-offset={} vf-stride={} vf-id={:04x}",
                iov.num_vfs, iov.first_vf_offset, iov.vf_stride, iov.vf_device
            );
        }
        if let Some(g) = d.kernel_group {
            let _ = write!(s, " group={g}");
        }
        if let Some(name) = &d.description {
            let clean: String = name.chars().filter(|&c| c != '"' && c != '#').collect();
            let _ = write!(s, " name=\"{clean}\"");
        }
        s.push('\n');
    }
    s
}
