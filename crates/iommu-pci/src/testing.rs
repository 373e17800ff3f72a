//! The parser's fuzz oracle: any bytes become a configuration space, which
//! parses into a function or fails with a typed error, and a parsed
//! function's capabilities all lie inside the space, each visited once.

use crate::{Bdf, ConfigSpace, Function};
use alloc::vec::Vec;

/// The function every input is read as.
pub const BDF: Bdf = Bdf {
    segment: 0,
    bus: 3,
    devfn: 0,
};

/// The input that makes [`run`] read `cfg`: its size's index in
/// [`ConfigSpace::SIZES`], then its bytes.
pub fn encode(cfg: &ConfigSpace) -> Vec<u8> {
    let size = ConfigSpace::SIZES
        .iter()
        .position(|&s| s == cfg.len())
        .unwrap_or(0);
    let mut out = Vec::with_capacity(cfg.len() + 1);
    out.push(size as u8);
    out.extend_from_slice(cfg.as_bytes());
    out
}

/// Reads `data` as [`encode`] writes it (missing bytes are zero, extra
/// ones ignored), parses it and checks what a parse promises.
///
/// # Panics
/// When the parser breaks a promise: that is the finding.
pub fn run(data: &[u8]) {
    let Some((&size, rest)) = data.split_first() else {
        return;
    };
    let len = ConfigSpace::SIZES[usize::from(size) % ConfigSpace::SIZES.len()];
    let mut bytes = alloc::vec![0u8; len];
    let n = rest.len().min(len);
    bytes[..n].copy_from_slice(&rest[..n]);
    let cfg = ConfigSpace::from_bytes(BDF, &bytes).expect("a size from SIZES");
    let Ok(f) = Function::parse(BDF, &cfg) else {
        return;
    };
    let mut seen = Vec::new();
    for &(_, off) in &f.capabilities {
        assert!(
            off >= 0x40 && usize::from(off) + 2 <= len.min(256),
            "{off:#x}"
        );
        assert!(!seen.contains(&off), "visited twice");
        seen.push(off);
    }
    for &(_, off) in &f.ext_capabilities {
        assert!(off >= 0x100 && usize::from(off) + 4 <= len, "{off:#x}");
        assert!(!seen.contains(&off), "visited twice");
        seen.push(off);
    }
    if let Some(p) = f.pcie {
        assert!(f.capabilities.contains(&(crate::cap_id::EXP, p.offset)));
    }
    if let Some(b) = f.bridge {
        assert!(b.secondary > b.primary && b.subordinate >= b.secondary);
    }
}

/// The hex-dump importer's oracle: any text either fails with a typed
/// error or reads back identically after being written out again.
///
/// # Panics
/// When a dump read from `data` does not survive the round trip.
pub fn run_lspci_x(data: &[u8]) {
    let text = alloc::string::String::from_utf8_lossy(data);
    let Ok(dump) = crate::parse_lspci_x(&text) else {
        return;
    };
    let again = crate::parse_lspci_x(&crate::write_lspci_x(&dump)).expect("a written dump reads");
    assert_eq!(dump.len(), again.len());
    for (a, b) in dump.iter().zip(&again) {
        assert_eq!((a.bdf, &a.config), (b.bdf, &b.config));
    }
}
