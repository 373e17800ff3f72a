//! Linux 6.12's device quirks that change IOMMU grouping, as data.
//!
//! Three families, from `drivers/pci/quirks.c`:
//!
//! - the device-specific ACS table (`pci_dev_acs_enabled[]`): devices
//!   whose isolation the standard ACS registers do not describe. Each entry
//!   is a vendor/device match and an [`AcsQuirk`]; the first entry whose
//!   rule answers decides, as in `pci_dev_specific_acs_enabled`;
//! - DMA-alias fixups: devices that issue DMA with another function's
//!   requester id (`pci_add_dma_alias`), bridges that alias like PCIe-to-PCI
//!   bridges without saying so, and bridges where translation starts;
//! - the ACS enable hooks of Intel chipsets (`pci_dev_acs_ops[]`), run by
//!   [`enable_acs`](crate::enable_acs).
//!
//! The tables are transcribed from the kernel's; the rules are written
//! from what the kernel's functions check.

use crate::{AcsFlags, Bdf, Function, PortType, Topology};
use alloc::vec::Vec;

/// `PCI_ANY_ID` in a table entry.
const ANY: u16 = 0xffff;

/// Vendor ids the tables use (`include/linux/pci_ids.h`).
#[allow(missing_docs)]
pub mod vendor {
    pub const ATI: u16 = 0x1002;
    pub const AMD: u16 = 0x1022;
    pub const SOLARFLARE: u16 = 0x1924;
    pub const INTEL: u16 = 0x8086;
    pub const RED_HAT_VIRTIO: u16 = 0x1af4;
    pub const QCOM: u16 = 0x17cb;
    pub const HXT: u16 = 0x1dbf;
    pub const CAVIUM: u16 = 0x177d;
    pub const AMCC: u16 = 0x10e8;
    pub const AMPERE: u16 = 0x1def;
    pub const BROADCOM: u16 = 0x14e4;
    pub const LOONGSON: u16 = 0x0014;
    pub const AMAZON_ANNAPURNA_LABS: u16 = 0x1c36;
    pub const ZHAOXIN: u16 = 0x1d17;
    pub const NXP: u16 = 0x1957;
    pub const WANGXUN: u16 = 0x8088;
    pub const EMULEX_BE3: u16 = 0x19a2;
    pub const EMULEX: u16 = 0x10df;
    pub const RICOH: u16 = 0x1180;
    pub const GLENFLY: u16 = 0x6766;
    pub const MARVELL_EXT: u16 = 0x1b4b;
    pub const TTI: u16 = 0x1103;
    pub const JMICRON: u16 = 0x197b;
    pub const LITE_ON: u16 = 0x1c28;
    pub const ADAPTEC2: u16 = 0x9005;
    pub const ASMEDIA: u16 = 0x1b21;
    pub const TUNDRA: u16 = 0x10e3;
    pub const ITE: u16 = 0x1283;
    pub const PLX: u16 = 0x10b5;
    pub const MICROSEMI: u16 = 0x11f8;
    pub const EFAR: u16 = 0x1055;
}

/// A rule of Linux's device-specific ACS table: how a device's isolation
/// is decided when its registers do not tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AcsQuirk {
    /// AMD/ATI southbridge multifunction devices on the root bus, on a
    /// machine with an AMD IOMMU: they redirect peer traffic upstream
    /// (`pci_quirk_amd_sb_acs`).
    AmdSouthbridge,
    /// Multifunction endpoints whose vendor says the functions do no
    /// peer-to-peer (`pci_quirk_mf_endpoint_acs`).
    MultifunctionEndpoint,
    /// Intel root-complex integrated endpoints, which do peer-to-peer only
    /// on translated addresses (`pci_quirk_rciep_acs`).
    IntelRciep,
    /// Root ports with ACS-like isolation but no ACS capability (Qualcomm,
    /// HXT: `pci_quirk_qcom_rp_acs`).
    QcomRootPort,
    /// Intel PCH root ports of the Ibex Peak to 9-series chipsets, isolated
    /// once the kernel has switched the chipset's peer decodes off
    /// (`pci_quirk_intel_pch_acs`).
    IntelPch,
    /// Intel Sunrise Point / Union Point and 7th/8th-generation mobile
    /// root ports, whose ACS control register sits at a different offset
    /// (`pci_quirk_intel_spt_pch_acs`).
    IntelSptPch,
    /// Cavium ThunderX root ports (`pci_quirk_cavium_acs`).
    Cavium,
    /// APM X-Gene and Ampere root ports (`pci_quirk_xgene_acs`).
    Xgene,
    /// Zhaoxin root and downstream ports (`pci_quirk_zhaoxin_pcie_ports_acs`).
    ZhaoxinPorts,
    /// Broadcom iProc PAXB root ports (`pci_quirk_brcm_acs`).
    Brcm,
    /// Loongson root ports (`pci_quirk_loongson_acs`).
    Loongson,
    /// Amazon Annapurna Labs root ports (`pci_quirk_al_acs`).
    AmazonAl,
    /// NXP LX2xx0 root ports (`pci_quirk_nxp_rp_acs`).
    NxpRootPort,
    /// Wangxun NICs, whose functions send peer traffic upstream
    /// (`pci_quirk_wangxun_nic_acs`).
    Wangxun,
    /// The out-of-tree ACS override patch (`pcie_acs_overrides`), where
    /// its users' kernels put it in the table. Answers only when
    /// `pcie_acs_override=` asks it to.
    Override,
}

impl AcsQuirk {
    /// The kernel function that implements the rule.
    pub fn linux_name(self) -> &'static str {
        match self {
            AcsQuirk::AmdSouthbridge => "pci_quirk_amd_sb_acs",
            AcsQuirk::MultifunctionEndpoint => "pci_quirk_mf_endpoint_acs",
            AcsQuirk::IntelRciep => "pci_quirk_rciep_acs",
            AcsQuirk::QcomRootPort => "pci_quirk_qcom_rp_acs",
            AcsQuirk::IntelPch => "pci_quirk_intel_pch_acs",
            AcsQuirk::IntelSptPch => "pci_quirk_intel_spt_pch_acs",
            AcsQuirk::Cavium => "pci_quirk_cavium_acs",
            AcsQuirk::Xgene => "pci_quirk_xgene_acs",
            AcsQuirk::ZhaoxinPorts => "pci_quirk_zhaoxin_pcie_ports_acs",
            AcsQuirk::Brcm => "pci_quirk_brcm_acs",
            AcsQuirk::Loongson => "pci_quirk_loongson_acs",
            AcsQuirk::AmazonAl => "pci_quirk_al_acs",
            AcsQuirk::NxpRootPort => "pci_quirk_nxp_rp_acs",
            AcsQuirk::Wangxun => "pci_quirk_wangxun_nic_acs",
            AcsQuirk::Override => "pcie_acs_override",
        }
    }
}

/// One entry of the ACS table.
#[derive(Clone, Copy, Debug)]
struct AcsEntry {
    vendor: u16,
    device: u16,
    quirk: AcsQuirk,
}

const fn e(vendor: u16, device: u16, quirk: AcsQuirk) -> AcsEntry {
    AcsEntry {
        vendor,
        device,
        quirk,
    }
}

use self::vendor as v;
use AcsQuirk as Q;

/// Linux 6.12's `pci_dev_acs_enabled[]`, in its order (the first rule
/// that answers wins), with the ACS override patch where its users' trees
/// add it.
static ACS_TABLE: &[AcsEntry] = &[
    e(v::ATI, 0x4385, Q::AmdSouthbridge),
    e(v::ATI, 0x439c, Q::AmdSouthbridge),
    e(v::ATI, 0x4383, Q::AmdSouthbridge),
    e(v::ATI, 0x439d, Q::AmdSouthbridge),
    e(v::ATI, 0x4384, Q::AmdSouthbridge),
    e(v::ATI, 0x4399, Q::AmdSouthbridge),
    e(v::AMD, 0x780f, Q::AmdSouthbridge),
    e(v::AMD, 0x7809, Q::AmdSouthbridge),
    e(v::SOLARFLARE, 0x0903, Q::MultifunctionEndpoint),
    e(v::SOLARFLARE, 0x0923, Q::MultifunctionEndpoint),
    e(v::SOLARFLARE, 0x0a03, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x10c6, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x10db, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x10dd, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x10e1, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x10f1, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x10f7, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x10f8, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x10f9, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x10fa, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x10fb, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x10fc, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x1507, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x1514, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x151c, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x1529, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x152a, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x154d, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x154f, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x1551, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x1558, Q::MultifunctionEndpoint),
    // 82580
    e(v::INTEL, 0x1509, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x150e, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x150f, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x1510, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x1511, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x1516, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x1527, Q::MultifunctionEndpoint),
    // 82576
    e(v::INTEL, 0x10c9, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x10e6, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x10e7, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x10e8, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x150a, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x150d, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x1518, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x1526, Q::MultifunctionEndpoint),
    // 82575
    e(v::INTEL, 0x10a7, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x10a9, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x10d6, Q::MultifunctionEndpoint),
    // I350
    e(v::INTEL, 0x1521, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x1522, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x1523, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x1524, Q::MultifunctionEndpoint),
    // 82571
    e(v::INTEL, 0x105e, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x105f, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x1060, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x10d9, Q::MultifunctionEndpoint),
    // I219
    e(v::INTEL, 0x15b7, Q::MultifunctionEndpoint),
    e(v::INTEL, 0x15b8, Q::MultifunctionEndpoint),
    e(v::INTEL, ANY, Q::IntelRciep),
    // Qualcomm QDF2xxx, SA8775P, Hamoa, Glymur; HXT SD4800
    e(v::QCOM, 0x0400, Q::QcomRootPort),
    e(v::QCOM, 0x0401, Q::QcomRootPort),
    e(v::QCOM, 0x0115, Q::QcomRootPort),
    e(v::QCOM, 0x0111, Q::QcomRootPort),
    e(v::QCOM, 0x0120, Q::QcomRootPort),
    e(v::HXT, 0x0401, Q::QcomRootPort),
    e(v::INTEL, ANY, Q::IntelPch),
    e(v::INTEL, ANY, Q::IntelSptPch),
    e(v::EMULEX_BE3, 0x0710, Q::MultifunctionEndpoint),
    e(v::EMULEX, 0x0720, Q::MultifunctionEndpoint),
    e(ANY, ANY, Q::Override),
    e(v::CAVIUM, ANY, Q::Cavium),
    e(v::CAVIUM, 0xa026, Q::MultifunctionEndpoint),
    e(v::CAVIUM, 0xa059, Q::MultifunctionEndpoint),
    e(v::CAVIUM, 0xa060, Q::MultifunctionEndpoint),
    e(v::AMCC, 0xe004, Q::Xgene),
    e(v::AMPERE, 0xe005, Q::Xgene),
    e(v::AMPERE, 0xe006, Q::Xgene),
    e(v::AMPERE, 0xe007, Q::Xgene),
    e(v::AMPERE, 0xe008, Q::Xgene),
    e(v::AMPERE, 0xe009, Q::Xgene),
    e(v::AMPERE, 0xe00a, Q::Xgene),
    e(v::AMPERE, 0xe00b, Q::Xgene),
    e(v::AMPERE, 0xe00c, Q::Xgene),
    e(v::BROADCOM, 0x16d7, Q::MultifunctionEndpoint),
    e(v::BROADCOM, 0x1750, Q::MultifunctionEndpoint),
    e(v::BROADCOM, 0x1751, Q::MultifunctionEndpoint),
    e(v::BROADCOM, 0x1752, Q::MultifunctionEndpoint),
    e(v::BROADCOM, 0x1760, Q::MultifunctionEndpoint),
    e(v::BROADCOM, 0x1761, Q::MultifunctionEndpoint),
    e(v::BROADCOM, 0x1762, Q::MultifunctionEndpoint),
    e(v::BROADCOM, 0x1763, Q::MultifunctionEndpoint),
    e(v::BROADCOM, 0xd714, Q::Brcm),
    e(v::LOONGSON, 0x3c09, Q::Loongson),
    e(v::LOONGSON, 0x3c19, Q::Loongson),
    e(v::LOONGSON, 0x3c29, Q::Loongson),
    e(v::LOONGSON, 0x7a09, Q::Loongson),
    e(v::LOONGSON, 0x7a19, Q::Loongson),
    e(v::LOONGSON, 0x7a29, Q::Loongson),
    e(v::LOONGSON, 0x7a39, Q::Loongson),
    e(v::LOONGSON, 0x7a49, Q::Loongson),
    e(v::LOONGSON, 0x7a59, Q::Loongson),
    e(v::LOONGSON, 0x7a69, Q::Loongson),
    e(v::AMAZON_ANNAPURNA_LABS, 0x0031, Q::AmazonAl),
    e(v::ZHAOXIN, 0x3038, Q::MultifunctionEndpoint),
    e(v::ZHAOXIN, 0x3104, Q::MultifunctionEndpoint),
    e(v::ZHAOXIN, 0x9083, Q::MultifunctionEndpoint),
    // NXP LX2xx0A/C/E/N and LX2xx2A/C/E/N root ports
    e(v::NXP, 0x8d81, Q::NxpRootPort),
    e(v::NXP, 0x8da1, Q::NxpRootPort),
    e(v::NXP, 0x8d83, Q::NxpRootPort),
    e(v::NXP, 0x8d80, Q::NxpRootPort),
    e(v::NXP, 0x8da0, Q::NxpRootPort),
    e(v::NXP, 0x8d82, Q::NxpRootPort),
    e(v::NXP, 0x8d90, Q::NxpRootPort),
    e(v::NXP, 0x8db0, Q::NxpRootPort),
    e(v::NXP, 0x8d92, Q::NxpRootPort),
    e(v::NXP, 0x8d91, Q::NxpRootPort),
    e(v::NXP, 0x8db1, Q::NxpRootPort),
    e(v::NXP, 0x8d93, Q::NxpRootPort),
    e(v::NXP, 0x8d89, Q::NxpRootPort),
    e(v::NXP, 0x8da9, Q::NxpRootPort),
    e(v::NXP, 0x8d8b, Q::NxpRootPort),
    e(v::NXP, 0x8d88, Q::NxpRootPort),
    e(v::NXP, 0x8da8, Q::NxpRootPort),
    e(v::NXP, 0x8d8a, Q::NxpRootPort),
    e(v::NXP, 0x8d98, Q::NxpRootPort),
    e(v::NXP, 0x8db8, Q::NxpRootPort),
    e(v::NXP, 0x8d9a, Q::NxpRootPort),
    e(v::NXP, 0x8d99, Q::NxpRootPort),
    e(v::NXP, 0x8db9, Q::NxpRootPort),
    e(v::NXP, 0x8d9b, Q::NxpRootPort),
    e(v::ZHAOXIN, ANY, Q::ZhaoxinPorts),
    e(v::WANGXUN, ANY, Q::Wangxun),
];

/// Device ids of the Intel PCH root ports `pci_quirk_intel_pch_acs`
/// covers: Ibex Peak, Cougar Point, Panther Point, Lynx Point (H and LP),
/// Wildcat Point, Patsburg, Wellsburg and the 9 series.
static INTEL_PCH_ROOT_PORTS: &[u16] = &[
    0x3b42, 0x3b43, 0x3b44, 0x3b45, 0x3b46, 0x3b47, 0x3b48, 0x3b49, 0x3b4a, 0x3b4b, 0x3b4c, 0x3b4d,
    0x3b4e, 0x3b4f, 0x3b50, 0x3b51, 0x1c10, 0x1c11, 0x1c12, 0x1c13, 0x1c14, 0x1c15, 0x1c16, 0x1c17,
    0x1c18, 0x1c19, 0x1c1a, 0x1c1b, 0x1c1c, 0x1c1d, 0x1c1e, 0x1c1f, 0x1e10, 0x1e11, 0x1e12, 0x1e13,
    0x1e14, 0x1e15, 0x1e16, 0x1e17, 0x1e18, 0x1e19, 0x1e1a, 0x1e1b, 0x1e1c, 0x1e1d, 0x1e1e, 0x1e1f,
    0x8c10, 0x8c11, 0x8c12, 0x8c13, 0x8c14, 0x8c15, 0x8c16, 0x8c17, 0x8c18, 0x8c19, 0x8c1a, 0x8c1b,
    0x8c1c, 0x8c1d, 0x8c1e, 0x8c1f, 0x9c10, 0x9c11, 0x9c12, 0x9c13, 0x9c14, 0x9c15, 0x9c16, 0x9c17,
    0x9c18, 0x9c19, 0x9c1a, 0x9c1b, 0x9c90, 0x9c91, 0x9c92, 0x9c93, 0x9c94, 0x9c95, 0x9c96, 0x9c97,
    0x9c98, 0x9c99, 0x9c9a, 0x9c9b, 0x1d10, 0x1d12, 0x1d14, 0x1d16, 0x1d18, 0x1d1a, 0x1d1c, 0x1d1e,
    0x8d10, 0x8d11, 0x8d12, 0x8d13, 0x8d14, 0x8d15, 0x8d16, 0x8d17, 0x8d18, 0x8d19, 0x8d1a, 0x8d1b,
    0x8d1c, 0x8d1d, 0x8d1e, 0x8c90, 0x8c92, 0x8c94, 0x8c96, 0x8c98, 0x8c9a, 0x8c9c, 0x8c9e,
];

/// The flags the "isolated like full ACS" quirks provide.
const SV_RR_CR_UF: AcsFlags =
    AcsFlags(AcsFlags::SV.0 | AcsFlags::RR.0 | AcsFlags::CR.0 | AcsFlags::UF.0);

/// Where the Sunrise Point quirk finds its control register: a dword
/// after the (dword) capability register.
pub(crate) const INTEL_SPT_ACS_CTRL: u16 = 8;

fn is_root_port(f: &Function) -> bool {
    f.port_type() == Some(PortType::RootPort)
}

/// Whether `f` is one of the root ports `pci_quirk_intel_pch_acs` covers.
pub(crate) fn intel_pch_match(f: &Function) -> bool {
    f.vendor == v::INTEL && is_root_port(f) && INTEL_PCH_ROOT_PORTS.contains(&f.device)
}

/// Whether `f` is one of the root ports `pci_quirk_intel_spt_pch_acs`
/// covers (Sunrise Point, Union Point, 7th/8th-generation mobile).
pub(crate) fn intel_spt_match(f: &Function) -> bool {
    f.vendor == v::INTEL
        && is_root_port(f)
        && matches!(f.device, 0xa110..=0xa11f | 0xa167..=0xa16a | 0xa290..=0xa29f | 0xa2e7..=0xa2ee | 0x9d10..=0x9d1b)
}

/// `pci_acs_ctrl_enabled`: whether `provided` covers every flag asked.
fn covers(asked: AcsFlags, provided: AcsFlags) -> bool {
    provided.contains(asked)
}

/// What the ACS rules need beyond the function: the machine around it.
pub(crate) struct QuirkContext<'a> {
    pub topo: &'a Topology,
    /// The machine's IOMMU is AMD's (its ACPI IVRS table exists).
    pub amd_iommu: bool,
    /// `pcie_acs_override=` as given.
    pub acs_override: &'a crate::AcsOverride,
    /// Whether Linux's tables apply (the override still does).
    pub linux_quirks: bool,
}

impl AcsQuirk {
    /// The rule's answer for function `i` asked for `flags`: `None` when
    /// the rule does not apply to the device (the kernel's `-ENOTTY`), so
    /// the next entry is tried.
    pub(crate) fn answer(self, cx: &QuirkContext<'_>, i: usize, flags: AcsFlags) -> Option<bool> {
        let topo = cx.topo;
        let f = &topo.functions()[i];
        match self {
            Q::AmdSouthbridge => {
                if !topo.multifunction(i) || !topo.on_root_bus(i) || !cx.amd_iommu {
                    return None;
                }
                let asked = flags.intersection(AcsFlags(
                    AcsFlags::RR.0 | AcsFlags::CR.0 | AcsFlags::EC.0 | AcsFlags::DT.0,
                ));
                Some(covers(asked, AcsFlags(AcsFlags::RR.0 | AcsFlags::CR.0)))
            }
            Q::MultifunctionEndpoint => Some(covers(
                flags,
                AcsFlags(SV_RR_CR_UF.0 | AcsFlags::TB.0 | AcsFlags::DT.0),
            )),
            Q::IntelRciep => (f.port_type() == Some(PortType::RcIntegratedEndpoint))
                .then(|| covers(flags, SV_RR_CR_UF)),
            Q::QcomRootPort | Q::Xgene | Q::Brcm | Q::Loongson | Q::NxpRootPort => {
                Some(covers(flags, SV_RR_CR_UF))
            }
            Q::IntelPch => {
                if !intel_pch_match(f) {
                    return None;
                }
                let provided = if topo.dev_flags(i).acs_enabled_quirk {
                    SV_RR_CR_UF
                } else {
                    AcsFlags(0)
                };
                Some(covers(flags, provided))
            }
            Q::IntelSptPch => {
                let acs = f.acs.filter(|_| intel_spt_match(f))?;
                let cap = f.config.read_u32(acs.offset + 4).unwrap_or(0);
                let ctrl = f
                    .config
                    .read_u32(acs.offset + INTEL_SPT_ACS_CTRL)
                    .unwrap_or(0);
                let asked = flags.intersection(AcsFlags(cap as u16).union(AcsFlags::EC));
                Some(covers(asked, AcsFlags(ctrl as u16)))
            }
            Q::Cavium => {
                let matches =
                    is_root_port(f) && matches!(f.device, 0xa000..=0xa7ff | 0xaf84 | 0xb884);
                matches.then(|| covers(flags, SV_RR_CR_UF))
            }
            Q::ZhaoxinPorts => {
                if !matches!(
                    f.port_type(),
                    Some(PortType::RootPort | PortType::DownstreamPort)
                ) {
                    return None;
                }
                Some(
                    matches!(f.device, 0x0710..=0x071e | 0x0721 | 0x0723..=0x0752)
                        && covers(flags, SV_RR_CR_UF),
                )
            }
            Q::AmazonAl => {
                is_root_port(f).then(|| flags.intersection(AcsFlags(!SV_RR_CR_UF.0)).0 == 0)
            }
            Q::Wangxun => Some(
                matches!(
                    f.device,
                    0x0100
                        ..=0x010f
                            | 0x1001
                            | 0x2001
                            | 0x5010
                            | 0x5025
                            | 0x5040
                            | 0x5110
                            | 0x5125
                            | 0x5140
                ) && covers(flags, SV_RR_CR_UF),
            ),
            Q::Override => cx.acs_override.answer(topo, i),
        }
    }
}

/// Linux's `pci_dev_specific_acs_enabled` for function `i`: the first
/// table rule that answers, with its answer.
pub(crate) fn device_specific_acs(
    cx: &QuirkContext<'_>,
    i: usize,
    flags: AcsFlags,
) -> Option<(AcsQuirk, bool)> {
    let f = &cx.topo.functions()[i];
    ACS_TABLE
        .iter()
        .filter(|e| {
            (e.vendor == ANY || e.vendor == f.vendor)
                && (e.device == ANY || e.device == f.device)
                && (cx.linux_quirks || e.quirk == Q::Override)
        })
        .find_map(|e| e.quirk.answer(cx, i, flags).map(|ok| (e.quirk, ok)))
}

/// A DMA-alias fixup of Linux's, by the function its name gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AliasQuirk {
    /// DMA with function 0's requester id (`quirk_dma_func0_alias`: Ricoh
    /// card readers, Glenfly GPUs).
    Func0,
    /// DMA with function 1's requester id (`quirk_dma_func1_alias`: Marvell
    /// SATA controllers and others).
    Func1,
    /// DMA from a hidden device at a fixed devfn (`quirk_fixed_dma_alias`:
    /// Adaptec 3405/3805).
    Fixed,
    /// A conventional-looking bridge that aliases as a PCIe-to-PCI bridge
    /// (`quirk_use_pcie_bridge_dma_alias`: ASMedia, Tundra, ITE, Intel
    /// 82801).
    PcieBridge,
    /// Intel MIC x200 NTB forwarding with alien requester ids
    /// (`quirk_mic_x200_dma_alias`).
    MicX200,
    /// Intel Visual Compute Accelerator: every slot's first five
    /// functions (`quirk_pex_vca_alias`).
    PexVca,
    /// The bridge where the IOMMU sits, so aliasing stops there
    /// (`quirk_bridge_cavm_thrx2_pcie_root`).
    XlateRoot,
    /// PLX NTB: all 256 devfns (`quirk_plx_ntb_dma_alias`).
    PlxNtb,
    /// Microsemi Switchtec NTB: aliases read from the device's registers
    /// at boot (`quirk_switchtec_ntb_dma_alias`), which no dump shows.
    SwitchtecNtb,
}

impl AliasQuirk {
    /// The kernel function that implements the fixup.
    pub fn linux_name(self) -> &'static str {
        match self {
            AliasQuirk::Func0 => "quirk_dma_func0_alias",
            AliasQuirk::Func1 => "quirk_dma_func1_alias",
            AliasQuirk::Fixed => "quirk_fixed_dma_alias",
            AliasQuirk::PcieBridge => "quirk_use_pcie_bridge_dma_alias",
            AliasQuirk::MicX200 => "quirk_mic_x200_dma_alias",
            AliasQuirk::PexVca => "quirk_pex_vca_alias",
            AliasQuirk::XlateRoot => "quirk_bridge_cavm_thrx2_pcie_root",
            AliasQuirk::PlxNtb => "quirk_plx_ntb_dma_alias",
            AliasQuirk::SwitchtecNtb => "quirk_switchtec_ntb_dma_alias",
        }
    }
}

/// The fixup that applies to `f`, by vendor and device id.
fn alias_quirk_of(f: &Function) -> Option<AliasQuirk> {
    use AliasQuirk as A;
    Some(match (f.vendor, f.device) {
        (v::RICOH, 0xe832 | 0xe476) | (v::GLENFLY, 0x3d40 | 0x3d41) => A::Func0,
        (
            v::MARVELL_EXT,
            0x9120 | 0x9123 | 0x9125 | 0x9128 | 0x9130 | 0x9170 | 0x9172 | 0x917a | 0x9182 | 0x9183
            | 0x91a0 | 0x9215 | 0x9220 | 0x9230 | 0x9235,
        )
        | (v::TTI, 0x0642 | 0x0645)
        | (v::JMICRON, 0x2392)
        | (v::LITE_ON, 0x0122) => A::Func1,
        (v::ADAPTEC2, 0x0285) => A::Fixed,
        (v::ASMEDIA, 0x1080)
        | (v::TUNDRA, 0x8113)
        | (v::ITE, 0x8892 | 0x8893)
        | (v::INTEL, 0x244e) => A::PcieBridge,
        (v::INTEL, 0x2260 | 0x2264) => A::MicX200,
        (v::INTEL, 0x2954 | 0x2955 | 0x2956 | 0x2958 | 0x2959 | 0x295a) => A::PexVca,
        (v::BROADCOM, 0x9000 | 0x9084) => A::XlateRoot,
        (v::PLX, 0x87b0 | 0x87b1) => A::PlxNtb,
        (v::MICROSEMI | v::EFAR, _) if f.class >> 8 == 0x0680 => A::SwitchtecNtb,
        _ => return None,
    })
}

/// What Linux keeps per device from its quirks (`dma_alias_mask`,
/// `pci_real_dma_dev`, the bridge flags) and what a platform adds by hand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceQuirks {
    /// Other functions (devfns on the same bus) whose requester id the
    /// device also uses for DMA (`pci_add_dma_alias`).
    pub dma_aliases: Vec<u8>,
    /// The device that really issues this one's DMA (`pci_real_dma_dev`),
    /// such as the Intel VMD controller for the devices behind it.
    pub real_dma_dev: Option<Bdf>,
    /// A bridge where the translation unit sits: aliasing stops there
    /// (`PCI_DEV_FLAGS_BRIDGE_XLATE_ROOT`).
    pub bridge_xlate_root: bool,
    /// A conventional bridge that is really a PCIe-to-PCI one and aliases
    /// with its secondary bus (`PCI_DEV_FLAG_PCIE_BRIDGE_ALIAS`).
    pub pcie_bridge_alias: bool,
    /// A device-specific ACS answer given by hand: the flags the device's
    /// isolation provides, overriding its registers and Linux's table.
    pub acs_provides: Option<AcsFlags>,
    /// The Linux fixup that set the fields above, if one did.
    pub alias_quirk: Option<AliasQuirk>,
}

impl DeviceQuirks {
    /// Adds `devfn` to the aliases, once.
    pub fn alias(&mut self, devfn: u8) {
        if !self.dma_aliases.contains(&devfn) {
            self.dma_aliases.push(devfn);
        }
    }
}

/// Intel VMD controllers' device ids (`drivers/pci/controller/vmd.c`).
fn is_vmd(f: &Function) -> bool {
    f.vendor == v::INTEL
        && matches!(
            f.device,
            0x201d | 0x28c0 | 0x467f | 0x4c3d | 0x7d0b | 0x9a0b | 0xa77f | 0xad0b | 0xb60b | 0xb06f
        )
}

/// Linux's header fixups for function `i`: the DMA aliases and bridge
/// flags its vendor and device ids call for.
pub(crate) fn linux_device_quirks(topo: &Topology, i: usize, vmds: &[usize]) -> DeviceQuirks {
    let f = &topo.functions()[i];
    let mut q = DeviceQuirks::default();
    let slot = f.bdf.devfn & !7;
    if let Some(aq) = alias_quirk_of(f) {
        match aq {
            AliasQuirk::Func0 if f.bdf.func() != 0 => q.alias(slot),
            AliasQuirk::Func1 if f.bdf.func() != 1 => q.alias(slot | 1),
            AliasQuirk::Fixed if matches!(f.subsystem, (v::ADAPTEC2, 0x02bb | 0x02bc)) => {
                q.alias(1 << 3)
            }
            AliasQuirk::PcieBridge => {
                let up = topo.upstream(i).map(|u| &topo.functions()[u]);
                q.pcie_bridge_alias = !topo.on_root_bus(i)
                    && f.bridge.is_some()
                    && f.header_type == crate::HeaderType::Bridge
                    && !f.is_pcie()
                    && up.is_some_and(|u| {
                        u.is_pcie() && u.port_type() != Some(PortType::PcieToPciBridge)
                    });
            }
            AliasQuirk::MicX200 => {
                for d in [0x10 << 3, 0x11 << 3, (0x12 << 3) | 3] {
                    q.alias(d);
                }
            }
            AliasQuirk::PexVca => {
                for s in 0..32u8 {
                    for func in 0..5 {
                        q.alias((s << 3) | func);
                    }
                }
            }
            AliasQuirk::XlateRoot => q.bridge_xlate_root = true,
            AliasQuirk::PlxNtb => {
                for d in 0..=255u8 {
                    q.alias(d);
                }
            }
            _ => {}
        }
        let changed = !q.dma_aliases.is_empty()
            || q.bridge_xlate_root
            || q.pcie_bridge_alias
            || aq == AliasQuirk::SwitchtecNtb;
        if changed {
            q.alias_quirk = Some(aq);
        }
    }
    // A device in a VMD domain issues DMA as its VMD controller; Linux
    // numbers VMD domains from 0x10000 in the controllers' probe order.
    if f.bdf.segment >= 0x10000 {
        let k = (f.bdf.segment - 0x10000) as usize;
        if let Some(&vmd) = vmds.get(k).or(vmds.first()) {
            q.real_dma_dev = Some(topo.functions()[vmd].bdf);
        }
    }
    q
}

/// The VMD controllers of `topo`, in enumeration order.
pub(crate) fn vmd_controllers(topo: &Topology, order: &[usize]) -> Vec<usize> {
    order
        .iter()
        .copied()
        .filter(|&i| topo.functions()[i].bdf.segment < 0x10000 && is_vmd(&topo.functions()[i]))
        .collect()
}
