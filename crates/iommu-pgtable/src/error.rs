//! Errors of the page-table layer and their Linux error numbers.

use core::fmt;
use iommu_types::Errno;

/// Why a page-table operation was refused. Nothing was written when one is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgtableError {
    /// The format has no leaf of this size, or an address is not aligned to it (`EINVAL`).
    InvalidPageSize,
    /// Neither read nor write was asked for (`EINVAL`).
    NoAccess,
    /// A zero page count, or a configuration the format does not support (`EINVAL`).
    InvalidArgument,
    /// The input or output address lies outside IAS/OAS (`ERANGE`).
    OutOfRange,
    /// A leaf (or a populated table) is already in the way (`EEXIST`).
    Exists,
    /// Table memory ran out (`ENOMEM`).
    NoMemory,
    /// The format lacks the feature (e.g. a dirty bit) (`EOPNOTSUPP`).
    NotSupported,
}

impl PgtableError {
    /// The Linux error number io-pgtable returns for this case.
    pub const fn errno(self) -> Errno {
        match self {
            PgtableError::InvalidPageSize
            | PgtableError::NoAccess
            | PgtableError::InvalidArgument => Errno::EINVAL,
            PgtableError::OutOfRange => Errno::ERANGE,
            PgtableError::Exists => Errno::EEXIST,
            PgtableError::NoMemory => Errno::ENOMEM,
            PgtableError::NotSupported => Errno::EOPNOTSUPP,
        }
    }
}

impl From<PgtableError> for Errno {
    fn from(e: PgtableError) -> Errno {
        e.errno()
    }
}

impl fmt::Display for PgtableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            PgtableError::InvalidPageSize => "page size not supported or address not aligned to it",
            PgtableError::NoAccess => "mapping grants neither read nor write",
            PgtableError::InvalidArgument => "invalid argument",
            PgtableError::OutOfRange => "address outside the input or output address size",
            PgtableError::Exists => "a mapping is already in the way",
            PgtableError::NoMemory => "out of table memory",
            PgtableError::NotSupported => "not supported by this format",
        };
        write!(f, "{what} ({})", self.errno().name())
    }
}

impl core::error::Error for PgtableError {}
