//! What the two bare-metal judges on QEMU's `virt` machine share: the
//! board (boot, MMU, UART, heap, power-off), PCI configuration through
//! ECAM with BAR assignment, QEMU's `edu` DMA device, and the checks'
//! bookkeeping. The judges are the binaries: `iommu-qemu-judge` (the
//! SMMUv3 driver on QEMU's SMMUv3) and `viommu` (the virtio-iommu driver
//! on QEMU's virtio-iommu-pci).
#![no_std]

extern crate alloc;

#[cfg(target_arch = "x86_64")]
pub mod acpi;
pub mod board;
#[cfg(target_arch = "aarch64")]
pub mod fw_cfg;
pub mod pci;

use board::Uart;
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, Ordering};

static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);

/// Records and prints one check: `JUDGE PASS name` or `JUDGE FAIL name`.
/// Returns `ok`.
pub fn check(name: &str, ok: bool) -> bool {
    if ok {
        PASSED.fetch_add(1, Ordering::Relaxed);
    } else {
        FAILED.fetch_add(1, Ordering::Relaxed);
    }
    let _ = writeln!(Uart, "JUDGE {} {name}", if ok { "PASS" } else { "FAIL" });
    ok
}

/// Prints `JUDGE DONE pass=N fail=M` and powers the machine off.
pub fn finish() -> ! {
    let _ = writeln!(
        Uart,
        "JUDGE DONE pass={} fail={}",
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed)
    );
    board::power_off()
}

/// A page-aligned 4 KiB buffer filled with `fill`, never freed.
pub fn buffer(fill: u8) -> &'static mut [u8] {
    let v = alloc::vec![fill; 0x2000];
    let leaked = v.leak();
    // A page-aligned 4 KiB window inside the 8 KiB allocation.
    let off = leaked.as_ptr().align_offset(0x1000);
    &mut leaked[off..off + 0x1000]
}

/// A zeroed buffer of `size` bytes aligned to `align`, never freed.
pub fn aligned_buffer(size: usize, align: usize) -> &'static mut [u8] {
    let layout = core::alloc::Layout::from_size_align(size, align).expect("a layout");
    assert!(size > 0, "an empty buffer");
    // SAFETY: a non-zero size; the memory is never freed, so the slice may
    // live for the rest of the program.
    unsafe {
        let p = alloc::alloc::alloc_zeroed(layout);
        assert!(!p.is_null(), "heap exhausted");
        core::slice::from_raw_parts_mut(p, size)
    }
}

/// A buffer's physical address (the map is the identity).
pub fn pa(buf: &[u8]) -> u64 {
    buf.as_ptr() as u64
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let _ = writeln!(Uart, "JUDGE FAIL panic: {info}");
    board::power_off()
}
