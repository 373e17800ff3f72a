//! The `iommu` tool.
//!
//! With no arguments it builds the default platform, runs the IOMMU core end
//! to end on it (set ops, group, attach, map, translate, fault, unmap) and
//! prints the group listing and the sysfs tree. `--trace` shows every core
//! and driver operation as a call tree.
#![forbid(unsafe_code)]

mod bench;
mod run;
mod trace;

use std::process::ExitCode;

const USAGE: &str = "\
usage: iommu [run] [--trace] [--passthrough] [--lazy]
       iommu groups [--passthrough] [--lazy]
       iommu sysfs [--passthrough] [--lazy]
       iommu bench pgtable [--json] [--quick] [--format NAME]...
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

options:
  --trace        print every core and driver operation as a call tree
  --passthrough  default domains are identity (iommu.passthrough=1)
  --lazy         translated default domains use a flush queue (iommu.strict=0)
";

/// What the command line asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    command: Command,
    trace: bool,
    passthrough: bool,
    lazy: bool,
    bench: bench::BenchOptions,
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
enum Command {
    #[default]
    Run,
    Groups,
    Sysfs,
    BenchPgtable,
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
                Some(other) => return Err(format!("unknown benchmark '{other}' (known: pgtable)")),
                None => return Err("bench needs a benchmark name (pgtable)".into()),
            },
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
    if o.bench != bench::BenchOptions::default() && o.command != Command::BenchPgtable {
        return Err("--json, --quick and --format go with bench pgtable".into());
    }
    if o.command == Command::BenchPgtable && (o.passthrough || o.lazy) {
        return Err("--passthrough and --lazy do not apply to bench pgtable".into());
    }
    Ok(o)
}

fn main() -> ExitCode {
    let opts = match parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("iommu: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if opts.trace {
        trace::install();
    }
    let result = match opts.command {
        Command::Help => {
            print!("{USAGE}");
            Ok(())
        }
        Command::Run => run::run(&opts),
        Command::Groups => run::groups(&opts),
        Command::Sysfs => run::sysfs(&opts),
        Command::BenchPgtable => bench::pgtable(&opts.bench).map(|out| print!("{out}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iommu: {e}");
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
        assert!(p(&["bench", "dma"])
            .unwrap_err()
            .contains("unknown benchmark 'dma'"));
        assert!(p(&["bench", "pgtable", "--format"])
            .unwrap_err()
            .contains("needs a format"));
        assert!(p(&["groups", "--json"])
            .unwrap_err()
            .contains("go with bench pgtable"));
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
