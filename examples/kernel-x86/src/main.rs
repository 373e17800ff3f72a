//! The bare-metal side: what a kernel adds around the library, a heap,
//! a panic handler, a clock and CPU ids, and a driver whose hardware calls
//! a real kernel fills with register writes. Build it with
//! `cargo build --target x86_64-unknown-none`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod bare {
    extern crate alloc;

    use core::alloc::{GlobalAlloc, Layout};
    use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use iommu_dma::DmaDirection;
    use iommu_kernel_example::{bring_up, Hardware, Kernel};
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

    /// Nanoseconds since boot, advanced by the kernel's timer interrupt
    /// (here: by the idle loop).
    static NOW: AtomicU64 = AtomicU64::new(0);

    fn clock() -> u64 {
        NOW.load(Ordering::Relaxed)
    }

    /// One CPU in this example; a real kernel reads its per-CPU area.
    fn this_cpu() -> usize {
        0
    }

    /// The kernel's entry, after its own set-up: PCI enumeration found the
    /// NIC at 00:02.0; its driver maps a receive buffer and later unmaps it.
    #[no_mangle]
    pub extern "C" fn _start() -> ! {
        let kernel = Kernel::new(1, this_cpu, clock);
        if let Ok(up) = bring_up(&REGISTERS, &[("0000:00:02.0", 0x10)], &kernel) {
            let buf = PhysAddr::new(0x8000_0000);
            if let Ok(addr) = up.nic.map_single(buf, 2048, DmaDirection::FromDevice) {
                let _ = up.nic.unmap_single(addr, 2048, DmaDirection::FromDevice);
            }
            core::mem::forget(up);
        }
        loop {
            // The tick: time passes, expired flush-queue timeouts run.
            NOW.fetch_add(1_000_000, Ordering::Relaxed);
            kernel.timer.run_expired();
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
