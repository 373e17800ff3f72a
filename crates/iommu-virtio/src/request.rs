//! Requests as the driver puts them on the request queue: the
//! device-readable bytes parsed into a [`Request`], and written back from
//! one (for drivers and tests).

use crate::spec::{req, size};
use alloc::vec::Vec;

/// One request, parsed from its device-readable part.
///
/// Reserved fields are kept where the specification gives the device a
/// rule about them (ATTACH must refuse non-zero ones, UNMAP may); the
/// device ignores the others, and so does the parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Request {
    /// Attach `endpoint` to `domain`, creating the domain if it does not
    /// exist.
    Attach {
        /// The domain id.
        domain: u32,
        /// The endpoint id.
        endpoint: u32,
        /// `ATTACH_F_*` flags.
        flags: u32,
        /// The 4 reserved bytes, little-endian.
        reserved: u32,
    },
    /// Detach `endpoint` from `domain`.
    Detach {
        /// The domain id.
        domain: u32,
        /// The endpoint id.
        endpoint: u32,
    },
    /// Map `[virt_start, virt_end]` (inclusive) to `phys_start` onwards.
    Map {
        /// The domain id.
        domain: u32,
        /// First address of the range.
        virt_start: u64,
        /// Last address of the range (inclusive).
        virt_end: u64,
        /// Where `virt_start` translates to.
        phys_start: u64,
        /// `MAP_F_*` flags.
        flags: u32,
    },
    /// Remove every mapping `[virt_start, virt_end]` covers.
    Unmap {
        /// The domain id.
        domain: u32,
        /// First address of the range.
        virt_start: u64,
        /// Last address of the range (inclusive).
        virt_end: u64,
        /// The 4 reserved bytes, little-endian.
        reserved: u32,
    },
    /// Fill the properties of `endpoint`.
    Probe {
        /// The endpoint id.
        endpoint: u32,
    },
}

/// Why a device-readable part is not a request. The device then leaves
/// the buffers unwritten (used length 0), as the specification asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unparsable {
    /// Fewer bytes than a request head.
    #[error("{len} bytes hold no request head")]
    NoHead {
        /// Bytes given.
        len: usize,
    },
    /// A type the device does not know.
    #[error("unknown request type {0}")]
    UnknownType(u8),
    /// Fewer bytes than the request's type needs.
    #[error("request type {kind} needs {need} device-readable bytes, got {len}")]
    TooShort {
        /// The request type.
        kind: u8,
        /// Bytes given.
        len: usize,
        /// Bytes the type needs.
        need: usize,
    },
}

/// The little-endian `u32` at byte `at` of `b`.
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// The little-endian `u64` at byte `at` of `b`.
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl Request {
    /// The request type byte.
    pub fn kind(&self) -> u8 {
        match self {
            Request::Attach { .. } => req::ATTACH,
            Request::Detach { .. } => req::DETACH,
            Request::Map { .. } => req::MAP,
            Request::Unmap { .. } => req::UNMAP,
            Request::Probe { .. } => req::PROBE,
        }
    }

    /// The specification's name of the request type.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Attach { .. } => "ATTACH",
            Request::Detach { .. } => "DETACH",
            Request::Map { .. } => "MAP",
            Request::Unmap { .. } => "UNMAP",
            Request::Probe { .. } => "PROBE",
        }
    }

    /// Parses the device-readable part of a request. Bytes past what the
    /// type needs are ignored; the head's reserved bytes too.
    ///
    /// # Errors
    /// [`Unparsable`] when there is no head, the type is unknown, or the
    /// bytes are too few for the type.
    pub fn parse(b: &[u8]) -> Result<Request, Unparsable> {
        if b.len() < size::HEAD {
            return Err(Unparsable::NoHead { len: b.len() });
        }
        let kind = b[0];
        let need = match kind {
            req::ATTACH => size::ATTACH,
            req::DETACH => size::DETACH,
            req::MAP => size::MAP,
            req::UNMAP => size::UNMAP,
            req::PROBE => size::PROBE,
            other => return Err(Unparsable::UnknownType(other)),
        };
        if b.len() < need {
            return Err(Unparsable::TooShort {
                kind,
                len: b.len(),
                need,
            });
        }
        let h = size::HEAD;
        Ok(match kind {
            req::ATTACH => Request::Attach {
                domain: u32_at(b, h),
                endpoint: u32_at(b, h + 4),
                flags: u32_at(b, h + 8),
                reserved: u32_at(b, h + 12),
            },
            req::DETACH => Request::Detach {
                domain: u32_at(b, h),
                endpoint: u32_at(b, h + 4),
            },
            req::MAP => Request::Map {
                domain: u32_at(b, h),
                virt_start: u64_at(b, h + 4),
                virt_end: u64_at(b, h + 12),
                phys_start: u64_at(b, h + 20),
                flags: u32_at(b, h + 28),
            },
            req::UNMAP => Request::Unmap {
                domain: u32_at(b, h),
                virt_start: u64_at(b, h + 4),
                virt_end: u64_at(b, h + 12),
                reserved: u32_at(b, h + 20),
            },
            _ => Request::Probe {
                endpoint: u32_at(b, h),
            },
        })
    }

    /// The device-readable bytes of the request, as a driver writes them
    /// (reserved fields as given, head reserved bytes zero).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(size::PROBE);
        b.extend_from_slice(&[self.kind(), 0, 0, 0]);
        let put32 = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
        match *self {
            Request::Attach {
                domain,
                endpoint,
                flags,
                reserved,
            } => {
                put32(&mut b, domain);
                put32(&mut b, endpoint);
                put32(&mut b, flags);
                put32(&mut b, reserved);
            }
            Request::Detach { domain, endpoint } => {
                put32(&mut b, domain);
                put32(&mut b, endpoint);
                b.extend_from_slice(&[0; 8]);
            }
            Request::Map {
                domain,
                virt_start,
                virt_end,
                phys_start,
                flags,
            } => {
                put32(&mut b, domain);
                b.extend_from_slice(&virt_start.to_le_bytes());
                b.extend_from_slice(&virt_end.to_le_bytes());
                b.extend_from_slice(&phys_start.to_le_bytes());
                put32(&mut b, flags);
            }
            Request::Unmap {
                domain,
                virt_start,
                virt_end,
                reserved,
            } => {
                put32(&mut b, domain);
                b.extend_from_slice(&virt_start.to_le_bytes());
                b.extend_from_slice(&virt_end.to_le_bytes());
                put32(&mut b, reserved);
            }
            Request::Probe { endpoint } => {
                put32(&mut b, endpoint);
                b.extend_from_slice(&[0; 64]);
            }
        }
        b
    }

    /// How many device-writable bytes the request takes: the tail, and for
    /// PROBE the `probe_size` bytes of properties before it.
    pub fn writable_len(&self, probe_size: u32) -> usize {
        match self {
            Request::Probe { .. } => probe_size as usize + size::TAIL,
            _ => size::TAIL,
        }
    }
}

/// One line, as a log of the wire shows it: `MAP domain 1
/// [0x1000-0x1fff] -> 0xa000 RW`.
impl core::fmt::Display for Request {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Request::Attach {
                domain,
                endpoint,
                flags,
                ..
            } => {
                write!(f, "ATTACH endpoint {endpoint:#x} to domain {domain}")?;
                if flags & crate::spec::attach::BYPASS != 0 {
                    f.write_str(" BYPASS")?;
                }
                Ok(())
            }
            Request::Detach { domain, endpoint } => {
                write!(f, "DETACH endpoint {endpoint:#x} from domain {domain}")
            }
            Request::Map {
                domain,
                virt_start,
                virt_end,
                phys_start,
                flags,
            } => {
                write!(
                    f,
                    "MAP domain {domain} [{virt_start:#x}-{virt_end:#x}] -> {phys_start:#x} "
                )?;
                use crate::spec::map;
                for (bit, c) in [(map::READ, "R"), (map::WRITE, "W"), (map::MMIO, " MMIO")] {
                    if flags & bit != 0 {
                        f.write_str(c)?;
                    }
                }
                if flags & (map::READ | map::WRITE) == 0 {
                    f.write_str("-")?;
                }
                Ok(())
            }
            Request::Unmap {
                domain,
                virt_start,
                virt_end,
                ..
            } => write!(f, "UNMAP domain {domain} [{virt_start:#x}-{virt_end:#x}]"),
            Request::Probe { endpoint } => write!(f, "PROBE endpoint {endpoint:#x}"),
        }
    }
}
