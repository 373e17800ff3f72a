//! The `iommu` tool.
//!
//! With no arguments it builds the default platform, runs the IOMMU core end
//! to end on it (set ops, group, attach, map, translate, fault, unmap) and
//! prints the group listing and the sysfs tree. `--trace` shows every core
//! and driver operation as a call tree.
#![forbid(unsafe_code)]

mod run;
mod trace;

use std::process::ExitCode;

const USAGE: &str = "\
usage: iommu [run] [--trace] [--passthrough] [--lazy]
       iommu groups [--passthrough] [--lazy]
       iommu sysfs [--passthrough] [--lazy]
       iommu --help

Runs the Linux IOMMU model (iommu-rs) on a built-in simulated PCI platform.

commands:
  run      (default) set the IOMMU ops on the bus, then attach, map,
           translate, fault and unmap; print the group listing and the
           sysfs tree
  groups   only the group listing, as the well-known loop over
           /sys/kernel/iommu_groups prints it
  sysfs    only the sysfs tree

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
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
enum Command {
    #[default]
    Run,
    Groups,
    Sysfs,
    Help,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut o = Options::default();
    let mut command: Option<Command> = None;
    for arg in args {
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
    fn bad_arguments_are_refused_with_a_reason() {
        assert!(p(&["--bogus"]).unwrap_err().contains("--bogus"));
        assert!(p(&["groups", "sysfs"])
            .unwrap_err()
            .contains("two commands"));
        assert!(p(&["sysfs", "--trace"]).is_err());
    }
}
