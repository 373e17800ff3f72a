//! Kernel command-line parameters that change grouping, the IOMMU's
//! state and the default domains.
//!
//! - `pci=disable_acs_redir=<dev>[;<dev>...]` and
//!   `pci=config_acs=<flags>@<dev>[;...]` (Linux 6.12, applied by
//!   `pci_enable_acs` to devices with an ACS capability);
//! - `pcie_acs_override=downstream,multifunction,id:vvvv:dddd` (the
//!   widely used out-of-tree ACS override patch);
//! - `pci=noacs`, this project's shorthand for
//!   `pci=config_acs=0000000@pci:0:0`: every ACS control switched off;
//! - `iommu=off`, `intel_iommu=off`, `amd_iommu=off`: the IOMMU driver
//!   they name does not start ([`IommuOff`]): no groups, and no driver
//!   asks the PCI core to enable ACS (`pci_request_acs`);
//! - `iommu=pt`, `iommu=nopt`, `iommu.passthrough=`: identity or
//!   translated default domains; `iommu.strict=`, `intel_iommu=strict`,
//!   `amd_iommu=fullflush`: strict or lazy invalidation.
//!
//! A real `/proc/cmdline` can be pasted whole. Every other parameter Linux
//! 6.12 documents, and every module parameter (`module.param=`), is
//! accepted and reported as ignored ([`Ignored`]); a word Linux does not
//! know is handed to init by the kernel, and so it is here, unless it is
//! a near miss of a known parameter (`pcie_acs_overide=`), which is an
//! error naming the parameter meant. Options of `pci=`, `iommu=`,
//! `intel_iommu=` and `amd_iommu=` must be ones Linux reads.
//!
//! Devices are named as Linux's `pci_dev_str_match` reads them:
//! `[ssss:]bb:dd.f[/dd.f]...` (a path from a top device down through
//! bridges, robust to bus renumbering) or
//! `pci:vvvv:dddd[:svvv:sddd]` (ids, 0 matching any). Unlike the kernel,
//! which logs and ignores what it cannot parse, a malformed parameter is
//! a [`ParamError`].

use crate::{AcsFlags, Bdf, IommuKind, Topology};
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

/// The IOMMU drivers a command line turns off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IommuOff {
    /// `iommu=off` (x86: VT-d and AMD-Vi alike).
    pub all: bool,
    /// `intel_iommu=off`.
    pub intel: bool,
    /// `amd_iommu=off`.
    pub amd: bool,
}

impl IommuOff {
    /// The parameter that turns off an IOMMU of `kind`, if one does. An
    /// IOMMU of unknown make (`Generic`) is off with any of them.
    pub fn word_for(self, kind: IommuKind) -> Option<&'static str> {
        if self.all && kind != IommuKind::ArmSmmu {
            return Some("iommu=off");
        }
        match kind {
            IommuKind::IntelVtd | IommuKind::Generic if self.intel => Some("intel_iommu=off"),
            IommuKind::AmdVi | IommuKind::Generic if self.amd => Some("amd_iommu=off"),
            _ => None,
        }
    }
}

/// A parameter accepted without effect on the model, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    /// The word as given.
    pub word: String,
    /// Why it changes nothing here.
    pub why: &'static str,
}

/// The kernel parameters grouping, the IOMMU's state and the default
/// domains depend on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelParams {
    /// The IOMMU drivers turned off; a driver that runs asks the PCI core
    /// to enable ACS (`pci_request_acs`), and the kernel turns on the SV,
    /// RR, CR and UF controls each port implements.
    pub off: IommuOff,
    /// `iommu=pt` (`Some(true)`), `iommu=nopt` or `iommu.passthrough=`:
    /// whether default domains are identity; `None` leaves the kernel's
    /// default.
    pub passthrough: Option<bool>,
    /// `iommu.strict=`, `intel_iommu=strict`, `amd_iommu=fullflush`:
    /// strict (`Some(true)`) or lazy invalidation; `None` leaves the
    /// kernel's default.
    pub strict: Option<bool>,
    /// `pci=disable_acs_redir=`: devices whose ACS redirect controls (RR,
    /// CR, EC) are forced off.
    pub disable_acs_redir: Vec<DeviceMatch>,
    /// `pci=config_acs=`: per-device ACS controls, first match wins.
    pub config_acs: Vec<ConfigAcs>,
    /// `pcie_acs_override=`.
    pub acs_override: AcsOverride,
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
    /// parameters; those the model does not depend on are ignored.
    ///
    /// # Errors
    /// A [`ParamError`] for a parameter this model cannot read, or a near
    /// miss of a known one.
    pub fn parse(cmdline: &str) -> Result<KernelParams, ParamError> {
        Self::parse_reporting(cmdline).map(|(p, _)| p)
    }

    /// [`parse`](Self::parse), with the parameters it ignored and why.
    ///
    /// # Errors
    /// As `parse`.
    pub fn parse_reporting(cmdline: &str) -> Result<(KernelParams, Vec<Ignored>), ParamError> {
        let mut p = KernelParams::default();
        let mut ignored = Vec::new();
        for word in cmdline.split_ascii_whitespace() {
            if let Some(why) = p.apply_reporting(word)? {
                ignored.push(Ignored {
                    word: word.to_string(),
                    why,
                });
            }
        }
        Ok((p, ignored))
    }

    /// Whether an IOMMU driver of `kind` runs and asks for ACS
    /// (`pci_request_acs`).
    pub fn requests_acs(&self, kind: IommuKind) -> bool {
        self.off.word_for(kind).is_none()
    }

    /// Applies one parameter; others are ignored (see the module docs).
    ///
    /// # Errors
    /// A [`ParamError`] for a parameter this model cannot read, or a near
    /// miss of a known one; `self` is unchanged then.
    pub fn apply(&mut self, word: &str) -> Result<(), ParamError> {
        self.apply_reporting(word).map(drop)
    }

    /// [`apply`](Self::apply), saying why a parameter was ignored.
    ///
    /// # Errors
    /// As `apply`.
    pub fn apply_reporting(&mut self, word: &str) -> Result<Option<&'static str>, ParamError> {
        let err = |reason: String| ParamError {
            param: word.to_string(),
            reason,
        };
        let (name, value) = match word.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (word, None),
        };
        let mut next = self.clone();
        match (name, value) {
            ("pci", Some(opts)) => next.apply_pci(opts).map_err(err)?,
            ("pcie_acs_override", Some(opts)) => next.apply_acs_override(opts).map_err(err)?,
            ("iommu", Some(opts)) => {
                for opt in opts.split(',').filter(|o| !o.is_empty()) {
                    match opt {
                        "off" => next.off.all = true,
                        "pt" => next.passthrough = Some(true),
                        "nopt" => next.passthrough = Some(false),
                        o if X86_IOMMU_OPTIONS.contains(&o) || is_gart_option(o) => {}
                        o => return Err(err(unknown_option("iommu=", o, X86_IOMMU_OPTIONS))),
                    }
                }
            }
            ("intel_iommu", Some(opts)) => {
                for opt in opts.split(',').filter(|o| !o.is_empty()) {
                    match opt {
                        "off" => next.off.intel = true,
                        "on" => next.off.intel = false,
                        "strict" => next.strict = Some(true),
                        o if INTEL_IOMMU_OPTIONS.contains(&o) => {}
                        o => {
                            return Err(err(unknown_option("intel_iommu=", o, INTEL_IOMMU_OPTIONS)))
                        }
                    }
                }
            }
            ("amd_iommu", Some(opts)) => {
                for opt in opts.split(',').filter(|o| !o.is_empty()) {
                    match opt {
                        "off" => next.off.amd = true,
                        "fullflush" => next.strict = Some(true),
                        o if AMD_IOMMU_OPTIONS.contains(&o) => {}
                        o => return Err(err(unknown_option("amd_iommu=", o, AMD_IOMMU_OPTIONS))),
                    }
                }
            }
            ("iommu.passthrough", Some(v)) => next.passthrough = Some(kernel_bool(v).map_err(err)?),
            ("iommu.strict", Some(v)) => next.strict = Some(kernel_bool(v).map_err(err)?),
            (
                "pci" | "pcie_acs_override" | "iommu" | "intel_iommu" | "amd_iommu"
                | "iommu.passthrough" | "iommu.strict",
                None,
            ) => return Err(err(alloc::format!("`{name}` needs a value (`{name}=...`)"))),
            _ => return ignore(name).map_err(err),
        }
        *self = next;
        Ok(None)
    }

    fn apply_pci(&mut self, opts: &str) -> Result<(), String> {
        for opt in opts.split(',').filter(|o| !o.is_empty()) {
            if let Some(list) = opt.strip_prefix("disable_acs_redir=") {
                for dev in list.split(';').filter(|d| !d.is_empty()) {
                    self.disable_acs_redir.push(DeviceMatch::parse(dev)?);
                }
            } else if let Some(list) = opt.strip_prefix("config_acs=") {
                for entry in list.split(';').filter(|d| !d.is_empty()) {
                    let (flags, dev) = entry
                        .split_once('@')
                        .ok_or_else(|| alloc::format!("`{entry}`: expected flags@device"))?;
                    let (mask, flags) = parse_acs_flags(flags)?;
                    self.config_acs.push(ConfigAcs {
                        mask,
                        flags,
                        device: DeviceMatch::parse(dev)?,
                    });
                }
            } else if opt == "noacs" {
                self.config_acs.push(ConfigAcs {
                    mask: AcsFlags(0x7f),
                    flags: AcsFlags(0),
                    device: DeviceMatch::Ids {
                        vendor: 0,
                        device: 0,
                        subsystem_vendor: 0,
                        subsystem_device: 0,
                    },
                });
            } else {
                let name = opt.split_once('=').map_or(opt, |(n, _)| n);
                if !PCI_OPTIONS.contains(&name) {
                    return Err(unknown_option("pci=", name, PCI_OPTIONS));
                }
            }
        }
        Ok(())
    }

    fn apply_acs_override(&mut self, opts: &str) -> Result<(), String> {
        for opt in opts.split(',').filter(|o| !o.is_empty()) {
            if opt == "downstream" {
                self.acs_override.downstream = true;
            } else if opt == "multifunction" {
                self.acs_override.multifunction = true;
            } else if let Some(id) = opt.strip_prefix("id:") {
                let Ok(DeviceMatch::Ids { vendor, device, .. }) =
                    DeviceMatch::parse(&alloc::format!("pci:{id}"))
                else {
                    return Err(alloc::format!("`{opt}`: expected id:vvvv:dddd"));
                };
                if self.acs_override.ids.len() >= 15 {
                    return Err("the override patch takes at most 15 ids".into());
                }
                self.acs_override.ids.push((vendor, device));
            } else {
                return Err(alloc::format!(
                    "`{opt}`: expected downstream, multifunction or id:vvvv:dddd"
                ));
            }
        }
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
        if self.off.all {
            words.push("iommu=off".into());
        }
        if self.off.intel {
            words.push("intel_iommu=off".into());
        }
        if self.off.amd {
            words.push("amd_iommu=off".into());
        }
        if let Some(pt) = self.passthrough {
            words.push(alloc::format!("iommu.passthrough={}", u8::from(pt)));
        }
        if let Some(strict) = self.strict {
            words.push(alloc::format!("iommu.strict={}", u8::from(strict)));
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

/// The parameter names Linux 6.12 documents.
const LINUX_PARAMS: &str = include_str!("linux_params.txt");

/// Parameters this model reads.
const MODELLED: &[&str] = &[
    "pci",
    "pcie_acs_override",
    "iommu",
    "intel_iommu",
    "amd_iommu",
    "iommu.passthrough",
    "iommu.strict",
];

/// `pci=` options Linux 6.12 reads (`pci_setup`, then x86's
/// `pcibios_setup`), the ones modelled among them.
const PCI_OPTIONS: &[&str] = &[
    "assign-busses",
    "bfsort",
    "big_root_window",
    "bios",
    "biosirq",
    "cbiosize",
    "cbmemsize",
    "check_enable_amd_mmconf",
    "conf1",
    "conf2",
    "config_acs",
    "disable_acs_redir",
    "earlydump",
    "ecrc",
    "force_floating",
    "hpbussize",
    "hpiosize",
    "hpmemsize",
    "hpmmioprefsize",
    "hpmmiosize",
    "ioapicreroute",
    "irqmask",
    "lastbus",
    "no_e820",
    "noacpi",
    "noacs",
    "noaer",
    "noari",
    "noats",
    "nobar",
    "nobfsort",
    "nobios",
    "nocrs",
    "nodomains",
    "noearly",
    "noioapicquirk",
    "noioapicreroute",
    "nomio",
    "nommconf",
    "nomsi",
    "norid",
    "norom",
    "off",
    "pcie_bus_peer2peer",
    "pcie_bus_perf",
    "pcie_bus_safe",
    "pcie_bus_tune_off",
    "pcie_scan_all",
    "pirqaddr",
    "realloc",
    "resource_alignment",
    "rom",
    "routeirq",
    "skip_isa_align",
    "use_crs",
    "use_e820",
    "usepirqmask",
];

/// x86's `iommu=` options (`iommu_setup`).
const X86_IOMMU_OPTIONS: &[&str] = &[
    "off", "force", "noforce", "biomerge", "panic", "nopanic", "merge", "nomerge", "forcesac",
    "allowdac", "nodac", "usedac", "soft", "pt", "nopt", "nobypass",
];

/// The AMD GART's `iommu=` options (`gart_parse_options`), and a size.
fn is_gart_option(o: &str) -> bool {
    let name = o.split_once('=').map_or(o, |(n, _)| n);
    matches!(
        name,
        "noagp" | "noaperture" | "leak" | "memaper" | "fullflush" | "nofullflush" | "allowed"
    ) || (!o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
}

/// `intel_iommu=` options (`intel_iommu_setup`).
const INTEL_IOMMU_OPTIONS: &[&str] = &[
    "on",
    "off",
    "igfx_off",
    "intgpu_off",
    "forcedac",
    "strict",
    "sp_off",
    "sm_on",
    "sm_off",
    "tboot_noforce",
];

/// `amd_iommu=` options (`parse_amd_iommu_options`).
const AMD_IOMMU_OPTIONS: &[&str] = &[
    "fullflush",
    "force_enable",
    "off",
    "force_isolation",
    "pgtbl_v1",
    "pgtbl_v2",
    "irtcachedis",
    "nohugepages",
    "v2_pgsizes_only",
];

/// A boolean as the kernel's `kstrtobool` reads it.
fn kernel_bool(v: &str) -> Result<bool, String> {
    match v.as_bytes().first().map(u8::to_ascii_lowercase) {
        Some(b'1' | b'y' | b't') => Ok(true),
        Some(b'0' | b'n' | b'f') => Ok(false),
        Some(b'o') if v.len() >= 2 => match v.as_bytes()[1].to_ascii_lowercase() {
            b'n' => Ok(true),
            b'f' => Ok(false),
            _ => Err(alloc::format!("`{v}` is not a boolean (0/1, y/n, on/off)")),
        },
        _ => Err(alloc::format!("`{v}` is not a boolean (0/1, y/n, on/off)")),
    }
}

/// Edits (insertions, deletions, substitutions) from `a` to `b`, or
/// `None` past `limit` (the search stays small whatever the input).
fn distance(a: &str, b: &str, limit: usize) -> Option<usize> {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len().abs_diff(b.len()) > limit || a.len() > 64 || b.len() > 64 {
        return None;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut cur = alloc::vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    let d = prev[b.len()];
    (d <= limit).then_some(d)
}

/// The closest of `known` to `word`, within two edits.
fn closest<'a>(word: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known
        .filter_map(|k| distance(word, k, 2).map(|d| (d, k)))
        .min()
        .map(|(_, k)| k)
}

fn unknown_option(param: &str, opt: &str, known: &[&str]) -> String {
    match closest(opt, known.iter().copied()) {
        Some(k) => {
            alloc::format!("`{opt}` is not a {param} option of Linux 6.12; did you mean `{k}`?")
        }
        None => alloc::format!("`{opt}` is not a {param} option of Linux 6.12"),
    }
}

/// Why a parameter the model does not read is ignored, or the error of a
/// near miss of a known one.
fn ignore(name: &str) -> Result<Option<&'static str>, String> {
    let documented = || LINUX_PARAMS.lines().filter(|l| !l.starts_with('#'));
    if documented().any(|p| p == name) {
        return Ok(Some("does not change grouping or the default domains"));
    }
    if name.contains('.') {
        if let Some(m) = closest(name, MODELLED.iter().copied()).filter(|m| m.contains('.')) {
            return Err(alloc::format!(
                "not a parameter of Linux 6.12; did you mean `{m}`?"
            ));
        }
        return Ok(Some("a module parameter that does not change grouping"));
    }
    match closest(name, MODELLED.iter().copied().chain(documented())) {
        Some(k) => Err(alloc::format!(
            "not a parameter of Linux 6.12; did you mean `{k}`?"
        )),
        None => Ok(Some("not a kernel parameter: the kernel hands it to init")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_is_bounded_and_exact_within_the_bound() {
        assert_eq!(
            distance("pcie_acs_overide", "pcie_acs_override", 2),
            Some(1)
        );
        assert_eq!(distance("iommu", "iommu", 2), Some(0));
        assert_eq!(distance("quiet", "quite", 2), Some(2));
        assert_eq!(distance("splash", "pci", 2), None);
        assert_eq!(distance(&"a".repeat(1000), "a", 2), None);
    }

    #[test]
    fn booleans_read_as_the_kernel_reads_them() {
        for (v, want) in [
            ("1", true),
            ("y", true),
            ("on", true),
            ("0", false),
            ("N", false),
            ("off", false),
        ] {
            assert_eq!(kernel_bool(v), Ok(want), "{v}");
        }
        assert!(kernel_bool("maybe").is_err());
        assert!(kernel_bool("").is_err());
    }

    #[test]
    fn an_off_switch_applies_to_its_own_iommu_only() {
        let (p, _) = KernelParams::parse_reporting("intel_iommu=off").unwrap();
        assert_eq!(p.off.word_for(IommuKind::IntelVtd), Some("intel_iommu=off"));
        assert_eq!(p.off.word_for(IommuKind::AmdVi), None);
        assert!(p.requests_acs(IommuKind::AmdVi) && !p.requests_acs(IommuKind::IntelVtd));
        let (p, _) = KernelParams::parse_reporting("iommu=off").unwrap();
        assert_eq!(p.off.word_for(IommuKind::AmdVi), Some("iommu=off"));
        assert_eq!(p.off.word_for(IommuKind::ArmSmmu), None, "an x86 parameter");
    }

    #[test]
    fn what_the_model_reads_prints_back_and_reads_again_the_same() {
        let line = "iommu=off intel_iommu=off iommu.passthrough=1 iommu.strict=0 pci=noacs";
        let p = KernelParams::parse(line).unwrap();
        assert_eq!(KernelParams::parse(&p.to_string()).unwrap(), p);
        assert!(KernelParams::parse("quiet splash").unwrap().is_default());
    }

    #[test]
    fn a_parameter_named_without_its_value_is_refused() {
        for w in ["pci", "iommu", "iommu.strict", "pcie_acs_override"] {
            let e = KernelParams::parse(w).unwrap_err();
            assert!(e.reason.contains("needs a value"), "{w}: {e}");
        }
    }
}
