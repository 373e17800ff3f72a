//! The allocator's model check and fuzz harness (feature `test-utils`).
//!
//! [`run`] replays a sequence of [`Op`]s on an [`IovaDomain`] with several
//! simulated CPUs and checks every answer against a plain map of what is
//! live and reserved: nothing is handed out twice or outside its limit,
//! `NoSpace` comes only when no gap fits, a refused call changes nothing,
//! frees of what is not handed out are refused, and at the end everything
//! but the reservations comes back. [`Input::decode`] turns any bytes into
//! such a sequence.

use crate::{CpuId, IovaDomain, IovaError, IovaRange};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};
use iommu_types::ByteReader;

/// The lowest frame handed out.
pub const START: u64 = 1;
/// The 32-bit boundary in frames; the space above it is kept small.
pub const DMA32: u64 = 1 << 20;
/// The limits a request picks from (the last is "no limit").
pub const LIMITS: [u64; 5] = [63, 127, DMA32 - 1, DMA32 + 63, u64::MAX];
/// Simulated CPUs.
pub const CPUS: usize = 3;

/// CPU ids the harness switches between.
#[derive(Debug, Default)]
pub struct SwitchedCpu {
    cur: AtomicUsize,
}

impl SwitchedCpu {
    /// Runs the following calls on CPU `cpu`.
    pub fn set(&self, cpu: usize) {
        self.cur.store(cpu % CPUS, Ordering::Relaxed);
    }
}

impl CpuId for SwitchedCpu {
    fn nr_cpus(&self) -> usize {
        CPUS
    }
    fn current(&self) -> usize {
        self.cur.load(Ordering::Relaxed)
    }
    /// Even CPUs run exclusively (a kernel with preemption off), odd ones
    /// share their shard (threads past the shard count), so one input runs
    /// both the lock-free hot ranges and the locked magazines.
    fn current_exclusive(&self) -> Option<usize> {
        let cpu = self.current();
        cpu.is_multiple_of(2).then_some(cpu)
    }
    /// Single-threaded: any exclusive CPU can be taken over.
    fn with_exclusive(&self, cpu: usize, f: &mut dyn FnMut()) -> bool {
        if cpu.is_multiple_of(2) {
            f();
        }
        cpu.is_multiple_of(2)
    }
}

/// One step of an allocator input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `alloc(size, LIMITS[limit], aligned)`.
    Alloc {
        /// Frames.
        size: u8,
        /// Index into [`LIMITS`].
        limit: u8,
        /// Size-aligned.
        aligned: bool,
    },
    /// `alloc_fast(size, LIMITS[limit], flush)`.
    AllocFast {
        /// Frames.
        size: u8,
        /// Index into [`LIMITS`].
        limit: u8,
        /// Flush the caches when the tree is full.
        flush: bool,
    },
    /// Frees the `nth` live range the way it was allocated.
    Free {
        /// Which live range (modulo their number).
        nth: u16,
    },
    /// A free the allocator must refuse, of a kind picked by `how`: the
    /// slow path on a frame no live range holds (a cached one, a freed
    /// one, a reserved one), or the fast path with a bad frame or size.
    BadFree {
        /// Which kind.
        how: u8,
        /// A frame or live-range seed.
        seed: u16,
    },
    /// `reserve(lo, lo + len - 1)`.
    Reserve {
        /// First frame.
        lo: u8,
        /// Frames.
        len: u8,
    },
    /// `flush_caches`.
    Flush,
    /// The following calls run on another CPU.
    Cpu {
        /// CPU (modulo [`CPUS`]).
        cpu: u8,
    },
}

impl Op {
    /// Reads one op; `None` when the bytes run out.
    pub fn decode(r: &mut ByteReader<'_>) -> Option<Op> {
        Some(match r.u8()? % 7 {
            0 => Op::Alloc {
                size: r.u8()?,
                limit: r.u8()?,
                aligned: r.bool()?,
            },
            1 => Op::AllocFast {
                size: r.u8()?,
                limit: r.u8()?,
                flush: r.bool()?,
            },
            2 => Op::Free { nth: r.u16()? },
            3 => Op::BadFree {
                how: r.u8()?,
                seed: r.u16()?,
            },
            4 => Op::Reserve {
                lo: r.u8()?,
                len: r.u8()?,
            },
            5 => Op::Flush,
            _ => Op::Cpu { cpu: r.u8()? },
        })
    }

    /// Writes the op so that [`decode`](Self::decode) reads it back.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Op::Alloc {
                size,
                limit,
                aligned,
            } => out.extend_from_slice(&[0, size, limit, u8::from(aligned)]),
            Op::AllocFast { size, limit, flush } => {
                out.extend_from_slice(&[1, size, limit, u8::from(flush)])
            }
            Op::Free { nth } => {
                out.push(2);
                out.extend_from_slice(&nth.to_le_bytes());
            }
            Op::BadFree { how, seed } => {
                out.extend_from_slice(&[3, how]);
                out.extend_from_slice(&seed.to_le_bytes());
            }
            Op::Reserve { lo, len } => out.extend_from_slice(&[4, lo, len]),
            Op::Flush => out.push(5),
            Op::Cpu { cpu } => out.extend_from_slice(&[6, cpu]),
        }
    }
}

/// An allocator input: the ops, decoded from any bytes (at most 1024).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// The domain checks every fast free exactly
    /// ([`IovaDomain::with_checked_frees`]), so repeated fast frees are
    /// tried too.
    pub checked: bool,
    /// The steps.
    pub ops: Vec<Op>,
}

impl Input {
    /// Decodes any bytes.
    pub fn decode(data: &[u8]) -> Input {
        let mut r = ByteReader::new(data);
        let checked = r.bool().unwrap_or(false);
        let ops = r.items(Op::decode).take(1024).collect();
        Input { checked, ops }
    }

    /// The bytes [`decode`](Self::decode) reads back as this input.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = alloc::vec![u8::from(self.checked)];
        for op in &self.ops {
            op.encode(&mut out);
        }
        out
    }
}

/// Live allocations: first frame -> (frames, whether via the fast path).
type Live = BTreeMap<u64, (u64, bool)>;

fn overlaps(map: &BTreeMap<u64, u64>, lo: u64, hi: u64) -> bool {
    map.range(..=hi).next_back().is_some_and(|(_, &h)| h >= lo)
}

fn intervals(live: &Live) -> BTreeMap<u64, u64> {
    live.iter().map(|(&lo, &(s, _))| (lo, lo + s - 1)).collect()
}

/// Whether `size` frames aligned to `align` fit in `[START, limit]` outside
/// `taken` (whose ranges may overlap each other).
fn gap_exists(taken: &BTreeMap<u64, u64>, size: u64, align: u64, limit: u64) -> bool {
    let mut merged: BTreeMap<u64, u64> = BTreeMap::new();
    let mut cur: Option<(u64, u64)> = None;
    for (&lo, &hi) in taken {
        cur = match cur {
            Some((a, b)) if lo <= b.saturating_add(1) => Some((a, b.max(hi))),
            Some((a, b)) => {
                merged.insert(a, b);
                Some((lo, hi))
            }
            None => Some((lo, hi)),
        };
    }
    if let Some((a, b)) = cur {
        merged.insert(a, b);
    }
    let mut cand = limit.checked_sub(size - 1).map(|c| c & !(align - 1));
    while let Some(c) = cand.filter(|&c| c >= START) {
        match merged.range(..=c + size - 1).next_back() {
            Some((&lo, &hi)) if hi >= c => cand = lo.checked_sub(size).map(|x| x & !(align - 1)),
            _ => return true,
        }
    }
    false
}

/// Replays `input`, panicking at the first wrong answer.
pub fn run(input: &Input) {
    let iovad = IovaDomain::new(4096, START, SwitchedCpu::default())
        .expect("4 KiB granule")
        .with_checked_frees(input.checked);
    let top = u64::MAX >> 12;
    // Keep the space above 4 GiB small.
    iovad.reserve(DMA32 + 64, top).expect("an empty tree");
    let mut reserved: BTreeMap<u64, u64> = BTreeMap::from([(DMA32 + 64, top)]);
    let mut live: Live = BTreeMap::new();
    let mut freed: Vec<(u64, u64, bool)> = Vec::new();
    for op in &input.ops {
        match *op {
            Op::Alloc { size, limit, .. } | Op::AllocFast { size, limit, .. } => {
                let size = u64::from(size % 48).max(1);
                let limit = LIMITS[usize::from(limit) % LIMITS.len()];
                let (fast, aligned, flush) = match *op {
                    Op::Alloc { aligned, .. } => (false, aligned, false),
                    Op::AllocFast { flush, .. } => (true, true, flush),
                    _ => unreachable!(),
                };
                // Everything the tree holds: live, reserved and cached.
                let taken: BTreeMap<u64, u64> = iovad
                    .ranges()
                    .into_iter()
                    .map(|(r, _)| (r.pfn_lo, r.pfn_hi))
                    .collect();
                let got = if fast {
                    iovad.alloc_fast(size, limit, flush)
                } else {
                    iovad.alloc(size, limit, aligned)
                };
                let rounded = if fast && size < 32 {
                    size.next_power_of_two()
                } else {
                    size
                };
                let align = if aligned {
                    rounded.next_power_of_two()
                } else {
                    1
                };
                match got {
                    Ok(pfn) => {
                        let hi = pfn + rounded - 1;
                        assert!(
                            pfn >= START && hi <= limit.min(top),
                            "{pfn:#x}+{rounded} under {limit:#x}"
                        );
                        assert_eq!(pfn % align, 0, "aligned");
                        assert!(!overlaps(&intervals(&live), pfn, hi), "handed out twice");
                        assert!(!overlaps(&reserved, pfn, hi), "reserved range handed out");
                        live.insert(pfn, (rounded, fast));
                    }
                    Err(IovaError::NoSpace) => {
                        // A flushing fast path emptied the caches first, so
                        // only live and reserved ranges may block it.
                        let blockers = if flush {
                            let mut m = intervals(&live);
                            m.extend(reserved.iter().map(|(&a, &b)| (a, b)));
                            m
                        } else {
                            taken
                        };
                        assert!(
                            !gap_exists(&blockers, rounded, align, limit.min(top)),
                            "NoSpace with room for {rounded} under {limit:#x}"
                        );
                    }
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
            Op::Free { nth } => {
                if live.is_empty() {
                    continue;
                }
                let (&pfn, &(size, fast)) = live
                    .iter()
                    .nth(usize::from(nth) % live.len())
                    .expect("in range");
                live.remove(&pfn);
                freed.push((pfn, size, fast));
                if fast {
                    assert_eq!(iovad.free_fast(pfn, size), Ok(()));
                } else {
                    // Any frame of the range names it.
                    assert_eq!(
                        iovad.free(pfn + size / 2),
                        Ok(IovaRange {
                            pfn_lo: pfn,
                            pfn_hi: pfn + size - 1
                        })
                    );
                }
            }
            Op::BadFree { how, seed } => {
                let before = iovad.ranges();
                let live_map = intervals(&live);
                let held = |p: u64| overlaps(&live_map, p, p);
                let got = match how % 6 {
                    // A tree range no caller holds: cached, or reserved.
                    0 => {
                        let idle: Vec<u64> = before
                            .iter()
                            .map(|(r, _)| r.pfn_lo)
                            .filter(|&p| !held(p))
                            .collect();
                        if idle.is_empty() {
                            continue;
                        }
                        iovad.free(idle[usize::from(seed) % idle.len()]).err()
                    }
                    // A range freed before and not handed out again: in a
                    // cache, or back in the tree.
                    1 => match freed.iter().rev().find(|&&(p, _, _)| !held(p)) {
                        Some(&(p, _, _)) => iovad.free(p).err(),
                        None => continue,
                    },
                    // A fast range freed again (only a checked domain can
                    // tell a repeat from a first free).
                    5 if input.checked => {
                        match freed.iter().rev().find(|&&(p, _, fast)| fast && !held(p)) {
                            Some(&(p, s, _)) => iovad.free_fast(p, s).err(),
                            None => continue,
                        }
                    }
                    5 => continue,
                    // A frame of a fast range, misaligned for its size.
                    2 => match live.iter().find(|(_, &(s, fast))| fast && s > 1) {
                        Some((&p, &(s, _))) => iovad.free_fast(p + 1, s).err(),
                        None => continue,
                    },
                    // A large fast range with the wrong size.
                    3 => match live.iter().find(|(_, &(s, fast))| fast && s >= 32) {
                        Some((&p, &(s, _))) => iovad.free_fast(p, s + 1).err(),
                        None => continue,
                    },
                    // Nothing at all.
                    _ => iovad.free_fast(0, u64::from(seed % 40).max(1)).err(),
                };
                assert!(got.is_some(), "a bad free ({how}) was accepted");
                assert_eq!(iovad.ranges(), before, "a refused free changed nothing");
            }
            Op::Reserve { lo, len } => {
                let lo = u64::from(lo) % 140;
                let hi = lo + u64::from(len % 8);
                let before = iovad.ranges();
                match iovad.reserve(lo, hi) {
                    Ok(_) => {
                        assert!(!overlaps(&intervals(&live), lo, hi));
                        let e = reserved.entry(lo).or_insert(hi);
                        *e = (*e).max(hi);
                    }
                    Err(IovaError::Overlap) => {
                        assert_eq!(
                            iovad.ranges(),
                            before,
                            "a refused reservation changed nothing"
                        )
                    }
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
            Op::Flush => iovad.flush_caches(),
            Op::Cpu { cpu } => iovad.cpu_id().set(usize::from(cpu)),
        }
        iovad.check_invariants();
    }
    for (pfn, (size, fast)) in live {
        if fast {
            assert_eq!(iovad.free_fast(pfn, size), Ok(()));
        } else {
            assert!(iovad.free(pfn).is_ok());
        }
    }
    iovad.flush_caches();
    assert!(
        iovad.ranges().iter().all(|(_, reserved)| *reserved),
        "nothing leaked"
    );
}
