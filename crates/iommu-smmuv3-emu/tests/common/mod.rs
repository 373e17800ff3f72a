//! A hand-programmed SMMU: the tests write STEs, CDs and commands as raw
//! double words laid out as Arm IHI 0070 draws them, so they check the
//! emulator against the specification, not against a driver.
#![allow(dead_code)]

use iommu_pgtable::lpae::Lpae;
use iommu_pgtable::{GuestTableMemory, IoPageTable};
use iommu_smmuv3_emu::{regs::*, Features, Smmuv3};
use iommu_types::{IotlbGather, Iova, PhysAddr, Prot};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const MEM: u64 = 0x100_0000;
pub const STRTAB: u64 = 0x10_0000;
pub const CMDQ: u64 = 0x20_0000;
pub const EVTQ: u64 = 0x21_0000;
pub const CDS: u64 = 0x30_0000;
pub const TABLES: u64 = 0x40_0000;
pub const DATA: u64 = 0x80_0000;
pub const SID_BITS: u32 = 8;
pub const CMDQ_LOG2: u64 = 8;
pub const EVTQ_LOG2: u64 = 4;

pub type Mem = GuestMemoryMmap;

pub struct Rig {
    pub mem: Arc<Mem>,
    pub smmu: Smmuv3<Mem>,
    pub tables: Arc<GuestTableMemory<Mem>>,
}

pub fn memory() -> Arc<Mem> {
    Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap())
}

impl Rig {
    /// An SMMU with a linear stream table, both queues and SMMUEN set.
    pub fn new() -> Self {
        Self::with(Features::default())
    }

    pub fn with(features: Features) -> Self {
        let mem = memory();
        let smmu = Smmuv3::new(mem.clone(), features).unwrap();
        let tables = Arc::new(GuestTableMemory::new(mem.clone(), TABLES, DATA - TABLES));
        let rig = Rig { mem, smmu, tables };
        rig.smmu.write64(STRTAB_BASE, STRTAB);
        rig.smmu.write32(STRTAB_BASE_CFG, SID_BITS); // linear, LOG2SIZE
        rig.smmu.write64(CMDQ_BASE, CMDQ | CMDQ_LOG2);
        rig.smmu.write64(EVTQ_BASE, EVTQ | EVTQ_LOG2);
        rig.smmu
            .write32(IRQ_CTRL, IRQ_CTRL_EVTQ_IRQEN | IRQ_CTRL_GERROR_IRQEN);
        rig.enable(CR0_CMDQEN | CR0_EVTQEN | CR0_SMMUEN);
        rig
    }

    pub fn enable(&self, cr0: u32) {
        self.smmu.write32(CR0, cr0);
        assert_eq!(self.smmu.read32(CR0ACK), cr0);
    }

    pub fn poke(&self, addr: u64, v: u64) {
        self.mem.write_obj(v, GuestAddress(addr)).unwrap();
    }

    pub fn peek(&self, addr: u64) -> u64 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    pub fn write_ste(&self, sid: u32, words: [u64; 4]) {
        let at = STRTAB + 64 * u64::from(sid);
        for (i, w) in words.iter().enumerate() {
            self.poke(at + 8 * i as u64, *w);
        }
    }

    /// Queues one command and rings the doorbell.
    pub fn cmd(&self, dw0: u64, dw1: u64) {
        let prod = self.smmu.read32(CMDQ_PROD);
        let idx = u64::from(prod) & ((1 << CMDQ_LOG2) - 1);
        self.poke(CMDQ + idx * 16, dw0);
        self.poke(CMDQ + idx * 16 + 8, dw1);
        let next = (prod + 1) & ((2 << CMDQ_LOG2) - 1);
        self.smmu.write32(CMDQ_PROD, next);
    }

    pub fn sync(&self) {
        self.cmd(0x46, 0);
        assert_eq!(self.smmu.read32(CMDQ_CONS), self.smmu.read32(CMDQ_PROD));
    }

    pub fn cfgi_ste(&self, sid: u32) {
        self.cmd(0x03 | (u64::from(sid) << 32), 1);
        self.sync();
    }

    /// Drains the event queue.
    pub fn events(&self) -> Vec<[u64; 4]> {
        let mut out = Vec::new();
        let mask = (2u32 << EVTQ_LOG2) - 1;
        loop {
            let prod = self.smmu.read32(EVTQ_PROD);
            let cons = self.smmu.read32(EVTQ_CONS);
            if prod & mask == cons & mask {
                return out;
            }
            let idx = u64::from(cons) & ((1 << EVTQ_LOG2) - 1);
            let at = EVTQ + idx * 32;
            out.push([
                self.peek(at),
                self.peek(at + 8),
                self.peek(at + 16),
                self.peek(at + 24),
            ]);
            let next = ((cons & mask) + 1) & mask;
            self.smmu.write32(EVTQ_CONS, next | (prod & Q_OVF));
        }
    }

    /// A stage-1 page table in simulated memory.
    pub fn s1_table(&self) -> IoPageTable<Lpae, Arc<GuestTableMemory<Mem>>> {
        IoPageTable::new(Lpae::stage1_4k(48, 48).unwrap(), self.tables.clone()).unwrap()
    }

    /// A CD at `CDS + 64 * slot` for a 48-bit 4 KiB stage-1 table rooted at `ttb`.
    pub fn write_cd(&self, slot: u64, asid: u16, ttb: u64) -> u64 {
        let at = CDS + 64 * slot;
        let w0 = 16 // T0SZ: 48-bit input; TG0 (bits 7:6) 0 is 4 KiB
            | (1 << 8) | (1 << 10) | (3 << 12) // walk attributes
            | (1 << 30) // EPD1
            | (1 << 31) // V
            | (5 << 32) // IPS 48 bits
            | (1 << 41) // AA64
            | (1 << 45) // R: record faults
            | (u64::from(asid) << 48);
        self.poke(at, w0);
        self.poke(at + 8, ttb);
        self.poke(at + 16, 0);
        self.poke(at + 24, 0x0404_ff44); // MAIR
        at
    }

    /// STE words for stage 1 through the CD at `cd`.
    pub fn s1_ste(cd: u64) -> [u64; 4] {
        [1 | (0b101 << 1) | cd, 1 << 44, 0, 0]
    }
}

pub fn map(
    pt: &IoPageTable<Lpae, Arc<GuestTableMemory<Mem>>>,
    iova: u64,
    pa: u64,
    size: u64,
    prot: Prot,
) {
    pt.map_pages(Iova::new(iova), PhysAddr::new(pa), size, 1, prot)
        .unwrap();
}

pub fn unmap(pt: &IoPageTable<Lpae, Arc<GuestTableMemory<Mem>>>, iova: u64, size: u64) {
    let mut g = IotlbGather::new();
    pt.unmap_pages(Iova::new(iova), size, 1, &mut g);
}
