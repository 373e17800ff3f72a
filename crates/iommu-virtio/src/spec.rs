//! The numbers of the virtio specification's IOMMU device (device id 23),
//! as the final specification (virtio 1.2 and later) numbers them.
//!
//! Names follow the specification's `VIRTIO_IOMMU_*` macros without the
//! prefix, grouped in modules.

/// The device id of the IOMMU device.
pub const DEVICE_ID: u32 = 23;

/// The request queue's index.
pub const REQUEST_QUEUE: u16 = 0;
/// The event queue's index.
pub const EVENT_QUEUE: u16 = 1;

/// Feature bits (`VIRTIO_IOMMU_F_*`, and the transport's `VERSION_1`).
pub mod feature {
    /// `input_range` describes the addresses the device translates.
    pub const INPUT_RANGE: u64 = 1 << 0;
    /// `domain_range` describes the domain ids the device supports.
    pub const DOMAIN_RANGE: u64 = 1 << 1;
    /// MAP and UNMAP requests are available.
    pub const MAP_UNMAP: u64 = 1 << 2;
    /// Unattached endpoints are in bypass mode (superseded by
    /// [`BYPASS_CONFIG`]).
    pub const BYPASS: u64 = 1 << 3;
    /// The PROBE request is available.
    pub const PROBE: u64 = 1 << 4;
    /// The MMIO map flag is available.
    pub const MMIO: u64 = 1 << 5;
    /// The `bypass` config field and the ATTACH bypass flag.
    pub const BYPASS_CONFIG: u64 = 1 << 6;
    /// The transport's modern-device bit (virtio 1.0 and later).
    pub const VERSION_1: u64 = 1 << 32;
}

/// Request types (`VIRTIO_IOMMU_T_*`).
pub mod req {
    /// Attach an endpoint to a domain, creating the domain.
    pub const ATTACH: u8 = 1;
    /// Detach an endpoint from a domain.
    pub const DETACH: u8 = 2;
    /// Map a range in a domain.
    pub const MAP: u8 = 3;
    /// Unmap the mappings a range covers.
    pub const UNMAP: u8 = 4;
    /// Read an endpoint's properties.
    pub const PROBE: u8 = 5;
}

/// Sizes of the requests' parts, in bytes.
pub mod size {
    /// `struct virtio_iommu_req_head`.
    pub const HEAD: usize = 4;
    /// `struct virtio_iommu_req_tail`.
    pub const TAIL: usize = 4;
    /// The device-readable part of ATTACH (head included).
    pub const ATTACH: usize = HEAD + 16;
    /// The device-readable part of DETACH.
    pub const DETACH: usize = HEAD + 16;
    /// The device-readable part of MAP.
    pub const MAP: usize = HEAD + 32;
    /// The device-readable part of UNMAP.
    pub const UNMAP: usize = HEAD + 24;
    /// The device-readable part of PROBE.
    pub const PROBE: usize = HEAD + 4 + 64;
    /// `struct virtio_iommu_probe_property` (the header of a property).
    pub const PROPERTY_HEAD: usize = 4;
    /// A RESV_MEM property, header included.
    pub const RESV_MEM: usize = PROPERTY_HEAD + 20;
    /// `struct virtio_iommu_fault`.
    pub const FAULT: usize = 24;
    /// `struct virtio_iommu_config`.
    pub const CONFIG: usize = 40;
}

/// Status codes (`VIRTIO_IOMMU_S_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// The request succeeded.
    Ok = 0,
    /// A virtio communication error.
    IoErr = 1,
    /// An unsupported request.
    Unsupp = 2,
    /// An internal device error.
    DevErr = 3,
    /// Invalid parameters.
    Inval = 4,
    /// Out-of-range parameters.
    Range = 5,
    /// Entry not found.
    NoEnt = 6,
    /// Bad address.
    Fault = 7,
    /// Insufficient resources.
    NoMem = 8,
}

impl Status {
    /// The status a byte encodes, if any.
    pub fn from_u8(b: u8) -> Option<Status> {
        Some(match b {
            0 => Status::Ok,
            1 => Status::IoErr,
            2 => Status::Unsupp,
            3 => Status::DevErr,
            4 => Status::Inval,
            5 => Status::Range,
            6 => Status::NoEnt,
            7 => Status::Fault,
            8 => Status::NoMem,
            _ => return None,
        })
    }

    /// The specification's name, without the prefix.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::IoErr => "IOERR",
            Status::Unsupp => "UNSUPP",
            Status::DevErr => "DEVERR",
            Status::Inval => "INVAL",
            Status::Range => "RANGE",
            Status::NoEnt => "NOENT",
            Status::Fault => "FAULT",
            Status::NoMem => "NOMEM",
        }
    }
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// ATTACH flags (`VIRTIO_IOMMU_ATTACH_F_*`).
pub mod attach {
    /// The domain is a bypass domain.
    pub const BYPASS: u32 = 1 << 0;
}

/// MAP flags (`VIRTIO_IOMMU_MAP_F_*`, final numbering).
pub mod map {
    /// Endpoints may read.
    pub const READ: u32 = 1 << 0;
    /// Endpoints may write.
    pub const WRITE: u32 = 1 << 1;
    /// The range is memory-mapped I/O (needs the MMIO feature).
    pub const MMIO: u32 = 1 << 2;
}

/// PROBE property types (`VIRTIO_IOMMU_PROBE_T_*`).
pub mod probe {
    /// The end of the list.
    pub const NONE: u16 = 0;
    /// A reserved memory region.
    pub const RESV_MEM: u16 = 1;
    /// The property's type field: its low 12 bits.
    pub const TYPE_MASK: u16 = 0x0fff;
}

/// RESV_MEM subtypes (`VIRTIO_IOMMU_RESV_MEM_T_*`).
pub mod resv {
    /// Addresses the driver must not map.
    pub const RESERVED: u8 = 0;
    /// A doorbell for message-signalled interrupts.
    pub const MSI: u8 = 1;
}

/// Fault reasons and flags (`VIRTIO_IOMMU_FAULT_*`).
pub mod fault {
    /// An internal error, or one the other reasons do not describe.
    pub const R_UNKNOWN: u8 = 0;
    /// The endpoint is not attached to a domain.
    pub const R_DOMAIN: u8 = 1;
    /// The address is not mapped, or not with the access's permission.
    pub const R_MAPPING: u8 = 2;
    /// The access was a read.
    pub const F_READ: u32 = 1 << 0;
    /// The access was a write.
    pub const F_WRITE: u32 = 1 << 1;
    /// `address` holds the faulting address.
    pub const F_ADDRESS: u32 = 1 << 8;
}
