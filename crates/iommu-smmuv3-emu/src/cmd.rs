//! Commands (Arm IHI 0070, chapter 4, "Commands"): decoded from the 16
//! bytes the driver put in the command queue.

use crate::regs::field;

/// A decoded command. Fields the emulator does not act on are dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `CMD_PREFETCH_CONFIG` / `CMD_PREFETCH_ADDR`: hints, no effect here.
    Prefetch,
    /// `CMD_CFGI_STE`: forget stream `sid`'s cached STE (and its CDs).
    CfgiSte {
        /// Stream.
        sid: u32,
    },
    /// `CMD_CFGI_STE_RANGE` (and `CMD_CFGI_ALL` as range 31): forget the
    /// STEs of the `2^(range+1)` streams aligned around `sid`.
    CfgiSteRange {
        /// A stream in the range.
        sid: u32,
        /// log2 of the range size, minus one.
        range: u32,
    },
    /// `CMD_CFGI_CD`: forget a cached context descriptor of stream `sid`.
    CfgiCd {
        /// Stream.
        sid: u32,
    },
    /// `CMD_CFGI_CD_ALL`: forget every cached CD of stream `sid`.
    CfgiCdAll {
        /// Stream.
        sid: u32,
    },
    /// `CMD_TLBI_NH_ALL`: every stage-1 entry of a VMID.
    TlbiNhAll {
        /// VMID.
        vmid: u16,
    },
    /// `CMD_TLBI_NH_ASID`: every entry of an ASID.
    TlbiNhAsid {
        /// VMID.
        vmid: u16,
        /// ASID.
        asid: u16,
    },
    /// `CMD_TLBI_NH_VA` (`asid` set) or `CMD_TLBI_NH_VAA` (any ASID).
    TlbiNhVa {
        /// VMID.
        vmid: u16,
        /// ASID, `None` for `NH_VAA`.
        asid: Option<u16>,
        /// The address range.
        range: Range,
    },
    /// `CMD_TLBI_S12_VMALL`: every entry of a VMID, both stages.
    TlbiS12Vmall {
        /// VMID.
        vmid: u16,
    },
    /// `CMD_TLBI_S2_IPA`: stage-2 entries of a VMID by IPA.
    TlbiS2Ipa {
        /// VMID.
        vmid: u16,
        /// The IPA range.
        range: Range,
    },
    /// `CMD_TLBI_NSNH_ALL`: everything.
    TlbiNsnhAll,
    /// `CMD_CMD_SYNC`: completes when every earlier command has.
    Sync {
        /// `CS`: 0 none, 1 interrupt (MSI when `msi_addr` is set), 2 SEV.
        cs: u8,
        /// MSI payload.
        msi_data: u32,
        /// MSI address (0: the wired interrupt).
        msi_addr: u64,
    },
}

/// An invalidation's address range: one address (`TG` = 0) or
/// `(NUM + 1) << SCALE` granules from `addr` (IHI 0070 4.4.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// First address.
    pub addr: u64,
    /// Bytes covered; 1 for a single-address invalidation.
    pub len: u64,
}

/// Why a command is refused (`CERROR_ILL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Illegal {
    /// The opcode.
    pub opcode: u8,
}

/// What the SMMU implements, as far as commands care.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CmdFeatures {
    pub(crate) stage1: bool,
    pub(crate) stage2: bool,
    pub(crate) range_inv: bool,
    pub(crate) msi: bool,
}

fn range(dw0: u64, dw1: u64, addr_mask: u64, feat: CmdFeatures) -> Range {
    let addr = dw1 & addr_mask;
    let tg = field(dw1, 10, 2);
    if tg == 0 || !feat.range_inv {
        return Range { addr, len: 1 };
    }
    let granule_shift = [0, 12, 14, 16][tg as usize];
    let num = field(dw0, 12, 5) + 1;
    let scale = field(dw0, 20, 5) as u32;
    let len = (num << scale)
        .checked_shl(granule_shift)
        .unwrap_or(u64::MAX);
    Range { addr, len }
}

impl Command {
    /// Decodes one queue entry.
    ///
    /// # Errors
    /// [`Illegal`] for an unknown opcode, one for a feature this SMMU does
    /// not implement, or a reserved field value.
    #[inline]
    pub(crate) fn decode(dw0: u64, dw1: u64, feat: CmdFeatures) -> Result<Self, Illegal> {
        let opcode = field(dw0, 0, 8) as u8;
        let ill = Illegal { opcode };
        let sid = field(dw0, 32, 32) as u32;
        let vmid = field(dw0, 32, 16) as u16;
        let asid = field(dw0, 48, 16) as u16;
        // Substream ids need IDR1.SSIDSIZE > 0, which this SMMU reports as 0.
        let ssv = dw0 & (1 << 11) != 0;
        let cmd = match opcode {
            0x01 | 0x02 => Command::Prefetch,
            0x03 => Command::CfgiSte { sid },
            0x04 => Command::CfgiSteRange {
                sid,
                range: field(dw1, 0, 5) as u32,
            },
            0x05 if !ssv => Command::CfgiCd { sid },
            0x06 => Command::CfgiCdAll { sid },
            0x10 if feat.stage1 => Command::TlbiNhAll { vmid },
            0x11 if feat.stage1 => Command::TlbiNhAsid { vmid, asid },
            0x12 if feat.stage1 => Command::TlbiNhVa {
                vmid,
                asid: Some(asid),
                range: range(dw0, dw1, !0xfff, feat),
            },
            0x13 if feat.stage1 => Command::TlbiNhVa {
                vmid,
                asid: None,
                range: range(dw0, dw1, !0xfff, feat),
            },
            0x28 if feat.stage2 => Command::TlbiS12Vmall { vmid },
            0x2a if feat.stage2 => Command::TlbiS2Ipa {
                vmid,
                range: range(dw0, dw1, 0x000f_ffff_ffff_f000, feat),
            },
            0x30 => Command::TlbiNsnhAll,
            0x46 => {
                let cs = field(dw0, 12, 2) as u8;
                if cs == 3 {
                    return Err(ill);
                }
                Command::Sync {
                    cs,
                    msi_data: field(dw0, 32, 32) as u32,
                    msi_addr: if feat.msi {
                        dw1 & 0x000f_ffff_ffff_fffc
                    } else {
                        0
                    },
                }
            }
            _ => return Err(ill),
        };
        Ok(cmd)
    }

    /// The command's name in the specification.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Prefetch => "PREFETCH",
            Command::CfgiSte { .. } => "CFGI_STE",
            Command::CfgiSteRange { .. } => "CFGI_STE_RANGE",
            Command::CfgiCd { .. } => "CFGI_CD",
            Command::CfgiCdAll { .. } => "CFGI_CD_ALL",
            Command::TlbiNhAll { .. } => "TLBI_NH_ALL",
            Command::TlbiNhAsid { .. } => "TLBI_NH_ASID",
            Command::TlbiNhVa { asid: Some(_), .. } => "TLBI_NH_VA",
            Command::TlbiNhVa { asid: None, .. } => "TLBI_NH_VAA",
            Command::TlbiS12Vmall { .. } => "TLBI_S12_VMALL",
            Command::TlbiS2Ipa { .. } => "TLBI_S2_IPA",
            Command::TlbiNsnhAll => "TLBI_NSNH_ALL",
            Command::Sync { .. } => "CMD_SYNC",
        }
    }
}

impl core::fmt::Display for Command {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())?;
        match *self {
            Command::CfgiSte { sid } | Command::CfgiCd { sid } | Command::CfgiCdAll { sid } => {
                write!(f, " sid={sid:#x}")
            }
            Command::CfgiSteRange { sid, range } => write!(f, " sid={sid:#x} range={range}"),
            Command::TlbiNhAll { vmid } | Command::TlbiS12Vmall { vmid } => {
                write!(f, " vmid={vmid}")
            }
            Command::TlbiNhAsid { vmid, asid } => write!(f, " vmid={vmid} asid={asid}"),
            Command::TlbiNhVa { vmid, asid, range } => {
                if let Some(asid) = asid {
                    write!(f, " asid={asid}")?;
                }
                write!(
                    f,
                    " vmid={vmid} addr={:#x} len={:#x}",
                    range.addr, range.len
                )
            }
            Command::TlbiS2Ipa { vmid, range } => {
                write!(f, " vmid={vmid} ipa={:#x} len={:#x}", range.addr, range.len)
            }
            Command::Sync { cs, msi_addr, .. } => {
                write!(f, " cs={}", ["none", "irq", "sev"][usize::from(cs.min(2))])?;
                if msi_addr != 0 {
                    write!(f, " msi={msi_addr:#x}")?;
                }
                Ok(())
            }
            Command::Prefetch | Command::TlbiNsnhAll => Ok(()),
        }
    }
}
