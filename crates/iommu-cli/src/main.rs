//! The `iommu` tool.
//!
//! With no arguments it builds the default platform, runs the IOMMU core
//! end to end on it (set ops, group, attach, map, translate, fault, unmap)
//! and prints the group listing and the sysfs tree. `groups` predicts,
//! explains and compares the IOMMU groups of a real machine from its
//! `lspci` listing, hex dump or sysfs tree; `sysfs` shows or exports the
//! model as a tree real tools read; `bench` times the hot paths.
#![forbid(unsafe_code)]

mod bench;
mod bench_dma;
mod bench_pci;
mod bench_scale;
mod bench_virtio;
mod dot;
mod fd;
mod firmware;
mod groups;
mod input;
mod out;
mod pciids;
mod progress;
mod run;
mod trace;
mod vfio;
mod vm;
mod whatif;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Runs the Linux IOMMU model (iommu-rs): a simulated PCI platform end to
/// end, or the IOMMU groups of a real machine predicted from its lspci
/// output, explained, compared with the kernel's and exported as sysfs.
#[derive(Debug, Parser)]
#[command(name = "iommu", version, args_conflicts_with_subcommands = true)]
#[command(
    after_help = "With no command, `iommu` runs `iommu run` on the built-in platform.

Exit status: 0 success; 1 `--compare` found the prediction differs; 2 bad usage or input; \
3 the environment failed (a file or directory that cannot be written, an export directory \
that is not empty, Graphviz missing); 4 an internal error (please report it)."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set the IOMMU ops on the default platform's bus, then attach, map,
    /// translate, fault and unmap; print the group listing and the sysfs
    /// tree (the default command)
    Run(RunArgs),
    /// The IOMMU groups, as the well-known loop over /sys/kernel/iommu_groups
    /// prints them: of this machine (run as root), of a listing or sysfs
    /// tree of another, or of the demo platform (--demo)
    Groups(GroupsArgs),
    /// The sysfs tree of the model; --export writes it as real files
    Sysfs(SysfsArgs),
    /// A guest with a virtio-iommu in one process: its IOMMU core runs the
    /// virtio-iommu driver over virtqueues in guest memory, a virtio-net
    /// and a virtio-blk do DMA through the DMA API; prints the requests on
    /// the wire and the guest's groups
    Vm(VmArgs),
    /// A VMM passing the NIC through with Linux's iommufd API
    /// (/dev/iommu): bind, IOAS, HWPT with dirty tracking, attach, map the
    /// guest's RAM, the device's DMA, the dirty bitmap of a migration,
    /// unmap; --trace shows the core's calls under each ioctl
    Fd(FdArgs),
    /// Time the hot paths
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// Options of `iommu fd`.
#[derive(Debug, Default, Args)]
pub struct FdArgs {
    #[command(flatten)]
    trace: TraceArgs,
    /// Print the story as JSON
    #[arg(long)]
    json: bool,
}

/// Options of `iommu vm`.
#[derive(Debug, Default, Args)]
pub struct VmArgs {
    #[command(flatten)]
    trace: TraceArgs,
    #[command(flatten)]
    policy: Policy,
    /// Whose MSI doorbell the device reports as the endpoints' MSI region
    #[arg(long, value_enum, default_value_t = VmArch::X86)]
    arch: VmArch,
    /// Print the run as JSON
    #[arg(long)]
    json: bool,
}

/// The guest's architecture, for its MSI doorbell.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VmArch {
    /// 0xfee00000, 1 MiB
    #[default]
    X86,
    /// The GICv3 ITS of QEMU's virt machine
    Arm,
    /// The IMSIC of QEMU's RISC-V virt machine
    Riscv,
}

/// Options of `iommu run`.
#[derive(Debug, Default, Args)]
pub struct RunArgs {
    #[command(flatten)]
    trace: TraceArgs,
    #[command(flatten)]
    policy: Policy,
    /// The IOMMU the platform's devices sit behind
    #[arg(long, value_enum, default_value_t = RunIommu::Soft)]
    iommu: RunIommu,
    /// Print the run as JSON
    #[arg(long)]
    json: bool,
}

/// The driver and hardware of `iommu run`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunIommu {
    /// The reference software IOMMU
    #[default]
    Soft,
    /// The Arm SMMUv3 driver on the emulated SMMUv3: STEs, CDs, command
    /// and event queues in simulated memory
    Smmuv3,
    /// The Intel VT-d driver on the emulated VT-d: root, context and
    /// second-level tables and the invalidation queue in simulated memory
    Vtd,
    /// The Intel VT-d driver on an emulated VT-d with scalable mode: PASID
    /// tables, first-stage (x86-64) tables, 256-bit descriptors
    #[value(name = "vtd-sm")]
    VtdSm,
}

/// Where `--trace` goes.
#[derive(Debug, Default, Args)]
pub struct TraceArgs {
    /// Print every core and driver operation as a call tree, on stderr
    #[arg(long)]
    trace: bool,
    /// Write the call tree to FILE instead of stderr
    #[arg(long, value_name = "FILE")]
    trace_file: Option<PathBuf>,
}

/// The boot policy of the default domains.
#[derive(Debug, Default, Clone, Copy, Args)]
pub struct Policy {
    /// Default domains are identity (iommu.passthrough=1)
    #[arg(long)]
    passthrough: bool,
    /// Translated default domains use a flush queue (iommu.strict=0;
    /// the kernel's default on x86: VT-d and AMD-Vi)
    #[arg(long, conflicts_with = "strict")]
    lazy: bool,
    /// Translated default domains invalidate on every unmap
    /// (iommu.strict=1; the kernel's default elsewhere)
    #[arg(long)]
    strict: bool,
}

/// Which IOMMU a machine has.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IommuArg {
    /// AMD-Vi where an AMD IOMMU function is listed, an Arm SMMU on an
    /// Arm server's root complex, VT-d on an Intel host bridge, otherwise
    /// generic
    #[default]
    Auto,
    /// Covers every function, no vendor rules
    Generic,
    /// Intel VT-d
    IntelVtd,
    /// AMD-Vi: its own function and the root complex are not translated;
    /// AMD southbridge quirks
    AmdVi,
    /// Arm SMMU (ACPI IORT): the root complexes are not translated; one
    /// device per stream id (arm-smmu-v3)
    ArmSmmu,
    /// virtio-iommu (ACPI VIOT): every function but its own; on a PC the
    /// kernel defaults to lazy invalidation and the device reports the
    /// x86 MSI range
    Virtio,
}

/// A machine to work on.
#[derive(Debug, Default, Args)]
#[group(id = "input", multiple = false)]
pub struct MachineArgs {
    /// An `lspci -vvvnn` listing made as root (`-` for stdin)
    #[arg(long, value_name = "FILE")]
    lspci: Option<String>,
    /// An `lspci -xxxx` hex dump made as root (`-` for stdin)
    #[arg(long = "lspci-x", value_name = "FILE")]
    lspci_x: Option<String>,
    /// A live or copied sysfs tree (/sys, /sys/bus/pci or its devices/)
    #[arg(long, value_name = "DIR")]
    sysfs: Option<PathBuf>,
    /// A topology file of this project's format (`-` for stdin)
    #[arg(long, value_name = "FILE")]
    topology: Option<String>,
    /// The built-in demo platform instead of this machine (what a run
    /// without input shows where there is no /sys/bus/pci)
    #[arg(long, conflicts_with_all = ["lspci", "lspci_x", "sysfs", "topology"])]
    demo: bool,
}

/// How to read a machine.
#[derive(Debug, Default, Args)]
pub struct PlatformArgs {
    /// The machine's IOMMU
    #[arg(long, value_enum, default_value_t = IommuArg::Auto)]
    iommu: IommuArg,
    /// The kernel command line (a whole /proc/cmdline will do): grouping
    /// (pci=disable_acs_redir=..., pci=config_acs=..., pcie_acs_override=...,
    /// pci=noacs), the default domain type (iommu=pt, iommu.passthrough=,
    /// iommu.strict=) and the IOMMU off (iommu=off, intel_iommu=off,
    /// amd_iommu=off); other parameters are said to be ignored
    #[arg(long, value_name = "PARAMS", allow_hyphen_values = true)]
    cmdline: Option<String>,
    /// The kernel whose rules apply where they changed between versions
    /// (arm-smmu-v3 refused a device with a duplicated stream id before
    /// 6.12): `6.8`, or what `uname -r` prints; by default the running
    /// kernel when reading this machine, else 6.12
    #[arg(long, value_name = "VERSION")]
    kernel: Option<String>,
    /// Ignore Linux's quirk tables (registers only)
    #[arg(long)]
    no_quirks: bool,
    /// The firmware's DMAR table, a copy of
    /// /sys/firmware/acpi/tables/DMAR (root can read it): which functions a
    /// VT-d unit covers, and the RMRRs Linux reports as `direct` reserved
    /// regions; read from /sys on this machine and from a --sysfs tree
    /// that has one
    #[arg(long, value_name = "FILE", conflicts_with = "ivrs")]
    dmar: Option<PathBuf>,
    /// The firmware's IVRS table, a copy of
    /// /sys/firmware/acpi/tables/IVRS (root can read it): which functions
    /// an AMD IOMMU translates, the aliases their requests carry, and the
    /// unity ranges Linux reports as `direct` reserved regions; read from
    /// /sys on this machine and from a --sysfs tree that has one
    #[arg(long, value_name = "FILE")]
    ivrs: Option<PathBuf>,
}

/// Options of `iommu groups`.
#[derive(Debug, Default, Args)]
pub struct GroupsArgs {
    #[command(flatten)]
    machine: MachineArgs,
    #[command(flatten)]
    platform: PlatformArgs,
    #[command(flatten)]
    policy: Policy,
    /// For every group of more than one device, the reasons, rule by rule
    #[arg(long)]
    explain: bool,
    /// The groups before and after a change, side by side: a kernel
    /// parameter (`pcie_acs_override=downstream`), `move DEVICE to SLOT`,
    /// `enable ACS on DEVICE` or `disable ACS on DEVICE`; repeat to
    /// combine
    #[arg(long, value_name = "CHANGE")]
    what_if: Vec<String>,
    /// Compare the prediction with the kernel's `IOMMU group:` lines of
    /// the input; exit status 1 when they differ
    #[arg(long)]
    compare: bool,
    /// Print the PCI tree as Graphviz DOT, groups as clusters (instead of
    /// the listing: not with --json, --explain, --compare or --what-if)
    #[arg(long, conflicts_with_all = ["json", "explain", "compare", "what_if"])]
    dot: bool,
    /// Also render the DOT graph to an SVG file (needs Graphviz's `dot`);
    /// the machine as it is, so not with --what-if
    #[arg(long, value_name = "FILE", conflicts_with = "what_if")]
    svg: Option<PathBuf>,
    /// Whether DEVICE's group can be given to a VM through VFIO, which
    /// devices must be bound to vfio-pci (and which bridges may stay), and
    /// the `vfio-pci.ids=` to boot with; DEVICE is an address (`01:00.0`)
    /// or `vendor:device` ids
    #[arg(long, value_name = "DEVICE", conflicts_with_all = ["dot", "explain", "compare", "what_if"])]
    vfio: Option<String>,
    /// Only the groups with a display controller (GPU)
    #[arg(long)]
    gpu: bool,
    /// Only the groups with a USB controller
    #[arg(long)]
    usb: bool,
    /// Only the groups with a network controller
    #[arg(long)]
    net: bool,
    /// Only the groups with a storage controller
    #[arg(long)]
    storage: bool,
    /// Only group N (the kernel's number where the input has it)
    #[arg(long, value_name = "N")]
    group: Option<u32>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// Options of `iommu sysfs`.
#[derive(Debug, Default, Args)]
pub struct SysfsArgs {
    #[command(flatten)]
    machine: MachineArgs,
    #[command(flatten)]
    platform: PlatformArgs,
    #[command(flatten)]
    policy: Policy,
    /// Write the tree under DIR as real files and links (`lspci -A
    /// linux-sysfs -O sysfs.path=DIR/bus/pci` reads it)
    #[arg(long, value_name = "DIR")]
    export: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Map, unmap and translate in every page-table format (the workloads
    /// of `cargo bench -p iommu-pgtable`)
    Pgtable {
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// Fewer, shorter samples
        #[arg(long)]
        quick: bool,
        /// Only this format (repeatable)
        #[arg(long, value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(bench::FORMATS))]
        format: Vec<String>,
    },
    /// The DMA API hot path, as Linux's dma_map_benchmark: N threads map
    /// and unmap 4 KiB for S seconds in a strict and a lazy domain; plus
    /// IOVA alloc+free alone
    Dma {
        /// Threads mapping at once (1 to 1024)
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
        threads: u32,
        /// Seconds per run (above 0, at most 3600)
        #[arg(long, default_value_t = 1.0, value_parser = parse_seconds)]
        seconds: f64,
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// Short runs
        #[arg(long)]
        quick: bool,
    },
    /// The virtio-iommu device at 1 thousand, 64 thousand and 1 million
    /// mappings: MAP+UNMAP without a transport and through the virtqueue,
    /// translation on an IOTLB hit and miss; and the guest's DMA API
    /// through the virtio-iommu driver
    Virtio {
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// Fewer samples, no 1-million size
        #[arg(long)]
        quick: bool,
    },
    /// How one operation's cost grows with what the system holds: map+unmap
    /// against mappings held (1 thousand to 16 million) and DMA mappings
    /// live, against PCI functions (10 to 10,000), and IOVA allocation
    /// against fragmentation (0 to 90 %), each curve checked by its own
    /// fit; exits with 1 when one grows faster than O(log n)
    Scale {
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// Fewer samples, small sizes only
        #[arg(long)]
        quick: bool,
    },
    /// PCI grouping and `lspci -vvvnn` parsing of servers from 256 to 4096
    /// functions
    Pci {
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// Fewer samples
        #[arg(long)]
        quick: bool,
    },
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err("a number above 0 and at most 3600".into()),
    }
}

/// How a command failed, each way with its exit status.
#[derive(Debug)]
pub enum Failure {
    /// The input cannot be read: a file, its line and the reason (2).
    Input(String),
    /// The environment failed: a path that cannot be written, an export
    /// directory that is not empty, a tool that is missing (3).
    Env(String),
    /// Something that should not fail did: a bug (4).
    Run(String),
    /// `--compare` found differences, already printed (1).
    Differs,
}

/// Exit status of [`Failure::Env`].
const EXIT_ENV: u8 = 3;
/// Exit status of [`Failure::Run`].
const EXIT_INTERNAL: u8 = 4;

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure::Run(s)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run::main_job(&cli.run),
        Some(Command::Run(r)) => run::main_job(&r),
        Some(Command::Groups(g)) => groups::groups(&g),
        Some(Command::Sysfs(s)) => groups::sysfs(&s),
        Some(Command::Vm(v)) => vm::vm(&v),
        Some(Command::Fd(f)) => fd::fd(&f),
        Some(Command::Bench(b)) => bench_command(b),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(e)) => {
            let _ = writeln!(std::io::stderr(), "iommu: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Env(e)) => {
            let _ = writeln!(std::io::stderr(), "iommu: {e}");
            ExitCode::from(EXIT_ENV)
        }
        Err(Failure::Run(e)) => {
            let _ = writeln!(std::io::stderr(), "iommu: internal error: {e}");
            ExitCode::from(EXIT_INTERNAL)
        }
        Err(Failure::Differs) => ExitCode::FAILURE,
    }
}

fn bench_command(b: BenchCommand) -> Result<(), Failure> {
    let text = match b {
        BenchCommand::Pgtable {
            json,
            quick,
            format,
        } => bench::pgtable(&bench::BenchOptions {
            json,
            quick,
            formats: format,
        })?,
        BenchCommand::Dma {
            threads,
            seconds,
            json,
            quick,
        } => bench_dma::dma(&bench_dma::DmaBenchOptions {
            threads: threads as usize,
            seconds,
            json,
            quick,
        })?,
        BenchCommand::Pci { json, quick } => bench_pci::pci(json, quick)?,
        BenchCommand::Virtio { json, quick } => bench_virtio::virtio(json, quick)?,
        BenchCommand::Scale { json, quick } => {
            let (text, ok) = bench_scale::scale(json, quick)?;
            out::out!("{text}");
            return if ok { Ok(()) } else { Err(Failure::Differs) };
        }
    };
    out::out!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn p(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("iommu").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_arguments_runs_the_default_job() {
        let c = p(&[]).unwrap();
        assert!(c.command.is_none());
        assert!(!c.run.trace.trace);
    }

    #[test]
    fn flags_and_commands_parse() {
        let c = p(&["run", "--trace", "--lazy"]).unwrap();
        let Some(Command::Run(r)) = c.command else {
            panic!()
        };
        assert!(r.trace.trace && r.policy.lazy && !r.policy.passthrough);
        let c = p(&["--trace"]).unwrap();
        assert!(c.run.trace.trace);
        let c = p(&[
            "groups",
            "--lspci",
            "-",
            "--explain",
            "--what-if",
            "pci=noacs",
        ])
        .unwrap();
        let Some(Command::Groups(g)) = c.command else {
            panic!()
        };
        assert_eq!(g.machine.lspci.as_deref(), Some("-"));
        assert!(g.explain);
        assert_eq!(g.what_if, vec!["pci=noacs"]);
    }

    #[test]
    fn bad_arguments_are_refused_with_a_usage_error() {
        for bad in [
            &["--bogus"][..],
            &["groups", "sysfs"],
            &["groups", "--lspci", "a", "--sysfs", "b"],
            &["bench"],
            &["bench", "dmx"],
            &["bench", "dma", "--threads", "0"],
            &["bench", "dma", "--threads", "x"],
            &["bench", "dma", "--seconds", "-1"],
            &["bench", "dma", "--seconds", "nan"],
            &["bench", "pgtable", "--threads", "2"],
            &["sysfs", "--trace"],
            &["groups", "--iommu", "ibm"],
        ] {
            let e = p(bad).expect_err(&format!("{bad:?}"));
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }
}
