//! The DMA layer's oracle and fuzz harness (feature `test-utils`).
//!
//! [`run`] binds one device behind the soft IOMMU (strict or lazy, with or
//! without handle checks, as the input says) and replays a sequence of
//! [`Op`]s, good and bad, keeping its own record of what is mapped. After
//! every step:
//! - every live mapping translates, through the emulated hardware, to its
//!   buffer with the permission its direction gives, and sits below the
//!   mask it was made under;
//! - no two live mappings share an IOVA;
//! - a refused call changed nothing (the live count is the same);
//! - in strict mode nothing unmapped still translates; in lazy mode nothing
//!   does after the flush queue was run.
//!
//! The hardware can be wedged ([`Op::Wedge`]): its invalidations then fail.
//! Meanwhile an unmap may leave its pages translating, but only to their
//! old buffers; such an IOVA is never handed to a new mapping until the
//! hardware is back and a flush has released it; strict unmaps say so
//! ([`DmaError::NotInvalidated`]), and nothing is lost at the end.
//!
//! At the end everything is unmapped and the IOVA space and page tables
//! must be empty again. [`Input::decode`] turns any bytes into a run.

use crate::{CoherentBuffer, DmaAddr, DmaDevice, DmaDirection, DmaError, DmaOptions, PhysPool};
use crate::{PageAllocator, SgMapping};
use iommu_core::{Bus, DeviceBuilder, Iommu, IommuConfig, Iova, PhysAddr, SgEntry};
use iommu_soft::{Access, SoftIommu};
use iommu_types::ByteReader;
use std::collections::HashMap;
use std::sync::Arc;

const PAGE: u64 = 0x1000;
/// Where streaming buffers live (physical).
const BUFFERS: u64 = 0x2_0000_0000;
/// The coherent pool.
const POOL: (u64, u64) = (0x4000_0000, 0x10_0000);

/// One step. Handles are picked by `nth` among the live ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `map_single` of `len` bytes at buffer page `page` plus `off`.
    MapSingle {
        /// Buffer page.
        page: u16,
        /// Offset into it.
        off: u16,
        /// Bytes (0 is refused).
        len: u32,
        /// Direction (3 is `DmaDirection::None`, refused).
        dir: u8,
    },
    /// `unmap_single` of a live single mapping, right (`how % 4 == 0`) or
    /// wrong: another size, direction, or a shifted address.
    UnmapSingle {
        /// Which mapping.
        nth: u8,
        /// Which mistake, if any.
        how: u8,
    },
    /// `map_sg` of up to four segments.
    MapSg {
        /// `(buffer page, offset, bytes)` seeds.
        segs: [(u16, u16, u16); 4],
        /// How many of them.
        n: u8,
        /// Direction.
        dir: u8,
    },
    /// `unmap_sg` of a live list (twice if `again`).
    UnmapSg {
        /// Which list.
        nth: u8,
        /// Unmap it a second time.
        again: bool,
    },
    /// `alloc_coherent`.
    AllocCoherent {
        /// Bytes.
        len: u16,
    },
    /// `free_coherent`, right or with the size wrong.
    FreeCoherent {
        /// Which buffer.
        nth: u8,
        /// Get the size wrong.
        wrong: bool,
    },
    /// `set_dma_mask` to `32 + bits % 33` bits.
    SetMask {
        /// Mask width seed.
        bits: u8,
    },
    /// The flush queue runs now.
    Flush,
    /// Someone unmaps a page of a live mapping behind the DMA layer's back.
    Tamper {
        /// Which mapping.
        nth: u8,
    },
    /// The hardware stops completing invalidations, or (`false`) comes back
    /// and the held-back IOVAs are released.
    Wedge(bool),
}

impl Op {
    /// Reads one op; `None` when the bytes run out.
    pub fn decode(r: &mut ByteReader<'_>) -> Option<Op> {
        Some(match r.u8()? % 10 {
            0 => Op::MapSingle {
                page: r.u16()?,
                off: r.u16()?,
                len: r.u32()?,
                dir: r.u8()?,
            },
            1 => Op::UnmapSingle {
                nth: r.u8()?,
                how: r.u8()?,
            },
            2 => {
                let mut segs = [(0, 0, 0); 4];
                for s in &mut segs {
                    *s = (r.u16()?, r.u16()?, r.u16()?);
                }
                Op::MapSg {
                    segs,
                    n: r.u8()?,
                    dir: r.u8()?,
                }
            }
            3 => Op::UnmapSg {
                nth: r.u8()?,
                again: r.bool()?,
            },
            4 => Op::AllocCoherent { len: r.u16()? },
            5 => Op::FreeCoherent {
                nth: r.u8()?,
                wrong: r.bool()?,
            },
            6 => Op::SetMask { bits: r.u8()? },
            7 => Op::Flush,
            8 => Op::Tamper { nth: r.u8()? },
            _ => Op::Wedge(r.bool()?),
        })
    }

    /// Writes the op so that [`decode`](Self::decode) reads it back.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let le16 = |out: &mut Vec<u8>, v: u16| out.extend_from_slice(&v.to_le_bytes());
        match *self {
            Op::MapSingle {
                page,
                off,
                len,
                dir,
            } => {
                out.push(0);
                le16(out, page);
                le16(out, off);
                out.extend_from_slice(&len.to_le_bytes());
                out.push(dir);
            }
            Op::UnmapSingle { nth, how } => out.extend_from_slice(&[1, nth, how]),
            Op::MapSg { segs, n, dir } => {
                out.push(2);
                for (a, b, c) in segs {
                    le16(out, a);
                    le16(out, b);
                    le16(out, c);
                }
                out.extend_from_slice(&[n, dir]);
            }
            Op::UnmapSg { nth, again } => out.extend_from_slice(&[3, nth, u8::from(again)]),
            Op::AllocCoherent { len } => {
                out.push(4);
                le16(out, len);
            }
            Op::FreeCoherent { nth, wrong } => out.extend_from_slice(&[5, nth, u8::from(wrong)]),
            Op::SetMask { bits } => out.extend_from_slice(&[6, bits]),
            Op::Flush => out.push(7),
            Op::Tamper { nth } => out.extend_from_slice(&[8, nth]),
            Op::Wedge(on) => out.extend_from_slice(&[9, u8::from(on)]),
        }
    }
}

/// A run: the mode and the steps (at most 512).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// Lazy (DMA-FQ) rather than strict.
    pub lazy: bool,
    /// Handle checks on (`DmaOptions::check_handles`).
    pub check_handles: bool,
    /// The steps.
    pub ops: Vec<Op>,
}

impl Input {
    /// Decodes any bytes.
    pub fn decode(data: &[u8]) -> Input {
        let mut r = ByteReader::new(data);
        let flags = r.u8().unwrap_or(0);
        let ops = r.items(Op::decode).take(512).collect();
        Input {
            lazy: flags & 1 != 0,
            check_handles: flags & 2 == 0,
            ops,
        }
    }

    /// The bytes [`decode`](Self::decode) reads back as this input.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.lazy) | if self.check_handles { 0 } else { 2 }];
        for op in &self.ops {
            op.encode(&mut out);
        }
        out
    }
}

fn direction(d: u8) -> DmaDirection {
    [
        DmaDirection::Bidirectional,
        DmaDirection::ToDevice,
        DmaDirection::FromDevice,
        DmaDirection::None,
    ][usize::from(d % 4)]
}

/// What the harness knows of one live mapping.
#[derive(Clone, Debug)]
struct Single {
    addr: DmaAddr,
    pa: u64,
    len: u64,
    dir: DmaDirection,
}

/// Pages `[addr, addr + len)` covers, as granule-aligned IOVAs.
fn pages(addr: u64, len: u64) -> impl Iterator<Item = u64> {
    let first = addr & !(PAGE - 1);
    let last = (addr + len - 1) & !(PAGE - 1);
    (first..=last).step_by(PAGE as usize)
}

struct Harness {
    hw: SoftIommu,
    dev: Arc<iommu_core::Device>,
    dma: DmaDevice,
    lazy: bool,
    checks: bool,
    singles: Vec<Single>,
    lists: Vec<SgMapping>,
    coherent: Vec<CoherentBuffer>,
    /// IOVA pages unmapped and not mapped again since.
    gone: Vec<u64>,
    mask: u64,
    wedged: bool,
    /// Pages unmapped while the hardware was wedged (or unmapped lazily and
    /// not flushed when it wedged), with the page they translated to: they
    /// may still translate there, and no new mapping may use them, until
    /// the hardware is back and released them.
    stale: HashMap<u64, u64>,
}

/// Replays `input`, panicking at the first broken rule.
pub fn run(input: &Input) {
    let iommu = Iommu::new(IommuConfig {
        passthrough: false,
        strict: !input.lazy,
    });
    let bus = Bus::new(&iommu, "pci").expect("a fresh subsystem");
    let dev = bus
        .add_device(DeviceBuilder::new("0000:00:01.0").stream_ids([1]).pci(true))
        .expect("a valid device");
    let hw = SoftIommu::default();
    iommu
        .bus_set_iommu(&bus, Arc::new(hw.clone()))
        .expect("an empty bus");
    let pool = Arc::new(PhysPool::new(PhysAddr::new(POOL.0), POOL.1));
    let dma = DmaDevice::bind(
        &iommu,
        &dev,
        DmaOptions {
            check_handles: input.check_handles,
            memory: Some(pool.clone() as Arc<dyn PageAllocator>),
            // A long timeout: the harness decides when the queue runs.
            fq_timeout: std::time::Duration::from_secs(3600),
            ..DmaOptions::default()
        },
    )
    .expect("a DMA domain");
    assert_eq!(dma.is_lazy(), input.lazy);
    let baseline = dma.domain_stats().iova.tree_ranges;
    let mut h = Harness {
        hw,
        dev,
        dma,
        lazy: input.lazy,
        checks: input.check_handles,
        singles: Vec::new(),
        lists: Vec::new(),
        coherent: Vec::new(),
        gone: Vec::new(),
        mask: u64::from(u32::MAX),
        wedged: false,
        stale: HashMap::new(),
    };
    for op in &input.ops {
        let live = h.dma.live_mappings();
        let refused = h.step(op);
        if refused && h.checks {
            assert_eq!(
                h.dma.live_mappings(),
                live,
                "{op:?} was refused but changed the record"
            );
        }
        h.check(op);
    }
    // Everything back: the tables and the IOVA space are as at the start.
    h.step(&Op::Wedge(false));
    for s in std::mem::take(&mut h.singles) {
        h.dma
            .unmap_single(s.addr, s.len, s.dir)
            .expect("a live mapping");
    }
    for l in std::mem::take(&mut h.lists) {
        h.dma.unmap_sg(&l).expect("a live list");
    }
    for b in std::mem::take(&mut h.coherent) {
        h.dma.free_coherent(&b).expect("a live buffer");
    }
    h.dma.flush_queue_now();
    assert_eq!(pool.pages_in_use(), 0, "coherent memory leaked");
    let s = h.dma.domain_stats();
    assert_eq!(s.fq.queued, 0);
    assert_eq!(s.quarantine.ranges, 0, "IOVAs left held back");
    assert_eq!(
        s.iova.tree_ranges - s.iova.cached,
        baseline,
        "IOVA space leaked"
    );
    assert_eq!(
        h.dma
            .domain()
            .first_mapping(Iova::ZERO, Iova::new(u64::MAX)),
        None,
        "mappings left behind"
    );
}

impl Harness {
    /// Pages of `[addr, addr + len)` leave the live set; while wedged they
    /// may go on translating to what they did.
    fn forget(&mut self, addr: u64, len: u64) {
        for page in pages(addr, len) {
            if self.wedged {
                if let Ok(pa) = self.hw.translate(&self.dev, Iova::new(page), Access::Read) {
                    self.stale.entry(page).or_insert(pa.raw());
                }
            }
            self.gone.push(page);
        }
    }

    /// Pages of a new mapping: never one still held back.
    fn remember(&mut self, addr: u64, len: u64) {
        let p: Vec<u64> = pages(addr, len).collect();
        for page in &p {
            assert!(
                !self.stale.contains_key(page),
                "IOVA {page:#x} handed out again before its invalidation completed"
            );
        }
        self.gone.retain(|g| !p.contains(g));
    }

    /// An unmap's result: `NotInvalidated` exactly while wedged and strict.
    fn unmapped(&self, r: Result<(), DmaError>, what: &str) {
        match r {
            Ok(()) => assert!(
                !self.wedged || self.lazy,
                "{what}: a strict unmap on wedged hardware reported success"
            ),
            Err(DmaError::NotInvalidated(_)) => {
                assert!(self.wedged, "{what}: NotInvalidated from working hardware")
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }

    /// Runs one step; `true` when the layer refused it.
    fn step(&mut self, op: &Op) -> bool {
        match *op {
            Op::MapSingle {
                page,
                off,
                len,
                dir,
            } => {
                let pa = BUFFERS + u64::from(page) * PAGE + u64::from(off % 0x1000);
                let len = u64::from(len % (1 << 20));
                let dir = direction(dir);
                match self.dma.map_single(PhysAddr::new(pa), len, dir) {
                    Ok(addr) => {
                        assert!(len > 0 && dir != DmaDirection::None);
                        assert!(addr.raw() + len - 1 <= self.mask, "above the mask");
                        assert_eq!(addr.raw() & (PAGE - 1), pa & (PAGE - 1), "offset kept");
                        self.remember(addr.raw(), len);
                        self.singles.push(Single { addr, pa, len, dir });
                        false
                    }
                    Err(e) => {
                        assert!(
                            len == 0
                                || dir == DmaDirection::None
                                || e == DmaError::NoSpace
                                || (self.wedged && e == DmaError::Wedged),
                            "map_single refused: {e}"
                        );
                        true
                    }
                }
            }
            Op::UnmapSingle { nth, how } => {
                if self.singles.is_empty() {
                    return false;
                }
                let i = usize::from(nth) % self.singles.len();
                let s = self.singles[i].clone();
                let wrong = how % 4 != 0 && self.checks;
                // A shifted address must stay inside this mapping, or it
                // could name another one (and rightly unmap it).
                let how = if how % 4 == 3 && pages(s.addr.raw(), s.len).count() < 2 {
                    1
                } else {
                    how
                };
                let (addr, len, dir) = match how % 4 {
                    1 if wrong => (s.addr, s.len + PAGE, s.dir),
                    2 if wrong => (
                        s.addr,
                        s.len,
                        if s.dir == DmaDirection::ToDevice {
                            DmaDirection::FromDevice
                        } else {
                            DmaDirection::ToDevice
                        },
                    ),
                    3 if wrong => (DmaAddr::new(s.addr.raw() + PAGE), s.len, s.dir),
                    _ => (s.addr, s.len, s.dir),
                };
                let r = self.dma.unmap_single(addr, len, dir);
                if wrong {
                    assert!(r.is_err(), "a wrong unmap was accepted");
                    return true;
                }
                self.singles.swap_remove(i);
                self.forget(s.addr.raw(), s.len);
                self.unmapped(r, "unmap_single");
                false
            }
            Op::MapSg { segs, n, dir } => {
                let n = usize::from(n % 4) + 1;
                let sg: Vec<SgEntry> = segs[..n]
                    .iter()
                    .map(|&(page, off, len)| SgEntry {
                        paddr: PhysAddr::new(
                            BUFFERS + u64::from(page) * PAGE + u64::from(off % 0x1000),
                        ),
                        len: u64::from(len),
                    })
                    .collect();
                let dir = direction(dir);
                match self.dma.map_sg(&sg, dir) {
                    Ok(m) => {
                        assert!(dir != DmaDirection::None && sg.iter().all(|s| s.len > 0));
                        self.remember(m.iova().raw(), m.iova_len());
                        self.lists.push(m);
                        false
                    }
                    Err(e) => {
                        let bad = dir == DmaDirection::None || sg.iter().any(|s| s.len == 0);
                        let wedged = self.wedged && e == DmaError::Wedged;
                        assert!(
                            bad || e == DmaError::NoSpace || wedged,
                            "map_sg refused: {e}"
                        );
                        true
                    }
                }
            }
            Op::UnmapSg { nth, again } => {
                if self.lists.is_empty() {
                    return false;
                }
                let m = self.lists.swap_remove(usize::from(nth) % self.lists.len());
                self.forget(m.iova().raw(), m.iova_len());
                let r = self.dma.unmap_sg(&m);
                self.unmapped(r, "unmap_sg");
                // A second unmap is refused (with checks, by the record;
                // without, by the page tables) unless the IOVA went to
                // another mapping meanwhile, which cannot happen here: the
                // harness maps nothing in between.
                if again {
                    assert_eq!(self.dma.unmap_sg(&m), Err(DmaError::NotMapped));
                }
                false
            }
            Op::AllocCoherent { len } => {
                match self.dma.alloc_coherent(u64::from(len), Default::default()) {
                    Ok(b) => {
                        self.remember(b.dma.raw(), b.size);
                        self.coherent.push(b);
                        false
                    }
                    Err(e) => {
                        assert!(
                            len == 0
                                || matches!(e, DmaError::NoMemory | DmaError::NoSpace)
                                || (self.wedged && e == DmaError::Wedged),
                            "alloc_coherent refused: {e}"
                        );
                        true
                    }
                }
            }
            Op::FreeCoherent { nth, wrong } => {
                if self.coherent.is_empty() {
                    return false;
                }
                let i = usize::from(nth) % self.coherent.len();
                let b = self.coherent[i];
                if wrong && self.checks {
                    let bad = CoherentBuffer {
                        size: b.size + PAGE,
                        ..b
                    };
                    assert!(self.dma.free_coherent(&bad).is_err());
                    return true;
                }
                self.forget(b.dma.raw(), b.size);
                let r = self.dma.free_coherent(&b);
                self.unmapped(r, "free_coherent");
                self.coherent.swap_remove(i);
                false
            }
            Op::SetMask { bits } => {
                let bits = 32 + u32::from(bits % 33);
                let mask = if bits >= 64 {
                    u64::MAX
                } else {
                    (1u64 << bits) - 1
                };
                self.dma.set_dma_mask(mask).expect("a usable mask");
                // Mappings made before keep their addresses; new ones obey
                // the new mask, so the bound checked is the widest yet.
                self.mask = self.mask.max(mask);
                false
            }
            Op::Flush => {
                self.dma.flush_queue_now();
                false
            }
            Op::Tamper { nth } => {
                if !self.checks || self.singles.is_empty() {
                    return false;
                }
                // The record proves ownership: the unmap clears the rest and
                // frees the IOVA, and reports the disagreement.
                let i = usize::from(nth) % self.singles.len();
                let s = self.singles.swap_remove(i);
                let first = s.addr.raw() & !(PAGE - 1);
                self.forget(s.addr.raw(), s.len);
                let r = self.dma.domain().unmap(Iova::new(first), PAGE);
                assert_eq!(r.is_err(), self.wedged, "{r:?}");
                assert_eq!(
                    self.dma.unmap_single(s.addr, s.len, s.dir),
                    Err(DmaError::NotMapped)
                );
                false
            }
            Op::Wedge(on) => {
                if on && !self.wedged {
                    // Lazily unmapped pages not flushed yet stay stale too.
                    self.wedged = true;
                    let gone = std::mem::take(&mut self.gone);
                    for &page in &gone {
                        if let Ok(pa) = self.hw.translate(&self.dev, Iova::new(page), Access::Read)
                        {
                            self.stale.entry(page).or_insert(pa.raw());
                        }
                    }
                    self.gone = gone;
                    self.hw.set_wedged(true);
                } else if !on && self.wedged {
                    self.wedged = false;
                    self.hw.set_wedged(false);
                    self.dma
                        .release_quarantine()
                        .expect("a flush completes on working hardware");
                    self.dma.flush_queue_now();
                    let q = self.dma.domain_stats().quarantine;
                    assert_eq!((q.ranges, q.pages), (0, 0), "held back after recovery");
                    assert!(!self.dma.invalidation_pending());
                    self.stale.clear();
                }
                false
            }
        }
    }

    fn check(&self, op: &Op) {
        let mut seen = std::collections::HashSet::new();
        for s in &self.singles {
            for (k, page) in pages(s.addr.raw(), s.len).enumerate() {
                assert!(seen.insert(page), "IOVA page {page:#x} live twice");
                let pa = (s.pa & !(PAGE - 1)) + k as u64 * PAGE;
                let access = if s.dir == DmaDirection::ToDevice {
                    Access::Read
                } else {
                    Access::Write
                };
                assert_eq!(
                    self.hw.translate(&self.dev, Iova::new(page), access),
                    Ok(PhysAddr::new(pa)),
                    "after {op:?}: live mapping at {page:#x}"
                );
            }
        }
        for m in &self.lists {
            for s in m.segments() {
                assert!(
                    self.hw
                        .translate(&self.dev, s.addr.into(), Access::Read)
                        .is_ok()
                        || m.direction() == DmaDirection::FromDevice,
                    "after {op:?}: live list segment at {}",
                    s.addr
                );
            }
            for page in pages(m.iova().raw(), m.iova_len()) {
                assert!(seen.insert(page), "IOVA page {page:#x} live twice");
            }
        }
        for b in &self.coherent {
            for page in pages(b.dma.raw(), b.size) {
                assert!(seen.insert(page), "IOVA page {page:#x} live twice");
            }
            assert!(self
                .hw
                .translate(&self.dev, b.dma.into(), Access::Write)
                .is_ok());
        }
        // Nothing unmapped translates once its invalidation is due: at
        // once in strict mode, after the queue ran in lazy mode; a page
        // whose invalidation failed only to where it did.
        if !self.lazy || matches!(op, Op::Flush) {
            for &page in &self.gone {
                if let Ok(pa) = self.hw.translate(&self.dev, Iova::new(page), Access::Read) {
                    assert_eq!(
                        self.stale.get(&page),
                        Some(&pa.raw()),
                        "after {op:?}: unmapped {page:#x} still translates"
                    );
                }
            }
        }
    }
}
