//! What a page-table format is to the walker: a geometry and a descriptor codec.
//!
//! Levels are numbered from the root: level 0 is the table the walk starts at,
//! `levels - 1` holds the smallest pages. (Hardware manuals number levels
//! their own way; each format says how its numbers map to these.)

use iommu_types::{PhysAddr, Prot};

/// Deepest table any supported format has.
pub(crate) const MAX_LEVELS: usize = 6;

/// The shape of a multi-level table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Levels walked, root included.
    pub levels: usize,
    /// log2 of the smallest page (the granule).
    pub granule_shift: u32,
    /// Index bits resolved by every level below the root.
    pub bits_per_level: u32,
    /// Index bits resolved by the root: fewer when the input size does not
    /// fill it, more when tables are concatenated at the root.
    pub root_bits: u32,
    /// Bit `i` is set when level `i` may hold a leaf.
    pub leaf_levels: u32,
    /// Input address size in bits.
    pub ias: u32,
    /// Output address size in bits.
    pub oas: u32,
}

impl Geometry {
    /// log2 of the bytes one entry at `level` spans.
    #[inline]
    pub const fn entry_shift(&self, level: usize) -> u32 {
        self.granule_shift + self.bits_per_level * (self.levels - 1 - level) as u32
    }

    /// Bytes one entry at `level` spans.
    #[inline]
    pub const fn entry_size(&self, level: usize) -> u64 {
        1 << self.entry_shift(level)
    }

    /// Entries in a table at `level`.
    #[inline]
    pub const fn entries(&self, level: usize) -> usize {
        1 << if level == 0 {
            self.root_bits
        } else {
            self.bits_per_level
        }
    }

    /// Bytes of a table at `level` (at least 64, the smallest table any format allows).
    #[inline]
    pub const fn table_bytes(&self, level: usize) -> usize {
        let b = self.entries(level) * 8;
        if b < 64 {
            64
        } else {
            b
        }
    }

    /// Index of `iova` in the table at `level`.
    #[inline]
    pub const fn index(&self, iova: u64, level: usize) -> usize {
        let shift = self.entry_shift(level);
        let idx = if shift >= 64 { 0 } else { iova >> shift };
        (idx as usize) & (self.entries(level) - 1)
    }

    /// Whether `level` may hold a leaf.
    #[inline]
    pub const fn is_leaf_level(&self, level: usize) -> bool {
        self.leaf_levels & (1 << level) != 0
    }

    /// The level whose leaves are `pgsize` bytes, if there is one.
    #[inline]
    pub fn leaf_level_for(&self, pgsize: u64) -> Option<usize> {
        if !pgsize.is_power_of_two() {
            return None;
        }
        let shift = pgsize.trailing_zeros();
        if shift < self.granule_shift
            || !(shift - self.granule_shift).is_multiple_of(self.bits_per_level)
        {
            return None;
        }
        let from_bottom = ((shift - self.granule_shift) / self.bits_per_level) as usize;
        let level = self.levels.checked_sub(1 + from_bottom)?;
        self.is_leaf_level(level).then_some(level)
    }

    /// Every leaf size, as Linux's `pgsize_bitmap`.
    pub fn pgsize_bitmap(&self) -> u64 {
        (0..self.levels)
            .filter(|&l| self.is_leaf_level(l) && self.entry_shift(l) < 64)
            .fold(0, |acc, l| acc | self.entry_size(l))
    }

    /// Whether `[iova, iova + size)` lies inside the input address space.
    #[inline]
    pub fn input_fits(&self, iova: u64, size: u64) -> bool {
        match iova.checked_add(size) {
            Some(end) => self.ias >= 64 || end <= 1u64 << self.ias,
            None => false,
        }
    }

    /// Whether the shape is one the walker can work with: 1 to 6 levels,
    /// granule and index widths that keep every shift below 64, at least
    /// one leaf level (none at or past `levels`), and address sizes of at
    /// most 64 bits. [`IoPageTable::new`](crate::IoPageTable::new) refuses
    /// any other.
    pub fn is_valid(&self) -> bool {
        (1..=MAX_LEVELS).contains(&self.levels)
            && (6..=30).contains(&self.granule_shift)
            && (1..=16).contains(&self.bits_per_level)
            && self.root_bits <= 20
            && u64::from(self.granule_shift)
                + u64::from(self.bits_per_level) * (self.levels as u64 - 1)
                < 64
            && self.leaf_levels != 0
            && self.leaf_levels >> self.levels == 0
            && self.ias <= 64
            && self.oas <= 64
    }

    /// Whether `[pa, pa + size)` lies inside the output address space.
    #[inline]
    pub fn output_fits(&self, pa: u64, size: u64) -> bool {
        match pa.checked_add(size) {
            Some(end) => self.oas >= 64 || end <= 1u64 << self.oas,
            None => false,
        }
    }
}

/// What a format's table descriptors at one level look like, for the
/// walker's fast path (see [`Format::table_bits`]): a descriptor is a table
/// exactly when `pte & type_mask == type_bits`, and the descriptor of the
/// table at address `t` is `t + tag`, so the walker gets the next table with
/// one subtraction instead of a decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableBits {
    /// The bits that tell a table from anything else.
    pub type_mask: u64,
    /// Their value in a table descriptor.
    pub type_bits: u64,
    /// What a table descriptor adds to the table's address (wrapping).
    pub tag: u64,
}

impl TableBits {
    /// The next table, if `pte` is a table descriptor.
    #[inline(always)]
    pub(crate) fn table(&self, pte: u64) -> Option<u64> {
        (pte & self.type_mask == self.type_bits).then(|| pte.wrapping_sub(self.tag))
    }
}

/// What a format's leaves at one level look like, for the walker's unmap
/// fast path (see [`Format::leaf_bits`]): every descriptor with
/// `pte & type_mask == type_bits` is one [`Format::kind`] calls a leaf at
/// that level. It need not match every leaf: the others are classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafBits {
    /// The bits that tell these leaves from anything else.
    pub type_mask: u64,
    /// Their value in such a leaf.
    pub type_bits: u64,
}

impl LeafBits {
    /// Matches nothing: the walker's value where a format gives no bits.
    pub(crate) const NONE: LeafBits = LeafBits {
        type_mask: 0,
        type_bits: 1,
    };

    /// Whether `pte` is certainly a leaf.
    #[inline(always)]
    pub(crate) fn matches(&self, pte: u64) -> bool {
        pte & self.type_mask == self.type_bits
    }
}

/// A decoded descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pte {
    /// Nothing mapped.
    Invalid,
    /// A pointer to the next-level table.
    Table(PhysAddr),
    /// A page or block: its output address and permissions.
    Leaf {
        /// Output address of the first byte.
        pa: PhysAddr,
        /// Permissions and attributes, in `IOMMU_*` terms.
        prot: Prot,
    },
}

/// What a descriptor is, without decoding its address or permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PteKind {
    /// Nothing mapped.
    Invalid,
    /// A pointer to the next-level table.
    Table,
    /// A page or block.
    Leaf,
}

/// A page-table format: geometry plus the descriptor codec.
///
/// The walker never looks at descriptor bits itself; everything
/// format-specific is here.
///
/// # Safety
/// The walker follows the table addresses [`decode`](Self::decode) returns
/// with plain loads and stores, so on the heap backend a wrong answer is a
/// wild pointer. An implementation promises, for every `level` below
/// `geometry().levels`:
/// - `decode(encode_table(t, level), level)` is `Pte::Table(t)` for every
///   table address `t` the walker passes in (aligned to its table size, in
///   the output address space);
/// - no other value the walker can store is decoded as a table, or
///   classified as one by [`kind`](Self::kind): 0, every
///   [`encode_leaf`](Self::encode_leaf) result, a leaf advanced by
///   [`leaf_step`](Self::leaf_step) within the run it was asked about, and
///   what [`make_clean`](Self::make_clean) and
///   [`make_dirty`](Self::make_dirty) make of a leaf;
/// - [`kind`](Self::kind) agrees with [`decode`](Self::decode) on every value;
/// - where [`table_bits`](Self::table_bits) gives `Some(b)` for a level below
///   the last: for every value `v`, `kind(v, level)` is
///   [`PteKind::Table`] exactly when `v & b.type_mask == b.type_bits`, and
///   `encode_table(t, level)` is `t + b.tag` (wrapping) for every table
///   address `t` the walker passes in;
/// - where [`leaf_bits`](Self::leaf_bits) gives `Some(b)` for a level, the
///   level holds leaves and every value `v` with
///   `v & b.type_mask == b.type_bits` is [`PteKind::Leaf`] by `kind` (an
///   unmap clears such a value without looking further, so a table taken
///   for a leaf would be dropped without being freed);
/// - [`geometry`](Self::geometry) always returns the same value.
///
/// Together these mean the walker only ever follows addresses of tables it
/// installed itself. The geometry's own sanity (level count, index widths)
/// is checked by [`IoPageTable::new`](crate::IoPageTable::new).
///
/// Safe code cannot implement it, so a codec written under
/// `#![forbid(unsafe_code)]` cannot hand the walker a wild table address:
///
/// ```compile_fail,E0200
/// #![forbid(unsafe_code)]
/// use iommu_pgtable::{Format, Geometry, Pte};
/// use iommu_types::{PhysAddr, Prot};
///
/// struct Liar(Geometry);
/// impl Format for Liar {
///     fn geometry(&self) -> &Geometry { &self.0 }
///     // Claims every descriptor points at a table at address 0x10.
///     fn decode(&self, _pte: u64, _level: usize) -> Pte { Pte::Table(PhysAddr::new(0x10)) }
///     fn encode_table(&self, _t: PhysAddr, _level: usize) -> u64 { 1 }
///     fn encode_leaf(&self, _pa: PhysAddr, _level: usize, _prot: Prot) -> u64 { 1 }
///     fn name(&self) -> &'static str { "liar" }
/// }
/// ```
#[allow(unsafe_code)] // the walker's memory safety rests on this contract
pub unsafe trait Format: Send + Sync {
    /// The table shape.
    fn geometry(&self) -> &Geometry;
    /// Decodes the descriptor `pte` found in a table at `level`.
    fn decode(&self, pte: u64, level: usize) -> Pte;
    /// Encodes a pointer, stored in a table at `level`, to the table at `level + 1`.
    fn encode_table(&self, table: PhysAddr, level: usize) -> u64;
    /// Encodes a leaf at `level` (a leaf level) for `pa` with `prot`.
    fn encode_leaf(&self, pa: PhysAddr, level: usize, prot: Prot) -> u64;
    /// A short name, e.g. `"arm-lpae-s1-4k"`.
    fn name(&self) -> &'static str;

    /// What `pte` (in a table at `level`) is; must agree with
    /// [`decode`](Self::decode). The walker's batch loops use it; the
    /// built-in formats define their validity rules here and decode on top
    /// of it.
    #[inline]
    fn kind(&self, pte: u64, level: usize) -> PteKind {
        match self.decode(pte, level) {
            Pte::Invalid => PteKind::Invalid,
            Pte::Table(_) => PteKind::Table,
            Pte::Leaf { .. } => PteKind::Leaf,
        }
    }

    /// The level the walk of a fresh table starts at. 0, the default, is a
    /// table of the full geometry. A higher level makes a fresh table start
    /// that many levels shorter and grow a level at a time (a new root whose
    /// first entry is the old one) when an address above what it covers is
    /// mapped, as Linux's AMD v1 tables do. Descriptors must not depend on
    /// where the walk starts, and hardware must be told the current root and
    /// its level ([`IoPageTable::root_level`](crate::IoPageTable::root_level)).
    fn initial_root_level(&self) -> usize {
        0
    }

    /// Table descriptors at `level` (a level below the last) as plain bits,
    /// when they are (see [`TableBits`] and the contract above). The
    /// walker then descends through them without calling
    /// [`decode`](Self::decode); `None`, the default, keeps it decoding.
    #[inline]
    fn table_bits(&self, level: usize) -> Option<TableBits> {
        let _ = level;
        None
    }

    /// Leaves at `level` as plain bits, where a mask tells them (see
    /// [`LeafBits`]): an unmap then clears a run of them without calling
    /// [`kind`](Self::kind) for each. Every descriptor the bits match must
    /// be a leaf by `kind` at `level`; `None`, the default, keeps the walker
    /// classifying every descriptor.
    #[inline]
    fn leaf_bits(&self, level: usize) -> Option<LeafBits> {
        let _ = level;
        None
    }

    /// What to add to a leaf at `level` encoding `pa` to get the leaf for
    /// `pa + pgsize` with the same attributes, when the address field is
    /// linear over `[pa, pa + pgsize * count)`; `None` makes the walker
    /// encode every leaf. The walker asks only about runs inside the output
    /// address space.
    #[inline]
    fn leaf_step(&self, pa: PhysAddr, pgsize: u64, count: usize) -> Option<u64> {
        let _ = (pa, pgsize, count);
        None
    }

    /// Whether leaves can record that the device wrote through them.
    fn supports_dirty(&self) -> bool {
        false
    }
    /// For a writable leaf, whether it is dirty; `None` for other descriptors
    /// or formats without dirty tracking.
    fn dirty_state(&self, pte: u64, level: usize) -> Option<bool> {
        let _ = (pte, level);
        None
    }
    /// The writable-clean form of a writable leaf (hardware will mark it on write).
    fn make_clean(&self, pte: u64) -> u64 {
        pte
    }
    /// What hardware does to a writable-clean leaf when the device writes.
    fn make_dirty(&self, pte: u64) -> u64 {
        pte
    }
}
