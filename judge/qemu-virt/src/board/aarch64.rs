//! QEMU virt, bare metal: boot code, an identity map with the MMU on, the
//! PL011 UART, and power-off through PSCI.

// Boot: FP/SIMD on (CPACR_EL1.FPEN), a stack, the MMU, then Rust.
core::arch::global_asm!(
    ".section .text.boot, \"ax\"",
    ".global _start",
    "_start:",
    "    mrs x1, mpidr_el1",
    "    and x1, x1, #0xff",
    "    cbnz x1, 2f",
    "    mov x1, #(3 << 20)",
    "    msr cpacr_el1, x1",
    "    isb",
    "    ldr x1, =__stack_top",
    "    mov sp, x1",
    "    bl enable_mmu",
    "    bl judge_main",
    "2:  wfe",
    "    b 2b",
);

/// Level-1 table of the identity map: 1 GiB blocks over the low 4 GiB.
#[repr(C, align(4096))]
struct Table([u64; 512]);

static mut L1: Table = Table([0; 512]);

const BLOCK: u64 = 0b01;
const AF: u64 = 1 << 10;
const INNER_SHAREABLE: u64 = 3 << 8;
const ATTR_DEVICE: u64 = 0 << 2;
const ATTR_NORMAL: u64 = 1 << 2;
const XN: u64 = (1 << 54) | (1 << 53);

/// Identity-maps the first GiB (UART, SMMU, ECAM, PCI MMIO) as device
/// memory and the next three (RAM) as normal write-back memory, and turns
/// the MMU and caches on.
#[no_mangle]
extern "C" fn enable_mmu() {
    // SAFETY: runs once, on the boot CPU, before anything else uses L1.
    let l1 = unsafe { &mut *core::ptr::addr_of_mut!(L1) };
    l1.0[0] = BLOCK | AF | ATTR_DEVICE | XN;
    for i in 1..4u64 {
        l1.0[i as usize] = (i << 30) | BLOCK | AF | INNER_SHAREABLE | ATTR_NORMAL;
    }
    let mair: u64 = 0xff << 8; // attr 0: Device-nGnRnE, attr 1: Normal WB
                               // T0SZ 32 (4 GiB, walk from level 1), inner/outer WB, inner shareable,
                               // 4 KiB granule, TTBR1 walks off, 32-bit physical addresses.
    let tcr: u64 = 32 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23);
    let ttbr = l1.0.as_ptr() as u64;
    // SAFETY: the table maps this code, its stack and every device used,
    // identically, so turning translation on changes no address.
    unsafe {
        core::arch::asm!(
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {ttbr}",
            "dsb ish",
            "isb",
            "mrs {t}, sctlr_el1",
            "orr {t}, {t}, #(1 << 0)",
            "orr {t}, {t}, #(1 << 2)",
            "orr {t}, {t}, #(1 << 12)",
            "msr sctlr_el1, {t}",
            "isb",
            mair = in(reg) mair,
            tcr = in(reg) tcr,
            ttbr = in(reg) ttbr,
            t = out(reg) _,
        );
    }
}

/// The PL011 UART of QEMU virt.
pub struct Uart;

const UART: usize = 0x0900_0000;

impl core::fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            // SAFETY: the UART's data and flag registers, device memory.
            unsafe {
                while core::ptr::read_volatile((UART + 0x18) as *const u32) & (1 << 5) != 0 {}
                core::ptr::write_volatile(UART as *mut u32, u32::from(b));
            }
        }
        Ok(())
    }
}

/// Writes `s` to the UART.
pub fn print(s: &str) {
    let _ = core::fmt::Write::write_str(&mut Uart, s);
}

/// Powers the machine off (PSCI SYSTEM_OFF through HVC, QEMU's conduit
/// when it boots a kernel without firmware).
pub fn power_off() -> ! {
    // SAFETY: SYSTEM_OFF does not return; if it did, we spin.
    unsafe {
        core::arch::asm!("hvc #0", in("x0") 0x8400_0008u64);
    }
    loop {
        core::hint::spin_loop();
    }
}

/// Where QEMU puts the device tree for a program that is not a Linux
/// kernel: the start of RAM, below the image (`link.ld`).
pub const DTB: usize = 0x4000_0000;

/// The command line QEMU's `-append` gave (the device tree's
/// `/chosen/bootargs`), or an empty string.
pub fn cmdline() -> &'static str {
    // SAFETY: QEMU placed a flattened device tree at the start of RAM,
    // which the program never writes; the parser checks its magic and
    // bounds.
    match unsafe { fdt::Fdt::from_ptr(DTB as *const u8) } {
        Ok(fdt) => fdt.chosen().bootargs().unwrap_or(""),
        Err(_) => "",
    }
}

/// RAM as QEMU is told to give it (`-m 128M`).
pub const RAM: (u64, u64) = (0x4000_0000, 0x4800_0000);

/// Heap end: 96 MiB into RAM.
pub const HEAP_END: usize = 0x4000_0000 + (96 << 20);
