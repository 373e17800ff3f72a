//! QEMU q35, bare metal: a PVH entry (QEMU's `-kernel` starts an ELF with
//! a `XEN_ELFNOTE_PHYS32_ENTRY` note in 32-bit protected mode, paging off,
//! `ebx` pointing at the `hvm_start_info`), long mode over an identity map
//! of the low 4 GiB (2 MiB pages; the top two GiB, where ECAM and the PCI
//! windows are, uncached), the COM1 UART, and power-off through the ACPI
//! PM1a control register SeaBIOS places at 0x604.

use core::sync::atomic::{AtomicU32, Ordering};

core::arch::global_asm!(
    // The note QEMU looks for: name "Xen", type 18, the 32-bit entry.
    ".section .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4",
    ".long 8",
    ".long 18",
    ".asciz \"Xen\"",
    ".balign 4",
    ".quad _start32",
    ".balign 4",
    //
    ".section .text.boot, \"ax\"",
    ".code32",
    ".global _start32",
    "_start32:",
    "    cli",
    "    mov dword ptr [{info}], ebx",
    // The tables: zeroed, PML4[0] -> PDPT, PDPT[0..4] -> four PDs of
    // 512 2 MiB pages each.
    "    lea edi, [{tables}]",
    "    xor eax, eax",
    "    mov ecx, 6144",
    "    rep stosd",
    "    lea eax, [{tables} + 0x1000]",
    "    or eax, 3",
    "    mov dword ptr [{tables}], eax",
    "    lea eax, [{tables} + 0x2000]",
    "    or eax, 3",
    "    lea edi, [{tables} + 0x1000]",
    "    mov ecx, 4",
    "2:  mov dword ptr [edi], eax",
    "    add eax, 0x1000",
    "    add edi, 8",
    "    dec ecx",
    "    jnz 2b",
    "    lea edi, [{tables} + 0x2000]",
    "    mov eax, 0x83",
    "    mov ecx, 2048",
    "3:  mov edx, eax",
    "    cmp eax, 0x80000000",
    "    jb 4f",
    "    or edx, 0x18",
    "4:  mov dword ptr [edi], edx",
    "    mov dword ptr [edi + 4], 0",
    "    add eax, 0x200000",
    "    add edi, 8",
    "    dec ecx",
    "    jnz 3b",
    // PAE, the tables, long mode, paging.
    "    mov eax, cr4",
    "    or eax, 0x20",
    "    mov cr4, eax",
    "    lea eax, [{tables}]",
    "    mov cr3, eax",
    "    mov ecx, 0xc0000080",
    "    rdmsr",
    "    or eax, 0x100",
    "    wrmsr",
    "    mov eax, cr0",
    "    or eax, 0x80000001",
    "    mov cr0, eax",
    "    lgdt [judge_gdt_ptr]",
    "    push 0x08",
    "    lea eax, [5f]",
    "    push eax",
    "    retf",
    ".code64",
    "5:  mov ax, 0x10",
    "    mov ds, ax",
    "    mov es, ax",
    "    mov ss, ax",
    "    mov fs, ax",
    "    mov gs, ax",
    "    lea rsp, [rip + __stack_top]",
    "    call judge_main",
    "6:  hlt",
    "    jmp 6b",
    //
    // Null, 64-bit code (0x08), data (0x10).
    ".section .rodata.gdt, \"a\"",
    ".balign 16",
    "judge_gdt:",
    ".quad 0",
    ".quad 0x00af9a000000ffff",
    ".quad 0x00cf92000000ffff",
    "judge_gdt_ptr:",
    ".word 23",
    ".long judge_gdt",
    ".text",
    info = sym PVH_START_INFO,
    tables = sym TABLES,
);

/// Where `ebx` pointed at entry: the PVH `hvm_start_info`.
static PVH_START_INFO: AtomicU32 = AtomicU32::new(0);

/// The identity map: PML4, PDPT, four page directories.
#[repr(C, align(4096))]
struct Tables([u64; 6 * 512]);

/// Written only by the boot code, before Rust runs.
static mut TABLES: Tables = Tables([0; 6 * 512]);

/// The magic number an `hvm_start_info` starts with.
const PVH_MAGIC: u32 = 0x336e_c578;

/// The RSDP's physical address, as QEMU's PVH boot hands it over
/// (`rsdp_paddr`, found by the PVH option ROM in the BIOS area).
pub fn rsdp() -> Option<u64> {
    let info = PVH_START_INFO.load(Ordering::Relaxed) as usize;
    if info == 0 {
        return None;
    }
    // SAFETY: the start info lies in low RAM, identity-mapped; read as
    // its layout has it (magic at 0, rsdp_paddr at 32).
    unsafe {
        if core::ptr::read_volatile(info as *const u32) != PVH_MAGIC {
            return None;
        }
        let rsdp = core::ptr::read_volatile((info + 32) as *const u64);
        (rsdp != 0).then_some(rsdp)
    }
}

/// The command line QEMU's `-append` gave (PVH's `cmdline_paddr`), or
/// an empty string.
pub fn cmdline() -> &'static str {
    let info = PVH_START_INFO.load(Ordering::Relaxed) as usize;
    if info == 0 {
        return "";
    }
    // SAFETY: the start info and the NUL-terminated command line lie in
    // low RAM, identity-mapped, never written while the program runs; at
    // most 4 KiB are read.
    unsafe {
        if core::ptr::read_volatile(info as *const u32) != PVH_MAGIC {
            return "";
        }
        let at = core::ptr::read_volatile((info + 24) as *const u64) as usize;
        if at == 0 {
            return "";
        }
        let bytes = core::slice::from_raw_parts(at as *const u8, 4096);
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(0);
        core::str::from_utf8(&bytes[..len]).unwrap_or("")
    }
}

fn outb(port: u16, v: u8) {
    // SAFETY: an I/O port write to a device of the machine.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") v) }
}

fn outw(port: u16, v: u16) {
    // SAFETY: as in `outb`.
    unsafe { core::arch::asm!("out dx, ax", in("dx") port, in("ax") v) }
}

fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: an I/O port read from a device of the machine.
    unsafe { core::arch::asm!("in al, dx", in("dx") port, out("al") v) }
    v
}

/// The COM1 UART.
pub struct Uart;

const COM1: u16 = 0x3f8;

impl core::fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            while inb(COM1 + 5) & 0x20 == 0 {}
            outb(COM1, b);
        }
        Ok(())
    }
}

/// Writes `s` to the UART.
pub fn print(s: &str) {
    let _ = core::fmt::Write::write_str(&mut Uart, s);
}

/// Powers the machine off: S5 through PM1a_CNT (SLP_TYP 0, QEMU's `_S5`,
/// and SLP_EN).
pub fn power_off() -> ! {
    outw(0x604, 0x2000);
    loop {
        // SAFETY: halts until an interrupt; none are enabled.
        unsafe { core::arch::asm!("hlt") }
    }
}

/// RAM as QEMU is told to give it (`-m 128M`), above the image's 1 MiB.
pub const RAM: (u64, u64) = (0x10_0000, 0x800_0000);

/// Heap end: 96 MiB (ACPI tables sit at the top of RAM).
pub const HEAP_END: usize = 96 << 20;
