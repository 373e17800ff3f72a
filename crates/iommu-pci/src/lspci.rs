//! Real machines in: `lspci -vvvnn` text (as root), rebuilt into
//! configuration space.
//!
//! A listing shows, per function, a header line
//! (`bb:dd.f Class [cccc]: Vendor Device [vvvv:dddd] (rev rr)`, the
//! address with `-D` its segment and with `-P`/`-PP` the bridges above it,
//! see [`SlotPath`]) and indented lines. What grouping needs is read and written back into the
//! registers it came from, so a listing becomes the same model as a hex
//! dump: the ids, class and revision; `Bus: primary=.. secondary=..
//! subordinate=..` for bridges; the capability list with the PCI Express
//! capability's version and port type (`Express (v2) Root Port`), PCI-X,
//! and the extended ACS (`ACSCap:`/`ACSCtl:`), ARI (`ARICap:`) and SR-IOV
//! (`IOVCtl:`, `Number of VFs`, `VF offset`) capabilities. Other
//! capabilities keep their place in the list with empty registers; lines
//! grouping does not need are skipped, so a listing cut down to the lines
//! above reads the same as a full one. `IOMMU group: N` (pciutils 3.7 and
//! later) is kept beside the function: the kernel's answer, for
//! comparing.
//!
//! The header's multifunction bit is not in a listing; function 0 gets it
//! when other functions of its slot are listed (Linux would not have
//! found them otherwise).

use crate::config::{cap_id, ext_cap_id};
use crate::import::ImportError;
use crate::{Bdf, ConfigSpace, Function, SlotPath};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// A function as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedFunction {
    /// Its function, with configuration space rebuilt from the listing
    /// ([`Function::reconstructed`] set).
    pub function: Function,
    /// What `lspci -nn` prints after the address: class, names, ids and
    /// revision.
    pub description: String,
    /// The kernel's `IOMMU group: N`, if the listing has one.
    pub iommu_group: Option<u32>,
    /// The driver bound to it (`Kernel driver in use:`), if the listing
    /// says.
    pub driver: Option<String>,
    /// The line of its header.
    pub line: usize,
}

/// What a listing says of one capability.
#[derive(Clone, Debug, Default)]
struct Cap {
    offset: u16,
    /// Standard id (`u8`) or extended id.
    id: u16,
    extended: bool,
    version: u8,
    /// PCI Express flags register (version, port type, slot).
    exp_flags: u16,
    /// ACS capability and control, as listed.
    acs_cap: Option<u16>,
    acs_ctrl: Option<u16>,
    /// ARI next function.
    ari_next: Option<u8>,
    /// SR-IOV: control, initial, total, number, offset, stride, device id.
    iov_ctrl: Option<u16>,
    iov_counts: Option<(u16, u16, u16)>,
    iov_layout: Option<(u16, u16, u16)>,
    line: usize,
}

/// One function being read.
#[derive(Clone, Debug, Default)]
struct Open {
    /// Its address; `None` until a `-P` path is resolved.
    bdf: Option<Bdf>,
    /// An `lspci -P` path whose buses come from the bridges above.
    path: Option<SlotPath>,
    line: usize,
    description: String,
    class: u32,
    vendor: u16,
    device: u16,
    revision: u8,
    subsystem: Option<(u16, u16)>,
    buses: Option<(u8, u8, u8)>,
    iommu_group: Option<u32>,
    driver: Option<String>,
    caps: Vec<Cap>,
}

fn syntax(line: usize, reason: impl Into<String>) -> ImportError {
    ImportError::Syntax {
        line,
        reason: reason.into(),
    }
}

fn hex_u16(s: &str) -> Option<u16> {
    (s.len() == 4 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u16::from_str_radix(s, 16).ok())
        .flatten()
}

/// The last `[vvvv:dddd]` in `s`.
fn last_id_pair(s: &str) -> Option<(u16, u16)> {
    let mut found = None;
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        if let Some(close) = after.find(']') {
            let inner = &after[..close];
            if let Some((a, b)) = inner.split_once(':') {
                if let (Some(a), Some(b)) = (hex_u16(a), hex_u16(b)) {
                    found = Some((a, b));
                }
            }
        }
        rest = after;
    }
    found
}

/// The flag list `Name+ Name- ...` of an `ACSCap:`/`ACSCtl:` line as the
/// register's bits.
fn acs_bits(text: &str, line: usize) -> Result<u16, ImportError> {
    const NAMES: [&str; 7] = [
        "SrcValid",
        "TransBlk",
        "ReqRedir",
        "CmpltRedir",
        "UpstreamFwd",
        "EgressCtrl",
        "DirectTrans",
    ];
    let mut bits = 0u16;
    let mut seen = 0u16;
    for tok in text.split_ascii_whitespace() {
        let sign_len = tok.chars().last().map_or(0, char::len_utf8);
        let (name, sign) = tok.split_at(tok.len() - sign_len);
        let Some(bit) = NAMES.iter().position(|n| *n == name) else {
            continue;
        };
        match sign {
            "+" => bits |= 1 << bit,
            "-" => {}
            _ => {
                return Err(syntax(
                    line,
                    format!("`{tok}`: expected a flag ending in + or -"),
                ))
            }
        }
        seen |= 1 << bit;
    }
    if seen & 0x1f != 0x1f {
        return Err(syntax(
            line,
            "an ACS line must list SrcValid, TransBlk, ReqRedir, CmpltRedir and UpstreamFwd",
        ));
    }
    Ok(bits)
}

/// The number after `key` in `text` (`Number of VFs: 8,` gives 8).
fn number_after(text: &str, key: &str) -> Option<u32> {
    let at = text.find(key)? + key.len();
    let digits: String = text[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Standard capability ids by the name lspci gives them.
fn standard_id(name: &str) -> Option<u8> {
    const TABLE: [(&str, u8); 18] = [
        ("Power Management", 0x01),
        ("AGP", 0x02),
        ("Vital Product Data", 0x03),
        ("Slot ID", 0x04),
        ("MSI:", 0x05),
        ("CompactPCI hot-swap", 0x06),
        ("PCI-X", 0x07),
        ("HyperTransport", 0x08),
        ("Vendor Specific Information", 0x09),
        ("Debug port", 0x0a),
        ("Hot-plug capable", 0x0c),
        ("Subsystem:", 0x0d),
        ("Express", 0x10),
        ("MSI-X", 0x11),
        ("SATA HBA", 0x12),
        ("PCI Advanced Features", 0x13),
        ("Enhanced Allocation", 0x14),
        ("Flattening Portal Bridge", 0x15),
    ];
    TABLE
        .iter()
        .find(|(n, _)| name.starts_with(n))
        .map(|&(_, id)| id)
}

/// The id given to an extended capability whose name is not known here
/// (lspci's list grows with the PCIe specification): one no rule looks
/// for, so the capability only links the list.
const UNNAMED_EXT_CAP: u16 = 0xffff;

/// Extended capability ids by the name lspci gives them: `Null` for an id
/// of 0, `Extended Capability ID 0xNN` for ids lspci does not name.
fn extended_id(name: &str) -> Option<u16> {
    if name == "Null" {
        return Some(0);
    }
    if let Some(hex) = name.strip_prefix("Extended Capability ID 0x") {
        return u16::from_str_radix(hex.trim(), 16).ok();
    }
    const TABLE: [(&str, u16); 33] = [
        ("Advanced Error Reporting", 0x01),
        ("Virtual Channel", 0x02),
        ("Device Serial Number", 0x03),
        ("Power Budgeting", 0x04),
        ("Root Complex Link", 0x05),
        ("Root Complex Internal Link", 0x06),
        ("Root Complex Event Collector", 0x07),
        ("Multi-Function Virtual Channel", 0x08),
        ("Root Complex Register Block", 0x0a),
        ("Vendor Specific Information", 0x0b),
        ("Access Control Services", 0x0d),
        ("Alternative Routing-ID Interpretation", 0x0e),
        ("Address Translation Service", 0x0f),
        ("Single Root I/O Virtualization", 0x10),
        ("Multi-Root I/O Virtualization", 0x11),
        ("Multicast", 0x12),
        ("Page Request Interface", 0x13),
        ("Physical Resizable BAR", 0x15),
        ("Dynamic Power Allocation", 0x16),
        ("Transaction Processing Hints", 0x17),
        ("Latency Tolerance Reporting", 0x18),
        ("Secondary PCI Express", 0x19),
        ("Protocol Multiplexing", 0x1a),
        ("Process Address Space ID", 0x1b),
        ("Downstream Port Containment", 0x1d),
        ("L1 PM Substates", 0x1e),
        ("Precision Time Measurement", 0x1f),
        ("Readiness Time Reporting", 0x22),
        ("Designated Vendor-Specific", 0x23),
        ("VF Resizable BAR", 0x24),
        ("Data Link Feature", 0x25),
        ("Physical Layer 16.0 GT/s", 0x26),
        ("Lane Margining at the Receiver", 0x27),
    ];
    TABLE
        .iter()
        .find(|(n, _)| name.starts_with(n))
        .map(|&(_, id)| id)
}

/// The PCI Express port type by lspci's words for it.
fn port_type_bits(text: &str) -> Option<u8> {
    const TABLE: [(&str, u8); 9] = [
        ("Legacy Endpoint", 1),
        ("Root Complex Integrated Endpoint", 9),
        ("Root Complex Event Collector", 10),
        ("Endpoint", 0),
        ("Root Port", 4),
        ("Upstream Port", 5),
        ("Downstream Port", 6),
        ("PCI-Express to PCI/PCI-X Bridge", 7),
        ("PCI/PCI-X to PCI-Express Bridge", 8),
    ];
    if let Some(n) = text.strip_prefix("Unknown type ") {
        let digits: String = n.chars().take_while(|c| c.is_ascii_digit()).collect();
        return digits.parse::<u8>().ok().filter(|v| *v < 16);
    }
    TABLE
        .iter()
        .find(|(n, _)| text.starts_with(n))
        .map(|&(_, v)| v)
}

/// Reads a `Capabilities: [..] ...` line.
fn capability(text: &str, line: usize) -> Result<Option<Cap>, ImportError> {
    let rest = text.trim_start();
    if rest.starts_with("<access denied>") {
        return Err(syntax(
            line,
            "capabilities are hidden: lspci was run without root (use sudo lspci -vvvnn)",
        ));
    }
    let Some(rest) = rest.strip_prefix('[') else {
        return Err(syntax(line, "expected `Capabilities: [offset] name`"));
    };
    let (inside, name) = rest
        .split_once(']')
        .ok_or_else(|| syntax(line, "expected `]` after the capability's offset"))?;
    let name = name.trim_start();
    let (off, version) = match inside.split_once(" v") {
        Some((o, v)) => (
            o,
            Some(
                v.parse::<u8>()
                    .ok()
                    .filter(|v| *v < 16)
                    .ok_or_else(|| syntax(line, "a capability version is 0 to 15"))?,
            ),
        ),
        None => (inside, None),
    };
    if off.is_empty() || off.len() > 3 || !off.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(syntax(line, format!("`{off}` is not a capability offset")));
    }
    let offset = u16::from_str_radix(off, 16).map_err(|_| syntax(line, "bad offset"))?;
    let extended = version.is_some();
    let (lo, hi) = if extended {
        (0x100u16, 0xffcu16)
    } else {
        (0x40, 0xfe)
    };
    if offset < lo || offset > hi || offset % 4 != 0 {
        return Err(syntax(
            line,
            format!("capability offset {offset:#x} is out of range or unaligned"),
        ));
    }
    let id = if extended {
        // Every extended capability keeps its place: the list starts at
        // 0x100 whatever sits there (a `Null` header that only points on,
        // one this table does not name), and Linux walks through it.
        Some(extended_id(name).unwrap_or(UNNAMED_EXT_CAP))
    } else {
        standard_id(name).map(u16::from)
    };
    let Some(id) = id else {
        return Ok(None); // kept out of the rebuilt list
    };
    let mut cap = Cap {
        offset,
        id,
        extended,
        version: version.unwrap_or(0),
        line,
        ..Cap::default()
    };
    if !extended && id == u16::from(cap_id::EXP) {
        let rest = name.strip_prefix("Express").unwrap_or(name).trim_start();
        let (ver, rest) = match rest.strip_prefix("(v") {
            Some(r) => {
                let (v, r) = r
                    .split_once(')')
                    .ok_or_else(|| syntax(line, "expected `(vN)` after Express"))?;
                let v = v
                    .parse::<u8>()
                    .ok()
                    .filter(|v| *v < 16)
                    .ok_or_else(|| syntax(line, "the Express version is 0 to 15"))?;
                (v, r.trim_start())
            }
            None => (2, rest),
        };
        let ty = port_type_bits(rest)
            .ok_or_else(|| syntax(line, format!("unknown PCI Express port type in `{rest}`")))?;
        let slot = u16::from(rest.contains("(Slot+)")) << 8;
        cap.exp_flags = u16::from(ver) | u16::from(ty) << 4 | slot;
    }
    Ok(Some(cap))
}

impl Open {
    /// Rebuilds the function's configuration space and parses it.
    /// Refuses a bridge listed without its bus numbers (`lspci` without
    /// `-v`): taken for an endpoint, it would group wrongly.
    fn check_bridge(&self) -> Result<(), ImportError> {
        let bridge = matches!(self.class >> 8, 0x0604 | 0x0607 | 0x0609);
        if bridge && self.buses.is_none() {
            return Err(syntax(
                self.line,
                "a bridge listed without its `Bus:` line (lspci without -v): run `sudo lspci -vvvnn`",
            ));
        }
        Ok(())
    }

    fn finish(self) -> Result<ListedFunction, ImportError> {
        let bdf = self.bdf.expect("an open function has an address");
        let line = self.line;
        let pcie = self
            .caps
            .iter()
            .any(|c| !c.extended && c.id == u16::from(cap_id::EXP));
        let mut c = ConfigSpace::new_zeroed(if pcie { 4096 } else { 256 });
        c.write_u16(0x00, self.vendor);
        c.write_u16(0x02, self.device);
        c.write_u8(0x08, self.revision);
        c.write_u8(0x09, self.class as u8);
        c.write_u16(0x0a, (self.class >> 8) as u16);
        let header = match self.buses {
            Some(_) if self.class >> 8 == 0x0607 => 2,
            Some(_) => 1,
            None => 0,
        };
        c.write_u8(0x0e, header);
        if let Some((p, s, sub)) = self.buses {
            c.write_u8(0x18, p);
            c.write_u8(0x19, s);
            c.write_u8(0x1a, sub);
        }
        if header == 0 {
            if let Some((sv, sd)) = self.subsystem {
                c.write_u16(0x2c, sv);
                c.write_u16(0x2e, sd);
            }
        }
        let std: Vec<&Cap> = self.caps.iter().filter(|c| !c.extended).collect();
        let ext: Vec<&Cap> = self.caps.iter().filter(|c| c.extended && pcie).collect();
        if !std.is_empty() {
            c.write_u16(0x06, 1 << 4);
            let list = if header == 2 { 0x14 } else { 0x34 };
            c.write_u8(list, std[0].offset as u8);
        }
        for (k, cap) in std.iter().enumerate() {
            let next = std.get(k + 1).map_or(0, |n| n.offset as u8);
            c.write_u8(cap.offset, cap.id as u8);
            c.write_u8(cap.offset + 1, next);
            if cap.id == u16::from(cap_id::EXP) {
                c.write_u16(cap.offset + 2, cap.exp_flags);
            }
        }
        if let Some(first) = ext.first().filter(|c| c.offset != 0x100) {
            // The extended list starts at 0x100; a listing whose first
            // one sits further on gets an unnamed header there that only
            // points to it, so that none is lost.
            c.write_u32(
                0x100,
                u32::from(UNNAMED_EXT_CAP) | u32::from(first.offset) << 20,
            );
        }
        for (k, cap) in ext.iter().enumerate() {
            let next = ext.get(k + 1).map_or(0, |n| n.offset);
            c.write_u32(
                cap.offset,
                u32::from(cap.id) | u32::from(cap.version) << 16 | u32::from(next) << 20,
            );
            match cap.id {
                ext_cap_id::ACS => {
                    let (Some(capbits), Some(ctrl)) = (cap.acs_cap, cap.acs_ctrl) else {
                        return Err(syntax(
                            cap.line,
                            "an ACS capability without its ACSCap and ACSCtl lines (lspci without -vv): run `sudo lspci -vvvnn`",
                        ));
                    };
                    c.write_u16(cap.offset + 4, capbits);
                    c.write_u16(cap.offset + 6, ctrl);
                }
                ext_cap_id::ARI => {
                    c.write_u16(cap.offset + 4, u16::from(cap.ari_next.unwrap_or(0)) << 8);
                }
                ext_cap_id::SRIOV => {
                    if let Some(ctrl) = cap.iov_ctrl {
                        c.write_u16(cap.offset + 0x08, ctrl);
                    }
                    if let Some((initial, total, num)) = cap.iov_counts {
                        c.write_u16(cap.offset + 0x0c, initial);
                        c.write_u16(cap.offset + 0x0e, total);
                        c.write_u16(cap.offset + 0x10, num);
                    }
                    if let Some((offset, stride, dev)) = cap.iov_layout {
                        c.write_u16(cap.offset + 0x14, offset);
                        c.write_u16(cap.offset + 0x16, stride);
                        c.write_u16(cap.offset + 0x1a, dev);
                    }
                }
                _ => {}
            }
        }
        self.check_bridge()?;
        crate::acs::fill_unlisted_registers(&mut c, bdf, self.vendor, self.class);
        let mut function =
            Function::parse(bdf, &c).map_err(|error| ImportError::Config { line, error })?;
        function.reconstructed = true;
        Ok(ListedFunction {
            function,
            description: self.description,
            iommu_group: self.iommu_group,
            driver: self.driver,
            line,
        })
    }
}

/// Reads every function of an `lspci -vvvnn` listing (run as root).
///
/// # Errors
/// An [`ImportError`] naming the line: a header without `-nn` ids, a
/// malformed register line, hidden capabilities (lspci without root), a
/// capability at an impossible offset, or registers that do not make a
/// function. Nothing is returned then.
pub fn parse_lspci_v(text: &str) -> Result<Vec<ListedFunction>, ImportError> {
    let mut opened: Vec<Open> = Vec::new();
    let mut open: Option<Open> = None;
    let mut in_cap: Option<usize> = None;
    // Indented lines seen: none at all is `lspci -nn`, not `-vvvnn`.
    let mut details = 0usize;
    for (k, raw) in text.lines().enumerate() {
        let line = k + 1;
        let l = raw.trim_end();
        if l.trim().is_empty() {
            continue;
        }
        if !l.starts_with([' ', '\t']) {
            // A line that does not even try to be an address is not a
            // function's header: messages a capture mixed in from stderr
            // (`pcilib: ...`) or the rest of a line they split.
            let first = l.split_ascii_whitespace().next().unwrap_or("");
            if !(first.contains(':') && first.contains('.')) {
                continue;
            }
            opened.extend(open.take());
            if opened.len() >= crate::MAX_FUNCTIONS {
                return Err(syntax(
                    line,
                    format!("more than {} functions", crate::MAX_FUNCTIONS),
                ));
            }
            open = Some(header(l, line)?);
            in_cap = None;
            continue;
        }
        let o = open
            .as_mut()
            .ok_or_else(|| syntax(line, "an indented line before any function's header"))?;
        details += 1;
        // Registers are told apart by their names, not by indentation,
        // which pasting often turns from tabs into spaces.
        let t = l.trim_start();
        if let Some(rest) = t.strip_prefix("Capabilities:") {
            in_cap = None;
            if let Some(cap) = capability(rest, line)? {
                if o.caps
                    .iter()
                    .any(|c| c.offset == cap.offset && c.extended == cap.extended)
                {
                    return Err(syntax(line, "two capabilities at one offset"));
                }
                o.caps.push(cap);
                in_cap = Some(o.caps.len() - 1);
            }
            continue;
        }
        if let Some(rest) = t.strip_prefix("IOMMU group:") {
            let g = rest
                .trim()
                .parse::<u32>()
                .map_err(|_| syntax(line, "the IOMMU group is not a number"))?;
            o.iommu_group = Some(g);
            continue;
        }
        if let Some(rest) = t.strip_prefix("Subsystem:") {
            o.subsystem = last_id_pair(rest);
            continue;
        }
        if let Some(rest) = t.strip_prefix("Kernel driver in use:") {
            let name = rest.trim();
            // A driver's name is a short identifier; anything else is not
            // one and is left out rather than shown.
            if !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
            {
                o.driver = Some(name.into());
            }
            continue;
        }
        if let Some(rest) = t.strip_prefix("Bus:") {
            o.buses = Some(bus_line(rest, line)?);
            continue;
        }
        let Some(ci) = in_cap else { continue };
        let cap = &mut o.caps[ci];
        let id = if cap.extended { cap.id } else { 0 };
        if let (ext_cap_id::ACS, Some(rest)) = (id, t.strip_prefix("ACSCap:")) {
            cap.acs_cap = Some(acs_bits(rest, line)?);
        } else if let (ext_cap_id::ACS, Some(rest)) = (id, t.strip_prefix("ACSCtl:")) {
            cap.acs_ctrl = Some(acs_bits(rest, line)?);
        } else if id != ext_cap_id::ARI && id != ext_cap_id::SRIOV {
            continue;
        } else if let Some(rest) = t.strip_prefix("ARICap:") {
            let next = number_after(rest, "Next Function:")
                .filter(|n| *n < 256)
                .ok_or_else(|| syntax(line, "expected `Next Function: N`"))?;
            cap.ari_next = Some(next as u8);
        } else if let Some(rest) = t.strip_prefix("IOVCtl:") {
            let enable = rest.split_ascii_whitespace().any(|w| w == "Enable+");
            let ari = rest.split_ascii_whitespace().any(|w| w == "ARIHierarchy+");
            cap.iov_ctrl = Some(u16::from(enable) | u16::from(ari) << 4);
        } else if t.starts_with("Initial VFs:") {
            let get = |key: &str| {
                number_after(t, key)
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| syntax(line, format!("expected `{key} N`")))
            };
            cap.iov_counts = Some((
                get("Initial VFs:")?,
                get("Total VFs:")?,
                get("Number of VFs:")?,
            ));
        } else if t.starts_with("VF offset:") {
            let get = |key: &str| {
                number_after(t, key)
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| syntax(line, format!("expected `{key} N`")))
            };
            let dev = t
                .split_once("Device ID:")
                .and_then(|(_, d)| hex_u16(d.trim()))
                .ok_or_else(|| syntax(line, "expected `Device ID: dddd`"))?;
            cap.iov_layout = Some((get("VF offset:")?, get("stride:")?, dev));
        }
    }
    opened.extend(open.take());
    if let (Some(first), 0) = (opened.first(), details) {
        return Err(syntax(
            first.line,
            "no register lines under any function (a listing of `lspci` or `lspci -nn`): the prediction needs the capabilities and bus numbers `sudo lspci -vvvnn` prints",
        ));
    }
    resolve_paths(&mut opened)?;
    let mut out = opened
        .into_iter()
        .map(Open::finish)
        .collect::<Result<Vec<_>, _>>()?;
    mark_multifunction(&mut out)?;
    Ok(out)
}

/// Gives every function listed by an `lspci -P` path its address: each
/// step's bus is the secondary bus of the bridge listed before it in the
/// path, and parents have shorter paths than their children.
fn resolve_paths(opened: &mut [Open]) -> Result<(), ImportError> {
    let mut pending: Vec<usize> = (0..opened.len())
        .filter(|&i| opened[i].bdf.is_none())
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    pending.sort_by_key(|&i| opened[i].path.as_ref().map_or(0, SlotPath::len));
    let mut secondary: BTreeMap<Bdf, u8> = opened
        .iter()
        .filter_map(|o| Some((o.bdf?, o.buses?.1)))
        .collect();
    for i in pending {
        let o = &mut opened[i];
        let path = o.path.take().expect("an unresolved function has a path");
        let bdf = path.resolve(|b| secondary.get(&b).copied()).map_err(|b| {
            syntax(
                o.line,
                format!("the path goes through {b}, which is not a listed bridge"),
            )
        })?;
        o.bdf = Some(bdf);
        if let Some((_, s, _)) = o.buses {
            secondary.insert(bdf, s);
        }
    }
    Ok(())
}

/// Sets the multifunction bit of every function 0 whose slot lists other
/// functions (virtual functions aside: they are found from their PF).
fn mark_multifunction(out: &mut [ListedFunction]) -> Result<(), ImportError> {
    let mut slots: BTreeMap<(u32, u8, u8), usize> = BTreeMap::new();
    for f in out.iter() {
        let b = f.function.bdf;
        *slots.entry((b.segment, b.bus, b.dev())).or_default() += 1;
    }
    for f in out.iter_mut() {
        let b = f.function.bdf;
        if b.func() == 0 && slots[&(b.segment, b.bus, b.dev())] > 1 {
            f.function.multifunction = true;
            let ty = f.function.config.read_u8(0x0e).unwrap_or(0);
            f.function.config.write_u8(0x0e, ty | 0x80);
        }
    }
    Ok(())
}

/// Reads `primary=00, secondary=01, subordinate=03, ...`.
fn bus_line(rest: &str, line: usize) -> Result<(u8, u8, u8), ImportError> {
    let get = |key: &str| -> Result<u8, ImportError> {
        let at = rest
            .find(key)
            .ok_or_else(|| syntax(line, format!("expected `{key}xx` on the Bus line")))?;
        let v: String = rest[at + key.len()..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .collect();
        if v.is_empty() || v.len() > 2 {
            return Err(syntax(line, format!("`{key}` needs a two-digit hex bus")));
        }
        u8::from_str_radix(&v, 16).map_err(|_| syntax(line, "bad bus number"))
    };
    Ok((get("primary=")?, get("secondary=")?, get("subordinate=")?))
}

/// Reads a function's header line.
fn header(l: &str, line: usize) -> Result<Open, ImportError> {
    let (name, rest) = l
        .split_once(' ')
        .ok_or_else(|| syntax(line, "expected `bb:dd.f description`"))?;
    let path: SlotPath = name.parse().map_err(|_| {
        syntax(
            line,
            format!(
                "`{name}` is not a function's address \
                 (bb:dd.f, ssss:bb:dd.f, or an lspci -P/-PP path of them)"
            ),
        )
    })?;
    let bdf = path.known();
    let path = bdf.is_none().then_some(path);
    // `Class name [cccc]: ...`
    let class = rest
        .find("]: ")
        .and_then(|end| {
            let start = rest[..end].rfind('[')?;
            let hex = &rest[start + 1..end];
            (hex.len() == 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(hex, 16).ok())
                .flatten()
        })
        .ok_or_else(|| {
            syntax(
                line,
                "no `[cccc]` class id: the listing needs numeric ids (lspci -vvvnn)",
            )
        })?;
    let body = rest.split(" (prog-if ").next().unwrap_or(rest);
    let (vendor, device) = last_id_pair(body).ok_or_else(|| {
        syntax(
            line,
            "no `[vvvv:dddd]` ids: the listing needs numeric ids (lspci -vvvnn)",
        )
    })?;
    let revision = match body.rfind("(rev ") {
        Some(at) => {
            let r = &body[at + 5..];
            let r = r.strip_suffix(')').unwrap_or(r);
            u8::from_str_radix(r.get(..2).unwrap_or(""), 16)
                .map_err(|_| syntax(line, "the revision is not two hex digits"))?
        }
        None => 0,
    };
    let prog_if = match rest.split_once(" (prog-if ") {
        Some((_, p)) => u8::from_str_radix(p.get(..2).unwrap_or(""), 16)
            .map_err(|_| syntax(line, "the prog-if is not two hex digits"))?,
        None => 0,
    };
    Ok(Open {
        bdf,
        path,
        line,
        description: body.to_string(),
        class: class << 8 | u32::from(prog_if),
        vendor,
        device,
        revision,
        ..Open::default()
    })
}
