//! The bare-metal side: what a kernel adds around the library, a heap
//! and a panic handler, and a driver whose hardware calls a real kernel
//! fills with register writes. Build it with
//! `cargo build --target x86_64-unknown-none`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod bare {
    extern crate alloc;

    use core::alloc::{GlobalAlloc, Layout};
    use core::sync::atomic::{AtomicUsize, Ordering};
    use iommu_kernel_example::{bring_up, Hardware};
    use iommu_types::{Errno, PhysAddr};

    /// The kernel's heap: a bump allocator over a static arena (a real
    /// kernel brings its own allocator).
    struct Bump {
        next: AtomicUsize,
    }

    const ARENA: usize = 4 << 20;
    static mut HEAP: [u8; ARENA] = [0; ARENA];

    // SAFETY: hands out disjoint, aligned blocks of the arena, each once.
    unsafe impl GlobalAlloc for Bump {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let base = core::ptr::addr_of_mut!(HEAP) as usize;
            let mut cur = self.next.load(Ordering::Relaxed);
            loop {
                let at = (base + cur + layout.align() - 1) & !(layout.align() - 1);
                let end = at + layout.size() - base;
                if end > ARENA {
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
    static ALLOCATOR: Bump = Bump {
        next: AtomicUsize::new(0),
    };

    /// The IOMMU's registers; a real kernel maps the DRHD's register base
    /// from the ACPI DMAR table and writes context entries and
    /// invalidation descriptors here.
    struct Registers;

    impl Hardware for Registers {
        fn set_context(&self, _rid: u16, _domain_id: u16, _root: Option<PhysAddr>) {}
        fn invalidate(&self, _domain_id: u16, _iova: u64, _size: u64) -> Result<(), Errno> {
            Ok(())
        }
    }

    static REGISTERS: Registers = Registers;

    /// The kernel's entry, after its own set-up: PCI enumeration found the
    /// NIC at 00:02.0.
    #[no_mangle]
    pub extern "C" fn _start() -> ! {
        let up = bring_up(&REGISTERS, &[("0000:00:02.0", 0x10)]);
        core::mem::forget(up);
        loop {
            core::hint::spin_loop();
        }
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
        loop {
            core::hint::spin_loop();
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    println!("a bare-metal program: cargo build --target x86_64-unknown-none");
}
