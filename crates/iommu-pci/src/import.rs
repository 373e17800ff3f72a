//! Real machines in: configuration space from `lspci -xxxx` hex dumps.
//!
//! A dump is a header line per function (`bb:dd.f Class: Name`, or with
//! `-D` the full `ssss:bb:dd.f`, or with `-P`/`-PP` the path of bridges
//! down to it, see [`SlotPath`]), then rows of sixteen bytes,
//! `off: xx xx ... xx`, with the offset in hex (two digits below 0x100,
//! three above). Rows must run from 0 without gaps and end at one of the
//! sizes a configuration space has (64, 256 or 4096 bytes, for `-x`,
//! `-xxx`, `-xxxx`). Any other line is an error naming the line.

use crate::{Bdf, ConfigError, ConfigSpace, Function, SlotPath};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

/// Why a dump cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// A line that is neither a function's header nor a row of its bytes.
    #[error("line {line}: {reason}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The bytes of a function do not make a configuration space.
    #[error("line {line}: {error}")]
    Config {
        /// The line of the function's header.
        line: usize,
        /// What is wrong with its bytes.
        error: ConfigError,
    },
    /// More functions than any machine has.
    #[error("more than {limit} functions")]
    TooMany {
        /// The limit ([`MAX_FUNCTIONS`](crate::MAX_FUNCTIONS)).
        limit: usize,
    },
}

impl ImportError {
    /// The input line the error is about, if it is about one.
    pub fn line(&self) -> Option<usize> {
        match self {
            ImportError::Syntax { line, .. } | ImportError::Config { line, .. } => Some(*line),
            ImportError::TooMany { .. } => None,
        }
    }
}

/// One function of a dump: its address, its bytes, and where it began.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpedFunction {
    /// Its address.
    pub bdf: Bdf,
    /// Its configuration space.
    pub config: ConfigSpace,
    /// The line of its header.
    pub line: usize,
}

fn syntax(line: usize, reason: impl Into<String>) -> ImportError {
    ImportError::Syntax {
        line,
        reason: reason.into(),
    }
}

/// Parses a `bb: xx xx ...` row into its offset and sixteen bytes.
fn row(text: &str, line: usize) -> Result<(usize, [u8; 16]), ImportError> {
    let (off, rest) = text
        .split_once(':')
        .ok_or_else(|| syntax(line, "expected `offset: sixteen hex bytes`"))?;
    if !(2..=3).contains(&off.len()) || !off.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(syntax(line, "the offset is not two or three hex digits"));
    }
    let off = usize::from_str_radix(off, 16).map_err(|_| syntax(line, "bad offset"))?;
    let mut bytes = [0u8; 16];
    let mut n = 0;
    for tok in rest.split_ascii_whitespace() {
        if n == 16 {
            return Err(syntax(line, "more than sixteen bytes in a row"));
        }
        if tok.len() != 2 || !tok.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(syntax(line, "a byte is not two hex digits"));
        }
        bytes[n] = u8::from_str_radix(tok, 16).map_err(|_| syntax(line, "bad byte"))?;
        n += 1;
    }
    if n != 16 {
        return Err(syntax(line, "fewer than sixteen bytes in a row"));
    }
    Ok((off, bytes))
}

/// Whether `text` is a row: a hex offset, a colon, then a space.
fn looks_like_row(text: &str) -> bool {
    match text.split_once(": ") {
        Some((off, _)) => {
            (2..=3).contains(&off.len()) && off.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

/// Reads every function of an `lspci -xxxx` dump.
///
/// # Errors
/// An [`ImportError`] naming the line: a row out of order, a short or
/// malformed row, bytes that are not a configuration space, or a line
/// that is neither. Nothing is returned then.
pub fn parse_lspci_x(text: &str) -> Result<Vec<DumpedFunction>, ImportError> {
    struct Open {
        path: SlotPath,
        line: usize,
        bytes: Vec<u8>,
    }
    let mut opened: Vec<Open> = Vec::new();
    let mut open: Option<Open> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim_end();
        if l.is_empty() {
            continue;
        }
        if looks_like_row(l) {
            let dev = open
                .as_mut()
                .ok_or_else(|| syntax(line, "bytes before any function's header"))?;
            let (off, bytes) = row(l, line)?;
            if off != dev.bytes.len() {
                return Err(syntax(
                    line,
                    alloc::format!("row at {off:#x}, expected {:#x}", dev.bytes.len()),
                ));
            }
            if off >= 4096 {
                return Err(syntax(line, "past the 4 KiB of a configuration space"));
            }
            dev.bytes.extend_from_slice(&bytes);
            continue;
        }
        let name = l.split_ascii_whitespace().next().unwrap_or("");
        let path: SlotPath = name.parse().map_err(|_| {
            syntax(
                line,
                "expected a function's address (bb:dd.f, or an lspci -P/-PP path) \
                 or a row of bytes",
            )
        })?;
        opened.extend(open.take());
        if opened.len() >= crate::MAX_FUNCTIONS {
            return Err(ImportError::TooMany {
                limit: crate::MAX_FUNCTIONS,
            });
        }
        open = Some(Open {
            path,
            line,
            bytes: Vec::with_capacity(4096),
        });
    }
    opened.extend(open.take());
    // `lspci -P` paths: a step's bus is the secondary bus (byte 0x19) of
    // the bridge before it; parents have shorter paths than children.
    let mut order: Vec<usize> = (0..opened.len()).collect();
    order.sort_by_key(|&i| opened[i].path.len());
    let mut secondary: BTreeMap<Bdf, u8> = BTreeMap::new();
    let mut bdfs: Vec<Option<Bdf>> = alloc::vec![None; opened.len()];
    for i in order {
        let o = &opened[i];
        let bdf = o
            .path
            .resolve(|b| secondary.get(&b).copied())
            .map_err(|b| {
                syntax(
                    o.line,
                    alloc::format!("the path goes through {b}, which is not a dumped bridge"),
                )
            })?;
        // Header type 1 or 2 (bridges) with their bus numbers dumped.
        if matches!(o.bytes.get(0x0e).map(|t| t & 0x7f), Some(1 | 2)) {
            if let Some(&s) = o.bytes.get(0x19) {
                secondary.insert(bdf, s);
            }
        }
        bdfs[i] = Some(bdf);
    }
    opened
        .into_iter()
        .zip(bdfs)
        .map(|(o, bdf)| {
            let bdf = bdf.expect("every path was resolved");
            let config =
                ConfigSpace::from_bytes(bdf, &o.bytes).map_err(|error| ImportError::Config {
                    line: o.line,
                    error,
                })?;
            Ok(DumpedFunction {
                bdf,
                config,
                line: o.line,
            })
        })
        .collect()
}

/// Reads a dump and parses each function (see [`Function::parse`]).
///
/// # Errors
/// As [`parse_lspci_x`], and a function's configuration space that
/// [`Function::parse`] refuses.
pub fn functions_from_lspci_x(text: &str) -> Result<Vec<Function>, ImportError> {
    parse_lspci_x(text)?
        .into_iter()
        .map(|d| {
            Function::parse(d.bdf, &d.config).map_err(|error| ImportError::Config {
                line: d.line,
                error,
            })
        })
        .collect()
}

/// Writes functions as `lspci -xxxx` does (with `-D` addresses and no
/// names), so that [`parse_lspci_x`] reads them back byte for byte.
pub fn write_lspci_x(functions: &[DumpedFunction]) -> String {
    use core::fmt::Write as _;
    let mut s = String::new();
    for f in functions {
        let _ = writeln!(s, "{} Device", f.bdf);
        for (k, chunk) in f.config.as_bytes().chunks(16).enumerate() {
            let off = k * 16;
            if off < 0x100 {
                let _ = write!(s, "{off:02x}:");
            } else {
                let _ = write!(s, "{off:03x}:");
            }
            for b in chunk {
                let _ = write!(s, " {b:02x}");
            }
            s.push('\n');
        }
        s.push('\n');
    }
    s
}
