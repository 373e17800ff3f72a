//! Handle checking (what Linux's `CONFIG_DMA_API_DEBUG` does): every live
//! mapping of a device is recorded, so an unmap of an address the device
//! did not map, or with another size, direction or API, gets a typed error
//! and changes nothing. Sharded by IOVA so CPUs rarely share a lock.
//!
//! Each CPU's IOVAs come in blocks of eight granules (the allocator's
//! refills), one block to a shard; a CPU in lazy mode keeps several hundred
//! IOVAs in flight (its flush queue plus its caches), so the shard count
//! grows with the CPU count to keep two CPUs' blocks on different shards:
//! 512 per CPU, 128 bytes each (64 KiB per CPU and device), at most 16384.

use crate::{DmaDirection, DmaError};
use alloc::boxed::Box;
use core::hash::{BuildHasherDefault, Hasher};
// hashbrown: std's own map, available without std.
use hashbrown::HashMap;

/// Which API made a mapping; each must be undone by its counterpart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    Single,
    Sg,
    Coherent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tracked {
    pub len: u64,
    pub dir: DmaDirection,
    pub api: Api,
}

/// Keys are granule-aligned IOVAs: a multiplicative hash spreads them.
#[derive(Default)]
struct IovaHasher(u64);

impl Hasher for IovaHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v >> 12).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type Map = HashMap<u64, Tracked, BuildHasherDefault<IovaHasher>>;

#[repr(align(128))]
struct Shard(spin::Mutex<Map>);

/// Shards per CPU, and the most there are.
const SHARDS_PER_CPU: usize = 512;
const MAX_SHARDS: usize = 16384;

pub(crate) struct Tracker {
    shards: Box<[Shard]>,
    /// Shard count minus one (a power of two).
    mask: usize,
}

impl Tracker {
    pub(crate) fn new(nr_cpus: usize) -> Self {
        let n = nr_cpus
            .max(1)
            .saturating_mul(SHARDS_PER_CPU)
            .min(MAX_SHARDS)
            .next_power_of_two();
        Self {
            shards: (0..n)
                .map(|_| Shard(spin::Mutex::new(Map::default())))
                .collect(),
            mask: n - 1,
        }
    }

    /// Eight 4 KiB pages per shard: the IOVA allocator hands each CPU
    /// blocks of that size, so a CPU's mappings mostly stay on its shards.
    fn shard(&self, iova: u64) -> &spin::Mutex<Map> {
        &self.shards[(iova >> 15) as usize & self.mask].0
    }

    pub(crate) fn insert(&self, iova: u64, t: Tracked) {
        self.shard(iova).lock().insert(iova, t);
    }

    /// Removes the record of `iova` if it matches what the caller says.
    pub(crate) fn take(
        &self,
        iova: u64,
        len: u64,
        dir: DmaDirection,
        api: Api,
    ) -> Result<Tracked, DmaError> {
        let mut m = self.shard(iova).lock();
        let t = *m.get(&iova).ok_or(DmaError::NotMapped)?;
        if t.len != len || t.dir != dir || t.api != api {
            return Err(DmaError::Mismatch);
        }
        m.remove(&iova);
        Ok(t)
    }

    /// Live mappings recorded.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().len()).sum()
    }
}
