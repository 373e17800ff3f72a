//! A hostile driver against the emulated VT-d, legacy or scalable: any
//! register writes (the root table pointer and its mode, the queue and its
//! descriptor width, the commands, fault records), any bytes where its
//! root, context and PASID tables, page tables and descriptors live, and
//! DMA from any source id at any address. The unit answers everything (a translation, a fault, a
//! queue error) and never panics; every op is bounded.
#![no_main]

use iommu_vtd_emu::{Access, Features, Vtd};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: u64 = 2 << 20;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&f, mut ops)) = data.split_first() else {
        return;
    };
    // Bit 3: a scalable-mode unit (both stages), bit 4: QEMU's PASID
    // choices (no PASID cache, type checked before present).
    let base = if f & 8 != 0 {
        Features::scalable()
    } else {
        Features::default()
    };
    let features = Features {
        caching_mode: f & 1 != 0,
        compress_faults: f & 2 != 0,
        cached_permission_faults: f & 4 != 0,
        cache_pasid_entries: f & 16 == 0,
        pasid_type_before_present: f & 16 != 0,
        fault_records: 1 + u32::from(f >> 5),
        ..base
    };
    let mem =
        Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap());
    let v = Vtd::new(mem.clone(), features).unwrap();
    let take = |ops: &mut &[u8], n: usize| -> Option<u64> {
        if ops.len() < n {
            return None;
        }
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&ops[..n]);
        *ops = &ops[n..];
        Some(u64::from_le_bytes(b))
    };
    while let Some(op) = take(&mut ops, 1) {
        match op % 6 {
            0 => {
                let (Some(at), Some(val)) = (take(&mut ops, 2), take(&mut ops, 4)) else {
                    return;
                };
                v.write32((at & 0x3fc) as u64, val as u32);
            }
            1 => {
                let (Some(at), Some(val)) = (take(&mut ops, 2), take(&mut ops, 8)) else {
                    return;
                };
                v.write64(at & 0x3f8, val);
            }
            2 => {
                let (Some(at), Some(val)) = (take(&mut ops, 3), take(&mut ops, 8)) else {
                    return;
                };
                let _ = mem.write_obj(val, GuestAddress((at << 3) % MEM));
            }
            3 => {
                let (Some(sid), Some(iova), Some(dir)) =
                    (take(&mut ops, 2), take(&mut ops, 8), take(&mut ops, 1))
                else {
                    return;
                };
                let access = if dir & 1 == 0 {
                    Access::Read
                } else {
                    Access::Write
                };
                if let Ok(seg) = v.translate(sid as u16, iova, access) {
                    assert!(seg.len >= 1 && seg.len <= 1 << 30);
                }
            }
            4 => {
                let Some(at) = take(&mut ops, 2) else {
                    return;
                };
                let _ = v.read64(at & 0x3f8);
                let _ = v.read32(at & 0x3fc);
            }
            _ => {
                let (Some(sid), Some(iova)) = (take(&mut ops, 2), take(&mut ops, 4)) else {
                    return;
                };
                let mut buf = [0u8; 64];
                let _ = v.dma_read(sid as u16, iova, &mut buf);
                let _ = v.dma_write(sid as u16, iova, &buf);
            }
        }
    }
});
