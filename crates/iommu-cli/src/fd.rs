//! `iommu fd`: a VMM passing a device through with Linux's iommufd API,
//! on the default platform (the soft IOMMU).
//!
//! The VMM's memory is a buffer of this process that holds both the
//! guest's RAM and the ioctl structures, which the context reads and
//! writes back as the kernel does. The device is the NIC, bound and
//! attached as VFIO's `VFIO_DEVICE_BIND_IOMMUFD` and
//! `VFIO_DEVICE_ATTACH_IOMMUFD_PT` would; its DMA goes through the soft
//! IOMMU's translation, which marks dirty what it writes. With `--trace`
//! each ioctl is a span with the core's calls under it.

use crate::out::outln;
use crate::run::{trace, Narrative, JSON_VERSION};
use crate::{input, Failure, FdArgs, MachineArgs, PlatformArgs};
use iommu_core::{Errno, Iova, PagingFlags};
use iommu_soft::Access;
use iommufd::ctx::{Ictx, UserMemory};
use iommufd::uapi::{self, Cmd};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Where the VMM's memory starts (an address of its own process).
const BASE: u64 = 0x7f00_0000_0000;
/// The ioctl structure, then the dirty bitmap.
const ARG: u64 = BASE;
const BITMAP: u64 = BASE + 0x800;
/// The guest's RAM: 2 MiB.
const RAM: u64 = BASE + 0x20_0000;
const RAM_SIZE: u64 = 0x20_0000;
/// Where the guest's RAM is in the device's address space.
const IOVA: u64 = 0x8000_0000;

/// The VMM's memory: one buffer at [`BASE`].
struct VmmMemory(Mutex<Vec<u8>>);

impl VmmMemory {
    fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>, Errno> {
        let start = addr.checked_sub(BASE).ok_or(Errno::EFAULT)? as usize;
        let end = start.checked_add(len).ok_or(Errno::EFAULT)?;
        if end > self.0.lock().unwrap_or_else(|e| e.into_inner()).len() {
            return Err(Errno::EFAULT);
        }
        Ok(start..end)
    }
}

impl UserMemory for VmmMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let r = self.range(addr, buf.len())?;
        buf.copy_from_slice(&self.0.lock().unwrap_or_else(|e| e.into_inner())[r]);
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        let r = self.range(addr, data.len())?;
        self.0.lock().unwrap_or_else(|e| e.into_inner())[r].copy_from_slice(data);
        Ok(())
    }

    fn pin(&self, addr: u64, len: u64, _write: bool) -> Result<(), Errno> {
        let len = usize::try_from(len).map_err(|_| Errno::EFAULT)?;
        self.range(addr, len).map(|_| ())
    }
}

/// The story as JSON.
#[derive(Serialize)]
struct Out {
    version: u32,
    command: &'static str,
    steps: Vec<String>,
}

/// Runs the story.
///
/// # Errors
/// A step that fails says which (`Failure::Run`); `--trace-file` that
/// cannot be written (`Failure::Env`).
pub fn fd(args: &FdArgs) -> Result<(), Failure> {
    trace(&args.trace)?;
    let loaded = input::load(
        &MachineArgs {
            demo: true,
            ..MachineArgs::default()
        },
        &PlatformArgs::default(),
    )?;
    let platform = input::platform(&loaded, &PlatformArgs::default())?;
    let p = input::build_on(&loaded, platform, &crate::Policy::default(), None)?;
    let n = Narrative::new(args.json);
    story(&n, &p).map_err(Failure::Run)?;
    if args.json {
        let doc = Out {
            version: JSON_VERSION,
            command: "fd",
            steps: n.take_lines(),
        };
        outln!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("plain data")
        );
    }
    Ok(())
}

/// Issues `cmd` with `s` at [`ARG`]: the result and `s` as written back.
fn ioctl<T: IntoBytes + FromBytes + Immutable>(
    ctx: &Ictx,
    mem: &VmmMemory,
    cmd: Cmd,
    s: &T,
) -> (Result<(), Errno>, T) {
    let _span = tracing::info_span!("ioctl", cmd = cmd.name()).entered();
    let wrote = mem.write(ARG, s.as_bytes());
    let r = wrote.and_then(|()| ctx.ioctl(cmd.ioctl(), ARG, mem));
    let mut back = vec![0u8; core::mem::size_of::<T>()];
    let _ = mem.read(ARG, &mut back);
    (r, T::read_from_bytes(&back).expect("its size"))
}

fn fail(what: &str, e: Errno) -> String {
    format!("{what}: {e}")
}

fn story(n: &Narrative, p: &iommu_platform::PciPlatform) -> Result<(), String> {
    n.heading("A VMM passes the NIC through with iommufd (/dev/iommu)");
    let nic = p
        .device("0000:02:00.0")
        .ok_or("the platform has no NIC at 0000:02:00.0")?;
    let mem = Arc::new(VmmMemory(Mutex::new(vec![
        0u8;
        (RAM - BASE + RAM_SIZE) as usize
    ])));
    let ctx = Ictx::new();
    ctx.set_user_memory(mem.clone());
    n.say("  open(\"/dev/iommu\"): a new context".into());

    let dev = {
        let _span = tracing::info_span!("vfio", op = "VFIO_DEVICE_BIND_IOMMUFD").entered();
        ctx.bind(&nic).map_err(|e| fail("bind", e))?
    };
    n.say(format!(
        "  VFIO_DEVICE_BIND_IOMMUFD {}: device id {dev}; its group {} is owned by the context, on its blocking domain",
        nic.name(),
        nic.iommu_group().map_or(0, |g| g.id())
    ));

    let (r, a) = ioctl(
        &ctx,
        &mem,
        Cmd::IoasAlloc,
        &uapi::IoasAlloc {
            size: 12,
            ..Default::default()
        },
    );
    r.map_err(|e| fail("IOMMU_IOAS_ALLOC", e))?;
    let ioas = a.out_ioas_id;
    n.say(format!("  IOMMU_IOAS_ALLOC: IOAS {ioas}"));

    let info = uapi::HwInfo {
        size: core::mem::size_of::<uapi::HwInfo>() as u32,
        dev_id: dev,
        ..Default::default()
    };
    let (r, info) = ioctl(&ctx, &mem, Cmd::GetHwInfo, &info);
    r.map_err(|e| fail("IOMMU_GET_HW_INFO", e))?;
    n.say(format!(
        "  IOMMU_GET_HW_INFO: capabilities {:#x} (dirty tracking: {})",
        info.out_capabilities,
        if info.out_capabilities & iommufd::dirty::HW_CAP_DIRTY_TRACKING != 0 {
            "yes"
        } else {
            "no"
        }
    ));

    let h = uapi::HwptAlloc {
        size: core::mem::size_of::<uapi::HwptAlloc>() as u32,
        flags: PagingFlags::DIRTY_TRACKING.bits(),
        dev_id: dev,
        pt_id: ioas,
        ..Default::default()
    };
    let (r, h) = ioctl(&ctx, &mem, Cmd::HwptAlloc, &h);
    r.map_err(|e| fail("IOMMU_HWPT_ALLOC", e))?;
    let hwpt = h.out_hwpt_id;
    n.say(format!(
        "  IOMMU_HWPT_ALLOC (DIRTY_TRACKING) over IOAS {ioas}: HWPT {hwpt}"
    ));

    {
        let _span = tracing::info_span!("vfio", op = "VFIO_DEVICE_ATTACH_IOMMUFD_PT").entered();
        ctx.attach(dev, hwpt).map_err(|e| fail("attach", e))?;
    }
    n.say(format!(
        "  VFIO_DEVICE_ATTACH_IOMMUFD_PT: the device's group is on HWPT {hwpt}'s domain"
    ));

    // Dirty pages are reported a leaf at a time: 4 KiB leaves for a
    // migration that copies 4 KiB pages.
    let o = uapi::IommuOption {
        size: 24,
        option_id: uapi::option::HUGE_PAGES,
        op: uapi::option::OP_SET,
        object_id: ioas,
        val64: 0,
        ..Default::default()
    };
    let (r, _) = ioctl(&ctx, &mem, Cmd::Option, &o);
    r.map_err(|e| fail("IOMMU_OPTION", e))?;
    n.say(format!(
        "  IOMMU_OPTION HUGE_PAGES=0 on IOAS {ioas}: 4 KiB leaves, so dirt is reported 4 KiB at a time"
    ));

    let map = uapi::IoasMap {
        size: 40,
        flags: uapi::ioas_map::FIXED_IOVA | uapi::ioas_map::READABLE | uapi::ioas_map::WRITEABLE,
        ioas_id: ioas,
        user_va: RAM,
        length: RAM_SIZE,
        iova: IOVA,
        ..Default::default()
    };
    let (r, _) = ioctl(&ctx, &mem, Cmd::IoasMap, &map);
    r.map_err(|e| fail("IOMMU_IOAS_MAP", e))?;
    n.say(format!(
        "  IOMMU_IOAS_MAP: the guest's 2 MiB of RAM (VMM address {RAM:#x}) at IOVA {IOVA:#x}"
    ));

    // The device writes: the translation gives the VMM's address, where
    // the bytes land.
    let dma = |iova: u64, data: &[u8]| -> Result<u64, String> {
        let pa =
            p.hw.translate(&nic, Iova::new(iova), Access::Write)
                .map_err(|e| format!("DMA write at {iova:#x}: {e}"))?;
        mem.write(pa.raw(), data)
            .map_err(|e| fail("the device's write", e))?;
        Ok(pa.raw())
    };
    let pa = dma(IOVA + 0x1234, b"packet")?;
    let mut got = [0u8; 6];
    let _ = mem.read(RAM + 0x1234, &mut got);
    n.say(format!(
        "  device DMA write at IOVA {:#x} -> VMM address {pa:#x}: the guest's RAM holds {:?}",
        IOVA + 0x1234,
        String::from_utf8_lossy(&got)
    ));

    let t = uapi::HwptSetDirtyTracking {
        size: 16,
        flags: iommufd::dirty::DIRTY_TRACKING_ENABLE,
        hwpt_id: hwpt,
        reserved: 0,
    };
    let (r, _) = ioctl(&ctx, &mem, Cmd::HwptSetDirtyTracking, &t);
    r.map_err(|e| fail("IOMMU_HWPT_SET_DIRTY_TRACKING", e))?;
    n.say("  IOMMU_HWPT_SET_DIRTY_TRACKING on: migration starts, every page clean".into());
    for page in [3u64, 200, 201] {
        dma(IOVA + page * 4096 + 8, b"dirty")?;
    }
    n.say("  device DMA writes to guest pages 3, 200 and 201".into());
    let bitmap = |ctx: &Ictx| -> Result<Vec<u64>, String> {
        let b = uapi::HwptGetDirtyBitmap {
            size: 48,
            hwpt_id: hwpt,
            iova: IOVA,
            length: RAM_SIZE,
            page_size: 4096,
            data: BITMAP,
            ..Default::default()
        };
        let _ = mem.write(BITMAP, &[0u8; 64]);
        let (r, _) = ioctl(ctx, &mem, Cmd::HwptGetDirtyBitmap, &b);
        r.map_err(|e| fail("IOMMU_HWPT_GET_DIRTY_BITMAP", e))?;
        let mut bits = [0u8; 64];
        let _ = mem.read(BITMAP, &mut bits);
        Ok((0..512u64)
            .filter(|&i| bits[(i / 8) as usize] & (1 << (i % 8)) != 0)
            .collect())
    };
    n.say(format!(
        "  IOMMU_HWPT_GET_DIRTY_BITMAP: dirty guest pages {:?} (copy them to the destination)",
        bitmap(&ctx)?
    ));
    n.say(format!(
        "  IOMMU_HWPT_GET_DIRTY_BITMAP again: {:?} (read and cleared)",
        bitmap(&ctx)?
    ));

    let u = uapi::IoasUnmap {
        size: 24,
        ioas_id: ioas,
        iova: IOVA,
        length: RAM_SIZE,
    };
    let (r, u) = ioctl(&ctx, &mem, Cmd::IoasUnmap, &u);
    r.map_err(|e| fail("IOMMU_IOAS_UNMAP", e))?;
    n.say(format!(
        "  IOMMU_IOAS_UNMAP: {:#x} bytes unmapped, invalidated before the call returned",
        u.length
    ));
    match p
        .hw
        .translate(&nic, Iova::new(IOVA + 0x1234), Access::Write)
    {
        Ok(pa) => return Err(format!("the device still reaches {pa:#x} after the unmap")),
        Err(e) => n.say(format!(
            "  device DMA write at IOVA {:#x}: {e}",
            IOVA + 0x1234
        )),
    }
    {
        let _span = tracing::info_span!("vfio", op = "close").entered();
        ctx.detach(dev).map_err(|e| fail("detach", e))?;
        ctx.unbind(dev).map_err(|e| fail("unbind", e))?;
    }
    n.say(format!(
        "  close: the device detached and unbound; its group back on its default domain ({})",
        nic.iommu_group()
            .and_then(|g| g.domain())
            .map_or("none".into(), |d| d.ty().to_string())
    ));
    Ok(())
}
