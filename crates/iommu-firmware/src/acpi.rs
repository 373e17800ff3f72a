//! The header every ACPI table starts with (ACPI 6.5, section 5.2.6), read
//! and written; the RSDP, the root tables (RSDT, XSDT) and the MCFG a
//! kernel reads to find the rest and PCI configuration space.

use alloc::vec::Vec;

/// Bytes in the header.
pub const HEADER_LEN: usize = 36;

/// A table's header fields (the length and checksum are the table's own,
/// checked when read and computed when written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The four-character signature (`DMAR`, `IVRS`, ...).
    pub signature: [u8; 4],
    /// The table's revision.
    pub revision: u8,
    /// The OEM's id.
    pub oem_id: [u8; 6],
    /// The OEM's name for the table.
    pub oem_table_id: [u8; 8],
    /// The OEM's revision of it.
    pub oem_revision: u32,
    /// Who made the table.
    pub creator_id: [u8; 4],
    /// Their revision.
    pub creator_revision: u32,
}

/// Why bytes are not a table of the signature asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer bytes than the header, or than the header's length field.
    #[error("truncated: {need} bytes needed, {have} given")]
    Truncated {
        /// The bytes the table needs.
        need: usize,
        /// The bytes there are.
        have: usize,
    },
    /// Another table.
    #[error("signature \"{}\", not \"{}\"", Printable(*found), Printable(*want))]
    Signature {
        /// What was asked for.
        want: [u8; 4],
        /// What the bytes say.
        found: [u8; 4],
    },
    /// The table's bytes do not sum to zero.
    #[error("checksum: the table's bytes sum to {sum:#04x}, not 0")]
    Checksum {
        /// What they sum to.
        sum: u8,
    },
}

/// A signature as text: its printable ASCII bytes as they are, the others
/// as `\xNN`.
struct Printable([u8; 4]);

impl core::fmt::Display for Printable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for &b in &self.0 {
            if b.is_ascii_graphic() || b == b' ' {
                core::fmt::Write::write_char(f, char::from(b))?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | u64::from(u32_at(b, at + 4)) << 32
}

fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

impl Header {
    /// A header for a table with `signature`, made by this crate (creator
    /// `IOMR`, revision 1).
    pub fn new(
        signature: [u8; 4],
        revision: u8,
        oem_id: [u8; 6],
        oem_table_id: [u8; 8],
        oem_revision: u32,
    ) -> Header {
        Header {
            signature,
            revision,
            oem_id,
            oem_table_id,
            oem_revision,
            creator_id: *b"IOMR",
            creator_revision: 1,
        }
    }

    /// Reads the header of a table with signature `want` and returns it
    /// with the table's bytes (as long as its length field says; bytes
    /// after it are not the table's). The checksum covers those bytes.
    ///
    /// # Errors
    /// [`HeaderError`]: too short, another signature, a bad checksum.
    pub fn parse(bytes: &[u8], want: [u8; 4]) -> Result<(Header, &[u8]), HeaderError> {
        if bytes.len() < HEADER_LEN {
            return Err(HeaderError::Truncated {
                need: HEADER_LEN,
                have: bytes.len(),
            });
        }
        let found = array(bytes, 0);
        if found != want {
            return Err(HeaderError::Signature { want, found });
        }
        let len = u32_at(bytes, 4) as usize;
        if len < HEADER_LEN || len > bytes.len() {
            return Err(HeaderError::Truncated {
                need: len.max(HEADER_LEN),
                have: bytes.len(),
            });
        }
        let table = &bytes[..len];
        let sum = checksum(table);
        if sum != 0 {
            return Err(HeaderError::Checksum { sum });
        }
        Ok((
            Header {
                signature: found,
                revision: bytes[8],
                oem_id: array(bytes, 10),
                oem_table_id: array(bytes, 16),
                oem_revision: u32_at(bytes, 24),
                creator_id: array(bytes, 28),
                creator_revision: u32_at(bytes, 32),
            },
            table,
        ))
    }

    /// Starts a table: the header with length and checksum zero, for
    /// [`finish`] to fill in.
    pub fn start(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&self.signature);
        b.extend_from_slice(&[0; 4]); // length, by finish
        b.push(self.revision);
        b.push(0); // checksum, by finish
        b.extend_from_slice(&self.oem_id);
        b.extend_from_slice(&self.oem_table_id);
        b.extend_from_slice(&self.oem_revision.to_le_bytes());
        b.extend_from_slice(&self.creator_id);
        b.extend_from_slice(&self.creator_revision.to_le_bytes());
        b
    }
}

/// What `bytes` sum to (a valid table sums to 0).
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
}

/// Sets a table's length field and the checksum that makes it sum to 0.
///
/// # Panics
/// If `table` is shorter than a header or longer than 4 GiB (a builder
/// bug, not input).
pub fn finish(table: &mut [u8]) {
    assert!(table.len() >= HEADER_LEN, "a table has a header");
    let len = u32::try_from(table.len()).expect("an ACPI table's length fits 32 bits");
    table[4..8].copy_from_slice(&len.to_le_bytes());
    fix_checksum(table);
}

/// One entry of a table's list of variable-length records (a DMAR
/// remapping structure, an IVRS block): a 4-byte header with the type in
/// byte 0 (or bytes 0-1) and the length, header included, in bytes 2-3.
pub(crate) struct Record<'a> {
    /// Where it starts in the table.
    pub offset: usize,
    /// Its type.
    pub ty: u16,
    /// Its bytes, header included.
    pub bytes: &'a [u8],
}

/// A record that cannot be cut out of its table.
pub(crate) struct RecordError {
    pub offset: usize,
    pub ty: u16,
    pub len: usize,
    pub why: &'static str,
}

/// The records of `table[from..]`, each checked to hold its header and to
/// end within the table; the first that does not ends the walk with an
/// error. `wide_type`: the type is 16 bits (DMAR), else 8 (IVRS).
pub(crate) fn records(
    table: &[u8],
    from: usize,
    wide_type: bool,
) -> impl Iterator<Item = Result<Record<'_>, RecordError>> {
    let mut at = from;
    core::iter::from_fn(move || {
        if at >= table.len() {
            return None;
        }
        let left = table.len() - at;
        let ty = if wide_type && left >= 2 {
            u16_at(table, at)
        } else {
            u16::from(table[at])
        };
        let len = if left >= 4 {
            usize::from(u16_at(table, at + 2))
        } else {
            left
        };
        let bad = |why| {
            Some(Err(RecordError {
                offset: at,
                ty,
                len,
                why,
            }))
        };
        let out = if left < 4 {
            bad("the table ends inside its 4-byte header")
        } else if len < 4 {
            bad("shorter than its own 4-byte header")
        } else if len > left {
            bad("past the end of the table")
        } else {
            Some(Ok(Record {
                offset: at,
                ty,
                bytes: &table[at..at + len],
            }))
        };
        // An error ends the walk.
        at = if matches!(out, Some(Ok(_))) {
            at + len
        } else {
            table.len()
        };
        out
    })
}

/// Sets the checksum byte so that the table sums to 0 (its length field
/// as it is).
pub fn fix_checksum(table: &mut [u8]) {
    if table.len() > 9 {
        table[9] = 0;
        table[9] = 0u8.wrapping_sub(checksum(table));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn a_wrong_signature_is_named_as_text() {
        let e = HeaderError::Signature {
            want: *b"DMAR",
            found: [b'0', 0, b':', 0xff],
        };
        assert_eq!(e.to_string(), "signature \"0\\x00:\\xff\", not \"DMAR\"");
    }
}

/// The Root System Description Pointer (ACPI 6.5, section 5.2.5): where a
/// kernel starts looking for every other table. PC firmware leaves it in
/// the BIOS area (0xe0000-0xfffff, on a 16-byte boundary) or hands its
/// address over (UEFI's configuration table, PVH's `rsdp_paddr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rsdp {
    /// The OEM's id.
    pub oem_id: [u8; 6],
    /// 0 for ACPI 1.0 (an RSDT only), 2 from ACPI 2.0 on.
    pub revision: u8,
    /// The RSDT's physical address.
    pub rsdt: u32,
    /// The XSDT's physical address (revision 2 and later), which a kernel
    /// prefers to the RSDT.
    pub xsdt: Option<u64>,
}

/// Why bytes are not an RSDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RsdpError {
    /// Fewer bytes than its revision's structure.
    #[error("truncated: {need} bytes needed, {have} given")]
    Truncated {
        /// The bytes it needs.
        need: usize,
        /// The bytes there are.
        have: usize,
    },
    /// Not "RSD PTR ".
    #[error("no \"RSD PTR \" signature")]
    Signature,
    /// The first 20 bytes, or (revision 2) the whole structure, do not
    /// sum to zero.
    #[error("checksum of the {0} bytes does not sum to zero")]
    Checksum(usize),
}

impl Rsdp {
    /// The signature.
    pub const SIGNATURE: [u8; 8] = *b"RSD PTR ";

    /// Reads an RSDP: both checksums, the XSDT only from revision 2 on.
    ///
    /// # Errors
    /// [`RsdpError`].
    pub fn parse(bytes: &[u8]) -> Result<Rsdp, RsdpError> {
        if bytes.len() < 20 {
            return Err(RsdpError::Truncated {
                need: 20,
                have: bytes.len(),
            });
        }
        if bytes[..8] != Self::SIGNATURE {
            return Err(RsdpError::Signature);
        }
        if checksum(&bytes[..20]) != 0 {
            return Err(RsdpError::Checksum(20));
        }
        let revision = bytes[15];
        let mut rsdp = Rsdp {
            oem_id: array(bytes, 9),
            revision,
            rsdt: u32_at(bytes, 16),
            xsdt: None,
        };
        if revision >= 2 {
            if bytes.len() < 36 {
                return Err(RsdpError::Truncated {
                    need: 36,
                    have: bytes.len(),
                });
            }
            let len = u32_at(bytes, 20) as usize;
            if len < 36 || len > bytes.len() {
                return Err(RsdpError::Truncated {
                    need: len.max(36),
                    have: bytes.len(),
                });
            }
            if checksum(&bytes[..len]) != 0 {
                return Err(RsdpError::Checksum(len));
            }
            rsdp.xsdt = Some(u64_at(bytes, 24));
        }
        Ok(rsdp)
    }
}

/// The physical addresses of the tables an XSDT (64-bit entries) or RSDT
/// (32-bit entries) lists, in order.
///
/// # Errors
/// [`HeaderError`]: neither signature, truncated, or a bad checksum.
pub fn root_table_entries(bytes: &[u8]) -> Result<Vec<u64>, HeaderError> {
    let (width, table) = match Header::parse(bytes, *b"XSDT") {
        Ok((_, t)) => (8, t),
        Err(HeaderError::Signature { .. }) => (4, Header::parse(bytes, *b"RSDT")?.1),
        Err(e) => return Err(e),
    };
    Ok(table[HEADER_LEN..]
        .chunks_exact(width)
        .map(|e| {
            if width == 8 {
                u64_at(e, 0)
            } else {
                u64::from(u32_at(e, 0))
            }
        })
        .collect())
}

/// One PCI segment's ECAM window, as the MCFG lists it (PCI Firmware
/// Specification 3.2, section 4.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct McfgEntry {
    /// The window's base: the configuration space of bus 0 (whether or
    /// not `start_bus` is 0).
    pub base: u64,
    /// The PCI segment.
    pub segment: u16,
    /// The first bus the window decodes.
    pub start_bus: u8,
    /// The last.
    pub end_bus: u8,
}

impl McfgEntry {
    /// Where function `devfn` of `bus` has its configuration space, if
    /// the window decodes that bus (and the address exists: a window
    /// whose base leaves no room for the bus has none).
    pub fn config_address(&self, bus: u8, devfn: u8) -> Option<u64> {
        if !(self.start_bus..=self.end_bus).contains(&bus) {
            return None;
        }
        self.base
            .checked_add(u64::from(bus) << 20)?
            .checked_add(u64::from(devfn) << 12)
    }
}

/// The ECAM windows of an MCFG table. Bytes after the last whole entry
/// are ignored.
///
/// # Errors
/// [`HeaderError`]: another table, truncated (shorter than its 44 bytes
/// of header), or a bad checksum.
pub fn mcfg(bytes: &[u8]) -> Result<Vec<McfgEntry>, HeaderError> {
    let (_, table) = Header::parse(bytes, *b"MCFG")?;
    if table.len() < 44 {
        return Err(HeaderError::Truncated {
            need: 44,
            have: table.len(),
        });
    }
    Ok(table[44..]
        .chunks_exact(16)
        .map(|e| McfgEntry {
            base: u64_at(e, 0),
            segment: u16_at(e, 8),
            start_bus: e[10],
            end_bus: e[11],
        })
        .collect())
}
