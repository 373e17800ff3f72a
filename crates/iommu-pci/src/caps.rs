//! The capabilities IOMMU grouping reads, decoded from their registers
//! (PCI Express Base Specification 6.0: 7.5.3 PCI Express Capability,
//! 7.7.11 ACS, 7.8.7 ARI, 9.3.3 SR-IOV).

use core::fmt;

/// The Device/Port Type field of the PCI Express Capabilities register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortType {
    /// PCI Express endpoint (0).
    Endpoint,
    /// Legacy PCI Express endpoint (1).
    LegacyEndpoint,
    /// Root port of a root complex (4).
    RootPort,
    /// Upstream port of a switch (5).
    UpstreamPort,
    /// Downstream port of a switch (6).
    DownstreamPort,
    /// PCI Express to PCI/PCI-X bridge (7).
    PcieToPciBridge,
    /// PCI/PCI-X to PCI Express bridge (8).
    PciToPcieBridge,
    /// Root complex integrated endpoint (9).
    RcIntegratedEndpoint,
    /// Root complex event collector (10).
    RcEventCollector,
    /// A value the specification reserves.
    Reserved(u8),
}

impl PortType {
    /// The type encoded by `v` (bits 7:4 of the capabilities register).
    pub const fn from_bits(v: u8) -> PortType {
        match v {
            0 => PortType::Endpoint,
            1 => PortType::LegacyEndpoint,
            4 => PortType::RootPort,
            5 => PortType::UpstreamPort,
            6 => PortType::DownstreamPort,
            7 => PortType::PcieToPciBridge,
            8 => PortType::PciToPcieBridge,
            9 => PortType::RcIntegratedEndpoint,
            10 => PortType::RcEventCollector,
            other => PortType::Reserved(other),
        }
    }

    /// The field's value.
    pub const fn bits(self) -> u8 {
        match self {
            PortType::Endpoint => 0,
            PortType::LegacyEndpoint => 1,
            PortType::RootPort => 4,
            PortType::UpstreamPort => 5,
            PortType::DownstreamPort => 6,
            PortType::PcieToPciBridge => 7,
            PortType::PciToPcieBridge => 8,
            PortType::RcIntegratedEndpoint => 9,
            PortType::RcEventCollector => 10,
            PortType::Reserved(v) => v,
        }
    }
}

impl fmt::Display for PortType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortType::Endpoint => f.write_str("endpoint"),
            PortType::LegacyEndpoint => f.write_str("legacy endpoint"),
            PortType::RootPort => f.write_str("root port"),
            PortType::UpstreamPort => f.write_str("switch upstream port"),
            PortType::DownstreamPort => f.write_str("switch downstream port"),
            PortType::PcieToPciBridge => f.write_str("PCIe-to-PCI bridge"),
            PortType::PciToPcieBridge => f.write_str("PCI-to-PCIe bridge"),
            PortType::RcIntegratedEndpoint => f.write_str("root complex integrated endpoint"),
            PortType::RcEventCollector => f.write_str("root complex event collector"),
            PortType::Reserved(v) => write!(f, "reserved port type {v}"),
        }
    }
}

/// The PCI Express capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pcie {
    /// Where it starts.
    pub offset: u16,
    /// Capability version (bits 3:0).
    pub version: u8,
    /// Device/port type (bits 7:4).
    pub port_type: PortType,
}

/// The bits of the ACS capability and control registers (7.7.11.2, 7.7.11.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AcsFlags(pub u16);

impl AcsFlags {
    /// Source validation.
    pub const SV: AcsFlags = AcsFlags(1 << 0);
    /// Translation blocking.
    pub const TB: AcsFlags = AcsFlags(1 << 1);
    /// P2P request redirect.
    pub const RR: AcsFlags = AcsFlags(1 << 2);
    /// P2P completion redirect.
    pub const CR: AcsFlags = AcsFlags(1 << 3);
    /// Upstream forwarding.
    pub const UF: AcsFlags = AcsFlags(1 << 4);
    /// P2P egress control.
    pub const EC: AcsFlags = AcsFlags(1 << 5);
    /// Direct translated P2P.
    pub const DT: AcsFlags = AcsFlags(1 << 6);

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: AcsFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets' bits.
    #[must_use]
    pub const fn union(self, other: AcsFlags) -> AcsFlags {
        AcsFlags(self.0 | other.0)
    }

    /// The bits set in both.
    #[must_use]
    pub const fn intersection(self, other: AcsFlags) -> AcsFlags {
        AcsFlags(self.0 & other.0)
    }
}

impl fmt::Display for AcsFlags {
    /// As lspci prints them: `SrcValid+ TransBlk- ReqRedir+ ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(AcsFlags, &str); 7] = [
            (AcsFlags::SV, "SrcValid"),
            (AcsFlags::TB, "TransBlk"),
            (AcsFlags::RR, "ReqRedir"),
            (AcsFlags::CR, "CmpltRedir"),
            (AcsFlags::UF, "UpstreamFwd"),
            (AcsFlags::EC, "EgressCtrl"),
            (AcsFlags::DT, "DirectTrans"),
        ];
        for (i, (flag, name)) in NAMES.iter().enumerate() {
            let sign = if self.contains(*flag) { '+' } else { '-' };
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}{sign}")?;
        }
        Ok(())
    }
}

/// The ACS extended capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acs {
    /// Where it starts.
    pub offset: u16,
    /// What the function implements.
    pub cap: AcsFlags,
    /// What is enabled.
    pub ctrl: AcsFlags,
}

/// The ARI extended capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ari {
    /// Where it starts.
    pub offset: u16,
    /// The next function number of the device (bits 15:8 of the capability
    /// register); 0 ends the list.
    pub next_function: u8,
}

/// The SR-IOV extended capability of a physical function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sriov {
    /// Where it starts.
    pub offset: u16,
    /// VF Enable (control bit 0).
    pub vf_enable: bool,
    /// Initial VFs.
    pub initial_vfs: u16,
    /// Total VFs.
    pub total_vfs: u16,
    /// NumVFs: how many VFs are set up.
    pub num_vfs: u16,
    /// First VF Offset: the first VF's routing id minus the PF's.
    pub first_vf_offset: u16,
    /// VF Stride: from one VF's routing id to the next.
    pub vf_stride: u16,
    /// The device id VFs report.
    pub vf_device: u16,
}

impl Sriov {
    /// The routing id (requester id) of VF `n` (0-based) of a PF whose own
    /// is `pf_rid`, or `None` past the 16-bit space.
    pub fn vf_requester_id(&self, pf_rid: u16, n: u16) -> Option<u16> {
        let rid = u32::from(pf_rid)
            + u32::from(self.first_vf_offset)
            + u32::from(n) * u32::from(self.vf_stride);
        u16::try_from(rid).ok()
    }
}
