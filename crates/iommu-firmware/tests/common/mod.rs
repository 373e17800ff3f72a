//! What the QEMU table tests share: hex dumps and the guest's devices.
#![allow(dead_code)] // each test binary uses its part

use std::collections::BTreeMap;

pub fn hex(text: &str) -> Vec<u8> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.split_whitespace())
        .map(|h| u8::from_str_radix(h, 16).expect("hex"))
        .collect()
}

pub fn bdf(s: &str) -> u16 {
    let n = |x: &str| u16::from_str_radix(x, 16).expect("hex");
    let s = s.trim_start_matches("0000:");
    n(&s[0..2]) << 8 | n(&s[3..5]) << 3 | n(&s[6..7])
}

/// The guest as its lspci and sysfs showed it.
pub struct Guest {
    pub functions: Vec<u16>,
    /// Each bridge's (secondary, subordinate) bus.
    pub bridges: BTreeMap<u16, (u8, u8)>,
    /// The functions Linux put in groups.
    pub grouped: Vec<u16>,
}

pub fn guest(devices: &str) -> Guest {
    let (mut functions, mut bridges, mut grouped) = (Vec::new(), BTreeMap::new(), Vec::new());
    for line in devices.lines().filter(|l| !l.starts_with('#')) {
        if let Some(dev) = line.strip_prefix("device ") {
            grouped.push(bdf(dev));
        } else if let Some(bus) = line.trim().strip_prefix("Bus: ") {
            let num = |key: &str| {
                let v = bus.split(key).nth(1).expect(key);
                u8::from_str_radix(&v[..2], 16).expect("bus number")
            };
            let last = *functions.last().expect("a bridge's bus line follows it");
            bridges.insert(last, (num("secondary="), num("subordinate=")));
        } else {
            functions.push(bdf(&line[..7]));
        }
    }
    Guest {
        functions,
        bridges,
        grouped,
    }
}

/// Every truncation of `bytes` fails to parse; every single-bit flip
/// (checksum fixed, so that the structure checks see the byte) parses or
/// fails without a panic, and what parses builds back to bytes that parse
/// the same.
pub fn every_truncation_and_flip<T: PartialEq + std::fmt::Debug, E: std::fmt::Debug>(
    bytes: &[u8],
    parse: impl Fn(&[u8]) -> Result<T, E>,
    build: impl Fn(&T) -> Vec<u8>,
) {
    for len in 0..bytes.len() {
        assert!(parse(&bytes[..len]).is_err(), "{len} bytes");
    }
    for at in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.to_vec();
            b[at] ^= 1 << bit;
            iommu_firmware::acpi::fix_checksum(&mut b);
            if let Ok(t) = parse(&b) {
                let again = parse(&build(&t)).expect("what was built parses");
                assert_eq!(again, t, "byte {at} bit {bit}");
            }
        }
    }
}
