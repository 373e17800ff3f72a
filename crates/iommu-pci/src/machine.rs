//! A machine as an importer reads it: its functions, and what the input
//! says beside configuration space (descriptions, the kernel's groups).
//!
//! Every importer ends here, so a listing, a hex dump, a sysfs tree and a
//! topology file all become the same model, and [`compare`] checks a
//! prediction against the kernel's own groups when the input has them.

use crate::import::{parse_lspci_x, ImportError};
use crate::lspci::parse_lspci_v;
use crate::{Analysis, Bdf, ConfigErrorKind, ConfigSpace, Function, Platform, TopologyError};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// The most functions a machine may have: more than any real machine
/// (a large server has a few thousand), few enough to bound an import's
/// memory at 64 MiB of configuration space.
pub const MAX_FUNCTIONS: usize = 16384;

/// One function of a machine, with what its input said of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineDevice {
    /// The function.
    pub function: Function,
    /// What `lspci -nn` prints after the address, when the input says.
    pub description: Option<String>,
    /// The kernel's group for the function, when the input says.
    pub kernel_group: Option<u32>,
    /// The driver bound to the function, when the input says.
    pub driver: Option<String>,
    /// Where the function starts in its input.
    pub line: Option<usize>,
}

/// A machine's functions, as read from one input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Machine {
    /// The functions, in input order.
    pub devices: Vec<MachineDevice>,
}

/// A function's raw configuration space, as a hex dump or sysfs gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFunction {
    /// Its address.
    pub bdf: Bdf,
    /// Its bytes.
    pub config: ConfigSpace,
    /// Where it starts in its input.
    pub line: Option<usize>,
    /// The kernel's group, if the input says.
    pub kernel_group: Option<u32>,
    /// The driver bound to it, if the input says.
    pub driver: Option<String>,
}

impl Machine {
    /// Reads an `lspci -vvvnn` listing (see [`parse_lspci_v`]).
    ///
    /// # Errors
    /// As [`parse_lspci_v`].
    pub fn from_lspci_v(text: &str) -> Result<Machine, ImportError> {
        let listed = parse_lspci_v(text)?;
        Ok(Machine {
            devices: listed
                .into_iter()
                .map(|l| MachineDevice {
                    function: l.function,
                    description: Some(l.description),
                    kernel_group: l.iommu_group,
                    driver: l.driver,
                    line: Some(l.line),
                })
                .collect(),
        })
    }

    /// Reads an `lspci -xxxx` hex dump.
    ///
    /// # Errors
    /// As [`parse_lspci_x`], and as [`Machine::from_raw`].
    pub fn from_lspci_x(text: &str) -> Result<Machine, ImportError> {
        let raw = parse_lspci_x(text)?
            .into_iter()
            .map(|d| RawFunction {
                bdf: d.bdf,
                config: d.config,
                line: Some(d.line),
                kernel_group: None,
                driver: None,
            })
            .collect();
        Machine::from_raw(raw)
    }

    /// Parses raw configuration spaces. A virtual function's vendor and
    /// device registers read as all ones on real hardware; a function
    /// that reads so and that some physical function's SR-IOV capability
    /// names as its VF takes the PF's vendor id and the VF device id, as
    /// Linux gives it.
    ///
    /// # Errors
    /// [`ImportError::Config`] (naming the function's line, or 0 when
    /// the input has no lines) for bytes that are not a function, and
    /// [`ImportError::TooMany`] past [`MAX_FUNCTIONS`].
    pub fn from_raw(raw: Vec<RawFunction>) -> Result<Machine, ImportError> {
        if raw.len() > MAX_FUNCTIONS {
            return Err(ImportError::TooMany {
                limit: MAX_FUNCTIONS,
            });
        }
        let mut parsed: Vec<Option<Function>> = Vec::with_capacity(raw.len());
        let mut absent = Vec::new();
        for (k, r) in raw.iter().enumerate() {
            match Function::parse(r.bdf, &r.config) {
                Ok(f) => parsed.push(Some(f)),
                Err(e) if e.kind == (ConfigErrorKind::NoFunction { vendor: 0xffff }) => {
                    parsed.push(None);
                    absent.push((k, e));
                }
                Err(error) => {
                    return Err(ImportError::Config {
                        line: r.line.unwrap_or(0),
                        error,
                    })
                }
            }
        }
        if !absent.is_empty() {
            // Which PF names each address as a VF, and with which ids.
            let mut vf_ids: BTreeMap<Bdf, (u16, u16)> = BTreeMap::new();
            let wanted: BTreeSet<Bdf> = absent.iter().map(|&(k, _)| raw[k].bdf).collect();
            for f in parsed.iter().flatten() {
                let Some(iov) = f.sriov else { continue };
                let rid = f.bdf.requester_id();
                let Some(first) = iov.vf_requester_id(rid, 0) else {
                    continue;
                };
                let stride = u32::from(iov.vf_stride.max(1));
                let count = u32::from(iov.num_vfs.max(1)) - 1;
                let last = (u32::from(first) + count * stride).min(0xffff) as u16;
                let lo = Bdf::from_requester_id(f.bdf.segment, first);
                let hi = Bdf::from_requester_id(f.bdf.segment, last);
                for &b in wanted.range(lo..=hi) {
                    let off = u32::from(b.requester_id()) - u32::from(first);
                    if off % stride == 0 && iov.num_vfs > 0 {
                        vf_ids.entry(b).or_insert((f.vendor, iov.vf_device));
                    }
                }
            }
            for (k, err) in absent {
                let r = &raw[k];
                let Some(&(vendor, device)) = vf_ids.get(&r.bdf) else {
                    return Err(ImportError::Config {
                        line: r.line.unwrap_or(0),
                        error: err,
                    });
                };
                let mut c = r.config.clone();
                c.write_u16(0, vendor);
                c.write_u16(2, device);
                let f = Function::parse(r.bdf, &c).map_err(|error| ImportError::Config {
                    line: r.line.unwrap_or(0),
                    error,
                })?;
                parsed[k] = Some(f);
            }
        }
        Ok(Machine {
            devices: parsed
                .into_iter()
                .zip(raw)
                .map(|(f, r)| MachineDevice {
                    function: f.expect("every function parsed or refused"),
                    description: None,
                    kernel_group: r.kernel_group,
                    driver: r.driver,
                    line: r.line,
                })
                .collect(),
        })
    }

    /// The functions.
    pub fn functions(&self) -> Vec<Function> {
        self.devices.iter().map(|d| d.function.clone()).collect()
    }

    /// The device at `bdf`.
    pub fn device(&self, bdf: Bdf) -> Option<&MachineDevice> {
        self.devices.iter().find(|d| d.function.bdf == bdf)
    }

    /// Runs Linux's set-up and grouping over the machine.
    ///
    /// # Errors
    /// A [`TopologyError`] when the functions do not form a tree.
    pub fn analyze(&self, platform: Platform) -> Result<Analysis, TopologyError> {
        Analysis::new(self.functions(), platform)
    }

    /// Whether the input carries the kernel's groups.
    pub fn has_kernel_groups(&self) -> bool {
        self.devices.iter().any(|d| d.kernel_group.is_some())
    }

    /// The kernel's partition, as sets of addresses sorted by address.
    pub fn kernel_partition(&self) -> Vec<Vec<Bdf>> {
        let mut by: BTreeMap<u32, Vec<Bdf>> = BTreeMap::new();
        for d in &self.devices {
            if let Some(g) = d.kernel_group {
                by.entry(g).or_default().push(d.function.bdf);
            }
        }
        let mut p: Vec<Vec<Bdf>> = by
            .into_values()
            .map(|mut v| {
                v.sort();
                v
            })
            .collect();
        p.sort();
        p
    }

    /// What `lspci -nns` prints after the function's address: the input's
    /// description, or one made from the ids.
    pub fn describe(&self, bdf: Bdf) -> String {
        match self.device(bdf) {
            Some(MachineDevice {
                description: Some(d),
                ..
            }) => d.clone(),
            Some(d) => describe_function(&d.function),
            None => String::new(),
        }
    }
}

/// A description made from a function's registers, in `lspci -nn`'s
/// shape: `Class [cccc]: Device [vvvv:dddd] (rev rr)`.
pub fn describe_function(f: &Function) -> String {
    describe_named(f, class_name(f.class >> 8), "Device")
}

/// `lspci -nn`'s shape with the names given: `{class} [cccc]: {name}
/// [vvvv:dddd] (rev rr)` (the revision only when not zero, as lspci).
pub fn describe_named(f: &Function, class: &str, name: &str) -> String {
    let rev = if f.revision != 0 {
        format!(" (rev {:02x})", f.revision)
    } else {
        String::new()
    };
    format!(
        "{class} [{:04x}]: {name} [{:04x}:{:04x}]{rev}",
        f.class >> 8,
        f.vendor,
        f.device
    )
}

/// The names lspci gives the common classes (base class and subclass).
fn class_name(class: u32) -> &'static str {
    match class {
        0x0100 => "SCSI storage controller",
        0x0101 => "IDE interface",
        0x0104 => "RAID bus controller",
        0x0106 => "SATA controller",
        0x0108 => "Non-Volatile memory controller",
        0x0200 => "Ethernet controller",
        0x0280 => "Network controller",
        0x0300 => "VGA compatible controller",
        0x0302 => "3D controller",
        0x0403 => "Audio device",
        0x0500 => "RAM memory",
        0x0600 => "Host bridge",
        0x0601 => "ISA bridge",
        0x0604 => "PCI bridge",
        0x0607 => "CardBus bridge",
        0x0680 => "Bridge",
        0x0780 => "Communication controller",
        0x0806 => "IOMMU",
        0x0880 => "System peripheral",
        0x0c03 => "USB controller",
        0x0c05 => "SMBus",
        0x1180 => "Signal processing controller",
        _ => "Device",
    }
}

/// One way a prediction and the kernel's groups disagree: a set of
/// kernel groups and predicted groups linked by shared devices that are
/// not one and the same group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The kernel's groups involved.
    pub kernel: Vec<Vec<Bdf>>,
    /// The predicted groups involved.
    pub predicted: Vec<Vec<Bdf>>,
}

/// Every difference between two partitions, whatever their numbering.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Groups that differ.
    pub mismatches: Vec<Mismatch>,
    /// Devices the kernel put in a group and the prediction did not.
    pub only_kernel: Vec<Bdf>,
    /// Devices the prediction put in a group and the kernel did not.
    pub only_predicted: Vec<Bdf>,
}

impl Comparison {
    /// Whether the partitions are the same.
    pub fn is_same(&self) -> bool {
        self.mismatches.is_empty() && self.only_kernel.is_empty() && self.only_predicted.is_empty()
    }
}

/// Compares a predicted partition with the kernel's.
pub fn compare(predicted: &[Vec<Bdf>], kernel: &[Vec<Bdf>]) -> Comparison {
    let index = |p: &[Vec<Bdf>]| -> BTreeMap<Bdf, usize> {
        p.iter()
            .enumerate()
            .flat_map(|(g, m)| m.iter().map(move |&b| (b, g)))
            .collect()
    };
    let (pi, ki) = (index(predicted), index(kernel));
    let mut out = Comparison {
        only_kernel: ki.keys().filter(|b| !pi.contains_key(b)).copied().collect(),
        only_predicted: pi.keys().filter(|b| !ki.contains_key(b)).copied().collect(),
        ..Comparison::default()
    };
    // Connected components of "kernel group k and predicted group p share
    // a device", over devices both grouped.
    let mut seen_k = alloc::vec![false; kernel.len()];
    for start in 0..kernel.len() {
        if seen_k[start] {
            continue;
        }
        let (mut ks, mut ps) = (BTreeSet::new(), BTreeSet::new());
        let mut stack = alloc::vec![(true, start)];
        while let Some((is_k, g)) = stack.pop() {
            let (set, members) = if is_k {
                (&mut ks, &kernel[g])
            } else {
                (&mut ps, &predicted[g])
            };
            if !set.insert(g) {
                continue;
            }
            if is_k {
                seen_k[g] = true;
            }
            for b in members {
                let other = if is_k { pi.get(b) } else { ki.get(b) };
                if let Some(&o) = other {
                    stack.push((!is_k, o));
                }
            }
        }
        let same = ks.len() == 1
            && ps.len() == 1
            && kernel[*ks.first().expect("one")] == predicted[*ps.first().expect("one")];
        let grouped_elsewhere = ps.is_empty();
        if !same && !grouped_elsewhere {
            out.mismatches.push(Mismatch {
                kernel: ks.iter().map(|&k| kernel[k].clone()).collect(),
                predicted: ps.iter().map(|&p| predicted[p].clone()).collect(),
            });
        }
    }
    out
}
