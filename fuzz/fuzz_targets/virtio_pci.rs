//! A hostile virtio-pci function: any configuration space, and registers
//! that read back whatever the input says next. The capability parser,
//! the transport and the driver's probe give a typed result, never a
//! panic, a hang or an access outside the driver's memory.
#![no_main]

use iommu_virtio::config::MAX_PROBE_SIZE;
use iommu_virtio::driver::{DriverMemory, Viommu, ViommuConfig};
use iommu_virtio::pci::{PciBars, PciTransport, VirtioPciCaps};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Register reads take the input's next bytes (zeros once it is spent);
/// writes go nowhere.
struct Registers {
    stream: Vec<u8>,
    at: AtomicUsize,
}

impl Registers {
    fn next<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        let at = self.at.fetch_add(N, Ordering::Relaxed);
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.stream.get(at + i).copied().unwrap_or(0);
        }
        out
    }
}

impl PciBars for Registers {
    fn read8(&self, bar: u8, _: u64) -> u8 {
        assert!(bar <= 5);
        self.next::<1>()[0]
    }
    fn read16(&self, bar: u8, offset: u64) -> u16 {
        assert!(bar <= 5 && offset % 2 == 0);
        u16::from_le_bytes(self.next())
    }
    fn read32(&self, bar: u8, offset: u64) -> u32 {
        assert!(bar <= 5 && offset % 4 == 0);
        u32::from_le_bytes(self.next())
    }
    fn write8(&self, bar: u8, _: u64, _: u8) {
        assert!(bar <= 5);
    }
    fn write16(&self, bar: u8, offset: u64, _: u16) {
        assert!(bar <= 5 && offset % 2 == 0);
    }
    fn write32(&self, bar: u8, offset: u64, _: u32) {
        assert!(bar <= 5 && offset % 4 == 0);
    }
}

/// The driver's memory: bounds-checked.
struct Ram(Mutex<Vec<u8>>);

impl DriverMemory for Ram {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let m = self.0.lock().unwrap();
        let Some(src) = usize::try_from(addr)
            .ok()
            .and_then(|a| m.get(a..a.checked_add(buf.len())?))
        else {
            return false;
        };
        buf.copy_from_slice(src);
        true
    }
    fn write(&self, addr: u64, data: &[u8]) -> bool {
        let mut m = self.0.lock().unwrap();
        let Some(dst) = usize::try_from(addr)
            .ok()
            .and_then(|a| m.get_mut(a..a.checked_add(data.len())?))
        else {
            return false;
        };
        dst.copy_from_slice(data);
        true
    }
    fn store_u16_release(&self, addr: u64, v: u16) -> bool {
        self.write(addr, &v.to_le_bytes())
    }
    fn load_u16_acquire(&self, addr: u64) -> Option<u16> {
        let mut b = [0u8; 2];
        self.read(addr, &mut b).then(|| u16::from_le_bytes(b))
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let split = data.len().min(256);
    let (config, registers) = data.split_at(split);
    let Ok(caps) = VirtioPciCaps::parse(config) else {
        return;
    };
    let bars = Registers {
        stream: registers.to_vec(),
        at: AtomicUsize::new(0),
    };
    let Ok(transport) = PciTransport::new(bars, caps) else {
        return;
    };
    let cfg = ViommuConfig {
        request_queue_size: 16,
        event_queue_size: 4,
        completion_polls: 4,
    };
    let need = Viommu::<Ram>::memory_needed(cfg, MAX_PROBE_SIZE);
    let ram = Ram(Mutex::new(vec![0u8; need as usize]));
    if let Ok(drv) = Viommu::probe(Arc::new(transport), ram, 0, need, cfg) {
        let _ = drv.set_bypass(false);
        let _ = drv.bypass();
        let _ = drv.handle_events();
    }
});
