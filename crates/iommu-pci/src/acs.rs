//! Access Control Services as Linux 6.12 sees them: the kernel's set-up of
//! each port's ACS controls (`pci_enable_acs`), and the question grouping
//! asks of every device on a path (`pci_acs_enabled`), answered with the
//! reason so that a grouping can be explained.

use crate::quirks::{self, device_specific_acs, AcsQuirk, QuirkContext, INTEL_SPT_ACS_CTRL};
use crate::{AcsFlags, Bdf, DeviceQuirks, Function, Platform, PortType, Topology};
use core::fmt;

/// Why a device counts as isolated by ACS, or why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcsVerdict {
    /// A rule of Linux's device-specific table decided.
    Quirk {
        /// The rule.
        quirk: AcsQuirk,
        /// Its answer.
        enabled: bool,
    },
    /// The platform declared the device's isolation by hand.
    Declared {
        /// Whether the declared flags cover what was asked.
        enabled: bool,
    },
    /// Conventional PCI or PCI-X: a shared bus, never isolated.
    ConventionalPci,
    /// A port type ACS never applies to (PCIe-to-PCI and PCI-to-PCIe
    /// bridges, root complex event collectors): never isolated.
    ExcludedPortType(PortType),
    /// A single-function endpoint or upstream port: no peer inside it to
    /// isolate from, so ACS is not needed.
    SingleFunction,
    /// A port type the specification reserves: Linux treats it as
    /// isolated.
    ReservedPortType,
    /// A port or multifunction device that needs ACS and has no ACS
    /// capability.
    NoCapability,
    /// The ACS capability lacks (or has not enabled) these controls.
    NotEnabled {
        /// The asked-for controls the device implements but has off.
        missing: AcsFlags,
    },
    /// The ACS capability has every asked-for control on (or hard-wired).
    Enabled,
}

impl AcsVerdict {
    /// Whether the device counts as isolated.
    pub fn enabled(self) -> bool {
        match self {
            AcsVerdict::Quirk { enabled, .. } | AcsVerdict::Declared { enabled } => enabled,
            AcsVerdict::SingleFunction | AcsVerdict::ReservedPortType | AcsVerdict::Enabled => true,
            AcsVerdict::ConventionalPci
            | AcsVerdict::ExcludedPortType(_)
            | AcsVerdict::NoCapability
            | AcsVerdict::NotEnabled { .. } => false,
        }
    }
}

impl fmt::Display for AcsVerdict {
    /// A phrase that follows the device's name: "has no ACS capability".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcsVerdict::Quirk {
                quirk: AcsQuirk::Override,
                enabled,
            } => write!(
                f,
                "is {} by pcie_acs_override",
                if *enabled {
                    "declared isolated"
                } else {
                    "not isolated"
                }
            ),
            AcsVerdict::Quirk { quirk, enabled } => write!(
                f,
                "is {} by Linux's ACS quirk {}",
                if *enabled { "isolated" } else { "not isolated" },
                quirk.linux_name()
            ),
            AcsVerdict::Declared { enabled } => write!(
                f,
                "is declared {} by the platform",
                if *enabled { "isolated" } else { "not isolated" }
            ),
            AcsVerdict::ConventionalPci => {
                f.write_str("is conventional PCI (a shared bus, never isolated)")
            }
            AcsVerdict::ExcludedPortType(p) => write!(f, "is a {p}, which ACS never isolates"),
            AcsVerdict::SingleFunction => f.write_str("is a single-function device (needs no ACS)"),
            AcsVerdict::ReservedPortType => f.write_str("has a reserved port type"),
            AcsVerdict::NoCapability => f.write_str("has no ACS capability"),
            AcsVerdict::NotEnabled { missing } => {
                write!(
                    f,
                    "has ACS without these controls enabled: {}",
                    Names(*missing)
                )
            }
            AcsVerdict::Enabled => f.write_str("has ACS enabled"),
        }
    }
}

/// ACS flags as their short names, `SV RR`.
struct Names(AcsFlags);

impl fmt::Display for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const N: [(AcsFlags, &str); 7] = [
            (AcsFlags::SV, "SV"),
            (AcsFlags::TB, "TB"),
            (AcsFlags::RR, "RR"),
            (AcsFlags::CR, "CR"),
            (AcsFlags::UF, "UF"),
            (AcsFlags::EC, "EC"),
            (AcsFlags::DT, "DT"),
        ];
        let mut first = true;
        for (flag, name) in N {
            if self.0.contains(flag) {
                if !first {
                    f.write_str(" ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// `pci_acs_flags_enabled`: the registers' answer. A control the device
/// does not implement counts as hard-wired on, except egress control.
fn acs_flags_enabled(f: &Function, flags: AcsFlags) -> AcsVerdict {
    let Some(acs) = f.acs else {
        return AcsVerdict::NoCapability;
    };
    let need = flags.intersection(acs.cap.union(AcsFlags::EC));
    let missing = AcsFlags(need.0 & !acs.ctrl.0);
    if missing.0 == 0 {
        AcsVerdict::Enabled
    } else {
        AcsVerdict::NotEnabled { missing }
    }
}

/// Linux's `pci_acs_enabled(pdev, flags)` for function `i`, with the
/// reason: a hand-declared answer, then the device-specific table, then
/// the rules per port type.
pub(crate) fn acs_enabled(
    cx: &QuirkContext<'_>,
    declared: &DeviceQuirks,
    i: usize,
    flags: AcsFlags,
) -> AcsVerdict {
    if let Some(provides) = declared.acs_provides {
        return AcsVerdict::Declared {
            enabled: provides.contains(flags),
        };
    }
    if let Some((quirk, enabled)) = device_specific_acs(cx, i, flags) {
        return AcsVerdict::Quirk { quirk, enabled };
    }
    let f = &cx.topo.functions()[i];
    let Some(port) = f.port_type() else {
        return AcsVerdict::ConventionalPci;
    };
    match port {
        PortType::PciToPcieBridge | PortType::PcieToPciBridge | PortType::RcEventCollector => {
            AcsVerdict::ExcludedPortType(port)
        }
        PortType::DownstreamPort | PortType::RootPort => acs_flags_enabled(f, flags),
        PortType::Endpoint
        | PortType::UpstreamPort
        | PortType::LegacyEndpoint
        | PortType::RcIntegratedEndpoint => {
            if cx.topo.multifunction(i) {
                acs_flags_enabled(f, flags)
            } else {
                AcsVerdict::SingleFunction
            }
        }
        PortType::Reserved(_) => AcsVerdict::ReservedPortType,
    }
}

/// The Intel LPC bridge's Root Complex Base Address register and its
/// enable bit, which the PCH root-port quirk needs.
const INTEL_LPC_RCBA: u16 = 0xf0;

/// Registers a listing does not show but a configuration space rebuilt
/// from it must hold for the kernel's rules to read the same: an Intel
/// LPC bridge at 1f.0 gets its RCBA enabled, as firmware always leaves it
/// on the chipsets whose root-port quirk reads it. Written into the bytes,
/// so that an export of the rebuilt machine, read back as raw
/// configuration space, groups the same.
pub(crate) fn fill_unlisted_registers(
    c: &mut crate::ConfigSpace,
    bdf: Bdf,
    vendor: u16,
    class: u32,
) {
    if vendor == crate::quirks::vendor::INTEL && bdf.devfn == 0x1f << 3 && class >> 8 == 0x0601 {
        let rcba = c.read_u32(INTEL_LPC_RCBA).unwrap_or(0);
        c.write_u32(INTEL_LPC_RCBA, rcba | 1);
    }
}

/// Linux's `pci_enable_acs` for every function, as the kernel runs it
/// while it sets each device up: the chipset hooks of Intel PCH and
/// Sunrise Point root ports, the standard enabling of SV, RR, CR and UF
/// where an IOMMU asked for ACS, then `disable_acs_redir` and
/// `config_acs` from the command line (both relative to the controls the
/// firmware left, as Linux computes them).
///
/// The input's ACS controls are taken as the firmware's. A dump of a
/// running Linux already shows its enabling, which this repeats without
/// change.
pub fn enable_acs(topo: &mut Topology, platform: &Platform) {
    let params = &platform.params;
    for i in 0..topo.len() {
        let mut enable_std = false;
        if params.requests_acs(platform.iommu) {
            // `pci_dev_specific_enable_acs`: a chipset hook that handles
            // the device stops the standard enabling.
            let f = &topo.functions()[i];
            if platform.linux_quirks && quirks::intel_pch_match(f) {
                let lpc = topo.on_same_bus(i, 0x1f << 3).map(|l| &topo.functions()[l]);
                let rcba_on = match lpc {
                    // (A rebuilt function has it set: see
                    // `fill_unlisted_registers`.)
                    Some(l) => l.config.read_u32(INTEL_LPC_RCBA).unwrap_or(0) & 1 != 0,
                    None => false,
                };
                let mut fl = topo.dev_flags(i);
                fl.acs_enabled_quirk = rcba_on;
                topo.set_dev_flags(i, fl);
            } else if platform.linux_quirks && quirks::intel_spt_match(f) && f.acs.is_some() {
                let acs = f.acs.expect("checked");
                let cap = f.config.read_u32(acs.offset + 4).unwrap_or(0);
                let ctrl = f
                    .config
                    .read_u32(acs.offset + INTEL_SPT_ACS_CTRL)
                    .unwrap_or(0);
                let new = ctrl | (cap & u32::from(crate::REQ_ACS_FLAGS.0));
                topo.function_mut(i)
                    .config
                    .write_u32(acs.offset + INTEL_SPT_ACS_CTRL, new);
            } else {
                enable_std = true;
            }
        }
        let f = &topo.functions()[i];
        let Some(acs) = f.acs else { continue };
        let fw = acs.ctrl;
        let mut ctrl = fw;
        if enable_std {
            ctrl = ctrl.union(acs.cap.intersection(crate::REQ_ACS_FLAGS));
        }
        let redir = AcsFlags(AcsFlags::RR.0 | AcsFlags::CR.0 | AcsFlags::EC.0);
        let spt = platform.linux_quirks && quirks::intel_spt_match(f);
        if params.disable_acs_redir.iter().any(|m| m.matches(topo, i)) {
            if spt {
                spt_disable_redir(topo, i);
            } else {
                ctrl = AcsFlags(fw.0 & !redir.0);
            }
        }
        if let Some(c) = params.config_acs.iter().find(|c| c.device.matches(topo, i)) {
            if spt {
                // Linux runs the chipset's redirect hook here too, and it
                // ends the configuration for these ports.
                spt_disable_redir(topo, i);
            } else {
                ctrl = AcsFlags((fw.0 & !c.mask.0) | (c.flags.0 & c.mask.0));
            }
        }
        topo.function_mut(i).set_acs_ctrl(ctrl);
    }
}

/// The Sunrise Point hook `pci_quirk_disable_intel_spt_pch_acs_redir`.
fn spt_disable_redir(topo: &mut Topology, i: usize) {
    let Some(acs) = topo.functions()[i].acs else {
        return;
    };
    let f = topo.function_mut(i);
    let ctrl = f
        .config
        .read_u32(acs.offset + INTEL_SPT_ACS_CTRL)
        .unwrap_or(0);
    let redir = u32::from(AcsFlags::RR.0 | AcsFlags::CR.0 | AcsFlags::EC.0);
    f.config
        .write_u32(acs.offset + INTEL_SPT_ACS_CTRL, ctrl & !redir);
}
