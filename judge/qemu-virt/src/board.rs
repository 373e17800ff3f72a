//! The machine a judge runs on, bare metal: QEMU's `virt` (aarch64:
//! PL011 UART, PSCI) or QEMU's `q35` (x86_64: PVH entry, COM1, ACPI
//! power-off). Each gives `Uart`, `print`, `power_off`, the RAM QEMU is
//! told to give (`RAM`) and where the heap ends; the heap itself is
//! shared.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use aarch64::*;
#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

/// A bump allocator over the RAM after the image: the programs are short
/// and free little, so freed memory is not reused.
struct Bump {
    next: AtomicUsize,
}

extern "C" {
    static __heap_start: u8;
}

// SAFETY: hands out disjoint, aligned blocks inside RAM; never the same twice.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let start = core::ptr::addr_of!(__heap_start) as usize;
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let base = if cur == 0 { start } else { cur };
            let at = (base + layout.align() - 1) & !(layout.align() - 1);
            let end = at + layout.size();
            if end > HEAP_END {
                return core::ptr::null_mut();
            }
            match self
                .next
                .compare_exchange(cur, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return at as *mut u8,
                Err(now) => cur = now,
            }
        }
    }
    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static HEAP: Bump = Bump {
    next: AtomicUsize::new(0),
};
