//! The `IOMMU_*` protection flags with Linux's bit values.

use core::fmt;
use core::ops::{BitOr, BitOrAssign};

/// Access permissions and memory attributes of a mapping (`IOMMU_READ`, ...).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Prot(u32);

impl Prot {
    /// No permission at all; mapping with it is refused.
    pub const NONE: Prot = Prot(0);
    /// The device may read.
    pub const READ: Prot = Prot(1 << 0);
    /// The device may write.
    pub const WRITE: Prot = Prot(1 << 1);
    /// Cache-coherent access.
    pub const CACHE: Prot = Prot(1 << 2);
    /// The device may not fetch instructions from it.
    pub const NOEXEC: Prot = Prot(1 << 3);
    /// Device (MMIO) memory attributes, e.g. for an MSI doorbell.
    pub const MMIO: Prot = Prot(1 << 4);
    /// Privileged transactions only.
    pub const PRIV: Prot = Prot(1 << 5);
    /// `READ | WRITE`.
    pub const RW: Prot = Prot(Self::READ.0 | Self::WRITE.0);

    const NAMES: [(Prot, &'static str); 6] = [
        (Self::READ, "READ"),
        (Self::WRITE, "WRITE"),
        (Self::CACHE, "CACHE"),
        (Self::NOEXEC, "NOEXEC"),
        (Self::MMIO, "MMIO"),
        (Self::PRIV, "PRIV"),
    ];

    /// Builds from Linux's bit values; unknown bits are dropped.
    pub const fn from_bits_truncate(bits: u32) -> Prot {
        Prot(bits & 0x3f)
    }

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Prot) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the mapping grants read or write (a mapping must grant one).
    pub const fn is_accessible(self) -> bool {
        self.0 & Self::RW.0 != 0
    }

    /// `self` without the flags of `other`.
    pub const fn without(self, other: Prot) -> Prot {
        Prot(self.0 & !other.0)
    }
}

impl BitOr for Prot {
    type Output = Prot;
    fn bitor(self, rhs: Prot) -> Prot {
        Prot(self.0 | rhs.0)
    }
}

impl BitOrAssign for Prot {
    fn bitor_assign(&mut self, rhs: Prot) {
        self.0 |= rhs.0;
    }
}

impl fmt::Display for Prot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("NONE");
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Prot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prot({self})")
    }
}
