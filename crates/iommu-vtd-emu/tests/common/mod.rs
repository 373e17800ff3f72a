//! What the rule tests share: a unit over 16 MiB of guest memory, raw
//! access to that memory, and the reason of a refused access.

use iommu_vtd_emu::{DmaError, Features, Vtd};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub type Mem = GuestMemoryMmap<()>;

/// A unit with `features` over 16 MiB of memory from address 0.
pub fn unit(features: Features) -> Vtd<Mem> {
    let mem = Arc::new(Mem::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap());
    Vtd::new(mem, features).unwrap()
}

/// Writes the double word at `at` of the unit's memory.
pub fn w64(v: &Vtd<Mem>, at: u64, val: u64) {
    v.memory().write_obj(val, GuestAddress(at)).unwrap();
}

/// Reads the double word at `at` of the unit's memory.
#[allow(dead_code)] // not every test file reads memory back
pub fn r64(v: &Vtd<Mem>, at: u64) -> u64 {
    v.memory().read_obj(GuestAddress(at)).unwrap()
}

/// The fault reason of a refused access, if it was refused by translation.
pub fn fault_of(r: Result<impl Sized, DmaError>) -> Option<u8> {
    match r {
        Err(DmaError::Fault { reason, .. }) => Some(reason),
        _ => None,
    }
}
