//! Test doubles and the fuzz harness (feature `test-utils`).
//!
//! - [`TableModel`]: the *shape* of a radix I/O page table without its bits:
//!   which leaves exist and which slots hold a table. It predicts every
//!   answer the walker gives, including the ones that depend on tables
//!   (a table where a page was expected is torn down whole and counted
//!   whole; emptied tables stay; a block may replace only an empty table).
//!   The core's mock driver keeps its domains in one.
//! - [`Input`]: a fuzz input, decoded from any bytes into a format and a
//!   sequence of [`Op`]s; [`run`] replays it against the real walker and
//!   the model and panics at the first disagreement.

use crate::amd::AmdV1;
use crate::lpae::{Granule, Lpae, LpaeConfig, LpaeQuirks, Stage};
use crate::riscv::{Riscv, RiscvStage};
use crate::vtd::VtdSl;
use crate::x86::X86_64;
use crate::{Format, HeapMemory, IoPageTable, PgtableError, TableMemory};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use iommu_types::{ByteReader, IotlbGather, Iova, PhysAddr, Prot, Unmapped};

/// One leaf of a [`TableModel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// First IOVA.
    pub iova: u64,
    /// Bytes.
    pub size: u64,
    /// Output address of the first byte.
    pub pa: u64,
    /// Permissions it was mapped with.
    pub prot: Prot,
}

/// The shape of a radix page table whose leaf sizes are consecutive levels.
///
/// Size index `i` names the level whose leaves are `sizes()[i]`. A slot of
/// size `i >= 1` holds nothing, a leaf, or a table of size-`i - 1` slots.
#[derive(Clone, Debug, Default)]
pub struct TableModel {
    sizes: Vec<u64>,
    /// `iova -> (size, pa, prot)`.
    leaves: BTreeMap<u64, (u64, u64, Prot)>,
    /// Slots holding a table: `(size index, slot start)`.
    tables: BTreeSet<(usize, u64)>,
}

impl TableModel {
    /// An empty table with the page sizes of `pgsize_bitmap`.
    pub fn new(pgsize_bitmap: u64) -> Self {
        Self {
            sizes: (0..64)
                .map(|b| 1u64 << b)
                .filter(|s| pgsize_bitmap & s != 0)
                .collect(),
            leaves: BTreeMap::new(),
            tables: BTreeSet::new(),
        }
    }

    /// The page sizes, ascending.
    pub fn sizes(&self) -> &[u64] {
        &self.sizes
    }

    /// The index of `pgsize` in [`sizes`](Self::sizes).
    pub fn size_index(&self, pgsize: u64) -> Option<usize> {
        self.sizes.iter().position(|&s| s == pgsize)
    }

    /// Slots holding a table.
    pub fn table_count(&self) -> usize {
        self.tables.len()
    }

    /// Tables a leaf of size index `k` at `iova` needs that do not exist
    /// yet: what mapping it would allocate.
    pub fn tables_missing_on_path(&self, k: usize, iova: u64) -> usize {
        ((k + 1)..self.sizes.len())
            .filter(|&i| !self.tables.contains(&(i, self.slot(i, iova))))
            .count()
    }

    /// Every leaf, in IOVA order.
    pub fn leaves(&self) -> impl Iterator<Item = Leaf> + '_ {
        self.leaves.iter().map(|(&iova, &(size, pa, prot))| Leaf {
            iova,
            size,
            pa,
            prot,
        })
    }

    /// The leaf covering `iova`.
    pub fn leaf_at(&self, iova: u64) -> Option<Leaf> {
        let (&start, &(size, pa, prot)) = self.leaves.range(..=iova).next_back()?;
        (iova - start < size).then_some(Leaf {
            iova: start,
            size,
            pa,
            prot,
        })
    }

    /// The first leaf overlapping `[start, last]`.
    pub fn first_leaf(&self, start: u64, last: u64) -> Option<Leaf> {
        if start > last {
            return None;
        }
        self.leaf_at(start).or_else(|| {
            let (&iova, &(size, pa, prot)) = self.leaves.range(start..=last).next()?;
            Some(Leaf {
                iova,
                size,
                pa,
                prot,
            })
        })
    }

    fn slot(&self, i: usize, iova: u64) -> u64 {
        iova & !(self.sizes[i] - 1)
    }

    fn leaf_of_size_at(&self, i: usize, slot: u64) -> bool {
        self.leaves.get(&slot).is_some_and(|l| l.0 == self.sizes[i])
    }

    fn any_leaf_in(&self, start: u64, size: u64) -> bool {
        self.leaf_at(start).is_some()
            || self
                .leaves
                .range(start..)
                .next()
                .is_some_and(|(&i, _)| i - start < size)
    }

    /// Removes every leaf and table inside slot `(i, start)`.
    fn tear_down(&mut self, i: usize, start: u64) {
        let size = self.sizes[i];
        let inside: Vec<u64> = self
            .leaves
            .range(start..)
            .take_while(|(&l, _)| l - start < size)
            .map(|(&l, _)| l)
            .collect();
        for l in inside {
            self.leaves.remove(&l);
        }
        self.tables
            .retain(|&(j, s)| !(j <= i && s >= start && s - start < size));
    }

    /// Whether `count` leaves of size index `k` from `iova` could be mapped:
    /// `Err(Exists)` when a leaf (a larger one on the path, or any inside a
    /// slot) is in the way. Empty tables are no obstacle.
    ///
    /// # Errors
    /// [`PgtableError::Exists`].
    pub fn check_map(&self, k: usize, iova: u64, count: u64) -> Result<(), PgtableError> {
        let size = self.sizes[k];
        for j in 0..count {
            let at = iova + j * size;
            for i in (k + 1)..self.sizes.len() {
                if self.leaf_of_size_at(i, self.slot(i, at)) {
                    return Err(PgtableError::Exists);
                }
            }
            if self.any_leaf_in(at, size) {
                return Err(PgtableError::Exists);
            }
        }
        Ok(())
    }

    /// Maps `count` leaves of size index `k` (after [`check_map`](Self::check_map)):
    /// an empty table in a slot is replaced, and the path gets tables.
    pub fn insert(&mut self, k: usize, iova: u64, pa: u64, count: u64, prot: Prot) {
        let size = self.sizes[k];
        for j in 0..count {
            let at = iova + j * size;
            if k > 0 && self.tables.contains(&(k, at)) {
                self.tear_down(k, at);
            }
            for i in (k + 1)..self.sizes.len() {
                let s = self.slot(i, at);
                self.tables.insert((i, s));
            }
            self.leaves.insert(at, (size, pa + j * size, prot));
        }
    }

    /// Unmaps up to `count` leaves of size index `k` from `iova` (the
    /// caller keeps the run inside one table): a larger leaf on the path is
    /// removed whole; a missing table is a hole; a table where a leaf was
    /// expected is torn down whole; the first empty slot ends the run.
    pub fn unmap(&mut self, k: usize, iova: u64, count: u64) -> Unmapped {
        for i in ((k + 1)..self.sizes.len()).rev() {
            let s = self.slot(i, iova);
            if self.leaf_of_size_at(i, s) {
                self.leaves.remove(&s);
                return Unmapped::new(Iova::new(s), self.sizes[i]);
            }
            if !self.tables.contains(&(i, s)) {
                return Unmapped::NOTHING;
            }
        }
        let size = self.sizes[k];
        let mut done = 0u64;
        for n in 0..count {
            let at = iova + n * size;
            if self.leaf_of_size_at(k, at) {
                self.leaves.remove(&at);
            } else if k > 0 && self.tables.contains(&(k, at)) {
                self.tear_down(k, at);
            } else {
                break;
            }
            done += size;
        }
        if done == 0 {
            return Unmapped::NOTHING;
        }
        Unmapped::new(Iova::new(iova), done)
    }
}

/// One step of a page-table fuzz input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `map_pages`: size is an index into the format's page sizes (an
    /// unsupported size when it is past them); addresses are folded into a
    /// small window unless `raw`.
    Map {
        /// IOVA seed.
        iova: u64,
        /// Output address seed.
        pa: u64,
        /// Page-size index.
        size: u8,
        /// Pages.
        count: u16,
        /// `Prot` bits.
        prot: u8,
        /// Use the addresses as given.
        raw: bool,
    },
    /// `unmap_leaves`.
    Unmap {
        /// IOVA seed.
        iova: u64,
        /// Page-size index.
        size: u8,
        /// Pages.
        count: u16,
        /// Use the address as given.
        raw: bool,
    },
    /// `iova_to_phys` and `lookup`.
    Translate {
        /// IOVA seed.
        iova: u64,
    },
    /// `first_leaf` over `[start, start + len]`.
    FirstLeaf {
        /// Start seed.
        start: u64,
        /// Length seed.
        len: u64,
    },
    /// Every pending gather is synced (`release_gathered`).
    Sync,
}

impl Op {
    /// Reads one op; `None` when the bytes run out.
    pub fn decode(r: &mut ByteReader<'_>) -> Option<Op> {
        Some(match r.u8()? % 5 {
            0 => Op::Map {
                iova: r.u64()?,
                pa: r.u64()?,
                size: r.u8()?,
                count: r.u16()?,
                prot: r.u8()?,
                raw: r.bool()?,
            },
            1 => Op::Unmap {
                iova: r.u64()?,
                size: r.u8()?,
                count: r.u16()?,
                raw: r.bool()?,
            },
            2 => Op::Translate { iova: r.u64()? },
            3 => Op::FirstLeaf {
                start: r.u64()?,
                len: r.u64()?,
            },
            _ => Op::Sync,
        })
    }

    /// Writes the op so that [`decode`](Self::decode) reads it back.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Op::Map {
                iova,
                pa,
                size,
                count,
                prot,
                raw,
            } => {
                out.push(0);
                out.extend_from_slice(&iova.to_le_bytes());
                out.extend_from_slice(&pa.to_le_bytes());
                out.push(size);
                out.extend_from_slice(&count.to_le_bytes());
                out.push(prot);
                out.push(u8::from(raw));
            }
            Op::Unmap {
                iova,
                size,
                count,
                raw,
            } => {
                out.push(1);
                out.extend_from_slice(&iova.to_le_bytes());
                out.push(size);
                out.extend_from_slice(&count.to_le_bytes());
                out.push(u8::from(raw));
            }
            Op::Translate { iova } => {
                out.push(2);
                out.extend_from_slice(&iova.to_le_bytes());
            }
            Op::FirstLeaf { start, len } => {
                out.push(3);
                out.extend_from_slice(&start.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
            }
            Op::Sync => out.push(4),
        }
    }
}

/// A page-table fuzz input: a format, an optional table-page limit, ops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// Which format and configuration (see [`run`]).
    pub format: [u8; 4],
    /// Table pages the memory allows (`None`: unlimited).
    pub table_limit: Option<u8>,
    /// The steps.
    pub ops: Vec<Op>,
}

impl Input {
    /// Decodes any bytes (at most 512 ops).
    pub fn decode(data: &[u8]) -> Input {
        let mut r = ByteReader::new(data);
        let format = [
            r.u8().unwrap_or(0),
            r.u8().unwrap_or(0),
            r.u8().unwrap_or(0),
            r.u8().unwrap_or(0),
        ];
        let table_limit = match r.u8().unwrap_or(0) {
            0 => None,
            n => Some(n),
        };
        let ops = r.items(Op::decode).take(512).collect();
        Input {
            format,
            table_limit,
            ops,
        }
    }

    /// The bytes [`decode`](Self::decode) reads back as this input.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.format.to_vec();
        out.push(self.table_limit.unwrap_or(0));
        for op in &self.ops {
            op.encode(&mut out);
        }
        out
    }
}

/// Replays `input` on the walker of the format it names and on a
/// [`TableModel`], panicking at the first answer they disagree on. At the
/// end the leaves must match and dropping the table must free every page.
///
/// `format[0] % 5` picks the family: ARM LPAE (then stage, granule, IAS and
/// OAS and the NS quirk from the other bytes), Intel VT-d (levels, host
/// address width), AMD v1 (mode), RISC-V (levels, stage), x86-64 (levels,
/// host address width).
pub fn run(input: &Input) {
    let f = input.format;
    match f[0] % 5 {
        0 => {
            let granule = [Granule::G4K, Granule::G16K, Granule::G64K][f[1] as usize % 3];
            let max = if granule == Granule::G64K { 52 } else { 48 };
            let span = max - 32 + 1;
            let cfg = LpaeConfig {
                stage: if f[1] & 0x80 != 0 {
                    Stage::S2
                } else {
                    Stage::S1
                },
                granule,
                ias: 32 + u32::from(f[2]) % span,
                oas: 32 + u32::from(f[3]) % span,
            };
            let Ok(fmt) = Lpae::new(cfg) else { return };
            let ns = cfg.stage == Stage::S1 && f[1] & 0x40 != 0;
            run_format(fmt.with_quirks(LpaeQuirks { non_secure: ns }), input);
        }
        1 => {
            let levels = 3 + f[1] as usize % 3;
            let haw = 32 + u32::from(f[2]) % 21;
            if let Ok(fmt) = VtdSl::new(levels, haw) {
                run_format(fmt, input);
            }
        }
        2 => {
            if let Ok(fmt) = AmdV1::new(1 + f[1] as usize % 6) {
                run_format(fmt, input);
            }
        }
        3 => {
            let stage = if f[2] & 1 == 0 {
                RiscvStage::First
            } else {
                RiscvStage::Second
            };
            if let Ok(fmt) = Riscv::new(3 + f[1] as usize % 3, stage) {
                run_format(fmt, input);
            }
        }
        _ => {
            let haw = 32 + u32::from(f[2]) % 21;
            if let Ok(fmt) = X86_64::new(4 + f[1] as usize % 2, haw) {
                run_format(fmt, input);
            }
        }
    }
}

/// Access bits that decide validity; the rest are attributes.
fn prot_from(bits: u8) -> Prot {
    let mut p = Prot::NONE;
    for (bit, flag) in [
        (1, Prot::READ),
        (2, Prot::WRITE),
        (4, Prot::CACHE),
        (8, Prot::NOEXEC),
        (16, Prot::MMIO),
        (32, Prot::PRIV),
    ] {
        if bits & bit != 0 {
            p |= flag;
        }
    }
    p
}

fn run_format<F: Format>(fmt: F, input: &Input) {
    let geo = *fmt.geometry();
    let mem = match input.table_limit {
        Some(n) => HeapMemory::with_limit(usize::from(n)),
        None => HeapMemory::new(),
    };
    // A limit is at least one page, so the root always fits.
    let pt = IoPageTable::new(fmt, &mem).expect("a valid format");
    let bitmap = pt.pgsize_bitmap();
    let mut model = TableModel::new(bitmap);
    let sizes = model.sizes().to_vec();
    // The leaf sizes must be consecutive levels ending at the last one, or
    // the model's notion of "the table under a slot" is not the walker's.
    let consecutive = sizes
        .iter()
        .enumerate()
        .all(|(i, &s)| geo.leaf_level_for(s) == Some(geo.levels - 1 - i));
    assert!(
        consecutive,
        "{}: leaf levels are not consecutive",
        pt.format().name()
    );
    let small = sizes[0];
    // Addresses fall in a window of four slots of the second-largest size
    // (of the page size itself when larger), so that maps meet each other.
    let window = sizes
        .get(sizes.len().saturating_sub(2))
        .copied()
        .unwrap_or(small)
        .saturating_mul(4);
    let top = if geo.ias >= 64 {
        u64::MAX
    } else {
        (1u64 << geo.ias) - 1
    };
    let fold = |seed: u64, align: u64| {
        let w = window.max(align.saturating_mul(4)).min(top);
        (seed % w) & !(align - 1)
    };
    // Folded to the page (`raw`: to the smallest page only, so large pages
    // may be misaligned; with the top bit set, as given).
    let place = |seed: u64, pgsize: u64, raw: bool| match (raw, seed >> 63) {
        (false, _) => fold(seed, pgsize.min(top.saturating_add(1) / 4).max(small)),
        (true, 0) => fold(seed, small),
        (true, _) => seed,
    };
    let room = |iova: u64, size: u64| -> u64 {
        let level = geo.leaf_level_for(size).expect("a leaf size");
        (geo.entries(level) - geo.index(iova, level)) as u64
    };
    let mut pending: Vec<IotlbGather> = Vec::new();
    for op in &input.ops {
        match *op {
            Op::Map {
                iova,
                pa,
                size,
                count,
                prot,
                raw,
            } => {
                let pgsize = sizes.get(usize::from(size)).copied().unwrap_or(small * 3); // not a page size
                let (iova, pa) = (place(iova, pgsize, raw), place(pa, pgsize, raw));
                let prot = prot_from(prot);
                let count = usize::from(count % 1024);
                let got = pt.map_pages(Iova::new(iova), PhysAddr::new(pa), pgsize, count, prot);
                let expect = predict_map(&model, &geo, iova, pa, pgsize, count, prot, room);
                match (got, expect) {
                    (Err(PgtableError::NoMemory), Ok(_)) if input.table_limit.is_some() => {}
                    (got, Ok(n)) => {
                        assert_eq!(got, Ok(n * pgsize), "{op:?}");
                        let k = model.size_index(pgsize).expect("a page size");
                        model.insert(k, iova, pa, n, prot);
                    }
                    (got, Err(e)) => assert_eq!(got, Err(e), "{op:?}"),
                }
            }
            Op::Unmap {
                iova,
                size,
                count,
                raw,
            } => {
                let pgsize = sizes.get(usize::from(size)).copied().unwrap_or(small * 3);
                let iova = place(iova, pgsize, raw);
                let count = usize::from(count % 1024);
                let mut g = IotlbGather::new();
                let got = pt.unmap_leaves(Iova::new(iova), pgsize, count, &mut g);
                let valid = model.size_index(pgsize).is_some()
                    && count > 0
                    && iova & (pgsize - 1) == 0
                    && geo.input_fits(iova, pgsize);
                let expect = if valid {
                    let k = model.size_index(pgsize).expect("checked");
                    let n = (count as u64).min(room(iova, pgsize));
                    model.unmap(k, iova, n)
                } else {
                    Unmapped::NOTHING
                };
                assert_eq!(got, expect, "{op:?}");
                if let Some((first, last)) = g.range() {
                    assert!(
                        first.raw() <= got.iova.raw()
                            && last.raw() >= got.iova.raw() + (got.size - 1),
                        "the gather covers what was removed"
                    );
                }
                pending.push(g);
            }
            Op::Translate { iova } => {
                let iova = fold(iova, 1);
                let want = model.leaf_at(iova).map(|l| l.pa + (iova - l.iova));
                assert_eq!(pt.iova_to_phys(Iova::new(iova)).map(|p| p.raw()), want);
                let m = pt.lookup(Iova::new(iova));
                assert_eq!(
                    m.map(|m| (m.iova.raw(), m.size, m.pa.raw())),
                    model.leaf_at(iova).map(|l| (l.iova, l.size, l.pa))
                );
            }
            Op::FirstLeaf { start, len } => {
                let start = fold(start, 1);
                let last = start.saturating_add(len % window);
                let want = model
                    .first_leaf(start, last)
                    .map(|l| (l.iova, l.size, l.pa));
                let got = pt
                    .first_leaf(Iova::new(start), Iova::new(last))
                    .map(|m| (m.iova.raw(), m.size, m.pa.raw()));
                assert_eq!(got, want, "{op:?}");
            }
            Op::Sync => {
                for g in pending.drain(..) {
                    pt.release_gathered(&g);
                }
            }
        }
    }
    let walked: Vec<(u64, u64, u64)> = pt
        .walk(Iova::ZERO, u64::MAX)
        .iter()
        .map(|m| (m.iova.raw(), m.size, m.pa.raw()))
        .collect();
    let modelled: Vec<(u64, u64, u64)> = model.leaves().map(|l| (l.iova, l.size, l.pa)).collect();
    assert_eq!(walked, modelled, "final leaves");
    for g in pending.drain(..) {
        pt.release_gathered(&g);
    }
    drop(pt);
    assert_eq!(mem.table_pages(), 0, "every table page freed");
}

/// What `map_pages` must answer, in the walker's order of checks: the
/// number of pages it maps (within one table) or the error.
#[allow(clippy::too_many_arguments)]
fn predict_map(
    model: &TableModel,
    geo: &crate::Geometry,
    iova: u64,
    pa: u64,
    pgsize: u64,
    count: usize,
    prot: Prot,
    room: impl Fn(u64, u64) -> u64,
) -> Result<u64, PgtableError> {
    let Some(k) = model.size_index(pgsize) else {
        return Err(PgtableError::InvalidPageSize);
    };
    if !prot.is_accessible() {
        return Err(PgtableError::NoAccess);
    }
    if count == 0 {
        return Err(PgtableError::InvalidArgument);
    }
    if iova & (pgsize - 1) != 0 || pa & (pgsize - 1) != 0 {
        return Err(PgtableError::InvalidPageSize);
    }
    let total = pgsize
        .checked_mul(count as u64)
        .ok_or(PgtableError::OutOfRange)?;
    if !geo.input_fits(iova, total) || !geo.output_fits(pa, total) {
        return Err(PgtableError::OutOfRange);
    }
    let n = (count as u64).min(room(iova, pgsize));
    model.check_map(k, iova, n)?;
    Ok(n)
}
