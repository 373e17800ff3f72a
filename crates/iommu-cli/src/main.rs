//! The `iommu` tool.
//!
//! With no arguments it builds the default platform, runs the IOMMU core end
//! to end on it (set ops, group, attach, map, translate, fault, unmap) and
//! prints the group listing and the sysfs tree. `--trace` shows every core
//! and driver operation as a call tree.
#![forbid(unsafe_code)]

mod bench;
mod bench_dma;
mod out;
mod run;
mod trace;

use out::out;
use std::io::Write as _;
use std::process::ExitCode;

const USAGE: &str = "\
usage: iommu [run] [--trace] [--passthrough] [--lazy]
       iommu groups [--passthrough] [--lazy]
       iommu sysfs [--passthrough] [--lazy]
       iommu bench pgtable [--json] [--quick] [--format NAME]...
       iommu bench dma [--threads N] [--seconds S] [--json] [--quick]
       iommu --help

Runs the Linux IOMMU model (iommu-rs) on a built-in simulated PCI platform.

commands:
  run      (default) set the IOMMU ops on the bus, then attach, map,
           translate, fault and unmap; print the group listing and the
           sysfs tree
  groups   only the group listing, as the well-known loop over
           /sys/kernel/iommu_groups prints it
  sysfs    only the sysfs tree
  bench pgtable
           time map/unmap/translate of every page-table format (the
           workloads of `cargo bench -p iommu-pgtable`); --json for
           machine-readable output, --quick for short runs, --format to
           pick formats (arm-lpae-s1-4k, arm-lpae-s2-4k, vtd-sl-4level,
           amd-v1, riscv-sv48)
  bench dma
           the DMA API hot path, as Linux's dma_map_benchmark: N threads
           map and unmap 4 KiB for S seconds (default 1 thread, 1 s) in a
           strict (DMA) and a lazy (DMA-FQ) domain, map and unmap timed
           separately; with N > 1 also 1 thread, for the speedup; plus IOVA
           alloc+free alone (cache hit, and the tree at 50% fragmentation)

options:
  --trace        print every core and driver operation as a call tree
  --passthrough  default domains are identity (iommu.passthrough=1)
  --lazy         translated default domains use a flush queue (iommu.strict=0)
";

/// What the command line asks for.
#[derive(Debug, Default, PartialEq)]
pub struct Options {
    command: Command,
    trace: bool,
    passthrough: bool,
    lazy: bool,
    bench: bench::BenchOptions,
    dma: bench_dma::DmaBenchOptions,
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
enum Command {
    #[default]
    Run,
    Groups,
    Sysfs,
    BenchPgtable,
    BenchDma,
    Help,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut o = Options::default();
    let mut command: Option<Command> = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let set = |c: Command, command: &mut Option<Command>| match command {
            Some(prev) => Err(format!("two commands given ({prev:?} and {c:?})")),
            None => {
                *command = Some(c);
                Ok(())
            }
        };
        match arg.as_str() {
            "run" => set(Command::Run, &mut command)?,
            "groups" => set(Command::Groups, &mut command)?,
            "sysfs" => set(Command::Sysfs, &mut command)?,
            "-h" | "--help" | "help" => set(Command::Help, &mut command)?,
            "bench" => match args.next().as_deref() {
                Some("pgtable") => set(Command::BenchPgtable, &mut command)?,
                Some("dma") => set(Command::BenchDma, &mut command)?,
                Some(other) => {
                    return Err(format!("unknown benchmark '{other}' (known: pgtable, dma)"))
                }
                None => return Err("bench needs a benchmark name (pgtable, dma)".into()),
            },
            "--threads" => {
                o.dma.threads = match args.next().map(|v| v.parse::<usize>()) {
                    Some(Ok(n)) if (1..=1024).contains(&n) => n,
                    _ => return Err("--threads needs a number from 1 to 1024".into()),
                }
            }
            "--seconds" => {
                o.dma.seconds = match args.next().map(|v| v.parse::<f64>()) {
                    Some(Ok(s)) if s.is_finite() && s > 0.0 && s <= 3600.0 => s,
                    _ => return Err("--seconds needs a number above 0 and at most 3600".into()),
                }
            }
            "--json" => o.bench.json = true,
            "--quick" => o.bench.quick = true,
            "--format" => match args.next() {
                Some(f) => o.bench.formats.push(f),
                None => return Err("--format needs a format name".into()),
            },
            "--trace" => o.trace = true,
            "--passthrough" => o.passthrough = true,
            "--lazy" => o.lazy = true,
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    o.command = command.unwrap_or_default();
    if o.trace && o.command != Command::Run {
        return Err("--trace goes with the run command".into());
    }
    let is_bench = matches!(o.command, Command::BenchPgtable | Command::BenchDma);
    if o.bench != bench::BenchOptions::default() && !is_bench {
        return Err("--json and --quick go with bench, --format with bench pgtable".into());
    }
    if !o.bench.formats.is_empty() && o.command != Command::BenchPgtable {
        return Err("--format goes with bench pgtable".into());
    }
    if o.dma != bench_dma::DmaBenchOptions::default() && o.command != Command::BenchDma {
        return Err("--threads and --seconds go with bench dma".into());
    }
    o.dma.json = o.bench.json;
    o.dma.quick = o.bench.quick;
    if is_bench && (o.passthrough || o.lazy) {
        return Err(
            "--passthrough and --lazy do not apply to bench (bench dma runs both modes)".into(),
        );
    }
    Ok(o)
}

fn main() -> ExitCode {
    let opts = match parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "iommu: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if opts.trace {
        trace::install();
    }
    let result = match opts.command {
        Command::Help => {
            out!("{USAGE}");
            Ok(())
        }
        Command::Run => run::run(&opts),
        Command::Groups => run::groups(&opts),
        Command::Sysfs => run::sysfs(&opts),
        Command::BenchPgtable => bench::pgtable(&opts.bench).map(|out| out!("{out}")),
        Command::BenchDma => bench_dma::dma(&opts.dma).map(|out| out!("{out}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "iommu: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Options, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn no_arguments_runs_the_default_job() {
        assert_eq!(p(&[]).unwrap(), Options::default());
    }

    #[test]
    fn flags_and_commands_parse() {
        let o = p(&["run", "--trace", "--lazy"]).unwrap();
        assert!(o.trace && o.lazy && !o.passthrough);
        assert_eq!(
            p(&["groups", "--passthrough"]).unwrap().command,
            Command::Groups
        );
    }

    #[test]
    fn bench_options_parse() {
        let o = p(&[
            "bench",
            "pgtable",
            "--json",
            "--format",
            "amd-v1",
            "--format",
            "riscv-sv48",
        ])
        .unwrap();
        assert_eq!(o.command, Command::BenchPgtable);
        assert!(o.bench.json && !o.bench.quick);
        assert_eq!(o.bench.formats, vec!["amd-v1", "riscv-sv48"]);
        assert!(p(&["bench"]).unwrap_err().contains("needs a benchmark"));
        assert!(p(&["bench", "dmx"])
            .unwrap_err()
            .contains("unknown benchmark 'dmx'"));
        let d = p(&[
            "bench",
            "dma",
            "--threads",
            "2",
            "--seconds",
            "0.5",
            "--json",
        ])
        .unwrap();
        assert_eq!(d.command, Command::BenchDma);
        assert_eq!((d.dma.threads, d.dma.seconds, d.dma.json), (2, 0.5, true));
        assert!(p(&["bench", "dma", "--threads", "0"]).is_err());
        assert!(p(&["bench", "dma", "--threads", "x"]).is_err());
        assert!(p(&["bench", "dma", "--seconds", "-1"]).is_err());
        assert!(p(&["bench", "dma", "--seconds", "nan"]).is_err());
        assert!(p(&["bench", "dma", "--format", "amd-v1"]).is_err());
        assert!(p(&["bench", "pgtable", "--threads", "2"]).is_err());
        assert!(p(&["bench", "pgtable", "--format"])
            .unwrap_err()
            .contains("needs a format"));
        assert!(p(&["groups", "--json"])
            .unwrap_err()
            .contains("go with bench"));
        assert!(p(&["bench", "pgtable", "--lazy"]).is_err());
    }

    #[test]
    fn bad_arguments_are_refused_with_a_reason() {
        assert!(p(&["--bogus"]).unwrap_err().contains("--bogus"));
        assert!(p(&["groups", "sysfs"])
            .unwrap_err()
            .contains("two commands"));
        assert!(p(&["sysfs", "--trace"]).is_err());
    }
}
