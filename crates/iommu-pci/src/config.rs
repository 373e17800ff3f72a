//! Configuration space bytes and the function they describe.
//!
//! Offsets and fields follow the PCI Local Bus Specification 3.0 (chapter 6,
//! type 0 and type 1 headers) and the PCI Express Base Specification 6.0
//! (7.5.1 common header, 7.6 extended configuration space).

use crate::caps::{Acs, AcsFlags, Ari, Pcie, PortType, Sriov};
use crate::error::{ConfigError, ConfigErrorKind};
use crate::Bdf;
use alloc::vec;
use alloc::vec::Vec;

/// Standard capability ids.
pub mod cap_id {
    /// Power management.
    pub const PM: u8 = 0x01;
    /// MSI.
    pub const MSI: u8 = 0x05;
    /// PCI-X.
    pub const PCIX: u8 = 0x07;
    /// PCI Express.
    pub const EXP: u8 = 0x10;
    /// MSI-X.
    pub const MSIX: u8 = 0x11;
}

/// Extended capability ids.
pub mod ext_cap_id {
    /// Access Control Services.
    pub const ACS: u16 = 0x000d;
    /// Alternative Routing-ID Interpretation.
    pub const ARI: u16 = 0x000e;
    /// Single Root I/O Virtualization.
    pub const SRIOV: u16 = 0x0010;
}

const VENDOR_ID: u16 = 0x00;
const DEVICE_ID: u16 = 0x02;
const STATUS: u16 = 0x06;
const STATUS_CAP_LIST: u16 = 1 << 4;
const REVISION: u16 = 0x08;
const CLASS: u16 = 0x09;
const HEADER_TYPE: u16 = 0x0e;
const SUBSYSTEM_VENDOR: u16 = 0x2c;
const SUBSYSTEM_ID: u16 = 0x2e;
const CAPABILITY_LIST: u16 = 0x34;
const CARDBUS_CAPABILITY_LIST: u16 = 0x14;
const PRIMARY_BUS: u16 = 0x18;
const SECONDARY_BUS: u16 = 0x19;
const SUBORDINATE_BUS: u16 = 0x1a;
/// The standard header's size: capabilities live above it.
const HEADER_SIZE: u16 = 0x40;
/// Where extended capabilities start (PCIe only).
const EXT_START: u16 = 0x100;

/// One function's configuration space: 64, 256 or 4096 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigSpace {
    bytes: Vec<u8>,
}

impl core::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl ConfigSpace {
    /// Sizes a configuration space can have: the standard header, the
    /// conventional 256 bytes, and PCI Express' 4 KiB.
    pub const SIZES: [usize; 3] = [64, 256, 4096];

    /// The space made of `bytes`.
    ///
    /// # Errors
    /// [`ConfigErrorKind::BadSize`] (offset 0) unless `bytes` has one of
    /// the [`SIZES`](Self::SIZES); `device` names the function in the error.
    pub fn from_bytes(device: Bdf, bytes: &[u8]) -> Result<ConfigSpace, ConfigError> {
        if !Self::SIZES.contains(&bytes.len()) {
            return Err(ConfigError {
                device,
                offset: 0,
                kind: ConfigErrorKind::BadSize { len: bytes.len() },
            });
        }
        Ok(ConfigSpace {
            bytes: bytes.to_vec(),
        })
    }

    /// A space of `len` zero bytes (rounded up to the next of the
    /// [`SIZES`](Self::SIZES), at most 4096), for building functions by hand.
    pub fn new_zeroed(len: usize) -> ConfigSpace {
        let len = Self::SIZES
            .iter()
            .copied()
            .find(|&s| s >= len)
            .unwrap_or(4096);
        ConfigSpace {
            bytes: vec![0; len],
        }
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// How many bytes the space has.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it has none (never, for a space made by this type).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The byte at `off`, if the space has it.
    pub fn read_u8(&self, off: u16) -> Option<u8> {
        self.bytes.get(usize::from(off)).copied()
    }

    /// The little-endian 16-bit register at `off`, if the space has it.
    pub fn read_u16(&self, off: u16) -> Option<u16> {
        let o = usize::from(off);
        let b = self.bytes.get(o..o.checked_add(2)?)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }

    /// The little-endian 32-bit register at `off`, if the space has it.
    pub fn read_u32(&self, off: u16) -> Option<u32> {
        let o = usize::from(off);
        let b = self.bytes.get(o..o.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Sets the byte at `off`; writes past the end are dropped.
    pub fn write_u8(&mut self, off: u16, v: u8) {
        self.write(off, &[v]);
    }

    /// Sets the 16-bit register at `off`; writes past the end are dropped.
    pub fn write_u16(&mut self, off: u16, v: u16) {
        self.write(off, &v.to_le_bytes());
    }

    /// Sets the 32-bit register at `off`; writes past the end are dropped.
    pub fn write_u32(&mut self, off: u16, v: u32) {
        self.write(off, &v.to_le_bytes());
    }

    fn write(&mut self, off: u16, v: &[u8]) {
        let o = usize::from(off);
        if let Some(dst) = o
            .checked_add(v.len())
            .and_then(|end| self.bytes.get_mut(o..end))
        {
            dst.copy_from_slice(v);
        }
    }
}

/// The header layout (bits 6:0 of the Header Type register).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderType {
    /// Type 0: an endpoint.
    Normal,
    /// Type 1: a PCI-to-PCI bridge.
    Bridge,
    /// Type 2: a CardBus bridge.
    CardBus,
}

/// A bridge's bus numbers (type 1 and type 2 headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BridgeBuses {
    /// The bus the bridge sits on.
    pub primary: u8,
    /// The bus right behind it.
    pub secondary: u8,
    /// The highest bus behind it.
    pub subordinate: u8,
}

impl BridgeBuses {
    /// Whether `bus` is behind the bridge.
    pub fn contains(&self, bus: u8) -> bool {
        (self.secondary..=self.subordinate).contains(&bus)
    }
}

/// A function, as its configuration space describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// Its address.
    pub bdf: Bdf,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Class code: base class, subclass, programming interface (24 bits).
    pub class: u32,
    /// Revision id.
    pub revision: u8,
    /// Header layout.
    pub header_type: HeaderType,
    /// Bit 7 of the Header Type register: the device has several functions.
    pub multifunction: bool,
    /// Subsystem vendor and device id (type 0 headers; 0 otherwise).
    pub subsystem: (u16, u16),
    /// Bus numbers, for a bridge whose firmware assigned them.
    pub bridge: Option<BridgeBuses>,
    /// The PCI Express capability.
    pub pcie: Option<Pcie>,
    /// The PCI-X capability's offset.
    pub pcix: Option<u16>,
    /// The ACS extended capability.
    pub acs: Option<Acs>,
    /// The ARI extended capability.
    pub ari: Option<Ari>,
    /// The SR-IOV extended capability.
    pub sriov: Option<Sriov>,
    /// Every standard capability, `(id, offset)`, in list order.
    pub capabilities: Vec<(u8, u16)>,
    /// Every extended capability, `(id, offset)`, in list order.
    pub ext_capabilities: Vec<(u16, u16)>,
    /// The bytes it was read from; [`set_acs_ctrl`](Self::set_acs_ctrl)
    /// keeps them in step with the fields above.
    pub config: ConfigSpace,
    /// The bytes were rebuilt from a text listing (`lspci -vvv`, a
    /// topology file): only the registers the listing shows are real, the
    /// rest read as zero.
    pub reconstructed: bool,
}

impl Function {
    /// Reads the function `bdf` out of `cfg`: the header, then both
    /// capability lists, every pointer checked.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `bdf` and the offset: no function (vendor
    /// 0xffff or 0), an unknown header type, bridge bus numbers that
    /// contradict each other, a capability pointer out of range, a list
    /// that loops, or a capability cut short by the end of the space.
    pub fn parse(bdf: Bdf, cfg: &ConfigSpace) -> Result<Function, ConfigError> {
        let err = |offset: u16, kind| ConfigError {
            device: bdf,
            offset,
            kind,
        };
        // `ConfigSpace` always holds at least the 64-byte header.
        let r8 = |o: u16| cfg.read_u8(o).unwrap_or(0);
        let r16 = |o: u16| cfg.read_u16(o).unwrap_or(0);
        let vendor = r16(VENDOR_ID);
        if vendor == 0xffff || vendor == 0 {
            return Err(err(VENDOR_ID, ConfigErrorKind::NoFunction { vendor }));
        }
        let raw_type = r8(HEADER_TYPE);
        let header_type = match raw_type & 0x7f {
            0 => HeaderType::Normal,
            1 => HeaderType::Bridge,
            2 => HeaderType::CardBus,
            other => return Err(err(HEADER_TYPE, ConfigErrorKind::UnknownHeaderType(other))),
        };
        let class = u32::from(r8(CLASS)) | u32::from(r16(CLASS + 1)) << 8;
        let bridge = match header_type {
            HeaderType::Normal => None,
            HeaderType::Bridge | HeaderType::CardBus => {
                let b = BridgeBuses {
                    primary: r8(PRIMARY_BUS),
                    secondary: r8(SECONDARY_BUS),
                    subordinate: r8(SUBORDINATE_BUS),
                };
                if b.secondary == 0 && b.subordinate == 0 {
                    None // not configured by firmware
                } else if b.secondary <= b.primary || b.subordinate < b.secondary {
                    return Err(err(
                        PRIMARY_BUS,
                        ConfigErrorKind::BadBusNumbers {
                            primary: b.primary,
                            secondary: b.secondary,
                            subordinate: b.subordinate,
                        },
                    ));
                } else {
                    Some(b)
                }
            }
        };
        let subsystem = if header_type == HeaderType::Normal {
            (r16(SUBSYSTEM_VENDOR), r16(SUBSYSTEM_ID))
        } else {
            (0, 0)
        };
        let mut f = Function {
            bdf,
            vendor,
            device: r16(DEVICE_ID),
            class,
            revision: r8(REVISION),
            header_type,
            multifunction: raw_type & 0x80 != 0,
            subsystem,
            bridge,
            pcie: None,
            pcix: None,
            acs: None,
            ari: None,
            sriov: None,
            capabilities: Vec::new(),
            ext_capabilities: Vec::new(),
            config: cfg.clone(),
            reconstructed: false,
        };
        if r16(STATUS) & STATUS_CAP_LIST != 0 {
            let list = if header_type == HeaderType::CardBus {
                CARDBUS_CAPABILITY_LIST
            } else {
                CAPABILITY_LIST
            };
            f.capabilities = standard_caps(cfg, u16::from(r8(list)), list, &err)?;
        }
        for &(id, off) in &f.capabilities {
            match id {
                cap_id::EXP => {
                    let flags = cfg.read_u16(off + 2).ok_or(err(
                        off,
                        ConfigErrorKind::CapabilityTruncated { id: id.into() },
                    ))?;
                    f.pcie.get_or_insert(Pcie {
                        offset: off,
                        version: (flags & 0xf) as u8,
                        port_type: PortType::from_bits(((flags >> 4) & 0xf) as u8),
                    });
                }
                cap_id::PCIX => {
                    f.pcix.get_or_insert(off);
                }
                _ => {}
            }
        }
        // Extended capabilities exist only in a PCIe function's 4 KiB space.
        if f.pcie.is_some() && cfg.len() > usize::from(EXT_START) {
            f.ext_capabilities = extended_caps(cfg, &err)?;
        }
        for &(id, off) in &f.ext_capabilities {
            let need = |len: u16| {
                if usize::from(off) + usize::from(len) <= cfg.len() {
                    Ok(())
                } else {
                    Err(err(off, ConfigErrorKind::CapabilityTruncated { id }))
                }
            };
            match id {
                ext_cap_id::ACS if f.acs.is_none() => {
                    need(8)?;
                    f.acs = Some(Acs {
                        offset: off,
                        cap: AcsFlags(r16(off + 4)),
                        ctrl: AcsFlags(r16(off + 6)),
                    });
                }
                ext_cap_id::ARI if f.ari.is_none() => {
                    need(8)?;
                    f.ari = Some(Ari {
                        offset: off,
                        next_function: (r16(off + 4) >> 8) as u8,
                    });
                }
                ext_cap_id::SRIOV if f.sriov.is_none() => {
                    need(0x40)?;
                    f.sriov = Some(Sriov {
                        offset: off,
                        vf_enable: r16(off + 0x08) & 1 != 0,
                        initial_vfs: r16(off + 0x0c),
                        total_vfs: r16(off + 0x0e),
                        num_vfs: r16(off + 0x10),
                        first_vf_offset: r16(off + 0x14),
                        vf_stride: r16(off + 0x16),
                        vf_device: r16(off + 0x1a),
                    });
                }
                _ => {}
            }
        }
        Ok(f)
    }

    /// The base class (bits 23:16 of the class code).
    pub fn base_class(&self) -> u8 {
        (self.class >> 16) as u8
    }

    /// The subclass (bits 15:8 of the class code).
    pub fn subclass(&self) -> u8 {
        (self.class >> 8) as u8
    }

    /// Whether the function is a PCI Express one.
    pub fn is_pcie(&self) -> bool {
        self.pcie.is_some()
    }

    /// The PCI Express port type, if the function is a PCI Express one.
    pub fn port_type(&self) -> Option<PortType> {
        self.pcie.map(|p| p.port_type)
    }

    /// Writes the ACS control register (as Linux's `pci_enable_acs`
    /// does); nothing for a function without the ACS capability.
    pub fn set_acs_ctrl(&mut self, ctrl: AcsFlags) {
        if let Some(acs) = &mut self.acs {
            acs.ctrl = ctrl;
            self.config.write_u16(acs.offset + 6, ctrl.0);
        }
    }

    /// Gives a PCI Express function an ACS capability with `cap`
    /// implemented and `ctrl` enabled (what a "what if this port had ACS"
    /// question needs): the existing one is rewritten, or a new one is
    /// linked at the end of the extended list, in the highest free eight
    /// bytes of the space.
    ///
    /// # Errors
    /// [`ConfigErrorKind::CapabilityTruncated`] when the function is not a
    /// PCI Express one with a 4 KiB space, or no free room is left.
    pub fn add_acs(&mut self, cap: AcsFlags, ctrl: AcsFlags) -> Result<(), ConfigError> {
        let full = ConfigError {
            device: self.bdf,
            offset: EXT_START,
            kind: ConfigErrorKind::CapabilityTruncated {
                id: ext_cap_id::ACS,
            },
        };
        if let Some(acs) = &mut self.acs {
            acs.cap = cap;
            self.config.write_u16(acs.offset + 4, cap.0);
            self.set_acs_ctrl(ctrl);
            return Ok(());
        }
        if self.pcie.is_none() || self.config.len() != 4096 {
            return Err(full);
        }
        let header = |id: u16, next: u16| u32::from(id) | 1 << 16 | u32::from(next) << 20;
        let last = self.ext_capabilities.last().map(|&(_, off)| off);
        let at = match last {
            // An empty list: the capability goes at 0x100 itself.
            None => EXT_START,
            Some(last_off) => (last_off + 8..=0xff8)
                .rev()
                .step_by(8)
                .find(|&o| {
                    o % 8 == 0
                        && (0..8).all(|k| self.config.read_u8(o + k) == Some(0))
                        && !self.ext_capabilities.iter().any(|&(_, c)| c == o)
                })
                .ok_or(full)?,
        };
        if let Some(last_off) = last {
            let h = self.config.read_u32(last_off).unwrap_or(0);
            self.config
                .write_u32(last_off, (h & 0x000f_ffff) | u32::from(at) << 20);
        }
        self.config.write_u32(at, header(ext_cap_id::ACS, 0));
        self.config.write_u16(at + 4, cap.0);
        self.config.write_u16(at + 6, ctrl.0);
        self.ext_capabilities.push((ext_cap_id::ACS, at));
        self.acs = Some(Acs {
            offset: at,
            cap,
            ctrl,
        });
        Ok(())
    }
}

/// Follows the capability pointer `at`, read at offset `from`, of a list
/// whose entries lie at `min` or above and start with a `width`-byte
/// header, in a space of `end` bytes; marks it in `seen` (one flag per
/// dword). The low two bits of a pointer are reserved (Linux masks them
/// too).
fn follow(
    at: u16,
    from: u16,
    min: u16,
    width: u16,
    end: u16,
    seen: &mut [bool],
    err: &impl Fn(u16, ConfigErrorKind) -> ConfigError,
) -> Result<u16, ConfigError> {
    let ptr = at & !3;
    if ptr < min {
        return Err(err(
            from,
            ConfigErrorKind::PointerOutOfRange { pointer: at },
        ));
    }
    if ptr + width > end {
        let len = end;
        return Err(err(from, ConfigErrorKind::BeyondDump { pointer: ptr, len }));
    }
    let slot = &mut seen[usize::from(ptr / 4)];
    if *slot {
        return Err(err(from, ConfigErrorKind::CapabilityLoop { pointer: ptr }));
    }
    *slot = true;
    Ok(ptr)
}

/// Walks the standard capability list from `first` (read at `list`).
/// Every capability occupies at least its two header bytes at a
/// dword-aligned offset above the header, so a list that visits more of
/// them than fit has looped; the visited set names where.
fn standard_caps(
    cfg: &ConfigSpace,
    first: u16,
    list: u16,
    err: &impl Fn(u16, ConfigErrorKind) -> ConfigError,
) -> Result<Vec<(u8, u16)>, ConfigError> {
    let end = cfg.len().min(256) as u16;
    let mut seen = [false; 64];
    let mut out = Vec::new();
    let (mut at, mut from) = (first, list);
    while at != 0 {
        let ptr = follow(at, from, HEADER_SIZE, 2, end, &mut seen, err)?;
        let id = cfg.read_u8(ptr).unwrap_or(0);
        if id == 0xff {
            break; // what an absent function's bytes read as
        }
        out.push((id, ptr));
        from = ptr + 1;
        at = u16::from(cfg.read_u8(ptr + 1).unwrap_or(0));
    }
    Ok(out)
}

/// Walks the extended capability list from 0x100.
fn extended_caps(
    cfg: &ConfigSpace,
    err: &impl Fn(u16, ConfigErrorKind) -> ConfigError,
) -> Result<Vec<(u16, u16)>, ConfigError> {
    let end = cfg.len() as u16;
    let mut seen = [false; 1024];
    let mut out = Vec::new();
    let (mut at, mut from) = (EXT_START, EXT_START);
    loop {
        let ptr = follow(at, from, EXT_START, 4, end, &mut seen, err)?;
        let header = cfg.read_u32(ptr).unwrap_or(0);
        // An empty list, or bytes of an absent function.
        if header == 0 || header == u32::MAX {
            break;
        }
        out.push(((header & 0xffff) as u16, ptr));
        let next = (header >> 20) as u16;
        if next == 0 {
            break;
        }
        from = ptr;
        at = next;
    }
    Ok(out)
}
