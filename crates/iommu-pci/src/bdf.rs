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

/// A function's address as `lspci -P` or `-PP` prints it: the bridges
/// above it from the root bus down, then the function, joined by `/`
/// (`00:1c.4/07:00.0/08:02.0/0a:00.0`). `-PP` gives every step its bus;
/// `-P` gives only `dd.f` after the first, leaving each bus to be the
/// secondary bus of the bridge before it. A plain address is a path of
/// one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotPath {
    first: Bdf,
    /// The steps after the first: bus (when printed) and devfn.
    rest: alloc::vec::Vec<(Option<u8>, u8)>,
}

impl SlotPath {
    /// The function's address when the path alone says it: a plain
    /// address, or one whose last step prints its bus (`-PP`).
    pub fn known(&self) -> Option<Bdf> {
        match self.rest.last() {
            None => Some(self.first),
            Some(&(Some(bus), devfn)) => Some(Bdf {
                segment: self.first.segment,
                bus,
                devfn,
            }),
            Some((None, _)) => None,
        }
    }

    /// How many steps the path has (1 for a plain address).
    pub fn len(&self) -> usize {
        1 + self.rest.len()
    }

    /// Always false: a path has at least its function.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The function's address, taking each step's bus from the step
    /// before it through `secondary` (a bridge's secondary bus number,
    /// `None` when it is not a known bridge) where the step does not
    /// print it.
    ///
    /// # Errors
    /// The bridge whose secondary bus was needed and not known.
    pub fn resolve(&self, secondary: impl Fn(Bdf) -> Option<u8>) -> Result<Bdf, Bdf> {
        let mut at = self.first;
        for &(bus, devfn) in &self.rest {
            let bus = match bus {
                Some(b) => b,
                None => secondary(at).ok_or(at)?,
            };
            at = Bdf {
                segment: at.segment,
                bus,
                devfn,
            };
        }
        Ok(at)
    }
}

impl FromStr for SlotPath {
    type Err = BdfParseError;

    /// `[ssss:]bb:dd.f` followed by any number of `/bb:dd.f` or `/dd.f`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut steps = s.split('/');
        let first: Bdf = steps.next().ok_or(BdfParseError)?.parse()?;
        let mut rest = alloc::vec::Vec::new();
        for step in steps {
            // A step is a plain address without a segment, or `dd.f`
            // (parsed as the device on a placeholder bus).
            let (bus, b) = if step.contains(':') {
                let b: Bdf = step.parse()?;
                if step.matches(':').count() != 1 {
                    return Err(BdfParseError); // segments only lead a path
                }
                (Some(b.bus), b)
            } else {
                (None, alloc::format!("00:{step}").parse::<Bdf>()?)
            };
            // At most one step per bus number below the first.
            if rest.len() >= 256 {
                return Err(BdfParseError);
            }
            rest.push((bus, b.devfn));
        }
        Ok(SlotPath { first, rest })
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

    #[test]
    fn lspci_paths_name_the_function_at_their_end() {
        let pp: SlotPath = "00:1c.4/07:00.0/08:02.0/0a:00.0".parse().unwrap();
        assert_eq!(pp.len(), 4);
        assert_eq!(pp.known().unwrap().to_string(), "0000:0a:00.0");
        let plain: SlotPath = "0001:3a:00.1".parse().unwrap();
        assert_eq!(plain.known().unwrap().to_string(), "0001:3a:00.1");
        let p: SlotPath = "0002:00:1c.4/00.0/02.0/00.0".parse().unwrap();
        assert_eq!(p.known(), None);
        // 00:1c.4 leads to bus 07, 07:00.0 to bus 08, 08:02.0 to bus 0a.
        let secondary = |b: Bdf| match (b.segment, b.bus, b.devfn) {
            (2, 0x00, 0xe4) => Some(0x07),
            (2, 0x07, 0x00) => Some(0x08),
            (2, 0x08, 0x10) => Some(0x0a),
            _ => None,
        };
        assert_eq!(p.resolve(secondary).unwrap().to_string(), "0002:0a:00.0");
        // A step below something that is not a known bridge names it.
        let orphan: SlotPath = "00:1f.0/00.0".parse().unwrap();
        assert_eq!(
            orphan.resolve(|_| None).unwrap_err().to_string(),
            "0000:00:1f.0"
        );
        for bad in [
            "00:1c.4/",
            "00:1c.4//00.0",
            "00:1c.4/0000:07:00.0",
            "00:1c.4/20.0",
            "00:1c.4/07:00.8",
            "/00:1c.4",
            "00:1c.4/x",
        ] {
            assert_eq!(bad.parse::<SlotPath>(), Err(BdfParseError), "{bad:?}");
        }
    }
}
