//! What can be wrong with a function's configuration space.

use crate::Bdf;

/// A configuration space that cannot be read as a PCI function, with the
/// function and the offset where reading stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{device}: configuration space offset {offset:#05x}: {kind}")]
pub struct ConfigError {
    /// The function whose bytes these are.
    pub device: Bdf,
    /// Where the problem is (the byte read, or the pointer followed).
    pub offset: u16,
    /// What the problem is.
    pub kind: ConfigErrorKind,
}

/// The kinds of [`ConfigError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigErrorKind {
    /// Fewer bytes than the standard header (64), or not one of the sizes
    /// a dump can have (64, 256, 4096).
    #[error("{len} bytes is not a configuration space (64, 256 or 4096 expected)")]
    BadSize {
        /// Bytes given.
        len: usize,
    },
    /// Vendor id 0xffff or 0x0000: no function answers here.
    #[error("no function: vendor id {vendor:#06x}")]
    NoFunction {
        /// The vendor id read.
        vendor: u16,
    },
    /// A header type other than 0 (endpoint), 1 (PCI bridge) or 2 (CardBus
    /// bridge).
    #[error("unknown header type {0:#04x}")]
    UnknownHeaderType(u8),
    /// A capability pointer into the standard header, or past the end of
    /// the space (or, for an extended capability, below 0x100).
    #[error("capability pointer {pointer:#05x} out of range")]
    PointerOutOfRange {
        /// The pointer.
        pointer: u16,
    },
    /// A capability the pointer puts past the end of the bytes given: the
    /// dump is shorter than the space (`lspci -x` shows 64 bytes, `-xxx`
    /// 256; grouping needs `-xxxx`, or sysfs' `config` read as root).
    #[error("capability at {pointer:#05x} lies beyond the {len} bytes of the dump")]
    BeyondDump {
        /// The pointer.
        pointer: u16,
        /// Bytes the dump has.
        len: u16,
    },
    /// A capability list that comes back to a capability already visited.
    #[error("capability list loops back to {pointer:#05x}")]
    CapabilityLoop {
        /// The pointer seen twice.
        pointer: u16,
    },
    /// A capability whose registers run past the end of the space.
    #[error("capability {id:#06x} is cut short by the end of the space")]
    CapabilityTruncated {
        /// The capability id (extended ids as they are, standard ones too).
        id: u16,
    },
    /// Bus numbers a bridge cannot have: a secondary bus not above the
    /// primary, or a subordinate bus below the secondary.
    #[error("bridge bus numbers primary {primary:#04x} secondary {secondary:#04x} subordinate {subordinate:#04x} contradict each other")]
    BadBusNumbers {
        /// Primary bus.
        primary: u8,
        /// Secondary bus.
        secondary: u8,
        /// Subordinate bus.
        subordinate: u8,
    },
}
