//! An IOMMU's register window, as its driver reaches it.

/// Access to an IOMMU's register window. On hardware these are volatile
/// loads and stores at the mapped window ([`VolatileMmio`]); in tests, an
/// emulator's register file.
///
/// Offsets are from the start of the window.
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
/// as device memory. Every access is one volatile load or store of its
/// width, aligned and inside the window (checked: a driver bug panics
/// rather than touch anything else).
#[derive(Debug)]
pub struct VolatileMmio {
    base: *mut u8,
    len: u64,
}

// SAFETY: the window is device memory; every access is a single volatile
// load or store, which the IOMMU serialises itself.
unsafe impl Send for VolatileMmio {}
// SAFETY: as above.
unsafe impl Sync for VolatileMmio {}

impl VolatileMmio {
    /// The window of `len` bytes at `base`.
    ///
    /// # Safety
    /// `base` maps the IOMMU's register window, at least `len` bytes, as
    /// device memory for as long as the value lives, and nothing else
    /// accesses it in a way that conflicts with the driver.
    pub unsafe fn new(base: *mut u8, len: u64) -> Self {
        VolatileMmio { base, len }
    }

    /// The window's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the window is empty (no access can succeed).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn at(&self, offset: u64, width: u64) -> *mut u8 {
        assert!(
            offset.is_multiple_of(width)
                && offset.checked_add(width).is_some_and(|e| e <= self.len),
            "register access at {offset:#x} ({width} bytes) outside a window of {:#x}",
            self.len
        );
        // SAFETY: in bounds (checked), inside the mapping `new` promised.
        unsafe { self.base.add(offset as usize) }
    }
}

impl Mmio for VolatileMmio {
    fn read32(&self, offset: u64) -> u32 {
        // SAFETY: aligned and in the window (`at`), which is mapped (`new`).
        unsafe { core::ptr::read_volatile(self.at(offset, 4).cast::<u32>()) }
    }
    fn write32(&self, offset: u64, value: u32) {
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile(self.at(offset, 4).cast::<u32>(), value) }
    }
    fn read64(&self, offset: u64) -> u64 {
        // SAFETY: as in `read32`.
        unsafe { core::ptr::read_volatile(self.at(offset, 8).cast::<u64>()) }
    }
    fn write64(&self, offset: u64, value: u64) {
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile(self.at(offset, 8).cast::<u64>(), value) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn volatile_mmio_reads_and_writes_the_window_at_the_offsets_asked() {
        let mut window = vec![0u64; 512];
        {
            // SAFETY: the buffer is the whole window and outlives `mmio`.
            let mmio = unsafe { VolatileMmio::new(window.as_mut_ptr().cast(), 4096) };
            mmio.write32(0x20, 0xd);
            mmio.write64(0x80, 0x1234_5678_9abc_def0);
            assert_eq!(mmio.read32(0x20), 0xd);
            assert_eq!(mmio.read32(0x84), 0x1234_5678);
            assert_eq!(mmio.read64(0x80), 0x1234_5678_9abc_def0);
            assert_eq!(mmio.len(), 4096);
        }
        assert_eq!(window[4] as u32, 0xd);
    }

    #[test]
    #[should_panic(expected = "outside a window")]
    fn volatile_mmio_refuses_an_offset_outside_the_window() {
        let mut window = vec![0u64; 512];
        // SAFETY: as above.
        let mmio = unsafe { VolatileMmio::new(window.as_mut_ptr().cast(), 4096) };
        mmio.read32(4096);
    }

    #[test]
    #[should_panic(expected = "outside a window")]
    fn volatile_mmio_refuses_a_misaligned_access() {
        let mut window = vec![0u64; 512];
        // SAFETY: as above.
        let mmio = unsafe { VolatileMmio::new(window.as_mut_ptr().cast(), 4096) };
        mmio.read64(4);
    }
}
