//! The driver on the emulated VT-d (`iommu-vtd-emu`): [`EmuPlatform`]
//! puts guest memory, the emulator and a probed driver together.

extern crate std;

use crate::{ProbeError, Vtd, VtdConfig};
use alloc::sync::Arc;
use iommu_pgtable::GuestTableMemory;
use iommu_vtd_emu::{Features, Vtd as Hw};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest memory of the emulated platform.
pub type EmuMemory = GuestMemoryMmap;
/// The driver's DMA memory on it.
pub type EmuTables = GuestTableMemory<EmuMemory>;
/// The driver over the emulator.
pub type EmuDriver = Vtd<Arc<Hw<EmuMemory>>, EmuTables>;
/// A domain of [`EmuDriver`], for downcasts from `Domain::ops().as_any()`.
pub type EmuDomain = crate::VtdDomain<Arc<Hw<EmuMemory>>, EmuTables>;

/// Where the platform's memory goes.
#[derive(Clone, Copy, Debug)]
pub struct EmuLayout {
    /// Bytes of guest memory, from address 0.
    pub memory: u64,
    /// Start of the region the driver allocates tables and its queue from.
    pub tables: u64,
    /// Its size; the rest is for data.
    pub tables_size: u64,
}

impl Default for EmuLayout {
    /// 256 MiB of memory, the driver's tables in the first 64 MiB.
    fn default() -> Self {
        EmuLayout {
            memory: 256 << 20,
            tables: 0x10_0000,
            tables_size: (64 << 20) - 0x10_0000,
        }
    }
}

/// Guest memory, an emulated remapping unit, and the driver probed on it.
pub struct EmuPlatform {
    /// The memory.
    pub memory: Arc<EmuMemory>,
    /// The emulated unit.
    pub hw: Arc<Hw<EmuMemory>>,
    /// The driver.
    pub driver: EmuDriver,
}

/// Why [`EmuPlatform::new`] failed.
#[derive(Debug)]
pub enum EmuError {
    /// The memory layout.
    Memory,
    /// The emulator refused the features.
    Features(iommu_vtd_emu::FeatureError),
    /// The driver refused the unit.
    Probe(ProbeError),
}

impl core::fmt::Display for EmuError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EmuError::Memory => f.write_str("guest memory could not be created"),
            EmuError::Features(e) => write!(f, "emulated VT-d: {e}"),
            EmuError::Probe(e) => write!(f, "probe: {e}"),
        }
    }
}

impl std::error::Error for EmuError {}

impl EmuPlatform {
    /// A platform with `layout`, a unit with `features`, and the driver
    /// probed with `cfg`.
    ///
    /// # Errors
    /// [`EmuError`].
    pub fn new(layout: EmuLayout, features: Features, cfg: VtdConfig) -> Result<Self, EmuError> {
        let memory = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), layout.memory as usize)])
                .map_err(|_| EmuError::Memory)?,
        );
        let hw = Arc::new(Hw::new(memory.clone(), features).map_err(EmuError::Features)?);
        let tables = Arc::new(GuestTableMemory::new(
            memory.clone(),
            layout.tables,
            layout.tables_size,
        ));
        let driver = Vtd::probe(hw.clone(), tables, cfg).map_err(EmuError::Probe)?;
        Ok(EmuPlatform { memory, hw, driver })
    }
}
