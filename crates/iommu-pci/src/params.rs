//! Kernel command-line parameters that change grouping.
//!
//! - `pci=disable_acs_redir=<dev>[;<dev>...]` and
//!   `pci=config_acs=<flags>@<dev>[;...]` (Linux 6.12, applied by
//!   `pci_enable_acs` to devices with an ACS capability);
//! - `pcie_acs_override=downstream,multifunction,id:vvvv:dddd` (the
//!   widely used out-of-tree ACS override patch);
//! - `pci=noacs`, this project's shorthand for
//!   `pci=config_acs=0000000@pci:0:0`: every ACS control switched off;
//! - `iommu=off`-like: [`KernelParams::request_acs`] false, when no IOMMU
//!   driver asks the PCI core to enable ACS (`pci_request_acs`).
//!
//! Devices are named as Linux's `pci_dev_str_match` reads them:
//! `[ssss:]bb:dd.f[/dd.f]...` (a path from a top device down through
//! bridges, robust to bus renumbering) or
//! `pci:vvvv:dddd[:svvv:sddd]` (ids, 0 matching any). Unlike the kernel,
//! which logs and ignores what it cannot parse, a malformed parameter is
//! a [`ParamError`].

use crate::{AcsFlags, Bdf, Topology};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// A device as a kernel parameter names it (`pci_dev_str_match`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceMatch {
    /// `pci:vvvv:dddd[:svvv:sddd]`; a 0 matches any.
    Ids {
        /// Vendor id.
        vendor: u16,
        /// Device id.
        device: u16,
        /// Subsystem vendor id.
        subsystem_vendor: u16,
        /// Subsystem device id.
        subsystem_device: u16,
    },
    /// `[ssss:]bb:dd.f[/dd.f]...`: the top device's address, then the
    /// devfn of each device below it on the way down.
    Path {
        /// The top device.
        top: Bdf,
        /// The devfns of the path below it, top first.
        below: Vec<u8>,
    },
}

impl DeviceMatch {
    /// Whether function `i` of `topo` is the one named.
    pub fn matches(&self, topo: &Topology, i: usize) -> bool {
        let f = &topo.functions()[i];
        match self {
            DeviceMatch::Ids {
                vendor,
                device,
                subsystem_vendor,
                subsystem_device,
            } => {
                let ok = |want: u16, have: u16| want == 0 || want == have;
                ok(*vendor, f.vendor)
                    && ok(*device, f.device)
                    && ok(*subsystem_vendor, f.subsystem.0)
                    && ok(*subsystem_device, f.subsystem.1)
            }
            DeviceMatch::Path { top, below } => {
                let mut at = i;
                for &devfn in below.iter().rev() {
                    if topo.functions()[at].bdf.devfn != devfn {
                        return false;
                    }
                    // `pci_upstream_bridge`: a VF's is its PF's.
                    let base = topo.physfn(at).unwrap_or(at);
                    match topo.upstream(base) {
                        Some(up) => at = up,
                        None => return false,
                    }
                }
                topo.functions()[at].bdf == *top
            }
        }
    }

    fn parse(s: &str) -> Result<DeviceMatch, String> {
        let hex16 = |t: &str| -> Result<u16, String> {
            if t.is_empty() || t.len() > 4 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(alloc::format!("`{t}` is not a 16-bit hex id"));
            }
            u16::from_str_radix(t, 16).map_err(|e| e.to_string())
        };
        if let Some(ids) = s.strip_prefix("pci:") {
            let parts: Vec<&str> = ids.split(':').collect();
            let (vendor, device, sv, sd) = match parts.as_slice() {
                [v, d] => (hex16(v)?, hex16(d)?, 0, 0),
                [v, d, sv, sd] => (hex16(v)?, hex16(d)?, hex16(sv)?, hex16(sd)?),
                _ => return Err(alloc::format!("`{s}`: expected pci:vvvv:dddd[:svvv:sddd]")),
            };
            return Ok(DeviceMatch::Ids {
                vendor,
                device,
                subsystem_vendor: sv,
                subsystem_device: sd,
            });
        }
        let mut comps = s.split('/');
        let first = comps.next().unwrap_or("");
        let top: Bdf = first
            .parse()
            .map_err(|_| alloc::format!("`{first}` is not a PCI address ([ssss:]bb:dd.f)"))?;
        let mut below = Vec::new();
        for c in comps {
            let devfn = c
                .split_once('.')
                .filter(|(d, f)| (1..=2).contains(&d.len()) && f.len() == 1)
                .and_then(|(d, f)| {
                    let d = u8::from_str_radix(d, 16).ok().filter(|d| *d < 32)?;
                    let f = u8::from_str_radix(f, 16).ok().filter(|f| *f < 8)?;
                    Some((d << 3) | f)
                })
                .ok_or_else(|| alloc::format!("`{c}` is not a device.function in a path"))?;
            below.push(devfn);
        }
        Ok(DeviceMatch::Path { top, below })
    }
}

impl fmt::Display for DeviceMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceMatch::Ids {
                vendor,
                device,
                subsystem_vendor: 0,
                subsystem_device: 0,
            } => write!(f, "pci:{vendor:04x}:{device:04x}"),
            DeviceMatch::Ids {
                vendor,
                device,
                subsystem_vendor,
                subsystem_device,
            } => write!(
                f,
                "pci:{vendor:04x}:{device:04x}:{subsystem_vendor:04x}:{subsystem_device:04x}"
            ),
            DeviceMatch::Path { top, below } => {
                write!(f, "{top}")?;
                for d in below {
                    write!(f, "/{:02x}.{:x}", d >> 3, d & 7)?;
                }
                Ok(())
            }
        }
    }
}

/// One `config_acs` entry: the bits it sets (`mask`) and their values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigAcs {
    /// Which ACS control bits the entry decides (the `0`s and `1`s).
    pub mask: AcsFlags,
    /// Their values.
    pub flags: AcsFlags,
    /// The device.
    pub device: DeviceMatch,
}

/// `pcie_acs_override=`: the ACS override patch's options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcsOverride {
    /// `downstream`: every root and downstream port without an ACS
    /// capability counts as isolated.
    pub downstream: bool,
    /// `multifunction`: every multifunction endpoint without an ACS
    /// capability counts as isolated.
    pub multifunction: bool,
    /// `id:vvvv:dddd`: these devices count as isolated (without an ACS
    /// capability). The patch takes at most 16.
    pub ids: Vec<(u16, u16)>,
}

impl AcsOverride {
    /// Whether any override is asked for.
    pub fn is_set(&self) -> bool {
        self.downstream || self.multifunction || !self.ids.is_empty()
    }

    /// The patch's answer for function `i`: `Some(true)` when it
    /// overrides, `None` when it leaves the device to the next rule.
    pub(crate) fn answer(&self, topo: &Topology, i: usize) -> Option<bool> {
        use crate::PortType as P;
        let f = &topo.functions()[i];
        if !self.is_set() || !f.is_pcie() || f.acs.is_some() {
            return None;
        }
        if self.ids.contains(&(f.vendor, f.device)) {
            return Some(true);
        }
        match f.port_type()? {
            P::DownstreamPort | P::RootPort if self.downstream => Some(true),
            P::Endpoint | P::UpstreamPort | P::LegacyEndpoint | P::RcIntegratedEndpoint
                if self.multifunction && topo.multifunction(i) =>
            {
                Some(true)
            }
            _ => None,
        }
    }
}

/// The kernel parameters grouping depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelParams {
    /// An IOMMU driver asked the PCI core to enable ACS
    /// (`pci_request_acs`), as every IOMMU driver does: the kernel turns
    /// on the SV, RR, CR and UF controls each port implements. False only
    /// for a machine without an IOMMU.
    pub request_acs: bool,
    /// `pci=disable_acs_redir=`: devices whose ACS redirect controls (RR,
    /// CR, EC) are forced off.
    pub disable_acs_redir: Vec<DeviceMatch>,
    /// `pci=config_acs=`: per-device ACS controls, first match wins.
    pub config_acs: Vec<ConfigAcs>,
    /// `pcie_acs_override=`.
    pub acs_override: AcsOverride,
}

impl Default for KernelParams {
    fn default() -> Self {
        KernelParams {
            request_acs: true,
            disable_acs_redir: Vec::new(),
            config_acs: Vec::new(),
            acs_override: AcsOverride::default(),
        }
    }
}

/// A kernel parameter this model cannot read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("kernel parameter `{param}`: {reason}")]
pub struct ParamError {
    /// The parameter as given.
    pub param: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The flag string of a `config_acs` entry, most significant bit first
/// (`1` on, `0` off, `x` unchanged), into `(mask, flags)`.
fn parse_acs_flags(s: &str) -> Result<(AcsFlags, AcsFlags), String> {
    if s.is_empty() || s.len() > 7 {
        return Err(alloc::format!(
            "`{s}`: ACS flags are one to seven of 0, 1 and x (bit 6 first)"
        ));
    }
    let (mut mask, mut flags) = (0u16, 0u16);
    for (shift, c) in s.bytes().rev().enumerate() {
        match c {
            b'0' => mask |= 1 << shift,
            b'1' => {
                mask |= 1 << shift;
                flags |= 1 << shift;
            }
            b'x' | b'X' => {}
            _ => return Err(alloc::format!("`{s}`: ACS flags are 0, 1 or x")),
        }
    }
    Ok((AcsFlags(mask), AcsFlags(flags)))
}

impl KernelParams {
    /// Reads a kernel command line (or a part of one): whitespace-separated
    /// parameters; those grouping does not depend on are ignored.
    ///
    /// # Errors
    /// A [`ParamError`] for a grouping parameter this model cannot read.
    pub fn parse(cmdline: &str) -> Result<KernelParams, ParamError> {
        let mut p = KernelParams::default();
        for word in cmdline.split_ascii_whitespace() {
            p.apply(word)?;
        }
        Ok(p)
    }

    /// Applies one parameter (`pci=...`, `pcie_acs_override=...`,
    /// `iommu=off`, `intel_iommu=off`, `amd_iommu=off`); others are
    /// ignored.
    ///
    /// # Errors
    /// A [`ParamError`] for a grouping parameter this model cannot read;
    /// `self` is unchanged then.
    pub fn apply(&mut self, word: &str) -> Result<(), ParamError> {
        let err = |reason: String| ParamError {
            param: word.to_string(),
            reason,
        };
        let mut next = self.clone();
        if let Some(opts) = word.strip_prefix("pci=") {
            for opt in opts.split(',') {
                if let Some(list) = opt.strip_prefix("disable_acs_redir=") {
                    for dev in list.split(';').filter(|d| !d.is_empty()) {
                        next.disable_acs_redir
                            .push(DeviceMatch::parse(dev).map_err(err)?);
                    }
                } else if let Some(list) = opt.strip_prefix("config_acs=") {
                    for entry in list.split(';').filter(|d| !d.is_empty()) {
                        let (flags, dev) = entry.split_once('@').ok_or_else(|| {
                            err(alloc::format!("`{entry}`: expected flags@device"))
                        })?;
                        let (mask, flags) = parse_acs_flags(flags).map_err(err)?;
                        next.config_acs.push(ConfigAcs {
                            mask,
                            flags,
                            device: DeviceMatch::parse(dev).map_err(err)?,
                        });
                    }
                } else if opt == "noacs" {
                    next.config_acs.push(ConfigAcs {
                        mask: AcsFlags(0x7f),
                        flags: AcsFlags(0),
                        device: DeviceMatch::Ids {
                            vendor: 0,
                            device: 0,
                            subsystem_vendor: 0,
                            subsystem_device: 0,
                        },
                    });
                }
            }
        } else if let Some(opts) = word.strip_prefix("pcie_acs_override=") {
            for opt in opts.split(',').filter(|o| !o.is_empty()) {
                if opt == "downstream" {
                    next.acs_override.downstream = true;
                } else if opt == "multifunction" {
                    next.acs_override.multifunction = true;
                } else if let Some(id) = opt.strip_prefix("id:") {
                    let Ok(DeviceMatch::Ids { vendor, device, .. }) =
                        DeviceMatch::parse(&alloc::format!("pci:{id}"))
                    else {
                        return Err(err(alloc::format!("`{opt}`: expected id:vvvv:dddd")));
                    };
                    if next.acs_override.ids.len() >= 15 {
                        return Err(err("the override patch takes at most 15 ids".into()));
                    }
                    next.acs_override.ids.push((vendor, device));
                } else {
                    return Err(err(alloc::format!(
                        "`{opt}`: expected downstream, multifunction or id:vvvv:dddd"
                    )));
                }
            }
        } else if matches!(word, "iommu=off" | "intel_iommu=off" | "amd_iommu=off") {
            next.request_acs = false;
        }
        *self = next;
        Ok(())
    }

    /// Whether these are the defaults (nothing that changes grouping).
    pub fn is_default(&self) -> bool {
        *self == KernelParams::default()
    }
}

impl fmt::Display for KernelParams {
    /// As a command line that [`KernelParams::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words: Vec<String> = Vec::new();
        if !self.request_acs {
            words.push("iommu=off".into());
        }
        if !self.disable_acs_redir.is_empty() {
            let list: Vec<String> = self
                .disable_acs_redir
                .iter()
                .map(|d| d.to_string())
                .collect();
            words.push(alloc::format!("pci=disable_acs_redir={}", list.join(";")));
        }
        if !self.config_acs.is_empty() {
            let list: Vec<String> = self
                .config_acs
                .iter()
                .map(|c| {
                    let bits: String = (0..7)
                        .rev()
                        .map(|b| {
                            if c.mask.0 & (1 << b) == 0 {
                                'x'
                            } else if c.flags.0 & (1 << b) != 0 {
                                '1'
                            } else {
                                '0'
                            }
                        })
                        .collect();
                    alloc::format!("{bits}@{}", c.device)
                })
                .collect();
            words.push(alloc::format!("pci=config_acs={}", list.join(";")));
        }
        let o = &self.acs_override;
        if o.is_set() {
            let mut opts: Vec<String> = Vec::new();
            if o.downstream {
                opts.push("downstream".into());
            }
            if o.multifunction {
                opts.push("multifunction".into());
            }
            for (v, d) in &o.ids {
                opts.push(alloc::format!("id:{v:04x}:{d:04x}"));
            }
            words.push(alloc::format!("pcie_acs_override={}", opts.join(",")));
        }
        f.write_str(&words.join(" "))
    }
}
