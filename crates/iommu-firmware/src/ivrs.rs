//! The ACPI I/O Virtualization Reporting Structure (AMD I/O Virtualization
//! Technology specification, section 5.2): each IOMMU (IVHD block) with
//! the device ids it translates, their aliases and their special devices
//! (I/O APICs, HPETs, ACPI devices), and the memory firmware needs mapped
//! one-to-one (IVMD blocks).
//!
//! [`Ivrs::parse`] reads the blocks Linux's `amd_iommu` reads (IVHD types
//! 10h, 11h and 40h; IVMD types 20h, 21h and 22h) and keeps any other block
//! as bytes, as Linux skips it. Device entries are kept as written
//! ([`DeviceEntry`]); [`Ivhd::devices`] turns them into the ranges of
//! device ids they select, with the alias each range's requests carry, the
//! way Linux's `init_iommu_from_acpi` walks them. Any byte string parses
//! or gets an [`IvrsError`] naming the offset, in time and memory
//! proportional to its length.

use crate::acpi::{self, u16_at, u32_at, u64_at, Header, HeaderError};
use alloc::vec::Vec;

/// Bytes before the first block.
const FIRST_BLOCK: usize = 48;

/// Why bytes are not an IVRS this crate can read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IvrsError {
    /// The ACPI header: too short, not an IVRS, a bad checksum.
    #[error("IVRS: {0}")]
    Header(#[from] HeaderError),
    /// The IVRS's own fields do not fit in the table.
    #[error("IVRS: {len} bytes, its header needs {FIRST_BLOCK}")]
    Short {
        /// The table's length.
        len: usize,
    },
    /// A block whose length is zero, below its type's fixed part, or past
    /// the end of the table.
    #[error("IVRS block at {offset:#x} (type {ty:#04x}): length {len}, {why}")]
    Block {
        /// Where it starts.
        offset: usize,
        /// Its type.
        ty: u8,
        /// Its length field.
        len: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// A device entry that runs past its block, or a range end without a
    /// start.
    #[error("IVHD device entry at {offset:#x} (type {ty:#04x}): {why}")]
    Entry {
        /// Where it starts.
        offset: usize,
        /// Its type.
        ty: u8,
        /// What is wrong.
        why: &'static str,
    },
}

/// One IVHD device entry, as written (AMD IOMMU specification 5.2.2.2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DeviceEntry {
    /// Type 0: padding.
    Pad4,
    /// Type 1: every device id gets `dte`.
    All {
        /// DTE settings (INITPass, EIntPass, NMIPass, SysMgt, Lint0/1Pass).
        dte: u8,
    },
    /// Type 2: one device.
    Select {
        /// Its device id.
        devid: u16,
        /// DTE settings.
        dte: u8,
    },
    /// Type 3: the first device of a range (closed by [`End`](Self::End)).
    Start {
        /// First device id.
        devid: u16,
        /// DTE settings for the range.
        dte: u8,
    },
    /// Type 4: the last device of the open range.
    End {
        /// Last device id.
        devid: u16,
    },
    /// Type 42h: one device whose requests carry `alias`'s id.
    AliasSelect {
        /// The device.
        devid: u16,
        /// DTE settings.
        dte: u8,
        /// The id its requests carry.
        alias: u16,
    },
    /// Type 43h: a range starting here whose requests carry `alias`'s id.
    AliasStart {
        /// First device id.
        devid: u16,
        /// DTE settings.
        dte: u8,
        /// The id the range's requests carry.
        alias: u16,
    },
    /// Type 46h: one device with extended settings (bit 31: ATS disabled).
    ExtSelect {
        /// The device.
        devid: u16,
        /// DTE settings.
        dte: u8,
        /// Extended settings.
        ext: u32,
    },
    /// Type 47h: a range starting here with extended settings.
    ExtStart {
        /// First device id.
        devid: u16,
        /// DTE settings.
        dte: u8,
        /// Extended settings.
        ext: u32,
    },
    /// Type 48h: an I/O APIC (variety 1) or HPET (variety 2) by its
    /// handle, and the device id its interrupts carry.
    Special {
        /// DTE settings.
        dte: u8,
        /// The I/O APIC id or HPET number.
        handle: u8,
        /// The device id it uses.
        devid: u16,
        /// 1: I/O APIC, 2: HPET.
        variety: u8,
    },
    /// Type F0h: an ACPI device by hardware id, compatible id and unique id.
    AcpiHid {
        /// The device id it uses.
        devid: u16,
        /// DTE settings.
        dte: u8,
        /// `_HID`.
        hid: [u8; 8],
        /// `_CID`.
        cid: [u8; 8],
        /// How the `_UID` is encoded (0 none, 1 integer, 2 string).
        uid_format: u8,
        /// `_UID`'s bytes.
        uid: Vec<u8>,
    },
    /// A type this crate does not read, kept as its bytes (the entry's
    /// size follows from its type: 4, 8, or for types 80h and up a length
    /// Linux does not know how to find, so those end the parse).
    Other {
        /// Its bytes, type first.
        bytes: Vec<u8>,
    },
}

/// A range of device ids an IVHD translates, as its entries select them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceRange {
    /// First device id.
    pub first: u16,
    /// Last device id (inclusive).
    pub last: u16,
    /// DTE settings.
    pub dte: u8,
    /// The id the range's requests carry instead of their own.
    pub alias: Option<u16>,
}

/// An IOMMU (IVHD block, types 10h, 11h, 40h).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ivhd {
    /// 10h, 11h or 40h.
    pub ty: u8,
    /// Flags (HtTunEn, PassPW, ResPassPW, Isoc, IotlbSup, Coherent, ...).
    pub flags: u8,
    /// The IOMMU's own PCI device id.
    pub devid: u16,
    /// Its capability block's offset in configuration space.
    pub capability_offset: u16,
    /// Its registers.
    pub base: u64,
    /// The PCI segment group.
    pub segment: u16,
    /// IOMMU info (MSI number, UnitID).
    pub info: u16,
    /// Type 10h: IOMMU feature reporting; 11h/40h: IOMMU attributes.
    pub attributes: u32,
    /// Types 11h/40h: the Extended Feature Register's image.
    pub efr: u64,
    /// Types 11h/40h: the second EFR's image (reserved before spec 3.07).
    pub efr2: u64,
    /// Its device entries, as written.
    pub entries: Vec<DeviceEntry>,
}

impl Ivhd {
    fn fixed_len(ty: u8) -> usize {
        if ty == 0x10 {
            24
        } else {
            40
        }
    }

    /// The device ids this IOMMU translates, as Linux walks the entries:
    /// ALL selects every id, SELECT one, a START (plain, alias or extended)
    /// opens a range the next END closes. A range left open at the end of
    /// the block selects nothing, as in Linux.
    pub fn devices(&self) -> Vec<DeviceRange> {
        let mut out = Vec::new();
        let mut open: Option<DeviceRange> = None;
        for e in &self.entries {
            match *e {
                DeviceEntry::All { dte } => out.push(DeviceRange {
                    first: 0,
                    last: u16::MAX,
                    dte,
                    alias: None,
                }),
                DeviceEntry::Select { devid, dte } | DeviceEntry::ExtSelect { devid, dte, .. } => {
                    out.push(DeviceRange {
                        first: devid,
                        last: devid,
                        dte,
                        alias: None,
                    })
                }
                DeviceEntry::AliasSelect { devid, dte, alias } => out.push(DeviceRange {
                    first: devid,
                    last: devid,
                    dte,
                    alias: Some(alias),
                }),
                DeviceEntry::Start { devid, dte } | DeviceEntry::ExtStart { devid, dte, .. } => {
                    open = Some(DeviceRange {
                        first: devid,
                        last: devid,
                        dte,
                        alias: None,
                    })
                }
                DeviceEntry::AliasStart { devid, dte, alias } => {
                    open = Some(DeviceRange {
                        first: devid,
                        last: devid,
                        dte,
                        alias: Some(alias),
                    })
                }
                DeviceEntry::End { devid } => {
                    if let Some(mut r) = open.take() {
                        // An end below its start selects the start alone.
                        r.last = devid.max(r.first);
                        out.push(r);
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Whether this IOMMU translates device id `devid`, and the id its
    /// requests carry (its alias, or itself).
    pub fn lookup(&self, devid: u16) -> Option<u16> {
        self.devices()
            .iter()
            .rev()
            .find(|r| (r.first..=r.last).contains(&devid))
            .map(|r| r.alias.unwrap_or(devid))
    }
}

/// Memory to map one-to-one (IVMD block, types 20h all devices, 21h one
/// device, 22h a range of devices).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ivmd {
    /// 20h, 21h or 22h.
    pub ty: u8,
    /// Bit 0 unity mapping, 1 readable, 2 writable, 3 exclusion range.
    pub flags: u8,
    /// The device (21h) or the first of the range (22h).
    pub devid: u16,
    /// The last device of the range (22h).
    pub aux: u16,
    /// The PCI segment group (bytes 8-9; reserved, so 0, in tables older
    /// than the multi-segment revisions).
    pub segment: u16,
    /// First address.
    pub start: u64,
    /// Bytes.
    pub length: u64,
}

/// One IVRS block, in table order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Block {
    /// An IOMMU.
    Ivhd(Ivhd),
    /// Memory to map one-to-one.
    Ivmd(Ivmd),
    /// Another type, kept as its bytes after the type and flags bytes and
    /// the 16-bit length (Linux skips such blocks).
    Other {
        /// Its type.
        ty: u8,
        /// Its flags byte.
        flags: u8,
        /// The rest.
        body: Vec<u8>,
    },
}

/// An IVRS table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ivrs {
    /// IVinfo: EFRSup (bit 0), DMA remap support, the virtual, physical and
    /// guest virtual address sizes.
    pub ivinfo: u32,
    /// The 8 reserved bytes after IVinfo (zero in QEMU's; kept).
    pub reserved: u64,
    /// The blocks, in table order.
    pub blocks: Vec<Block>,
}

impl Ivrs {
    /// The IOMMUs, in table order.
    pub fn ivhds(&self) -> impl Iterator<Item = &Ivhd> {
        self.blocks.iter().filter_map(|b| match b {
            Block::Ivhd(h) => Some(h),
            _ => None,
        })
    }

    /// The IOMMU blocks Linux uses. Firmware may describe one IOMMU by
    /// several blocks of different types (QEMU writes a 10h and an 11h);
    /// Linux takes the type of the last block describing the first block's
    /// IOMMU, among the blocks before the first one of a type above 40h, and
    /// uses the blocks of that type only (`get_highest_supported_ivhd_type`).
    pub fn effective_ivhds(&self) -> impl Iterator<Item = &Ivhd> {
        let devid = |b: &Block| match b {
            Block::Ivhd(h) => h.devid,
            Block::Ivmd(m) => m.devid,
            Block::Other { body, .. } => u16::from_le_bytes([
                body.first().copied().unwrap_or(0),
                body.get(1).copied().unwrap_or(0),
            ]),
        };
        let ty = |b: &Block| match b {
            Block::Ivhd(h) => h.ty,
            Block::Ivmd(m) => m.ty,
            Block::Other { ty, .. } => *ty,
        };
        let first = self.blocks.first().map(devid);
        let chosen = self
            .blocks
            .iter()
            .take_while(|b| ty(b) <= 0x40)
            .filter(|b| Some(devid(b)) == first)
            .last()
            .map(ty);
        self.ivhds().filter(move |h| Some(h.ty) == chosen)
    }

    /// The IOMMU (among [`effective_ivhds`](Self::effective_ivhds)) that
    /// translates device id `devid` of `segment`, with the id its requests
    /// carry. The IOMMU's own function is not translated by it.
    pub fn iommu_for(&self, segment: u16, devid: u16) -> Option<(&Ivhd, u16)> {
        self.effective_ivhds()
            .filter(|h| h.segment == segment && h.devid != devid)
            .find_map(|h| h.lookup(devid).map(|alias| (h, alias)))
    }

    /// The memory device id `devid` of `segment` must have mapped one to
    /// one, as Linux's `amd_iommu` builds it from the IVMD blocks: every
    /// unity-map or exclusion block (both become read-write-as-flagged
    /// 1:1 mappings; an exclusion range read and write) whose devices
    /// include `devid`, as `(start, length, readable, writable)` with the
    /// start and length rounded up to 4 KiB pages.
    pub fn unity_ranges(&self, segment: u16, devid: u16) -> Vec<(u64, u64, bool, bool)> {
        const UNITY: u8 = 1;
        const IR: u8 = 2;
        const IW: u8 = 4;
        const EXCL: u8 = 8;
        let page_up = |v: u64| v.checked_add(0xfff).map(|x| x & !0xfff);
        self.blocks
            .iter()
            .filter_map(|b| match b {
                Block::Ivmd(m) if m.segment == segment && m.flags & (UNITY | EXCL) != 0 => Some(m),
                _ => None,
            })
            .filter(|m| match m.ty {
                0x20 => true,
                0x21 => m.devid == devid,
                _ => (m.devid..=m.aux).contains(&devid),
            })
            .filter_map(|m| {
                let (r, w) = if m.flags & EXCL != 0 {
                    (true, true)
                } else {
                    (m.flags & IR != 0, m.flags & IW != 0)
                };
                // A range whose rounding would pass 2^64 is left out.
                Some((page_up(m.start)?, page_up(m.length)?, r, w))
            })
            .filter(|&(start, len, _, _)| len != 0 && start.checked_add(len - 1).is_some())
            .collect()
    }

    /// Reads an IVRS: the ACPI header and checksum, IVinfo, every block
    /// and device entry within its bounds.
    ///
    /// # Errors
    /// An [`IvrsError`] naming what is wrong and where.
    pub fn parse(bytes: &[u8]) -> Result<Ivrs, IvrsError> {
        Ivrs::parse_with_header(bytes).map(|(_, t)| t)
    }

    /// [`parse`](Self::parse), with the table's ACPI header.
    ///
    /// # Errors
    /// As `parse`.
    pub fn parse_with_header(bytes: &[u8]) -> Result<(Header, Ivrs), IvrsError> {
        let (header, table) = Header::parse(bytes, *b"IVRS")?;
        if table.len() < FIRST_BLOCK {
            return Err(IvrsError::Short { len: table.len() });
        }
        let mut ivrs = Ivrs {
            ivinfo: u32_at(table, 36),
            reserved: u64_at(table, 40),
            blocks: Vec::new(),
        };
        for record in acpi::records(table, FIRST_BLOCK, false) {
            let acpi::Record {
                offset: at,
                ty,
                bytes: b,
            } = record.map_err(|e| IvrsError::Block {
                offset: e.offset,
                ty: e.ty as u8,
                len: e.len,
                why: e.why,
            })?;
            let (ty, len) = (ty as u8, b.len());
            let bad = |why| IvrsError::Block {
                offset: at,
                ty,
                len,
                why,
            };
            let block = match ty {
                0x10 | 0x11 | 0x40 => {
                    let fixed = Ivhd::fixed_len(ty);
                    if len < fixed {
                        return Err(bad("shorter than its type's fixed fields"));
                    }
                    let long = fixed == 40;
                    Block::Ivhd(Ivhd {
                        ty,
                        flags: b[1],
                        devid: u16_at(b, 4),
                        capability_offset: u16_at(b, 6),
                        base: u64_at(b, 8),
                        segment: u16_at(b, 16),
                        info: u16_at(b, 18),
                        attributes: u32_at(b, 20),
                        efr: if long { u64_at(b, 24) } else { 0 },
                        efr2: if long { u64_at(b, 32) } else { 0 },
                        entries: parse_entries(table, at + fixed, at + len)?,
                    })
                }
                0x20..=0x22 => {
                    if len < 32 {
                        return Err(bad("shorter than an IVMD's 32 bytes"));
                    }
                    Block::Ivmd(Ivmd {
                        ty,
                        flags: b[1],
                        devid: u16_at(b, 4),
                        aux: u16_at(b, 6),
                        segment: u16_at(b, 8),
                        start: u64_at(b, 16),
                        length: u64_at(b, 24),
                    })
                }
                _ => Block::Other {
                    ty,
                    flags: b[1],
                    body: b[4..].to_vec(),
                },
            };
            // An IVMD longer than 32 bytes keeps only its 32: the builder
            // writes 32, so such a table does not build back the same.
            ivrs.blocks.push(block);
        }
        Ok((header, ivrs))
    }

    /// The table's bytes: the ACPI header with the OEM fields given
    /// (revision 2, creator `IOMR`), IVinfo, every block in order, the
    /// checksum.
    ///
    /// # Panics
    /// If a block does not fit its 16-bit length (a builder's bug: no
    /// parsed table has one).
    pub fn to_bytes(&self, oem_id: [u8; 6], oem_table_id: [u8; 8], oem_revision: u32) -> Vec<u8> {
        self.to_bytes_with(&Header::new(
            *b"IVRS",
            2,
            oem_id,
            oem_table_id,
            oem_revision,
        ))
    }

    /// [`to_bytes`](Self::to_bytes) under a header of the caller's.
    ///
    /// # Panics
    /// As `to_bytes`.
    pub fn to_bytes_with(&self, header: &Header) -> Vec<u8> {
        let mut b = header.start();
        b.extend_from_slice(&self.ivinfo.to_le_bytes());
        b.extend_from_slice(&self.reserved.to_le_bytes());
        for block in &self.blocks {
            let start = b.len();
            match block {
                Block::Ivhd(h) => {
                    b.push(h.ty);
                    b.push(h.flags);
                    b.extend_from_slice(&[0; 2]);
                    b.extend_from_slice(&h.devid.to_le_bytes());
                    b.extend_from_slice(&h.capability_offset.to_le_bytes());
                    b.extend_from_slice(&h.base.to_le_bytes());
                    b.extend_from_slice(&h.segment.to_le_bytes());
                    b.extend_from_slice(&h.info.to_le_bytes());
                    b.extend_from_slice(&h.attributes.to_le_bytes());
                    if Ivhd::fixed_len(h.ty) == 40 {
                        b.extend_from_slice(&h.efr.to_le_bytes());
                        b.extend_from_slice(&h.efr2.to_le_bytes());
                    }
                    for e in &h.entries {
                        write_entry(&mut b, e);
                    }
                }
                Block::Ivmd(m) => {
                    b.push(m.ty);
                    b.push(m.flags);
                    b.extend_from_slice(&[0; 2]);
                    b.extend_from_slice(&m.devid.to_le_bytes());
                    b.extend_from_slice(&m.aux.to_le_bytes());
                    b.extend_from_slice(&m.segment.to_le_bytes());
                    b.extend_from_slice(&[0; 6]);
                    b.extend_from_slice(&m.start.to_le_bytes());
                    b.extend_from_slice(&m.length.to_le_bytes());
                }
                Block::Other { ty, flags, body } => {
                    b.push(*ty);
                    b.push(*flags);
                    b.extend_from_slice(&[0; 2]);
                    b.extend_from_slice(body);
                }
            }
            let len = u16::try_from(b.len() - start).expect("an IVRS block fits 64 KiB");
            b[start + 2..start + 4].copy_from_slice(&len.to_le_bytes());
        }
        acpi::finish(&mut b);
        b
    }
}

/// The device entries in `table[from..to]`.
fn parse_entries(table: &[u8], from: usize, to: usize) -> Result<Vec<DeviceEntry>, IvrsError> {
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let ty = table[at];
        let bad = |why| IvrsError::Entry {
            offset: at,
            ty,
            why,
        };
        // The entry's size: 4 bytes below 40h, 8 below 80h; F0h says its
        // own; other variable-length types cannot be stepped over.
        let size = match ty {
            0x00..=0x3f => 4,
            0x40..=0x7f => 8,
            0xf0 => {
                if to - at < 22 {
                    return Err(bad("an ACPI device entry needs 22 bytes"));
                }
                22 + usize::from(table[at + 21])
            }
            _ => return Err(bad("a variable-length type whose length is unknown")),
        };
        if to - at < size {
            return Err(bad("runs past its block"));
        }
        let e = &table[at..at + size];
        let devid = u16_at(e, 1);
        out.push(match ty {
            0x00 if e == [0; 4] => DeviceEntry::Pad4,
            0x01 => DeviceEntry::All { dte: e[3] },
            0x02 => DeviceEntry::Select { devid, dte: e[3] },
            0x03 => DeviceEntry::Start { devid, dte: e[3] },
            0x04 => DeviceEntry::End { devid },
            0x42 => DeviceEntry::AliasSelect {
                devid,
                dte: e[3],
                alias: u16_at(e, 5),
            },
            0x43 => DeviceEntry::AliasStart {
                devid,
                dte: e[3],
                alias: u16_at(e, 5),
            },
            0x46 => DeviceEntry::ExtSelect {
                devid,
                dte: e[3],
                ext: u32_at(e, 4),
            },
            0x47 => DeviceEntry::ExtStart {
                devid,
                dte: e[3],
                ext: u32_at(e, 4),
            },
            0x48 => DeviceEntry::Special {
                dte: e[3],
                handle: e[4],
                devid: u16_at(e, 5),
                variety: e[7],
            },
            0xf0 => {
                let mut hid = [0; 8];
                hid.copy_from_slice(&e[4..12]);
                let mut cid = [0; 8];
                cid.copy_from_slice(&e[12..20]);
                DeviceEntry::AcpiHid {
                    devid,
                    dte: e[3],
                    hid,
                    cid,
                    uid_format: e[20],
                    uid: e[22..].to_vec(),
                }
            }
            _ => DeviceEntry::Other { bytes: e.to_vec() },
        });
        at += size;
    }
    Ok(out)
}

fn write_entry(b: &mut Vec<u8>, e: &DeviceEntry) {
    let four = |b: &mut Vec<u8>, ty: u8, devid: u16, dte: u8| {
        b.push(ty);
        b.extend_from_slice(&devid.to_le_bytes());
        b.push(dte);
    };
    match e {
        DeviceEntry::Pad4 => b.extend_from_slice(&[0; 4]),
        DeviceEntry::All { dte } => four(b, 0x01, 0, *dte),
        DeviceEntry::Select { devid, dte } => four(b, 0x02, *devid, *dte),
        DeviceEntry::Start { devid, dte } => four(b, 0x03, *devid, *dte),
        DeviceEntry::End { devid } => four(b, 0x04, *devid, 0),
        DeviceEntry::AliasSelect { devid, dte, alias }
        | DeviceEntry::AliasStart { devid, dte, alias } => {
            let ty = if matches!(e, DeviceEntry::AliasSelect { .. }) {
                0x42
            } else {
                0x43
            };
            four(b, ty, *devid, *dte);
            b.push(0);
            b.extend_from_slice(&alias.to_le_bytes());
            b.push(0);
        }
        DeviceEntry::ExtSelect { devid, dte, ext } | DeviceEntry::ExtStart { devid, dte, ext } => {
            let ty = if matches!(e, DeviceEntry::ExtSelect { .. }) {
                0x46
            } else {
                0x47
            };
            four(b, ty, *devid, *dte);
            b.extend_from_slice(&ext.to_le_bytes());
        }
        DeviceEntry::Special {
            dte,
            handle,
            devid,
            variety,
        } => {
            b.extend_from_slice(&[0x48, 0, 0, *dte, *handle]);
            b.extend_from_slice(&devid.to_le_bytes());
            b.push(*variety);
        }
        DeviceEntry::AcpiHid {
            devid,
            dte,
            hid,
            cid,
            uid_format,
            uid,
        } => {
            four(b, 0xf0, *devid, *dte);
            b.extend_from_slice(hid);
            b.extend_from_slice(cid);
            b.push(*uid_format);
            b.push(u8::try_from(uid.len()).expect("a _UID fits 255 bytes"));
            b.extend_from_slice(uid);
        }
        DeviceEntry::Other { bytes } => b.extend_from_slice(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn sample() -> Ivrs {
        Ivrs {
            ivinfo: 0x0020_3041,
            reserved: 0,
            blocks: vec![
                Block::Ivhd(Ivhd {
                    ty: 0x40,
                    flags: 0xb0,
                    devid: 0x0002,
                    capability_offset: 0x40,
                    base: 0xfd20_0000,
                    segment: 0,
                    info: 0,
                    attributes: 0,
                    efr: 0x0024_6577_efa2,
                    efr2: 0,
                    entries: vec![
                        DeviceEntry::Select { devid: 0, dte: 0 },
                        DeviceEntry::AliasStart {
                            devid: 0x0300,
                            dte: 0,
                            alias: 0x0028,
                        },
                        DeviceEntry::End { devid: 0x03ff },
                        DeviceEntry::ExtSelect {
                            devid: 0x0500,
                            dte: 0,
                            ext: 1 << 31,
                        },
                        DeviceEntry::Special {
                            dte: 0xd7,
                            handle: 0x21,
                            devid: 0x00a0,
                            variety: 1,
                        },
                        DeviceEntry::AcpiHid {
                            devid: 0x00a5,
                            dte: 0x40,
                            hid: *b"AMDI0020",
                            cid: [0; 8],
                            uid_format: 2,
                            uid: b"ID00".to_vec(),
                        },
                        DeviceEntry::Pad4,
                    ],
                }),
                Block::Ivmd(Ivmd {
                    ty: 0x21,
                    flags: 0x7,
                    devid: 0x0500,
                    aux: 0,
                    segment: 0,
                    start: 0x9d00_0000,
                    length: 0x20_0000,
                }),
            ],
        }
    }

    #[test]
    fn a_table_reads_back_as_built_and_its_entries_select_ranges() {
        let t = sample();
        let b = t.to_bytes(*b"OEMIDX", *b"TABLEID1", 7);
        assert_eq!(acpi::checksum(&b), 0);
        assert_eq!(Ivrs::parse(&b), Ok(t.clone()));
        let h = t.ivhds().next().unwrap();
        assert_eq!(h.lookup(0x0000), Some(0x0000));
        assert_eq!(h.lookup(0x0342), Some(0x0028), "the range's alias");
        assert_eq!(h.lookup(0x0500), Some(0x0500));
        assert_eq!(h.lookup(0x0400), None);
        assert_eq!(t.iommu_for(0, 0x0002), None, "not the IOMMU itself");
        assert_eq!(t.iommu_for(1, 0x0000), None, "another segment");
    }

    #[test]
    fn hostile_tables_get_the_error_that_names_them() {
        let good = sample().to_bytes(*b"OEMIDX", *b"TABLEID1", 7);
        let fix = |mut b: Vec<u8>| {
            acpi::fix_checksum(&mut b);
            b
        };
        for short in [0u16, 3] {
            let mut b = good.clone();
            b[50..52].copy_from_slice(&short.to_le_bytes());
            assert!(matches!(
                Ivrs::parse(&fix(b)),
                Err(IvrsError::Block { offset: 48, .. })
            ));
        }
        let mut b = good.clone();
        b[50..52].copy_from_slice(&30u16.to_le_bytes());
        assert!(matches!(
            Ivrs::parse(&fix(b)),
            Err(IvrsError::Block {
                offset: 48,
                len: 30,
                ..
            })
        ));
        let mut b = good.clone();
        b[50..52].copy_from_slice(&0x4000u16.to_le_bytes());
        assert!(matches!(
            Ivrs::parse(&fix(b)),
            Err(IvrsError::Block { offset: 48, .. })
        ));
        // A variable-length entry type Linux cannot step over.
        let mut b = good.clone();
        b[48 + 40] = 0x80;
        assert!(matches!(
            Ivrs::parse(&fix(b)),
            Err(IvrsError::Entry {
                offset: 88,
                ty: 0x80,
                ..
            })
        ));
        // An ACPI device entry whose _UID runs past the block.
        let at = 48 + 40 + 4 + 8 + 4 + 8 + 8; // the F0h entry
        let mut b = good.clone();
        assert_eq!(b[at], 0xf0);
        b[at + 21] = 200;
        assert!(matches!(
            Ivrs::parse(&fix(b)),
            Err(IvrsError::Entry { ty: 0xf0, .. })
        ));
        let mut b = good;
        b[1] = b'X';
        assert!(matches!(
            Ivrs::parse(&fix(b)),
            Err(IvrsError::Header(HeaderError::Signature { .. }))
        ));
    }

    #[test]
    fn ivmd_blocks_give_their_devices_unity_ranges_rounded_up_to_pages() {
        let mut t = sample();
        t.blocks.push(Block::Ivmd(Ivmd {
            ty: 0x22,
            flags: 0x8, // an exclusion range: mapped read-write 1:1
            devid: 0x0600,
            aux: 0x0610,
            segment: 0,
            start: 0x1234,
            length: 0x100,
        }));
        t.blocks.push(Block::Ivmd(Ivmd {
            ty: 0x20,
            flags: 0x2, // readable, but neither unity nor exclusion: ignored
            devid: 0,
            aux: 0,
            segment: 0,
            start: 0x5000,
            length: 0x1000,
        }));
        assert_eq!(
            t.unity_ranges(0, 0x0500),
            vec![(0x9d00_0000, 0x20_0000, true, true)]
        );
        assert_eq!(
            t.unity_ranges(0, 0x0608),
            vec![(0x2000, 0x1000, true, true)]
        );
        assert_eq!(t.unity_ranges(0, 0x0611), vec![]);
        assert_eq!(t.unity_ranges(1, 0x0500), vec![], "another segment");
        let b = t.to_bytes(*b"OEMIDX", *b"TABLEID1", 7);
        assert_eq!(Ivrs::parse(&b), Ok(t));
    }

    #[test]
    fn linux_uses_the_last_type_describing_the_first_iommu() {
        let mut t = sample();
        let Block::Ivhd(h) = t.blocks[0].clone() else {
            unreachable!()
        };
        // A 10h block for the same IOMMU first, selecting nothing.
        t.blocks.insert(
            0,
            Block::Ivhd(Ivhd {
                ty: 0x10,
                entries: vec![],
                ..h
            }),
        );
        let types: Vec<u8> = t.effective_ivhds().map(|h| h.ty).collect();
        assert_eq!(types, vec![0x40]);
        assert_eq!(
            t.iommu_for(0, 0x0342).map(|(h, a)| (h.ty, a)),
            Some((0x40, 0x0028))
        );
    }
}
