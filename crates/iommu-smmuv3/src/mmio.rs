//! How the driver reaches the SMMU's registers, and where they are
//! (Arm IHI 0070, chapter 6).

/// Access to the SMMU's MMIO window. On hardware these are volatile loads
/// and stores at the mapped window; in tests, the emulator's register file.
///
/// Offsets are from the start of the window (page 1 starts 64 KiB in).
pub trait Mmio: Send + Sync {
    /// A 32-bit read.
    fn read32(&self, offset: u64) -> u32;
    /// A 32-bit write.
    fn write32(&self, offset: u64, value: u32);
    /// A 64-bit read (two 32-bit reads, low word first, by default).
    fn read64(&self, offset: u64) -> u64 {
        u64::from(self.read32(offset)) | (u64::from(self.read32(offset + 4)) << 32)
    }
    /// A 64-bit write (two 32-bit writes, low word first, by default).
    fn write64(&self, offset: u64, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
}

impl<T: Mmio + ?Sized> Mmio for alloc::sync::Arc<T> {
    fn read32(&self, offset: u64) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&self, offset: u64, value: u32) {
        (**self).write32(offset, value)
    }
    fn read64(&self, offset: u64) -> u64 {
        (**self).read64(offset)
    }
    fn write64(&self, offset: u64, value: u64) {
        (**self).write64(offset, value)
    }
}

/// A register window at a fixed address, for a kernel that has it mapped
/// as device memory.
#[derive(Debug)]
pub struct VolatileMmio {
    base: *mut u8,
}

// SAFETY: the window is device memory; every access is a single volatile
// load or store, which the SMMU serialises itself.
unsafe impl Send for VolatileMmio {}
// SAFETY: as above.
unsafe impl Sync for VolatileMmio {}

impl VolatileMmio {
    /// The window at `base`.
    ///
    /// # Safety
    /// `base` maps the SMMU's whole register window (128 KiB) as device
    /// memory for as long as the value lives, and nothing else accesses it
    /// in a way that conflicts with the driver.
    pub unsafe fn new(base: *mut u8) -> Self {
        VolatileMmio { base }
    }
}

impl Mmio for VolatileMmio {
    fn read32(&self, offset: u64) -> u32 {
        assert!(offset.is_multiple_of(4) && offset + 4 <= WINDOW);
        // SAFETY: in bounds and aligned (checked), the window is mapped (`new`).
        unsafe { core::ptr::read_volatile(self.base.add(offset as usize).cast::<u32>()) }
    }
    fn write32(&self, offset: u64, value: u32) {
        assert!(offset.is_multiple_of(4) && offset + 4 <= WINDOW);
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile(self.base.add(offset as usize).cast::<u32>(), value) }
    }
    fn read64(&self, offset: u64) -> u64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= WINDOW);
        // SAFETY: as in `read32`.
        unsafe { core::ptr::read_volatile(self.base.add(offset as usize).cast::<u64>()) }
    }
    fn write64(&self, offset: u64, value: u64) {
        assert!(offset.is_multiple_of(8) && offset + 8 <= WINDOW);
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile(self.base.add(offset as usize).cast::<u64>(), value) }
    }
}

/// Bytes of the register window (pages 0 and 1).
pub const WINDOW: u64 = 0x2_0000;

/// Register offsets (IHI 0070 6.2, "Register overview").
#[allow(missing_docs)] // the names are the specification's
pub mod reg {
    pub const IDR0: u64 = 0x0;
    pub const IDR1: u64 = 0x4;
    pub const IDR3: u64 = 0xc;
    pub const IDR5: u64 = 0x14;
    pub const CR0: u64 = 0x20;
    pub const CR0ACK: u64 = 0x24;
    pub const CR1: u64 = 0x28;
    pub const CR2: u64 = 0x2c;
    pub const GBPA: u64 = 0x44;
    pub const IRQ_CTRL: u64 = 0x50;
    pub const IRQ_CTRLACK: u64 = 0x54;
    pub const GERROR: u64 = 0x60;
    pub const GERRORN: u64 = 0x64;
    pub const STRTAB_BASE: u64 = 0x80;
    pub const STRTAB_BASE_CFG: u64 = 0x88;
    pub const CMDQ_BASE: u64 = 0x90;
    pub const CMDQ_PROD: u64 = 0x98;
    pub const CMDQ_CONS: u64 = 0x9c;
    pub const EVTQ_BASE: u64 = 0xa0;
    pub const EVTQ_PROD: u64 = 0x1_00a8;
    pub const EVTQ_CONS: u64 = 0x1_00ac;
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn volatile_mmio_reads_and_writes_the_window_at_the_offsets_asked() {
        let mut window = vec![0u64; (WINDOW / 8) as usize];
        {
            // SAFETY: the buffer is the whole window and outlives `mmio`.
            let mmio = unsafe { VolatileMmio::new(window.as_mut_ptr().cast()) };
            mmio.write32(reg::CR0, 0xd);
            mmio.write64(reg::STRTAB_BASE, 0x1234_5678_9abc_def0);
            mmio.write32(reg::EVTQ_CONS, 7);
            assert_eq!(mmio.read32(reg::CR0), 0xd);
            assert_eq!(mmio.read32(reg::STRTAB_BASE + 4), 0x1234_5678);
            assert_eq!(mmio.read64(reg::STRTAB_BASE), 0x1234_5678_9abc_def0);
            assert_eq!(mmio.read32(reg::EVTQ_CONS), 7);
        }
        assert_eq!(window[(reg::CR0 / 8) as usize] as u32, 0xd);
    }

    #[test]
    #[should_panic]
    fn volatile_mmio_refuses_an_offset_outside_the_window() {
        let mut window = vec![0u64; (WINDOW / 8) as usize];
        // SAFETY: as above.
        let mmio = unsafe { VolatileMmio::new(window.as_mut_ptr().cast()) };
        mmio.read32(WINDOW);
    }
}
