//! Real machines in: a live or copied `/sys/bus/pci/devices` tree (feature
//! `std`).
//!
//! Each entry named `ssss:bb:dd.f` (a directory, or the link Linux makes
//! to one) gives its `config` file as raw configuration space, and the
//! `iommu_group` link, when there is one, the kernel's group. The path
//! may be a copy of `/sys`, of `/sys/bus/pci`, or the `devices` directory
//! itself. `config` must be read as root: others get only the first 64
//! bytes, which hide the capabilities grouping needs.
//!
//! A tree is untrusted input (a copy may hold anything), and reading it
//! is bounded: sysfs attributes are regular files, so a `config` that is a
//! FIFO, a device (`/dev/zero`) or a directory is refused, without opening
//! it for blocking reads; a `config` larger than configuration space is
//! refused after reading at most one byte more; the devices directory is
//! scanned for at most `MAX_ENTRIES` (65,536) entries; links are followed only as
//! far as the kernel allows (`ELOOP`).

extern crate std;

use crate::import::ImportError;
use crate::{Bdf, ConfigError, ConfigSpace, Machine, RawFunction, MAX_FUNCTIONS};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use std::fs;
use std::path::{Path, PathBuf};

/// Why a sysfs tree cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    /// A file or directory that cannot be read.
    #[error("{path}: {reason}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An entry whose bytes are not a function.
    #[error("{path}: {error}")]
    Config {
        /// The `config` file.
        path: PathBuf,
        /// What is wrong with it.
        error: ConfigError,
    },
    /// A `config` file of 64 bytes: the kernel gives only the header to a
    /// reader without root, and the capabilities grouping needs are hidden.
    #[error("{0}: only 64 bytes: config was read without root, which hides the capabilities")]
    WithoutRoot(PathBuf),
    /// The tree has no PCI functions.
    #[error("{0}: no PCI functions (expected /sys, /sys/bus/pci or /sys/bus/pci/devices)")]
    Empty(PathBuf),
    /// More functions than any machine has.
    #[error("more than {0} functions")]
    TooMany(usize),
    /// An attribute that is not a regular file, as sysfs attributes are.
    #[error("{path}: a {kind}, not a regular file (sysfs attributes are regular files)")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead (`FIFO`, `character device`, ...).
        kind: &'static str,
    },
    /// A `config` file larger than configuration space.
    #[error("{path}: more than {limit} bytes, larger than configuration space")]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// The most bytes a configuration space has.
        limit: u64,
    },
    /// A directory with more entries than a sysfs `devices` directory has.
    #[error("{path}: more than {limit} entries (not a sysfs devices directory)")]
    TooManyEntries {
        /// The directory.
        path: PathBuf,
        /// The most entries looked at.
        limit: usize,
    },
}

/// The most bytes a `config` file may have: PCI Express configuration space.
const CONFIG_MAX: u64 = 4096;

/// Entries of the devices directory looked at before the tree is refused:
/// every function of [`MAX_FUNCTIONS`] several times over.
const MAX_ENTRIES: usize = 4 * MAX_FUNCTIONS;

/// What a file that is not a regular one is.
fn kind_of(t: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Reads a `config` attribute: a regular file of at most `CONFIG_MAX`
/// bytes. Opened non-blocking, so that a FIFO put in its place after the
/// check cannot stall the read of the tree.
fn read_config(path: &Path) -> Result<Vec<u8>, SysfsError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let meta = fs::metadata(path).map_err(|e| io(path, e))?;
    if !meta.is_file() {
        return Err(SysfsError::NotAFile {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| io(path, e))?;
    let meta = file.metadata().map_err(|e| io(path, e))?;
    if !meta.is_file() {
        return Err(SysfsError::NotAFile {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    let mut bytes = Vec::with_capacity(CONFIG_MAX as usize);
    file.take(CONFIG_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io(path, e))?;
    if bytes.len() as u64 > CONFIG_MAX {
        return Err(SysfsError::TooLarge {
            path: path.to_path_buf(),
            limit: CONFIG_MAX,
        });
    }
    Ok(bytes)
}

fn io(path: &Path, e: impl std::fmt::Display) -> SysfsError {
    SysfsError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The `devices` directory under `root`.
fn devices_dir(root: &Path) -> PathBuf {
    for sub in ["bus/pci/devices", "devices"] {
        let p = root.join(sub);
        if p.is_dir() {
            return p;
        }
    }
    root.to_path_buf()
}

/// Reads the PCI functions of a sysfs tree.
///
/// # Errors
/// A [`SysfsError`] naming the path: an unreadable entry, a `config` file
/// that is not a configuration space (a short one read without root
/// among them), a tree without functions, or too many.
pub fn read_sysfs(root: &Path) -> Result<Machine, SysfsError> {
    let dir = devices_dir(root);
    let mut entries: Vec<(Bdf, PathBuf)> = Vec::new();
    for (n, e) in fs::read_dir(&dir).map_err(|e| io(&dir, e))?.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(SysfsError::TooManyEntries {
                path: dir,
                limit: MAX_ENTRIES,
            });
        }
        let e = e.map_err(|e| io(&dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(bdf) = name.parse::<Bdf>() else {
            continue; // not a function (other sysfs entries)
        };
        if !name.contains(':') || name.matches(':').count() != 2 {
            continue; // sysfs names always carry the domain
        }
        entries.push((bdf, e.path()));
        if entries.len() > MAX_FUNCTIONS {
            return Err(SysfsError::TooMany(MAX_FUNCTIONS));
        }
    }
    if entries.is_empty() {
        return Err(SysfsError::Empty(dir));
    }
    entries.sort();
    let mut raw = Vec::with_capacity(entries.len());
    let mut paths = Vec::with_capacity(entries.len());
    for (bdf, path) in entries {
        let cfg_path = path.join("config");
        let bytes = read_config(&cfg_path)?;
        let config = ConfigSpace::from_bytes(bdf, &bytes).map_err(|error| SysfsError::Config {
            path: cfg_path.clone(),
            error,
        })?;
        if bytes.len() == 64 {
            return Err(SysfsError::WithoutRoot(cfg_path));
        }
        let kernel_group = fs::read_link(path.join("iommu_group"))
            .ok()
            .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
            .and_then(|n| n.parse::<u32>().ok());
        let driver = fs::read_link(path.join("driver"))
            .ok()
            .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()));
        raw.push(RawFunction {
            bdf,
            config,
            line: None,
            kernel_group,
            driver,
        });
        paths.push(cfg_path);
    }
    Machine::from_raw(raw).map_err(|e| match e {
        ImportError::Config { error, .. } => {
            let path = paths
                .iter()
                .find(|p| {
                    p.parent()
                        .and_then(|d| d.file_name())
                        .map(|n| n.to_string_lossy().into_owned())
                        == Some(format!("{}", error.device))
                })
                .cloned()
                .unwrap_or_else(|| dir.clone());
            SysfsError::Config { path, error }
        }
        ImportError::TooMany { limit } => SysfsError::TooMany(limit),
        ImportError::Syntax { reason, .. } => SysfsError::Io {
            path: dir.clone(),
            reason,
        },
    })
}
