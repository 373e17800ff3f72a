//! Handle checking (what Linux's `CONFIG_DMA_API_DEBUG` does): every live
//! mapping of a device is recorded, so an unmap of an address the device
//! did not map, or with another size, direction or API, gets a typed error
//! and changes nothing. Sharded by IOVA so CPUs rarely share a lock.

use crate::{DmaDirection, DmaError};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

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

const SHARDS: usize = 64;

pub(crate) struct Tracker {
    shards: Box<[Shard]>,
}

impl Tracker {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Shard(spin::Mutex::new(Map::default())))
                .collect(),
        }
    }

    /// Eight 4 KiB pages per shard: the IOVA allocator hands each CPU
    /// blocks of that size, so a CPU's mappings mostly stay on its shards.
    fn shard(&self, iova: u64) -> &spin::Mutex<Map> {
        &self.shards[(iova >> 15) as usize % SHARDS].0
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
