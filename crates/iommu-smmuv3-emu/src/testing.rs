//! The hostile-driver harness (feature `test-utils`): any bytes become a
//! sequence of register writes, memory writes, commands and DMA against an
//! SMMU in a small memory. Nothing may panic, every step is bounded, and
//! a translation asked twice with nothing changed in between gives the
//! same answer (whatever the TLB and configuration cache now hold must
//! agree with what the tables say).

use crate::regs::*;
use crate::{Access, DmaError, Features, Smmuv3};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Bytes of simulated memory.
const MEM: u64 = 1 << 20;

/// The registers worth writing, for most register ops.
const REGS: [u64; 16] = [
    CR0,
    CR1,
    CR2,
    GBPA,
    IRQ_CTRL,
    GERRORN,
    STRTAB_BASE,
    STRTAB_BASE + 4,
    STRTAB_BASE_CFG,
    CMDQ_BASE,
    CMDQ_PROD,
    CMDQ_CONS,
    EVTQ_BASE,
    EVTQ_PROD,
    EVTQ_CONS,
    EVTQ_IRQ_CFG0,
];

struct Bytes_<'a>(&'a [u8]);

impl Bytes_<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
}

/// Replays `data` on a fresh SMMU (small queues and stream ids so that the
/// interesting states are near).
pub fn run(data: &[u8]) {
    let mem = Arc::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).expect("memory"),
    );
    let features = Features {
        sid_bits: 8,
        cmdq_bits: 6,
        evtq_bits: 4,
        tlb_entries: 64,
        config_entries: 16,
        ..Features::default()
    };
    let smmu = Smmuv3::new(mem.clone(), features).expect("valid features");
    let mut r = Bytes_(data);
    let mut paused = false;
    // Addresses stay mostly inside memory, a few outside it.
    let addr = |v: u64| if v & 0xf == 0 { v } else { v % (MEM + 0x1000) };
    while let Some(op) = r.u8() {
        let Some(arg) = r.u64() else { break };
        match op % 8 {
            0 => {
                let off = if arg & 0x100 != 0 {
                    (arg >> 16) % MMIO_SIZE
                } else {
                    REGS[(arg % 16) as usize]
                };
                let Some(v) = r.u32() else { break };
                smmu.write32(off & !3, v);
            }
            1 => {
                let off = [STRTAB_BASE, CMDQ_BASE, EVTQ_BASE][(arg % 3) as usize];
                let Some(v) = r.u64() else { break };
                smmu.write64(off, (v & !0x000f_ffff_ffff_ffe0) | (addr(v) & 0xf_ffe0));
            }
            2 => {
                let Some(v) = r.u64() else { break };
                let _ = mem.write_obj(v, GuestAddress(addr(arg) & !7));
            }
            3 => {
                // A command at the producer index, then the doorbell.
                let Some(dw1) = r.u64() else { break };
                let base = smmu.read64(CMDQ_BASE) & 0xf_ffe0;
                let log2 = (smmu.read64(CMDQ_BASE) & 0x1f).min(6);
                let prod = smmu.read32(CMDQ_PROD);
                let at = base + u64::from(prod & ((1 << log2) - 1)) * 16;
                let dw0 = [0x03, 0x04, 0x05, 0x11, 0x12, 0x28, 0x2a, 0x30, 0x46]
                    [(arg % 9) as usize]
                    | (arg & !0xff);
                let _ = mem.write_obj(dw0, GuestAddress(at));
                let _ = mem.write_obj(dw1, GuestAddress(at + 8));
                smmu.write32(CMDQ_PROD, prod.wrapping_add(1));
            }
            4 | 5 => {
                let sid = (arg & 0x1ff) as u32;
                let iova = arg >> 9 << 3;
                let access = if op % 8 == 4 {
                    Access::Read
                } else {
                    Access::Write
                };
                let events = smmu.stats().events;
                let first = smmu.translate(sid, iova, access);
                // An event record is a memory write, and a hostile driver
                // may have put the event queue over its own tables.
                if smmu.stats().events != events {
                    continue;
                }
                let second = smmu.translate(sid, iova, access);
                assert_eq!(
                    fault(&first),
                    fault(&second),
                    "stream {sid:#x} at {iova:#x}: a repeated translation changed"
                );
                if let (Ok(a), Ok(b)) = (first, second) {
                    assert_eq!(a, b, "stream {sid:#x} at {iova:#x}");
                }
            }
            6 => {
                let mut buf = [0u8; 24];
                let sid = (arg & 0xff) as u32;
                if arg & 0x100 != 0 {
                    let _ = smmu.dma_write(sid, arg >> 12, &buf);
                } else {
                    let _ = smmu.dma_read(sid, arg >> 12, &mut buf);
                }
            }
            _ => match arg % 4 {
                0 => {
                    smmu.pause_commands(true);
                    paused = true;
                }
                1 => {
                    smmu.pause_commands(false);
                    paused = false;
                }
                2 => smmu.raise_gerror((arg >> 8) as u32),
                _ => {
                    let _ = smmu.take_interrupts();
                }
            },
        }
        // Commands run when the doorbell rings: an enabled, running queue
        // with no error pending is always empty between steps.
        let running = smmu.read32(CR0ACK) & CR0_CMDQEN != 0
            && (smmu.read32(GERROR) ^ smmu.read32(GERRORN)) & GERROR_CMDQ_ERR == 0
            && !paused;
        if running {
            let log2 = (smmu.read64(CMDQ_BASE) & 0x1f).min(6) as u32;
            let mask = (2u32 << log2) - 1;
            let (prod, cons) = (smmu.read32(CMDQ_PROD), smmu.read32(CMDQ_CONS));
            assert_eq!(
                prod & mask,
                cons & mask,
                "an enabled queue left commands behind"
            );
        }
    }
}

/// A translation's outcome without its event (the event queue may fill).
fn fault(r: &Result<crate::Segment, DmaError>) -> Option<Option<crate::EventId>> {
    match r {
        Ok(_) => None,
        Err(DmaError::Terminated { fault, .. }) => Some(*fault),
        Err(DmaError::Bus(_)) => Some(None),
    }
}
