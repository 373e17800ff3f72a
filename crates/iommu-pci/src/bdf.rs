//! PCI addresses: segment (PCI domain), bus, device and function.

use core::fmt;
use core::str::FromStr;

/// A function's address, `ssss:bb:dd.f` (Linux's `pci_name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// PCI segment (Linux's PCI domain). Wider than the 16 bits of an ACPI
    /// segment: Linux numbers the domains of Intel VMD controllers from
    /// 0x10000 up.
    pub segment: u32,
    /// Bus number.
    pub bus: u8,
    /// Device (bits 7:3) and function (bits 2:0), as in a requester id.
    pub devfn: u8,
}

impl Bdf {
    /// The function `dev.func` on `bus` of `segment`, if `dev < 32` and
    /// `func < 8`.
    pub const fn new(segment: u32, bus: u8, dev: u8, func: u8) -> Option<Bdf> {
        if dev >= 32 || func >= 8 {
            return None;
        }
        Some(Bdf {
            segment,
            bus,
            devfn: (dev << 3) | func,
        })
    }

    /// The device number.
    pub const fn dev(&self) -> u8 {
        self.devfn >> 3
    }

    /// The function number.
    pub const fn func(&self) -> u8 {
        self.devfn & 7
    }

    /// The 16-bit requester id a PCIe transaction carries (bus, devfn).
    pub const fn requester_id(&self) -> u16 {
        ((self.bus as u16) << 8) | self.devfn as u16
    }

    /// The function with requester id `rid` on `segment`.
    pub const fn from_requester_id(segment: u32, rid: u16) -> Bdf {
        Bdf {
            segment,
            bus: (rid >> 8) as u8,
            devfn: rid as u8,
        }
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment,
            self.bus,
            self.dev(),
            self.func()
        )
    }
}

/// Why a text is not a PCI address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a PCI address (expected [ssss:]bb:dd.f with hex numbers, device below 0x20, function below 8)")]
pub struct BdfParseError;

impl FromStr for Bdf {
    type Err = BdfParseError;

    /// `ssss:bb:dd.f` (the segment in one to eight hex digits, as `lspci -D`
    /// prints VMD domains like `10000:e0:06.0`) or, as `lspci` prints
    /// without `-D`, `bb:dd.f` in segment 0.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = |t: &str, max_len: usize| -> Result<u32, BdfParseError> {
            if t.is_empty() || t.len() > max_len || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BdfParseError);
            }
            u32::from_str_radix(t, 16).map_err(|_| BdfParseError)
        };
        let (rest, func) = s.rsplit_once('.').ok_or(BdfParseError)?;
        let mut parts = rest.split(':');
        let (seg, bus, dev) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(b), Some(d), None, None) => ("0", b, d),
            (Some(sg), Some(b), Some(d), None) => (sg, b, d),
            _ => return Err(BdfParseError),
        };
        let segment = hex(seg, 8)?;
        if segment > 0x7fff_ffff {
            return Err(BdfParseError); // Linux's domain numbers are ints
        }
        let bus = hex(bus, 2)? as u8;
        let dev = hex(dev, 2)?;
        let func = hex(func, 1)?;
        if dev >= 32 || func >= 8 {
            return Err(BdfParseError);
        }
        Bdf::new(segment, bus, dev as u8, func as u8).ok_or(BdfParseError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn addresses_print_and_parse_as_linux_names_them() {
        let b: Bdf = "0000:00:1c.4".parse().unwrap();
        assert_eq!((b.segment, b.bus, b.dev(), b.func()), (0, 0, 0x1c, 4));
        assert_eq!(b.to_string(), "0000:00:1c.4");
        assert_eq!(b.requester_id(), 0x00e4);
        assert_eq!(
            "3a:00.1".parse::<Bdf>().unwrap().to_string(),
            "0000:3a:00.1"
        );
        assert_eq!(
            Bdf::from_requester_id(1, 0x0208).to_string(),
            "0001:02:01.0"
        );
        let vmd: Bdf = "10000:e0:06.0".parse().unwrap();
        assert_eq!(
            (vmd.segment, vmd.to_string()),
            (0x10000, "10000:e0:06.0".into())
        );
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for bad in [
            "",
            "00:1c",
            "00:20.0",
            "00:1f.8",
            "0:0:0:0.0",
            "00:1c.",
            "g0:00.0",
            "000000000:00:00.0",
            "80000000:00:00.0",
            "000:1c.0",
            "00:1c.0 ",
        ] {
            assert_eq!(bad.parse::<Bdf>(), Err(BdfParseError), "{bad:?}");
        }
    }
}
