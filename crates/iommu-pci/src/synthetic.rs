//! Synthetic machines for benchmarks and scale tests, and a writer of
//! `lspci -vvvnn`-style listings, so that the listing importer can be
//! measured and checked on machines of any size.

use crate::{short_name, Function, Machine, PortType};
use alloc::format;
use alloc::string::String;
use core::fmt::Write as _;

/// Functions per root port of [`server`]: the port, a switch's upstream
/// port, eight downstream ports, four NVMe drives and four NICs with 31
/// virtual functions each.
pub const FUNCTIONS_PER_PORT: usize = 1 + 1 + 8 + 4 + 4 * 32;

/// A server of `ports` root ports (20 per PCI segment), each above a
/// switch of eight downstream ports with ACS: four NVMe drives and four
/// SR-IOV NICs with 31 VFs each, so [`FUNCTIONS_PER_PORT`] functions per
/// port, plus a host bridge per segment. As a topology file.
pub fn server_topology(ports: usize) -> String {
    let mut s =
        String::from("# synthetic server: root ports above switches, NVMe and SR-IOV NICs\n");
    const ACS: &str = "acs=SV,RR,CR,UF";
    for (seg, chunk) in (0..ports)
        .collect::<alloc::vec::Vec<_>>()
        .chunks(20)
        .enumerate()
    {
        let _ = writeln!(s, "{seg:04x}:00:00.0 host-bridge id=0de5:0001");
        let mut bus = 1u32;
        for (k, _) in chunk.iter().enumerate() {
            let (up_bus, internal) = (bus, bus + 1);
            let last = bus + 1 + 8;
            let dev = k + 1;
            let _ = writeln!(
                s,
                "{seg:04x}:00:{dev:02x}.0 root-port id=0de5:0002 buses={up_bus:02x}-{last:02x} {ACS}"
            );
            let _ = writeln!(
                s,
                "{seg:04x}:{up_bus:02x}:00.0 upstream-port id=0de5:0003 buses={internal:02x}-{last:02x}"
            );
            for d in 0..8u32 {
                let below = internal + 1 + d;
                let _ = writeln!(
                    s,
                    "{seg:04x}:{internal:02x}:{d:02x}.0 downstream-port id=0de5:0004 buses={below:02x}-{below:02x} {ACS}"
                );
                if d % 2 == 0 {
                    let _ = writeln!(
                        s,
                        "{seg:04x}:{below:02x}:00.0 endpoint id=0de5:0300 class=010802"
                    );
                } else {
                    let _ = writeln!(
                        s,
                        "{seg:04x}:{below:02x}:00.0 endpoint id=0de5:0200 class=0200 ari sriov=31 vf-offset=1 vf-stride=1 vf-id=0210"
                    );
                }
            }
            bus = last + 1;
        }
    }
    s
}

/// The server of [`server_topology`].
pub fn server(ports: usize) -> Machine {
    crate::parse_topology(&server_topology(ports))
        .expect("the synthetic topology parses")
        .machine
}

fn port_words(p: PortType, f: &Function) -> String {
    let slot = if f
        .config
        .read_u16(f.pcie.map_or(0, |c| c.offset) + 2)
        .unwrap_or(0)
        & 0x100
        != 0
    {
        "+"
    } else {
        "-"
    };
    match p {
        PortType::Endpoint => "Endpoint".into(),
        PortType::LegacyEndpoint => "Legacy Endpoint".into(),
        PortType::RootPort => format!("Root Port (Slot{slot})"),
        PortType::UpstreamPort => "Upstream Port".into(),
        PortType::DownstreamPort => format!("Downstream Port (Slot{slot})"),
        PortType::PcieToPciBridge => "PCI-Express to PCI/PCI-X Bridge".into(),
        PortType::PciToPcieBridge => format!("PCI/PCI-X to PCI-Express Bridge (Slot{slot})"),
        PortType::RcIntegratedEndpoint => "Root Complex Integrated Endpoint".into(),
        PortType::RcEventCollector => "Root Complex Event Collector".into(),
        PortType::Reserved(v) => format!("Unknown type {v}"),
    }
}

/// Writes a machine as `lspci -vvvnn` would list the registers grouping
/// reads (and the kernel's group, when the machine has one per device),
/// so that [`Machine::from_lspci_v`] reads back the same functions.
pub fn write_lspci_v(m: &Machine) -> String {
    let mut s = String::new();
    for d in &m.devices {
        let f = &d.function;
        let desc = d
            .description
            .clone()
            .unwrap_or_else(|| crate::describe_function(f));
        let name = if f.bdf.segment == 0 && m.devices.iter().all(|x| x.function.bdf.segment == 0) {
            short_name(f.bdf)
        } else {
            format!("{}", f.bdf)
        };
        let prog = if f.class & 0xff != 0 {
            format!(" (prog-if {:02x})", f.class & 0xff)
        } else {
            String::new()
        };
        let _ = writeln!(s, "{name} {desc}{prog}");
        // What `-vv` prints for every function (the importer refuses a
        // listing without any register line, as `lspci -nn` prints).
        let cmd = f.config.read_u16(0x04).unwrap_or(0);
        let pm = |bit: u16| if cmd & bit != 0 { '+' } else { '-' };
        let _ = writeln!(s, "\tControl: I/O{} Mem{} BusMaster{}", pm(1), pm(2), pm(4));
        if f.subsystem != (0, 0) {
            let _ = writeln!(
                s,
                "\tSubsystem: Device [{:04x}:{:04x}]",
                f.subsystem.0, f.subsystem.1
            );
        }
        if let Some(g) = d.kernel_group {
            let _ = writeln!(s, "\tIOMMU group: {g}");
        }
        // Every bridge has the line, as lspci prints it: one the firmware
        // left unconfigured shows secondary and subordinate 00.
        let buses = match (f.bridge, f.header_type) {
            (Some(b), _) => Some((b.primary, b.secondary, b.subordinate)),
            (None, crate::HeaderType::Bridge | crate::HeaderType::CardBus) => {
                Some((f.config.read_u8(0x18).unwrap_or(0), 0, 0))
            }
            (None, crate::HeaderType::Normal) => None,
        };
        if let Some((p, sec, sub)) = buses {
            let _ = writeln!(
                s,
                "\tBus: primary={p:02x}, secondary={sec:02x}, subordinate={sub:02x}, sec-latency=0"
            );
        }
        for &(id, off) in &f.capabilities {
            match id {
                crate::cap_id::EXP => {
                    let p = f.pcie.expect("an Express capability was parsed");
                    let _ = writeln!(
                        s,
                        "\tCapabilities: [{off:02x}] Express (v{}) {}, MSI 00",
                        p.version,
                        port_words(p.port_type, f)
                    );
                }
                crate::cap_id::PCIX => {
                    let _ = writeln!(s, "\tCapabilities: [{off:02x}] PCI-X non-bridge device");
                }
                _ => {}
            }
        }
        for &(id, off) in &f.ext_capabilities {
            match id {
                crate::ext_cap_id::ACS => {
                    let acs = f.acs.expect("parsed");
                    let _ = writeln!(s, "\tCapabilities: [{off:03x} v1] Access Control Services");
                    let _ = writeln!(s, "\t\tACSCap:\t{}", acs.cap);
                    let _ = writeln!(s, "\t\tACSCtl:\t{}", acs.ctrl);
                }
                crate::ext_cap_id::ARI => {
                    let ari = f.ari.expect("parsed");
                    let _ = writeln!(
                        s,
                        "\tCapabilities: [{off:03x} v1] Alternative Routing-ID Interpretation (ARI)"
                    );
                    let _ = writeln!(
                        s,
                        "\t\tARICap:\tMFVC- ACS-, Next Function: {}",
                        ari.next_function
                    );
                }
                crate::ext_cap_id::SRIOV => {
                    let iov = f.sriov.expect("parsed");
                    let _ = writeln!(
                        s,
                        "\tCapabilities: [{off:03x} v1] Single Root I/O Virtualization (SR-IOV)"
                    );
                    let flag = |b: bool| if b { '+' } else { '-' };
                    let ari = f.config.read_u16(off + 8).unwrap_or(0) & 0x10 != 0;
                    let _ = writeln!(
                        s,
                        "\t\tIOVCtl:\tEnable{} Migration- Interrupt- MSE- ARIHierarchy{} 10BitTagReq-",
                        flag(iov.vf_enable),
                        flag(ari)
                    );
                    let _ = writeln!(
                        s,
                        "\t\tInitial VFs: {}, Total VFs: {}, Number of VFs: {}, Function Dependency Link: 00",
                        iov.initial_vfs, iov.total_vfs, iov.num_vfs
                    );
                    let _ = writeln!(
                        s,
                        "\t\tVF offset: {}, stride: {}, Device ID: {:04x}",
                        iov.first_vf_offset, iov.vf_stride, iov.vf_device
                    );
                }
                other => {
                    // As lspci names what it does not decode, so that the
                    // list keeps its shape when read back.
                    let version = f.config.read_u32(off).map_or(0, |h| (h >> 16) & 0xf);
                    let _ = if other == 0 {
                        writeln!(s, "\tCapabilities: [{off:03x} v{version}] Null")
                    } else {
                        writeln!(
                            s,
                            "\tCapabilities: [{off:03x} v{version}] Extended Capability ID {other:#x}"
                        )
                    };
                }
            }
        }
        s.push('\n');
    }
    s
}
