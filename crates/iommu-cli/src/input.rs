//! Reading the machine a command works on: an `lspci` listing or hex
//! dump, a sysfs tree, a topology file, or the built-in default platform.
//! Any malformed input is a [`Failure::Input`] naming the file, the line
//! and the reason, and nothing is built.

use crate::firmware::{Facts, Table};
use crate::{Failure, IommuArg, MachineArgs, PlatformArgs, Policy};
use iommu_core::IommuConfig;
use iommu_firmware::dmar::Dmar;
use iommu_firmware::ivrs::Ivrs;
use iommu_pci::{
    parse_topology, read_sysfs, DeviceQuirks, ImportError, IommuKind, KernelParams, KernelVersion,
    Machine, Platform, SysfsError,
};
use iommu_platform::{PciPlatform, DEFAULT_TOPOLOGY, USB_RMRR};
use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// The most bytes a text input may have: far more than any machine's
/// listing (a 4,096-function server's is about 20 MiB).
const MAX_INPUT: u64 = 256 << 20;

/// A machine read, with what its input declares for the platform.
pub struct Loaded {
    /// What it came from, for messages (`default platform`, a path).
    pub source: String,
    /// The functions.
    pub machine: Machine,
    /// Declared quirks (topology files).
    pub quirks: BTreeMap<iommu_pci::Bdf, DeviceQuirks>,
    /// Declared uncovered functions (topology files).
    pub not_covered: Vec<iommu_pci::Bdf>,
    /// Whether this is the built-in platform.
    pub default: bool,
    /// A sysfs tree whose kernel made no IOMMU groups (no `iommu_group`
    /// links, an empty or missing `/sys/kernel/iommu_groups`): its IOMMU
    /// is off.
    pub iommu_off: bool,
    /// The kernel that made the input, when it says (this machine's
    /// running kernel).
    pub kernel: Option<KernelVersion>,
    /// The firmware's DMAR table (`--dmar`, or the sysfs tree's).
    pub dmar: Option<Table<Dmar>>,
    /// The firmware's IVRS table (`--ivrs`, or the sysfs tree's).
    pub ivrs: Option<Table<Ivrs>>,
}

impl Loaded {
    /// What the firmware table of an IOMMU of `kind` says of the machine,
    /// with the table's file: the DMAR for VT-d, the IVRS for AMD-Vi.
    pub fn firmware_facts(&self, kind: IommuKind) -> Option<(&str, Facts)> {
        match (kind, &self.dmar, &self.ivrs) {
            (IommuKind::IntelVtd, Some(t), _) => Some((
                &t.source,
                crate::firmware::apply_dmar(&self.machine, &t.table),
            )),
            (IommuKind::AmdVi, _, Some(t)) => Some((
                &t.source,
                crate::firmware::apply_ivrs(&self.machine, &t.table),
            )),
            _ => None,
        }
    }
}

fn read_text(path: &str) -> Result<String, Failure> {
    let mut buf = Vec::new();
    let what = if path == "-" { "standard input" } else { path };
    let res = if path == "-" {
        std::io::stdin().take(MAX_INPUT + 1).read_to_end(&mut buf)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_INPUT + 1).read_to_end(&mut buf))
    };
    res.map_err(|e| Failure::Input(format!("{what}: {e}")))?;
    if buf.len() as u64 > MAX_INPUT {
        return Err(Failure::Input(format!(
            "{what}: larger than {} MiB",
            MAX_INPUT >> 20
        )));
    }
    String::from_utf8(buf).map_err(|e| {
        Failure::Input(format!(
            "{what}: not UTF-8 text (byte {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

fn import_failure(path: &str, e: ImportError) -> Failure {
    let what = if path == "-" { "<stdin>" } else { path };
    match e.line() {
        Some(line) => Failure::Input(format!("{what}:{line}: {}", strip_line(&e))),
        None => Failure::Input(format!("{what}: {e}")),
    }
}

/// The error's text without its own `line N: ` prefix.
fn strip_line(e: &ImportError) -> String {
    let s = e.to_string();
    match s.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") => rest.to_string(),
        _ => s,
    }
}

/// Reads the machine `args` names, or the default platform, with the
/// firmware's DMAR and IVRS where there are some: those `platform` names
/// (`--dmar`, `--ivrs`), else the ones in the sysfs tree read (this
/// machine's /sys included).
pub fn load(args: &MachineArgs, platform: &PlatformArgs) -> Result<Loaded, Failure> {
    let (mut loaded, tree) = load_machine(args)?;
    let in_tree = |name: &str| {
        tree.as_ref()
            .map(|t| t.join("firmware/acpi/tables").join(name))
            .filter(|p| p.exists())
    };
    // The tree's own table: one that cannot be read leaves the prediction
    // without it, said so, rather than refusing the machine.
    fn lenient<T>(r: Result<T, Failure>) -> Result<Option<T>, Failure> {
        match r {
            Ok(t) => Ok(Some(t)),
            Err(Failure::Input(why)) => {
                note(&format!(
                    "{why}; predicting without it (no firmware regions, every function covered)"
                ));
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }
    loaded.dmar = match (&platform.dmar, in_tree("DMAR")) {
        (Some(p), _) => Some(crate::firmware::read_dmar(p)?),
        (None, Some(p)) => lenient(crate::firmware::read_dmar(&p))?,
        (None, None) => None,
    };
    loaded.ivrs = match (&platform.ivrs, in_tree("IVRS")) {
        (Some(p), _) => Some(crate::firmware::read_ivrs(p)?),
        (None, Some(p)) if platform.dmar.is_none() => lenient(crate::firmware::read_ivrs(&p))?,
        _ => None,
    };
    Ok(loaded)
}

/// The machine `args` names, and the sysfs tree it came from (if any).
fn load_machine(args: &MachineArgs) -> Result<(Loaded, Option<PathBuf>), Failure> {
    let plain = |source: String, machine: Machine| Loaded {
        source,
        machine,
        quirks: BTreeMap::new(),
        not_covered: Vec::new(),
        default: false,
        iommu_off: false,
        kernel: None,
        dmar: None,
        ivrs: None,
    };
    // An input without a single function is a mistake (an empty file, the
    // wrong file), never a machine without devices.
    let no_functions = |p: &str, run: &str| {
        let what = if p == "-" { "standard input" } else { p };
        Failure::Input(format!(
            "{what}: no PCI functions in it; expected the output of `{run}`"
        ))
    };
    if let Some(p) = &args.lspci {
        let text = read_text(p)?;
        let m = Machine::from_lspci_v(&text).map_err(|e| import_failure(p, e))?;
        if m.devices.is_empty() {
            return Err(no_functions(p, "sudo lspci -vvvnn"));
        }
        return Ok((plain(p.clone(), m), None));
    }
    if let Some(p) = &args.lspci_x {
        let text = read_text(p)?;
        let mut m = Machine::from_lspci_x(&text).map_err(|e| import_failure(p, e))?;
        if m.devices.is_empty() {
            return Err(no_functions(p, "sudo lspci -xxxx"));
        }
        name_devices(&mut m);
        return Ok((plain(p.clone(), m), None));
    }
    // Without an input: this machine, as ls-iommu reads it, where it has
    // PCI devices in sysfs; the demo platform elsewhere, said so.
    let this_machine = args.lspci.is_none()
        && args.lspci_x.is_none()
        && args.sysfs.is_none()
        && args.topology.is_none()
        && !args.demo;
    if this_machine {
        // `IOMMU_LIVE_SYSFS` names another tree: the tests play another
        // host with it.
        let played = std::env::var_os("IOMMU_LIVE_SYSFS").map(PathBuf::from);
        let live = played.clone().unwrap_or_else(|| PathBuf::from("/sys"));
        let has_pci =
            std::fs::read_dir(live.join("bus/pci/devices")).is_ok_and(|mut d| d.next().is_some());
        if has_pci {
            let mut loaded = load_sysfs(&live).map_err(|e| match e {
                SysfsError::WithoutRoot(_) => Failure::Input(format!(
                    "this machine: {e}; run as root (`sudo iommu groups`), or pass another input (--lspci, --sysfs, --demo)"
                )),
                other => Failure::Input(other.to_string()),
            })?;
            loaded.source = format!("this machine ({})", live.display());
            // The running kernel, unless the tests play another host.
            loaded.kernel = played
                .is_none()
                .then(|| std::fs::read_to_string("/proc/sys/kernel/osrelease").ok())
                .flatten()
                .and_then(|r| r.parse().ok());
            return Ok((loaded, Some(live)));
        }
        note("no PCI devices in /sys/bus/pci here: showing the demo platform (--demo)");
    }
    if let Some(dir) = &args.sysfs {
        let loaded = load_sysfs(dir).map_err(|e| Failure::Input(e.to_string()))?;
        return Ok((loaded, Some(dir.clone())));
    }
    let (source, text, default) = match &args.topology {
        Some(p) => (p.clone(), read_text(p)?, false),
        None => (
            "default platform".to_string(),
            DEFAULT_TOPOLOGY.to_string(),
            true,
        ),
    };
    let t = parse_topology(&text).map_err(|e| import_failure(&source, e))?;
    if t.machine.devices.is_empty() {
        return Err(Failure::Input(format!("{source}: no functions")));
    }
    Ok((
        Loaded {
            source,
            machine: t.machine,
            quirks: t.quirks,
            not_covered: t.not_covered,
            default,
            iommu_off: false,
            kernel: None,
            dmar: None,
            ivrs: None,
        },
        None,
    ))
}

/// A live or copied sysfs tree: its functions, named, and whether its
/// kernel made no groups. A running kernel with an IOMMU links every
/// translated function to its group; without one there are no links, and
/// /sys has an empty kernel/iommu_groups (or none).
fn load_sysfs(dir: &Path) -> Result<Loaded, SysfsError> {
    let mut m = read_sysfs(dir)?;
    name_devices(&mut m);
    let groups_dir = dir.join("kernel/iommu_groups");
    let no_groups_dir = dir.join("kernel").is_dir()
        && std::fs::read_dir(&groups_dir).map_or(true, |mut d| d.next().is_none());
    let iommu_off = !m.has_kernel_groups() || no_groups_dir;
    Ok(Loaded {
        source: dir.display().to_string(),
        machine: m,
        quirks: BTreeMap::new(),
        not_covered: Vec::new(),
        default: false,
        iommu_off,
        kernel: None,
        dmar: None,
        ivrs: None,
    })
}

/// Names the functions an input gave only by their ids, from the system's
/// `pci.ids` (as lspci would); without one they keep the ids.
fn name_devices(m: &mut Machine) {
    let Some(ids) = crate::pciids::PciIds::system() else {
        return;
    };
    for d in &mut m.devices {
        if d.description.is_none() {
            d.description = Some(ids.describe(&d.function));
        }
    }
}

/// The PCI platform options for a loaded machine.
pub fn platform(loaded: &Loaded, args: &PlatformArgs) -> Result<Platform, Failure> {
    let (params, ignored) = match &args.cmdline {
        Some(c) => KernelParams::parse_reporting(c).map_err(|e| Failure::Input(e.to_string()))?,
        None => (KernelParams::default(), Vec::new()),
    };
    for i in &ignored {
        note(&format!("`{}` ignored: {}", i.word, i.why));
    }
    let iommu = match args.iommu {
        IommuArg::Auto if loaded.default => IommuKind::Generic,
        // The firmware describes its IOMMUs: VT-d units, AMD IOMMUs.
        IommuArg::Auto if loaded.dmar.is_some() => IommuKind::IntelVtd,
        IommuArg::Auto if loaded.ivrs.is_some() => IommuKind::AmdVi,
        IommuArg::Auto => IommuKind::detect(&loaded.machine.functions()),
        IommuArg::Generic => IommuKind::Generic,
        IommuArg::IntelVtd => IommuKind::IntelVtd,
        IommuArg::AmdVi => IommuKind::AmdVi,
        IommuArg::ArmSmmu => IommuKind::ArmSmmu,
        IommuArg::Virtio => IommuKind::virtio_on(&loaded.machine.functions()),
    };
    let kernel = match &args.kernel {
        Some(v) => v
            .parse::<KernelVersion>()
            .map_err(|e| Failure::Input(format!("--kernel {v}: {e}")))?,
        None => loaded.kernel.unwrap_or_default(),
    };
    let mut not_covered = loaded.not_covered.clone();
    let mut quirks = loaded.quirks.clone();
    if let Some((source, facts)) = loaded.firmware_facts(iommu) {
        if !facts.not_covered.is_empty() {
            let n = facts.not_covered.len();
            note(&format!(
                "{source}: no IOMMU covers {n} function{}; Linux gives them no group",
                if n == 1 { "" } else { "s" }
            ));
        }
        not_covered.extend(facts.not_covered);
        for (bdf, q) in facts.quirks {
            let mine = quirks.entry(bdf).or_default();
            for a in q.dma_aliases {
                mine.alias(a);
            }
        }
    } else {
        for (t, what) in [
            (
                loaded.dmar.as_ref().map(|t| &t.source),
                "a DMAR, VT-d units",
            ),
            (
                loaded.ivrs.as_ref().map(|t| &t.source),
                "an IVRS, AMD IOMMUs",
            ),
        ] {
            if let Some(source) = t {
                note(&format!(
                    "{source}: {what}, but the IOMMU is {iommu}: the table is left aside"
                ));
            }
        }
    }
    Ok(Platform {
        kernel,
        iommu,
        params,
        linux_quirks: !args.no_quirks,
        quirks,
        not_covered,
    })
}

/// A note for the person running the tool, on stderr (stdout stays the
/// answer, for scripts).
pub fn note(text: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "iommu: note: {text}");
}

/// The boot policy as the core's configuration: the flags, what the
/// kernel command line says (`iommu=pt`, `iommu.passthrough=`,
/// `iommu.strict=`), which must not contradict them, otherwise the
/// kernel's own default for the IOMMU (`lazy_default`), and over all of
/// them a driver that forces strict invalidation (`forced`, why).
///
/// # Errors
/// [`Failure::Input`] when a flag and the command line disagree.
pub fn config(
    p: &Policy,
    params: &KernelParams,
    lazy_default: bool,
    forced: Option<&str>,
) -> Result<IommuConfig, Failure> {
    let clash = |flag: &str, param: &str| {
        Failure::Input(format!(
            "{flag} contradicts `{param}` on the command line (--cmdline)"
        ))
    };
    if p.passthrough && params.passthrough == Some(false) {
        return Err(clash("--passthrough", "iommu.passthrough=0"));
    }
    if p.lazy && params.strict == Some(true) {
        return Err(clash("--lazy", "iommu.strict=1"));
    }
    if p.strict && params.strict == Some(false) {
        return Err(clash("--strict", "iommu.strict=0"));
    }
    let asked = if p.lazy {
        Some(false)
    } else if p.strict {
        Some(true)
    } else {
        params.strict
    };
    let strict = match (forced, asked) {
        (Some(why), Some(false)) => {
            note(&format!("lazy invalidation asked for, but {why}"));
            true
        }
        (Some(_), _) => true,
        (None, asked) => asked.unwrap_or(!lazy_default),
    };
    Ok(IommuConfig {
        passthrough: p.passthrough || params.passthrough == Some(true),
        strict,
    })
}

/// Builds a platform's driver from the PCI layer's grouping.
pub type MakeDriver<'a> = Box<
    dyn FnOnce(
            std::sync::Arc<iommu_soft::PciGrouping>,
        )
            -> Result<std::sync::Arc<dyn iommu_platform::DmaHardware>, iommu_core::Errno>
        + 'a,
>;

/// Builds the machine behind the soft IOMMU.
pub fn build(loaded: &Loaded, platform: Platform, policy: &Policy) -> Result<PciPlatform, Failure> {
    build_on(loaded, platform, policy, None)
}

/// Builds the machine behind the soft IOMMU, or behind the driver `make`
/// builds from the PCI layer's grouping.
pub fn build_on(
    loaded: &Loaded,
    platform: Platform,
    policy: &Policy,
    make: Option<MakeDriver<'_>>,
) -> Result<PciPlatform, Failure> {
    let mut resv = if loaded.default {
        vec![("00:14.0".parse().expect("an address"), USB_RMRR)]
    } else {
        Vec::new()
    };
    // The firmware's RMRRs and unity ranges, as the drivers report them.
    if let Some((_, facts)) = loaded.firmware_facts(platform.iommu) {
        resv.extend(facts.resv);
    }
    let bar =
        crate::progress::spinner(loaded.machine.devices.len() > 1000, "building the platform");
    let config = config(
        policy,
        &platform.params,
        platform.iommu.lazy_by_default(),
        platform.forces_strict(loaded.machine.devices.iter().map(|d| &d.function)),
    )?;
    let p = match make {
        None => PciPlatform::from_machine(loaded.machine.clone(), platform, config, &resv),
        Some(make) => {
            PciPlatform::from_machine_on(loaded.machine.clone(), platform, config, &resv, make)
        }
    }
    .map_err(|e| match e {
        iommu_platform::PlatformError::Topology(t) => {
            Failure::Input(format!("{}: {t}", loaded.source))
        }
        other => Failure::Run(other.to_string()),
    });
    bar.finish_and_clear();
    p
}
