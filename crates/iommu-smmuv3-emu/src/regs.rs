//! The register file's layout (Arm IHI 0070, chapter 6, "Memory map and
//! registers").
//!
//! Offsets are from the start of the SMMU's MMIO window; page 1 (the event
//! queue's PROD and CONS) starts 64 KiB in. Field positions are written as
//! shift and width so that a decode reads like the spec's tables.

/// `SMMU_IDR0`: stages, table formats, endianness, ASID/VMID widths.
pub const IDR0: u64 = 0x0;
/// `SMMU_IDR1`: queue sizes, stream and substream id widths.
pub const IDR1: u64 = 0x4;
/// `SMMU_IDR2`.
pub const IDR2: u64 = 0x8;
/// `SMMU_IDR3`: range invalidation and other optional features.
pub const IDR3: u64 = 0xc;
/// `SMMU_IDR4`.
pub const IDR4: u64 = 0x10;
/// `SMMU_IDR5`: granules and output address size.
pub const IDR5: u64 = 0x14;
/// `SMMU_IIDR`: implementer identification.
pub const IIDR: u64 = 0x18;
/// `SMMU_AIDR`: architecture revision.
pub const AIDR: u64 = 0x1c;
/// `SMMU_CR0`: enables.
pub const CR0: u64 = 0x20;
/// `SMMU_CR0ACK`: which `CR0` enables have taken effect.
pub const CR0ACK: u64 = 0x24;
/// `SMMU_CR1`: table and queue memory attributes.
pub const CR1: u64 = 0x28;
/// `SMMU_CR2`.
pub const CR2: u64 = 0x2c;
/// `SMMU_STATUSR`.
pub const STATUSR: u64 = 0x40;
/// `SMMU_GBPA`: what happens to traffic while `SMMUEN` is 0.
pub const GBPA: u64 = 0x44;
/// `SMMU_AGBPA`.
pub const AGBPA: u64 = 0x48;
/// `SMMU_IRQ_CTRL`: interrupt enables.
pub const IRQ_CTRL: u64 = 0x50;
/// `SMMU_IRQ_CTRLACK`.
pub const IRQ_CTRLACK: u64 = 0x54;
/// `SMMU_GERROR`: global errors the SMMU raised (toggle bits).
pub const GERROR: u64 = 0x60;
/// `SMMU_GERRORN`: the ones software acknowledged.
pub const GERRORN: u64 = 0x64;
/// `SMMU_GERROR_IRQ_CFG0`: the global-error MSI address.
pub const GERROR_IRQ_CFG0: u64 = 0x68;
/// `SMMU_GERROR_IRQ_CFG1`: its data.
pub const GERROR_IRQ_CFG1: u64 = 0x70;
/// `SMMU_GERROR_IRQ_CFG2`: its attributes.
pub const GERROR_IRQ_CFG2: u64 = 0x74;
/// `SMMU_STRTAB_BASE`.
pub const STRTAB_BASE: u64 = 0x80;
/// `SMMU_STRTAB_BASE_CFG`.
pub const STRTAB_BASE_CFG: u64 = 0x88;
/// `SMMU_CMDQ_BASE`.
pub const CMDQ_BASE: u64 = 0x90;
/// `SMMU_CMDQ_PROD`.
pub const CMDQ_PROD: u64 = 0x98;
/// `SMMU_CMDQ_CONS`.
pub const CMDQ_CONS: u64 = 0x9c;
/// `SMMU_EVTQ_BASE`.
pub const EVTQ_BASE: u64 = 0xa0;
/// `SMMU_EVTQ_PROD`, in page 1.
pub const EVTQ_PROD: u64 = 0x1_00a8;
/// `SMMU_EVTQ_CONS`, in page 1.
pub const EVTQ_CONS: u64 = 0x1_00ac;
/// `SMMU_EVTQ_IRQ_CFG0`.
pub const EVTQ_IRQ_CFG0: u64 = 0xb0;
/// `SMMU_EVTQ_IRQ_CFG1`.
pub const EVTQ_IRQ_CFG1: u64 = 0xb8;
/// `SMMU_EVTQ_IRQ_CFG2`.
pub const EVTQ_IRQ_CFG2: u64 = 0xbc;
/// Bytes of MMIO the SMMU decodes (pages 0 and 1).
pub const MMIO_SIZE: u64 = 0x2_0000;

/// `CR0.SMMUEN`.
pub const CR0_SMMUEN: u32 = 1 << 0;
/// `CR0.PRIQEN`.
pub const CR0_PRIQEN: u32 = 1 << 1;
/// `CR0.EVTQEN`.
pub const CR0_EVTQEN: u32 = 1 << 2;
/// `CR0.CMDQEN`.
pub const CR0_CMDQEN: u32 = 1 << 3;
/// `CR0.ATSCHK`.
pub const CR0_ATSCHK: u32 = 1 << 4;
/// The `CR0` bits this SMMU implements.
pub const CR0_MASK: u32 = CR0_SMMUEN | CR0_EVTQEN | CR0_CMDQEN;

/// `GBPA.ABORT`: abort traffic while the SMMU is disabled.
pub const GBPA_ABORT: u32 = 1 << 20;
/// `GBPA.UPDATE`: set by software to apply a new `GBPA`, cleared when done.
pub const GBPA_UPDATE: u32 = 1 << 31;

/// `IRQ_CTRL.GERROR_IRQEN`.
pub const IRQ_CTRL_GERROR_IRQEN: u32 = 1 << 0;
/// `IRQ_CTRL.EVTQ_IRQEN`.
pub const IRQ_CTRL_EVTQ_IRQEN: u32 = 1 << 2;

/// `GERROR.CMDQ_ERR`: the command queue stopped on an error.
pub const GERROR_CMDQ_ERR: u32 = 1 << 0;
/// `GERROR.EVTQ_ABT_ERR`: writing an event record aborted.
pub const GERROR_EVTQ_ABT_ERR: u32 = 1 << 2;
/// `GERROR.MSI_CMDQ_ABT_ERR`: a CMD_SYNC MSI write aborted.
pub const GERROR_MSI_CMDQ_ABT_ERR: u32 = 1 << 4;
/// `GERROR.SFM_ERR`: the SMMU entered service failure mode.
pub const GERROR_SFM_ERR: u32 = 1 << 8;
/// Every `GERROR` bit the architecture defines.
pub const GERROR_MASK: u32 = 0x1fd;

/// `STRTAB_BASE_CFG.FMT` value of a linear stream table.
pub const STRTAB_FMT_LINEAR: u32 = 0;
/// `STRTAB_BASE_CFG.FMT` value of a two-level stream table.
pub const STRTAB_FMT_2LVL: u32 = 1;

/// `SMMU_CMDQ_CONS.ERR`: no error.
pub const CERROR_NONE: u32 = 0;
/// `SMMU_CMDQ_CONS.ERR`: an illegal or unsupported command.
pub const CERROR_ILL: u32 = 1;
/// `SMMU_CMDQ_CONS.ERR`: fetching the command aborted.
pub const CERROR_ABT: u32 = 2;
/// `SMMU_CMDQ_CONS.ERR`: an ATC invalidation timed out before a CMD_SYNC.
pub const CERROR_ATC_INV_SYNC: u32 = 3;

/// Queue `PROD`/`CONS` overflow flag (event queue) and its acknowledgement.
pub const Q_OVF: u32 = 1 << 31;

/// Bits `[shift, shift + width)` of `v`.
#[inline]
pub const fn field(v: u64, shift: u32, width: u32) -> u64 {
    (v >> shift) & ((1u64 << width) - 1)
}
