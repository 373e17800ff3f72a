//! `iommu bench virtio`: the virtio-iommu device's hot paths at 1
//! thousand, 64 thousand and 1 million mappings in the domain (the
//! workloads of `cargo bench -p iommu-virtio`), and the guest's DMA API
//! going through the virtio-iommu driver, timed by the tool's harness.

use crate::bench::{sample, Stats, JSON_VERSION};
use iommu_core::{Bus, DeviceBuilder, Iommu, IommuConfig, PhysAddr};
use iommu_dma::{DmaDevice, DmaDirection, DmaOptions};
use iommu_virtio::driver::{Loopback, Viommu, ViommuConfig};
use iommu_virtio::queue::DriverQueue;
use iommu_virtio::spec::Status;
use iommu_virtio::testing::{bench_device, bench_map_unmap, BENCH_EP};
use iommu_virtio::{Device, DeviceConfig, VirtioIommu};
use serde::Serialize;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;
use vm_memory::iommu::Iommu as _;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory, Permissions};

type Mem = GuestMemoryMmap<()>;

const EP: u32 = BENCH_EP;
/// Requests made available per notification in the virtqueue workload.
const PAIRS: u64 = 16;

#[derive(Serialize)]
struct Size {
    mappings: u64,
    /// Nanoseconds per MAP+UNMAP of 4 KiB, bytes in and tail out.
    map_unmap_4k: Stats,
    /// Nanoseconds per MAP+UNMAP of 4 KiB through the request virtqueue,
    /// driver side included (chains written, queue served, used entries
    /// read), 16 pairs per notification.
    map_unmap_4k_virtqueue: Stats,
    /// Nanoseconds per `Iommu::translate` of 64 bytes on an IOTLB hit.
    translate_hit: Stats,
    /// Nanoseconds per 8-byte DMA read through `IommuMemory` on a hit.
    dma_read_hit: Stats,
    /// Nanoseconds per 8-byte DMA read on a miss (every IOTLB emptied
    /// first).
    dma_read_miss: Stats,
}

fn guest_memory() -> Result<Mem, String> {
    Mem::from_ranges(&[(GuestAddress(0), 64 << 20)]).map_err(|e| format!("guest memory: {e}"))
}

fn size(n: u64, quick: bool) -> Result<Size, String> {
    let (map, unmap) = bench_map_unmap(n);
    let mut d = bench_device(n);
    let mut tail = [0u8; 4];
    let map_unmap_4k = sample(
        |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                d.handle(black_box(&map), &mut tail);
                d.handle(black_box(&unmap), &mut tail);
            }
            t.elapsed()
        },
        quick,
    );
    if tail[0] != Status::Ok as u8 {
        return Err("MAP+UNMAP failed".into());
    }

    let iommu = VirtioIommu::new(d);
    let mem = guest_memory()?;
    let mut driver = DriverQueue::new(&mem, 64, 0x1000).map_err(|e| e.to_string())?;
    let mut queue = driver.device_queue().map_err(|e| e.to_string())?;
    let (map_at, unmap_at) = (GuestAddress(0x10_0000), GuestAddress(0x10_0100));
    mem.write_slice(&map, map_at).map_err(|e| e.to_string())?;
    mem.write_slice(&unmap, unmap_at)
        .map_err(|e| e.to_string())?;
    let map_buf = [(map_at.0, map.len() as u32)];
    let unmap_buf = [(unmap_at.0, unmap.len() as u32)];
    let tails = |i: u64| [(0x20_0000 + 8 * i, 4u32)];
    let mut failed = false;
    let map_unmap_4k_virtqueue = sample(
        |iters| {
            let t = Instant::now();
            let mut left = iters;
            while left > 0 {
                let pairs = left.min(PAIRS);
                for i in 0..pairs {
                    failed |= driver.add(&mem, &map_buf, &tails(2 * i)).is_err();
                    failed |= driver.add(&mem, &unmap_buf, &tails(2 * i + 1)).is_err();
                }
                failed |= iommu.process_requests(&mut queue, &mem).is_err();
                while let Ok(Some(_)) = driver.pop_used(&mem) {}
                left -= pairs;
            }
            t.elapsed()
        },
        quick,
    );
    let statuses_ok =
        (0..2 * PAIRS).all(|i| mem.read_obj::<u8>(GuestAddress(tails(i)[0].0)).ok() == Some(0));
    if failed || !statuses_ok {
        return Err("MAP+UNMAP through the virtqueue failed".into());
    }

    let ep = iommu.endpoint(EP);
    let hit_at = GuestAddress((n / 2) * 0x2000 + 0x40);
    if ep.translate(hit_at, 64, Permissions::Read).is_err() {
        return Err("the mapping does not translate".into());
    }
    let translate_hit = sample(
        |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                if let Ok(mut it) = ep.translate(black_box(hit_at), 64, Permissions::Read) {
                    black_box(it.next());
                }
            }
            t.elapsed()
        },
        quick,
    );
    let dma = IommuMemory::new(mem.clone(), iommu.endpoint(EP), true, ());
    let dma_read_hit = sample(
        |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                black_box(dma.read_obj::<u64>(black_box(hit_at)).ok());
            }
            t.elapsed()
        },
        quick,
    );
    let mut i = 0u64;
    let dma_read_miss = sample(
        |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                i = (i + 7919) % n;
                iommu.with_device(|_| ());
                black_box(dma.read_obj::<u64>(GuestAddress(i * 0x2000 + 0x40)).ok());
            }
            t.elapsed()
        },
        quick,
    );
    Ok(Size {
        mappings: n,
        map_unmap_4k,
        map_unmap_4k_virtqueue,
        translate_hit,
        dma_read_hit,
        dma_read_miss,
    })
}

/// `dma_map_single` + `dma_unmap_single` of 4 KiB in a guest whose IOMMU
/// core runs the virtio-iommu driver (strict: each call waits for its MAP
/// or UNMAP), nanoseconds per pair.
fn guest_dma(quick: bool) -> Result<Stats, String> {
    let mem = guest_memory()?;
    let mut d = Device::new(DeviceConfig::default()).map_err(|e| e.to_string())?;
    d.add_endpoint(0x10, &[]).map_err(|e| e.to_string())?;
    let device = VirtioIommu::new(d);
    let transport = Arc::new(Loopback::new(Arc::clone(&device), mem.clone()));
    let cfg = ViommuConfig::default();
    let need = Viommu::<Mem>::memory_needed(cfg, 512);
    let viommu =
        Viommu::probe(transport, mem, 0x10_0000, need, cfg).map_err(|e| format!("probe: {e}"))?;
    let iommu = Iommu::new(IommuConfig::default());
    let bus = Bus::new(&iommu, "virtio").map_err(|e| e.to_string())?;
    iommu
        .bus_set_iommu(&bus, Arc::new(viommu))
        .map_err(|e| e.to_string())?;
    let dev = bus
        .add_device(DeviceBuilder::new("net").stream_ids([0x10]))
        .map_err(|e| e.to_string())?;
    let dma = DmaDevice::bind(&iommu, &dev, DmaOptions::default()).map_err(|e| e.to_string())?;
    let mut failed = false;
    let stats = sample(
        |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                match dma.map_single(PhysAddr::new(0x80_0000), 0x1000, DmaDirection::ToDevice) {
                    Ok(a) => {
                        failed |= dma.unmap_single(a, 0x1000, DmaDirection::ToDevice).is_err();
                    }
                    Err(_) => failed = true,
                }
            }
            t.elapsed()
        },
        quick,
    );
    if failed {
        return Err("the guest's DMA map failed".into());
    }
    Ok(stats)
}

/// Runs the benchmark and returns what to print.
///
/// # Errors
/// A workload that fails (none does).
pub fn virtio(json: bool, quick: bool) -> Result<String, String> {
    let counts: &[u64] = if quick {
        &[1_000, 64_000]
    } else {
        &[1_000, 64_000, 1_000_000]
    };
    let bar = crate::progress::steps(counts.len() as u64 + 1, "bench virtio");
    let mut sizes = Vec::new();
    for &n in counts {
        bar.set_message(format!("bench virtio: {n} mappings"));
        sizes.push(size(n, quick)?);
        bar.inc(1);
    }
    bar.set_message("bench virtio: the guest's DMA API".to_string());
    let guest = guest_dma(quick)?;
    bar.finish_and_clear();
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            version: u32,
            benchmark: &'static str,
            unit: &'static str,
            sizes: &'a [Size],
            guest_dma_map_unmap_4k: Stats,
        }
        let mut s = serde_json::to_string_pretty(&Out {
            version: JSON_VERSION,
            benchmark: "virtio",
            unit: "ns",
            sizes: &sizes,
            guest_dma_map_unmap_4k: guest,
        })
        .expect("plain data");
        s.push('\n');
        return Ok(s);
    }
    let mut out = String::from(
        "virtio-iommu device, median (p99) ns per operation, by mappings in the domain\n",
    );
    let _ = writeln!(
        out,
        "{:>9} {:>16} {:>18} {:>14} {:>14} {:>14}",
        "mappings",
        "MAP+UNMAP 4K",
        "via virtqueue",
        "translate hit",
        "DMA read hit",
        "DMA read miss"
    );
    for s in &sizes {
        let _ = writeln!(
            out,
            "{:>9} {:>16} {:>18} {:>14} {:>14} {:>14}",
            s.mappings,
            s.map_unmap_4k.cell(),
            s.map_unmap_4k_virtqueue.cell(),
            s.translate_hit.cell(),
            s.dma_read_hit.cell(),
            s.dma_read_miss.cell()
        );
    }
    let _ = writeln!(
        out,
        "guest dma_map_single+dma_unmap_single 4K through the virtio-iommu driver (strict): {} ns",
        guest.cell()
    );
    Ok(out)
}
