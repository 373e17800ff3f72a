//! PCI on QEMU virt, bare metal: configuration space through ECAM, BARs
//! sized and assigned from the host bridge's 32-bit memory window, and
//! QEMU's `edu` device, whose DMA engine the judges aim at the IOMMU.

/// A segment's ECAM window (bus 0 only: QEMU virt puts every device the
/// judges use there).
#[derive(Clone, Copy, Debug)]
pub struct Ecam {
    base: usize,
}

/// Offset of the command register, and its memory-decode and
/// bus-master bits.
const COMMAND: usize = 0x04;
const MEMORY_AND_MASTER: u32 = 0b110;

impl Ecam {
    /// The ECAM window at `base` (identity-mapped as device memory).
    pub const fn new(base: usize) -> Ecam {
        Ecam { base }
    }

    fn addr(&self, devfn: u8, off: usize) -> *mut u32 {
        (self.base + (usize::from(devfn) << 12) + (off & 0xffc)) as *mut u32
    }

    /// Reads the 32-bit register at `off` of function `devfn` on bus 0.
    pub fn read(&self, devfn: u8, off: usize) -> u32 {
        // SAFETY: ECAM is mapped as device memory; aligned 32-bit access.
        unsafe { core::ptr::read_volatile(self.addr(devfn, off)) }
    }

    /// Writes the 32-bit register at `off` of function `devfn` on bus 0.
    pub fn write(&self, devfn: u8, off: usize, v: u32) {
        // SAFETY: as in `read`.
        unsafe { core::ptr::write_volatile(self.addr(devfn, off), v) }
    }

    /// The first function 0 of bus 0 whose vendor and device ids are
    /// `id` (`device << 16 | vendor`): its devfn.
    pub fn find(&self, id: u32) -> Option<u8> {
        (0..32u8).map(|d| d << 3).find(|&f| self.read(f, 0) == id)
    }

    /// The first 256 bytes of the function's configuration space.
    pub fn header(&self, devfn: u8) -> [u8; 256] {
        let mut out = [0u8; 256];
        for (i, w) in out.chunks_exact_mut(4).enumerate() {
            w.copy_from_slice(&self.read(devfn, i * 4).to_le_bytes());
        }
        out
    }

    /// The function's memory BARs as (index, configuration offset,
    /// 64-bit): I/O BARs and the upper halves of 64-bit ones left out.
    fn memory_bars(&self, devfn: u8) -> impl Iterator<Item = (usize, usize, bool)> + '_ {
        let mut i = 0;
        core::iter::from_fn(move || {
            while i < 6 {
                let (index, off) = (i, 0x10 + 4 * i);
                let low = self.read(devfn, off);
                if low & 1 == 1 {
                    i += 1;
                    continue;
                }
                let is64 = (low >> 1) & 3 == 2;
                i += if is64 { 2 } else { 1 };
                return Some((index, off, is64));
            }
            None
        })
    }

    fn enable_decoding_and_mastering(&self, devfn: u8) {
        self.write(
            devfn,
            COMMAND,
            self.read(devfn, COMMAND) | MEMORY_AND_MASTER,
        );
    }

    /// The addresses the firmware gave the function's memory BARs
    /// (`None`: unimplemented, an I/O BAR, or the upper half of a 64-bit
    /// one), after turning on memory decoding and bus mastering.
    pub fn enable(&self, devfn: u8) -> [Option<u64>; 6] {
        let mut out = [None; 6];
        for (i, off, is64) in self.memory_bars(devfn) {
            let mut at = u64::from(self.read(devfn, off) & !0xf);
            if is64 {
                at |= u64::from(self.read(devfn, off + 4)) << 32;
            }
            out[i] = (at != 0).then_some(at);
        }
        self.enable_decoding_and_mastering(devfn);
        out
    }

    /// Sizes every memory BAR of the function, places each at the next
    /// suitably aligned address of `window` (advancing it), and turns on
    /// memory decoding and bus mastering. Returns each BAR's address
    /// (`None`: unimplemented, an I/O BAR, or the upper half of a 64-bit
    /// one); `None` overall when the window is too small.
    pub fn assign_bars(&self, devfn: u8, window: &mut (u64, u64)) -> Option<[Option<u64>; 6]> {
        let mut out = [None; 6];
        let bars: alloc::vec::Vec<_> = self.memory_bars(devfn).collect();
        for (i, off, is64) in bars {
            let old = self.read(devfn, off);
            self.write(devfn, off, u32::MAX);
            let mut mask = u64::from(self.read(devfn, off) & !0xf);
            if is64 {
                self.write(devfn, off + 4, u32::MAX);
                mask |= u64::from(self.read(devfn, off + 4)) << 32;
            } else {
                mask |= 0xffff_ffff_0000_0000;
            }
            if mask & 0xffff_ffff == 0 {
                self.write(devfn, off, old);
                continue;
            }
            let size = mask.wrapping_neg();
            let at = window.0.next_multiple_of(size);
            if at.checked_add(size)? > window.1 {
                return None;
            }
            self.write(devfn, off, at as u32);
            if is64 {
                self.write(devfn, off + 4, (at >> 32) as u32);
            }
            window.0 = at + size;
            out[i] = Some(at);
        }
        self.enable_decoding_and_mastering(devfn);
        Some(out)
    }
}

/// QEMU's `edu` device (1234:11e8): a DMA engine with a 4 KiB buffer of
/// its own, programmed through BAR 0.
#[derive(Clone, Copy, Debug)]
pub struct Edu {
    bar: usize,
}

/// The edu device's vendor and device ids as one ECAM word.
pub const EDU_ID: u32 = 0x11e8_1234;
/// The edu device's own buffer, in its DMA address space.
pub const EDU_BUF: u64 = 0x4_0000;

impl Edu {
    /// The device whose BAR 0 is at `bar`.
    pub const fn at(bar: usize) -> Edu {
        Edu { bar }
    }

    /// Reads a 64-bit register.
    pub fn read(&self, off: usize) -> u64 {
        // SAFETY: the BAR is assigned and identity-mapped as device memory.
        unsafe { core::ptr::read_volatile((self.bar + off) as *const u64) }
    }

    /// Reads a 32-bit register (those below 0x80 take 32-bit accesses only).
    pub fn read32(&self, off: usize) -> u32 {
        // SAFETY: as in `read`.
        unsafe { core::ptr::read_volatile((self.bar + off) as *const u32) }
    }

    /// Writes a 64-bit register.
    pub fn write(&self, off: usize, v: u64) {
        // SAFETY: as in `read`.
        unsafe { core::ptr::write_volatile((self.bar + off) as *mut u64, v) }
    }

    /// Runs one DMA and waits for it: `from_ram` copies `len` bytes from
    /// `addr` into the device's buffer, otherwise from its buffer to
    /// `addr`. False when it does not complete.
    pub fn dma(&self, from_ram: bool, addr: u64, len: u64) -> bool {
        if from_ram {
            self.write(0x80, addr);
            self.write(0x88, EDU_BUF);
        } else {
            self.write(0x80, EDU_BUF);
            self.write(0x88, addr);
        }
        self.write(0x90, len);
        self.write(0x98, if from_ram { 1 } else { 3 });
        for _ in 0..200_000_000u64 {
            if self.read(0x98) & 1 == 0 {
                return true;
            }
            core::hint::spin_loop();
        }
        false
    }
}
