//! Device names from the system's PCI ID database (`pci.ids`), as `lspci`
//! prints them, for inputs that carry only the ids (`lspci -xxxx`, sysfs).
//!
//! Read at run time from where pciutils and hwdata install it, so the names
//! are the ones the machine's own `lspci` knows. Hand-written: the format
//! is a few indented lines, and the crates that read it embed their own
//! copy of the database instead of the system's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where distributions install the database; `IOMMU_PCI_IDS` names
/// another file first.
const PLACES: &[&str] = &[
    "/usr/share/misc/pci.ids",
    "/usr/share/hwdata/pci.ids",
    "/usr/share/pci.ids",
    "/usr/local/share/pci.ids",
];

/// The database is about 1.5 MiB; a file far larger is not one.
const MAX_BYTES: u64 = 64 << 20;

/// Vendor, device and class names.
#[derive(Debug, Default)]
pub struct PciIds {
    vendors: HashMap<u16, String>,
    devices: HashMap<(u16, u16), String>,
    classes: HashMap<u8, String>,
    subclasses: HashMap<(u8, u8), String>,
}

impl PciIds {
    /// Reads the database text. Lines it does not understand are skipped,
    /// as lspci does.
    pub fn parse(text: &str) -> PciIds {
        let mut ids = PciIds::default();
        let mut vendor: Option<u16> = None;
        let mut class: Option<u8> = None;
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let depth = line.bytes().take_while(|&b| b == b'\t').count();
            let body = &line[depth..];
            let hex_name = |digits: usize| -> Option<(u32, String)> {
                let id = u32::from_str_radix(body.get(..digits)?, 16).ok()?;
                let name = body.get(digits..)?.trim();
                (!name.is_empty()).then(|| (id, name.to_string()))
            };
            match depth {
                0 if body.starts_with("C ") => {
                    vendor = None;
                    class = u8::from_str_radix(body.get(2..4).unwrap_or(""), 16).ok();
                    if let (Some(c), Some(name)) = (class, body.get(4..)) {
                        ids.classes.insert(c, name.trim().to_string());
                    }
                }
                0 => {
                    class = None;
                    vendor = hex_name(4).map(|(id, name)| {
                        ids.vendors.insert(id as u16, name);
                        id as u16
                    });
                }
                1 => {
                    if let (Some(v), Some((id, name))) = (vendor, hex_name(4)) {
                        ids.devices.insert((v, id as u16), name);
                    } else if let (Some(c), Some((id, name))) = (class, hex_name(2)) {
                        ids.subclasses.insert((c, id as u8), name);
                    }
                }
                _ => {}
            }
        }
        ids
    }

    /// The system's database, read once; `None` where there is none.
    pub fn system() -> Option<&'static PciIds> {
        static IDS: OnceLock<Option<PciIds>> = OnceLock::new();
        IDS.get_or_init(|| {
            let path = std::env::var_os("IOMMU_PCI_IDS")
                .map(PathBuf::from)
                .into_iter()
                .chain(PLACES.iter().map(PathBuf::from))
                .find(|p| p.is_file())?;
            read(&path)
        })
        .as_ref()
    }

    /// What `lspci -nn` prints after the address for a function with
    /// these ids: `Class [cccc]: Vendor Device [vvvv:dddd] (rev rr)`.
    pub fn describe(&self, f: &iommu_pci::Function) -> String {
        let base = (f.class >> 16) as u8;
        let sub = (f.class >> 8) as u8;
        let class = self
            .subclasses
            .get(&(base, sub))
            .or_else(|| self.classes.get(&base))
            .map_or("Class", String::as_str);
        let vendor = self.vendors.get(&f.vendor);
        let device = self.devices.get(&(f.vendor, f.device));
        let name = match (vendor, device) {
            (Some(v), Some(d)) => format!("{v} {d}"),
            (Some(v), None) => format!("{v} Device"),
            (None, _) => "Device".to_string(),
        };
        iommu_pci::describe_named(f, class, &name)
    }
}

fn read(path: &Path) -> Option<PciIds> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.len() > MAX_BYTES {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    Some(PciIds::parse(&String::from_utf8_lossy(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: &str = "# comment\n\
        8086  Intel Corporation\n\
        \t29c0  82G33/G31/P35/P31 Express DRAM Controller\n\
        \t\t1af4 1100  QEMU Virtual Machine\n\
        1b36  Red Hat, Inc.\n\
        \t000c  QEMU PCIe Root port\n\
        C 06  Bridge\n\
        \t00  Host bridge\n\
        \t04  PCI bridge\n\
        \t\t00  Normal decode\n\
        C 0c  Serial bus controller\n";

    fn function(vendor: u16, device: u16, class: u32, revision: u8) -> iommu_pci::Function {
        let mut cfg = iommu_pci::ConfigSpace::new_zeroed(256);
        cfg.write_u16(0, vendor);
        cfg.write_u16(2, device);
        cfg.write_u32(8, class << 8 | u32::from(revision));
        iommu_pci::Function::parse("00:00.0".parse().unwrap(), &cfg).unwrap()
    }

    #[test]
    fn names_come_out_as_lspci_prints_them() {
        let ids = PciIds::parse(IDS);
        assert_eq!(
            ids.describe(&function(0x8086, 0x29c0, 0x060000, 0)),
            "Host bridge [0600]: Intel Corporation 82G33/G31/P35/P31 Express DRAM Controller [8086:29c0]"
        );
        assert_eq!(
            ids.describe(&function(0x1b36, 0x000d, 0x0c0330, 1)),
            "Serial bus controller [0c03]: Red Hat, Inc. Device [1b36:000d] (rev 01)"
        );
        assert_eq!(
            ids.describe(&function(0xabcd, 0x1234, 0xff0000, 0)),
            "Class [ff00]: Device [abcd:1234]"
        );
    }

    #[test]
    fn a_malformed_database_is_read_as_far_as_it_goes() {
        let ids = PciIds::parse("zz\n\tyyyy\n8086\n\t\t\t\n8086  Intel\n\tnot hex\nC\nC zz x\n");
        assert_eq!(ids.vendors.get(&0x8086).map(String::as_str), Some("Intel"));
        assert!(ids.devices.is_empty());
    }
}
