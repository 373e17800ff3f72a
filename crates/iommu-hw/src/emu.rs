//! What an emulated platform is made of, whatever the IOMMU (feature
//! `vm-memory`): guest memory, the region of it the driver takes its
//! tables and queues from, and why putting them together failed.

extern crate std;

use alloc::sync::Arc;
use iommu_pgtable::{GuestTableMemory, GuestWindow};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest memory of an emulated platform.
pub type EmuMemory = GuestMemoryMmap;
/// The driver's DMA memory on it.
pub type EmuTables = GuestTableMemory<EmuMemory>;

/// Where the platform's memory goes.
#[derive(Clone, Copy, Debug)]
pub struct EmuLayout {
    /// Bytes of guest memory, from address 0.
    pub memory: u64,
    /// Start of the region the driver allocates tables and queues from.
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

impl EmuLayout {
    /// The guest memory, the driver's table memory in it, and a window
    /// over all of it for the emulated hardware's reads and writes. The
    /// tables are kept in the same window, so both are reached at their host
    /// address (see `GuestWindow::with_host_mapping`): this memory is made
    /// here.
    ///
    /// # Errors
    /// [`EmuError::Memory`] when the memory cannot be made.
    pub fn build<F, P>(&self) -> Result<EmuParts, EmuError<F, P>> {
        let memory = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), self.memory as usize)])
                .map_err(|_| EmuError::Memory)?,
        );
        // SAFETY: `memory` is vm-memory's mmap backend over one anonymous
        // range, made here and without a dirty bitmap: its mapping never
        // moves and lives as long as the `Arc`s the window and its clones
        // hold.
        let window = unsafe { GuestWindow::with_host_mapping(memory.clone(), 0, self.memory) };
        let tables = GuestTableMemory::in_window(window.clone(), self.tables, self.tables_size);
        Ok(EmuParts {
            memory,
            tables: Arc::new(tables),
            window,
        })
    }
}

/// What [`EmuLayout::build`] makes.
#[derive(Debug)]
pub struct EmuParts {
    /// The guest memory.
    pub memory: Arc<EmuMemory>,
    /// The driver's table memory in it.
    pub tables: Arc<EmuTables>,
    /// All of the memory, for the emulated hardware.
    pub window: GuestWindow<EmuMemory>,
}

/// Why an emulated platform could not be made: the memory, the
/// emulator's refusal of its features (`F`), or the driver's of the
/// hardware (`P`).
#[derive(Debug)]
pub enum EmuError<F, P> {
    /// The memory layout.
    Memory,
    /// The emulator refused the features.
    Features(F),
    /// The driver refused the hardware.
    Probe(P),
}

impl<F: core::fmt::Display, P: core::fmt::Display> core::fmt::Display for EmuError<F, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EmuError::Memory => f.write_str("guest memory could not be created"),
            EmuError::Features(e) => write!(f, "emulated hardware: {e}"),
            EmuError::Probe(e) => write!(f, "probe: {e}"),
        }
    }
}

impl<F: core::fmt::Debug + core::fmt::Display, P: core::fmt::Debug + core::fmt::Display>
    std::error::Error for EmuError<F, P>
{
}
