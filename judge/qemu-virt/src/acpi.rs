//! The firmware's ACPI tables on q35, as QEMU (through SeaBIOS) built
//! them: found through the RSDP PVH hands over, listed by the RSDT or
//! XSDT, read with the project's `iommu_firmware::acpi`.

use crate::board::{rsdp, Uart};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use iommu_firmware::acpi::{mcfg, root_table_entries, Rsdp};

/// `len` bytes of physical memory (identity-mapped).
fn phys(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: firmware tables in low RAM or the BIOS area, identity-mapped
    // and never written while the program runs.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

/// An ACPI table at `addr`, as long as its header says (at most 1 MiB).
fn table_at(addr: u64) -> Result<&'static [u8], String> {
    let head = phys(addr, 8);
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if !(36..=1 << 20).contains(&len) {
        return Err(format!("a table of {len} bytes at {addr:#x}"));
    }
    Ok(phys(addr, len))
}

/// Prints a firmware table in hex (`ACPI NAME hex`), for the host tests
/// to keep.
pub fn dump(name: &str, bytes: &[u8]) {
    let _ = write!(Uart, "ACPI {name} ");
    for b in bytes {
        let _ = write!(Uart, "{b:02x}");
    }
    let _ = writeln!(Uart);
}

/// Every table the root table lists; with `print`, the RSDP and root
/// table are dumped first.
pub fn tables(print: bool) -> Result<Vec<&'static [u8]>, String> {
    let at = rsdp().ok_or("no RSDP in the PVH start info")?;
    let rsdp = Rsdp::parse(phys(at, 36)).map_err(|e| format!("RSDP: {e}"))?;
    let root = table_at(rsdp.xsdt.unwrap_or(u64::from(rsdp.rsdt)))?;
    if print {
        dump("RSDP", phys(at, if rsdp.revision >= 2 { 36 } else { 20 }));
        dump(&String::from_utf8_lossy(&root[..4]), root);
    }
    root_table_entries(root)
        .map_err(|e| format!("root table: {e}"))?
        .into_iter()
        .map(table_at)
        .collect()
}

/// The table with `signature`, if the firmware has one.
pub fn find(signature: &[u8; 4]) -> Result<Option<&'static [u8]>, String> {
    Ok(tables(false)?.into_iter().find(|t| &t[..4] == signature))
}

/// Segment 0's ECAM window, from the MCFG.
pub fn ecam() -> Result<usize, String> {
    let table = find(b"MCFG")?.ok_or("no MCFG")?;
    mcfg(table)
        .map_err(|e| format!("MCFG: {e}"))?
        .into_iter()
        .find(|e| e.segment == 0 && e.start_bus == 0)
        .map(|e| e.base as usize)
        .ok_or_else(|| String::from("no MCFG window for segment 0"))
}
