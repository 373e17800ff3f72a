//! Event records (Arm IHI 0070, section 7.3, "Event records").
//!
//! A record is 32 bytes: the event id and stream in the first double word,
//! the transaction's attributes in the second, the input address in the
//! third and a fetch address or IPA in the fourth.

/// Event numbers (IHI 0070 table 7-1) this SMMU records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EventId {
    /// `F_UUT`: an unsupported upstream transaction.
    Uut = 0x01,
    /// `C_BAD_STREAMID`: the stream id is outside the stream table, or its
    /// level-1 descriptor is invalid.
    BadStreamId = 0x02,
    /// `F_STE_FETCH`: fetching the STE aborted.
    SteFetch = 0x03,
    /// `C_BAD_STE`: the STE is invalid or asks for something unsupported.
    BadSte = 0x04,
    /// `F_STREAM_DISABLED`: a transaction arrived for a disabled stream.
    StreamDisabled = 0x06,
    /// `C_BAD_SUBSTREAMID`: the substream id is out of range.
    BadSubstreamId = 0x08,
    /// `F_CD_FETCH`: fetching the context descriptor aborted.
    CdFetch = 0x09,
    /// `C_BAD_CD`: the context descriptor is invalid or unsupported.
    BadCd = 0x0a,
    /// `F_WALK_EABT`: a page-table read aborted.
    WalkEabt = 0x0b,
    /// `F_TRANSLATION`: no valid descriptor maps the address.
    Translation = 0x10,
    /// `F_ADDR_SIZE`: an address is wider than the configured output size.
    AddrSize = 0x11,
    /// `F_ACCESS`: the leaf's access flag is clear.
    Access = 0x12,
    /// `F_PERMISSION`: the leaf does not allow the access.
    Permission = 0x13,
}

impl EventId {
    /// The event's name in the specification.
    pub fn name(self) -> &'static str {
        match self {
            EventId::Uut => "F_UUT",
            EventId::BadStreamId => "C_BAD_STREAMID",
            EventId::SteFetch => "F_STE_FETCH",
            EventId::BadSte => "C_BAD_STE",
            EventId::StreamDisabled => "F_STREAM_DISABLED",
            EventId::BadSubstreamId => "C_BAD_SUBSTREAMID",
            EventId::CdFetch => "F_CD_FETCH",
            EventId::BadCd => "C_BAD_CD",
            EventId::WalkEabt => "F_WALK_EABT",
            EventId::Translation => "F_TRANSLATION",
            EventId::AddrSize => "F_ADDR_SIZE",
            EventId::Access => "F_ACCESS",
            EventId::Permission => "F_PERMISSION",
        }
    }
}

/// What a fault's `CLASS` field says the SMMU was doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultClass {
    /// Fetching a context descriptor (through stage 2).
    Cd = 0,
    /// Fetching a stage-1 table descriptor (through stage 2).
    TableWalk = 1,
    /// Translating the input address itself.
    Input = 2,
}

/// One event, before it is encoded into the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub id: EventId,
    /// The transaction's stream id.
    pub sid: u32,
    /// The input address (translation faults).
    pub input_addr: u64,
    /// Whether the access was a read (`RnW`).
    pub read: bool,
    /// Whether stage 2 raised it (`S2`).
    pub stage2: bool,
    /// The `CLASS` field.
    pub class: FaultClass,
    /// The intermediate address of a stage-2 fault (`IPA`), or the address
    /// whose fetch aborted (`FetchAddr`).
    pub addr: u64,
}

impl Event {
    /// A configuration event (no transaction attributes).
    pub fn config(id: EventId, sid: u32) -> Self {
        Event {
            id,
            sid,
            input_addr: 0,
            read: false,
            stage2: false,
            class: FaultClass::Input,
            addr: 0,
        }
    }

    /// The four little-endian double words of the record.
    pub fn encode(&self) -> [u64; 4] {
        let dw0 = u64::from(self.id as u8) | (u64::from(self.sid) << 32);
        let mut dw1 = 0u64;
        let mut dw3 = 0u64;
        match self.id {
            EventId::SteFetch | EventId::CdFetch => dw3 = self.addr & 0x000f_ffff_ffff_fff8,
            EventId::WalkEabt
            | EventId::Translation
            | EventId::AddrSize
            | EventId::Access
            | EventId::Permission => {
                dw1 |= u64::from(self.read) << 35;
                dw1 |= u64::from(self.stage2) << 39;
                dw1 |= (self.class as u64) << 40;
                dw3 = if self.id == EventId::WalkEabt {
                    self.addr & 0x000f_ffff_ffff_fff8
                } else if self.stage2 {
                    self.addr & 0x000f_ffff_ffff_f000
                } else {
                    0
                };
            }
            _ => {}
        }
        let dw2 = match self.id {
            EventId::WalkEabt
            | EventId::Translation
            | EventId::AddrSize
            | EventId::Access
            | EventId::Permission
            | EventId::Uut => self.input_addr,
            _ => 0,
        };
        [dw0, dw1, dw2, dw3]
    }
}
