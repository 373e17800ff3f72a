//! QEMU's firmware configuration device on `virt` (MMIO at 0x09020000:
//! the data register at +0, the big-endian selector at +8), read the way
//! firmware reads it: the file directory, then a file by name. The ACPI
//! tables QEMU builds for the machine are the file `etc/acpi/tables`.

use alloc::vec::Vec;

const BASE: usize = 0x0902_0000;
const FILE_DIR: u16 = 0x19;

fn select(key: u16) {
    // SAFETY: the selector register of QEMU's fw_cfg, device memory
    // identity-mapped by the boot code.
    unsafe { core::ptr::write_volatile((BASE + 8) as *mut u16, key.to_be()) }
}

fn read(buf: &mut [u8]) {
    for b in buf {
        // SAFETY: the data register; byte reads are allowed.
        *b = unsafe { core::ptr::read_volatile(BASE as *const u8) };
    }
}

/// The contents of the file called `name`, if QEMU has one (at most 1 MiB
/// are read).
pub fn file(name: &str) -> Option<Vec<u8>> {
    select(FILE_DIR);
    let mut count = [0u8; 4];
    read(&mut count);
    for _ in 0..u32::from_be_bytes(count).min(4096) {
        let mut e = [0u8; 64];
        read(&mut e);
        let size = u32::from_be_bytes([e[0], e[1], e[2], e[3]]) as usize;
        let key = u16::from_be_bytes([e[4], e[5]]);
        let n = &e[8..];
        let len = n.iter().position(|&c| c == 0).unwrap_or(n.len());
        if &n[..len] == name.as_bytes() {
            let mut out = alloc::vec![0u8; size.min(1 << 20)];
            select(key);
            read(&mut out);
            return Some(out);
        }
    }
    None
}

/// The ACPI table with `signature` in QEMU's `etc/acpi/tables`: the
/// tables as QEMU built them, before firmware runs QEMU's table loader,
/// which links their pointers and computes their checksums. The checksum
/// is computed here as the loader would; a table that holds pointers to
/// other tables (not IORT, DMAR or VIOT) would still need them linked.
pub fn acpi_table(signature: &[u8; 4]) -> Option<Vec<u8>> {
    let blob = file("etc/acpi/tables")?;
    (0..blob.len().saturating_sub(36)).find_map(|at| {
        if &blob[at..at + 4] != signature {
            return None;
        }
        let len =
            u32::from_le_bytes([blob[at + 4], blob[at + 5], blob[at + 6], blob[at + 7]]) as usize;
        let mut t = blob.get(at..at.checked_add(len)?)?.to_vec();
        iommu_firmware::acpi::fix_checksum(&mut t);
        iommu_firmware::acpi::Header::parse(&t, *signature).ok()?;
        Some(t)
    })
}
