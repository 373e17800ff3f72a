//! Where the SMMU's registers are (Arm IHI 0070, chapter 6). The driver
//! reaches them through [`Mmio`](iommu_hw::Mmio); on hardware, an
//! [`iommu_hw::VolatileMmio`] of [`WINDOW`] bytes.

/// Bytes of the register window (pages 0 and 1).
pub const WINDOW: u64 = 0x2_0000;

/// Register offsets (IHI 0070 6.2, "Register overview").
#[allow(missing_docs)] // the names are the specification's
pub mod reg {
    pub const IDR0: u64 = 0x0;
    pub const IDR1: u64 = 0x4;
    pub const IDR3: u64 = 0xc;
    pub const IDR5: u64 = 0x14;
    pub const IIDR: u64 = 0x18;
    pub const AIDR: u64 = 0x1c;
    pub const CR0: u64 = 0x20;
    pub const CR0ACK: u64 = 0x24;
    pub const CR1: u64 = 0x28;
    pub const CR2: u64 = 0x2c;
    pub const GBPA: u64 = 0x44;
    pub const IRQ_CTRL: u64 = 0x50;
    pub const IRQ_CTRLACK: u64 = 0x54;
    pub const GERROR: u64 = 0x60;
    pub const GERRORN: u64 = 0x64;
    pub const STRTAB_BASE: u64 = 0x80;
    pub const STRTAB_BASE_CFG: u64 = 0x88;
    pub const CMDQ_BASE: u64 = 0x90;
    pub const CMDQ_PROD: u64 = 0x98;
    pub const CMDQ_CONS: u64 = 0x9c;
    pub const EVTQ_BASE: u64 = 0xa0;
    pub const EVTQ_PROD: u64 = 0x1_00a8;
    pub const EVTQ_CONS: u64 = 0x1_00ac;
}
