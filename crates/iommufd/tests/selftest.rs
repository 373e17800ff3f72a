//! The selftest's mock IOMMU through `IOMMU_TEST_CMD`, as Linux's
//! selftest drives it: mock devices attached to an IOAS, their domains
//! real 2 KiB-page tables holding the IOAS's areas, pin counts, replace,
//! reserved ranges, and the errnos of Linux's `selftest.c`.

use iommufd::ctx::{Ictx, UserMemory};
use iommufd::selftest::{op, Selftest, TestCmd, MOCK_APERTURE_START, MOCK_PAGE_SIZE};
use iommufd::testing::Space;
use iommufd::uapi::{ioas_map, Cmd, IoasMap};
use iommufd::Errno;
use std::sync::Arc;

const ARG: u64 = 0x1000;
/// The program's data: 16 pages.
const BUFFER: u64 = 0x10_0000;
const PAGE: u64 = 4096;

struct Prog {
    ctx: Arc<Ictx>,
    mem: Arc<Space>,
    files: Arc<iommufd::testing::Files>,
}

impl Prog {
    fn new(platform: &Arc<Selftest>) -> Self {
        Self::with_memory(platform, 0x10_0000 + 16 * PAGE as usize)
    }

    fn with_memory(platform: &Arc<Selftest>, len: usize) -> Self {
        let mem = Arc::new(Space::new(0x1000, len));
        let ctx = Arc::new(Ictx::new());
        ctx.set_user_memory(mem.clone());
        let files = Arc::new(iommufd::testing::Files::default());
        ctx.set_files(files.clone());
        ctx.enable_selftest(platform);
        Prog { ctx, mem, files }
    }

    fn test(&self, op: u32, id: u32, args: &[(usize, u64)]) -> Result<TestCmd, Errno> {
        let mut c = TestCmd {
            size: core::mem::size_of::<TestCmd>() as u32,
            op,
            id,
            ..TestCmd::default()
        };
        for &(word, v) in args {
            c.args[word] = v;
        }
        let (r, back) = iommufd::testing::ioctl_at(&self.ctx, &*self.mem, ARG, Cmd::TestCmd, &c);
        r.map(|()| back)
    }

    /// MOCK_DOMAIN on `pt`: (stdev, hwpt, idev).
    fn mock_domain(&self, pt: u32) -> Result<(u32, u32, u32), Errno> {
        let c = self.test(op::MOCK_DOMAIN, pt, &[])?;
        Ok((c.args[0] as u32, (c.args[0] >> 32) as u32, c.args[1] as u32))
    }

    fn map(&self, ioas: u32, uptr: u64, len: u64, iova: u64) -> Result<u64, Errno> {
        self.ctx.ioas_map(&IoasMap {
            size: core::mem::size_of::<IoasMap>() as u32,
            flags: ioas_map::FIXED_IOVA | ioas_map::READABLE | ioas_map::WRITEABLE,
            ioas_id: ioas,
            user_va: uptr,
            length: len,
            iova,
            ..IoasMap::default()
        })
    }

    fn check_map(&self, hwpt: u32, iova: u64, len: u64, uptr: u64) -> Result<(), Errno> {
        self.test(op::MD_CHECK_MAP, hwpt, &[(0, iova), (1, len), (2, uptr)])
            .map(|_| ())
    }

    fn check_refs(&self, uptr: u64, len: u64, refs: u64) -> Result<(), Errno> {
        self.test(op::MD_CHECK_REFS, 0, &[(0, len), (1, uptr), (2, refs)])
            .map(|_| ())
    }
}

#[test]
fn a_mock_domain_holds_the_ioas_areas_in_its_2k_page_table() {
    let platform = Selftest::new().unwrap();
    let p = Prog::new(&platform);
    let ioas = p.ctx.ioas_alloc().unwrap();
    let (stdev, hwpt, idev) = p.mock_domain(ioas).unwrap();
    assert!(stdev != 0 && hwpt != 0 && idev != 0);
    assert_eq!(
        p.ctx
            .ioas(ioas)
            .unwrap()
            .lock()
            .unwrap()
            .iopt
            .iova_alignment(),
        MOCK_PAGE_SIZE,
        "the mock's page"
    );
    // Outside the aperture is reserved (EINVAL, as Linux's iopt_check_iova).
    assert_eq!(p.map(ioas, BUFFER, PAGE, 0), Err(Errno::EINVAL));
    let iova = MOCK_APERTURE_START;
    assert_eq!(p.map(ioas, BUFFER, 4 * PAGE, iova), Ok(iova));
    assert_eq!(p.check_map(hwpt, iova, 4 * PAGE, BUFFER), Ok(()));
    assert_eq!(
        p.check_map(hwpt, iova + MOCK_PAGE_SIZE, PAGE, BUFFER + MOCK_PAGE_SIZE),
        Ok(()),
        "every 2 KiB page"
    );
    assert_eq!(
        p.check_map(hwpt, iova, PAGE, BUFFER + PAGE),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        p.check_map(hwpt, iova + 1, PAGE, BUFFER),
        Err(Errno::EINVAL)
    );
    assert_eq!(p.check_map(ioas, iova, PAGE, BUFFER), Err(Errno::ENOENT));
    // One pin per pages object while a domain holds it.
    assert_eq!(p.check_refs(BUFFER, 4 * PAGE, 1), Ok(()));
    assert_eq!(p.check_refs(BUFFER + 4 * PAGE, 4 * PAGE, 0), Ok(()));
    assert_eq!(p.check_refs(BUFFER, PAGE, 0), Err(Errno::EIO));
    assert_eq!(p.check_refs(BUFFER + 1, PAGE, 1), Err(Errno::EINVAL));
    // A second map of the same memory is a second pages object.
    assert_eq!(
        p.map(ioas, BUFFER, PAGE, iova + 0x10_0000),
        Ok(iova + 0x10_0000)
    );
    assert_eq!(p.check_refs(BUFFER, PAGE, 2), Ok(()));
    // Memory the process does not have cannot be pinned.
    let end = 0x1000 + 0x10_0000 + 16 * PAGE;
    assert_eq!(p.map(ioas, end, PAGE, iova + 0x20_0000), Err(Errno::EFAULT));
    // The device's object goes with its domain's pins.
    p.ctx.destroy(stdev).unwrap();
    assert_eq!(p.check_refs(BUFFER, 4 * PAGE, 0), Ok(()));
    assert_eq!(platform.bus().devices().len(), 0, "the mock device is gone");
    assert_eq!(p.ctx.destroy(ioas), Ok(()), "nothing holds the IOAS");
}

#[test]
fn replace_moves_a_mock_device_between_hwpts_and_errnos_are_linuxs() {
    let platform = Selftest::new().unwrap();
    let p = Prog::new(&platform);
    let ioas = p.ctx.ioas_alloc().unwrap();
    let (stdev, auto, idev) = p.mock_domain(ioas).unwrap();
    let iova = MOCK_APERTURE_START;
    p.map(ioas, BUFFER, PAGE, iova).unwrap();
    let other = p.ctx.ioas_alloc().unwrap();
    p.map(other, BUFFER + PAGE, PAGE, iova).unwrap();
    let hwpt = p
        .ctx
        .hwpt_alloc(idev, other, iommu_core::PagingFlags::empty())
        .unwrap();
    let c = p
        .test(op::MOCK_DOMAIN_REPLACE, stdev, &[(0, u64::from(hwpt))])
        .unwrap();
    assert_eq!(c.args[0] as u32, hwpt);
    assert_eq!(p.check_map(hwpt, iova, PAGE, BUFFER + PAGE), Ok(()));
    assert!(
        p.ctx.object(auto).is_none(),
        "the unused automatic HWPT went"
    );
    // Back to the first IOAS: a new automatic HWPT.
    let c = p
        .test(op::MOCK_DOMAIN_REPLACE, stdev, &[(0, u64::from(ioas))])
        .unwrap();
    let back = c.args[0] as u32;
    assert_eq!(p.check_map(back, iova, PAGE, BUFFER), Ok(()));
    // Not a selftest object, no object, no IOAS.
    assert_eq!(
        p.test(op::MOCK_DOMAIN_REPLACE, idev, &[(0, u64::from(hwpt))])
            .err(),
        Some(Errno::ENOENT)
    );
    assert_eq!(
        p.test(op::MOCK_DOMAIN_REPLACE, stdev, &[(0, 999)]).err(),
        Some(Errno::ENOENT)
    );
    // A bound device is destroyed with its selftest object only.
    assert_eq!(p.ctx.destroy(idev), Err(Errno::EBUSY));
    assert_eq!(p.test(op::MOCK_DOMAIN, 999, &[]).err(), Some(Errno::ENOENT));
    assert_eq!(platform.bus().devices().len(), 1, "the failed one is gone");
}

#[test]
fn reserved_ranges_memory_limits_and_device_caches() {
    let platform = Selftest::new().unwrap();
    let p = Prog::new(&platform);
    let ioas = p.ctx.ioas_alloc().unwrap();
    assert_eq!(
        p.test(op::ADD_RESERVED, ioas, &[(0, 0x2000_0000), (1, 0x1000)])
            .map(|_| ()),
        Ok(())
    );
    assert_eq!(p.map(ioas, BUFFER, PAGE, 0x2000_0000), Err(Errno::EINVAL));
    assert_eq!(
        p.test(op::ADD_RESERVED, ioas, &[(0, 1), (1, 0)]).err(),
        Some(Errno::EINVAL)
    );
    assert_eq!(
        p.test(op::ADD_RESERVED, ioas, &[(0, u64::MAX), (1, 2)])
            .err(),
        Some(Errno::EOVERFLOW)
    );
    assert_eq!(
        p.test(op::SET_TEMP_MEMORY_LIMIT, 0, &[(0, 11)]).err(),
        Some(Errno::EINVAL)
    );
    assert!(p.test(op::SET_TEMP_MEMORY_LIMIT, 0, &[(0, 12)]).is_ok());
    let (_, _, idev) = p.mock_domain(ioas).unwrap();
    for i in 0..4 {
        let c = p.test(op::DEV_CHECK_CACHE, idev, &[(0, i | (0xbaddad << 32))]);
        assert!(c.is_ok(), "entry {i} starts at its default");
    }
    assert_eq!(
        p.test(op::DEV_CHECK_CACHE, idev, &[(0, 4 | (0xbaddad << 32))])
            .err(),
        Some(Errno::EINVAL)
    );
    assert_eq!(p.test(0xffff, 0, &[]).err(), Some(Errno::EOPNOTSUPP));
    // A context without the platform has no test command (a kernel
    // built without CONFIG_IOMMUFD_TEST).
    let bare = Ictx::new();
    let c = TestCmd {
        size: 72,
        op: op::ADD_RESERVED,
        ..TestCmd::default()
    };
    let (r, _) = iommufd::testing::ioctl_at(&bare, &*p.mem, ARG, Cmd::TestCmd, &c);
    assert_eq!(r, Err(Errno::ENOTTY));
    let _ = p.mem.read(ARG, &mut [0u8; 4]);
}

/// Dirty tracking as a VMM's migration uses it: a HWPT made to track,
/// marks cleared when tracking starts, the device's writes (the mock told
/// of them) reported once, or every time with NO_CLEAR, in the caller's
/// bitmap at any alignment.
#[test]
fn dirty_bits_reach_the_bitmap_once_and_errnos_are_linuxs() {
    use iommufd::dirty::{DIRTY_TRACKING_ENABLE, GET_DIRTY_BITMAP_NO_CLEAR};
    use iommufd::uapi::{HwptAlloc, HwptGetDirtyBitmap, HwptSetDirtyTracking};
    let platform = Selftest::new().unwrap();
    let p = Prog::new(&platform);
    let ioas = p.ctx.ioas_alloc().unwrap();
    let (_, _, idev) = p.mock_domain(ioas).unwrap();
    let iova = MOCK_APERTURE_START;
    // 8 CPU pages a page at a time (huge pages off, as the selftest).
    let small = iommufd::uapi::IommuOption {
        size: 24,
        option_id: iommufd::uapi::option::HUGE_PAGES,
        op: iommufd::uapi::option::OP_SET,
        object_id: ioas,
        val64: 0,
        ..Default::default()
    };
    p.ctx.option(&small).unwrap();
    p.map(ioas, BUFFER, 8 * PAGE, iova).unwrap();
    let alloc = |flags| {
        let c = HwptAlloc {
            size: core::mem::size_of::<HwptAlloc>() as u32,
            flags,
            dev_id: idev,
            pt_id: ioas,
            ..HwptAlloc::default()
        };
        let (r, back) = iommufd::testing::ioctl_at(&p.ctx, &*p.mem, ARG, Cmd::HwptAlloc, &c);
        r.map(|()| back.out_hwpt_id)
    };
    let plain = alloc(0).unwrap();
    let hwpt = alloc(iommufd::uapi::hwpt_alloc::DIRTY_TRACKING).unwrap();
    let track = |id, flags| {
        let c = HwptSetDirtyTracking {
            size: 16,
            flags,
            hwpt_id: id,
            reserved: 0,
        };
        iommufd::testing::ioctl_at(&p.ctx, &*p.mem, ARG, Cmd::HwptSetDirtyTracking, &c).0
    };
    assert_eq!(track(plain, DIRTY_TRACKING_ENABLE), Err(Errno::EOPNOTSUPP));
    assert_eq!(track(hwpt, 2), Err(Errno::EOPNOTSUPP));
    assert_eq!(track(ioas, DIRTY_TRACKING_ENABLE), Err(Errno::ENOENT));
    // The device "writes" before tracking: refused, nothing marked.
    const BITS: u64 = 0x3000;
    let set_dirty = |bits: &[u8]| {
        p.mem.write(BITS, bits).unwrap();
        let args = [(1, iova), (2, 8 * PAGE), (3, MOCK_PAGE_SIZE), (4, BITS)];
        p.test(op::DIRTY, hwpt, &args).map(|c| c.args[5])
    };
    assert_eq!(set_dirty(&[0xff, 0xff]), Err(Errno::EINVAL));
    assert_eq!(track(hwpt, DIRTY_TRACKING_ENABLE), Ok(()));
    // Mock pages 0 and 9 written: each is half of a CPU page, whose two
    // leaves share the mark (as contiguous entries do).
    assert_eq!(set_dirty(&[0b0000_0001, 0b0000_0010]), Ok(2));
    let get = |at: u64, flags, page: u64| {
        p.mem.write(at, &[0u8; 8]).unwrap();
        let c = HwptGetDirtyBitmap {
            size: 48,
            hwpt_id: hwpt,
            flags,
            iova,
            length: 8 * PAGE,
            page_size: page,
            data: at,
            ..HwptGetDirtyBitmap::default()
        };
        let (r, _) = iommufd::testing::ioctl_at(&p.ctx, &*p.mem, ARG, Cmd::HwptGetDirtyBitmap, &c);
        let mut b = [0u8; 2];
        p.mem.read(at, &mut b).unwrap();
        r.map(|()| b)
    };
    // Per CPU page: pages 0 and 4; at an odd address; with NO_CLEAR twice.
    assert_eq!(
        get(0x3101, GET_DIRTY_BITMAP_NO_CLEAR, PAGE),
        Ok([0b1_0001, 0])
    );
    assert_eq!(
        get(0x3101, GET_DIRTY_BITMAP_NO_CLEAR, PAGE),
        Ok([0b1_0001, 0])
    );
    // Per mock page, cleared as read: both halves of each (mock pages 0,
    // 1, 8 and 9); then nothing.
    assert_eq!(get(0x3200, 0, MOCK_PAGE_SIZE), Ok([0b11, 0b11]));
    assert_eq!(get(0x3200, 0, MOCK_PAGE_SIZE), Ok([0, 0]));
    // Linux's checks.
    let bad = |iova_, length, page, flags| {
        let c = HwptGetDirtyBitmap {
            size: 48,
            hwpt_id: hwpt,
            flags,
            iova: iova_,
            length,
            page_size: page,
            data: 0x3300,
            ..HwptGetDirtyBitmap::default()
        };
        iommufd::testing::ioctl_at(&p.ctx, &*p.mem, ARG, Cmd::HwptGetDirtyBitmap, &c).0
    };
    assert_eq!(bad(iova, 0, PAGE, 0), Err(Errno::EINVAL), "no length");
    assert_eq!(bad(iova, PAGE, 0, 0), Err(Errno::EINVAL), "no page size");
    assert_eq!(
        bad(iova + 0x400, PAGE, PAGE, 0),
        Err(Errno::EINVAL),
        "unaligned"
    );
    assert_eq!(
        bad(u64::MAX - 0xfff, 0x2000, PAGE, 0),
        Err(Errno::EOVERFLOW)
    );
    assert_eq!(bad(iova, 16 * PAGE, PAGE, 0), Err(Errno::EINVAL), "a hole");
    assert_eq!(
        bad(iova, PAGE, PAGE, 2),
        Err(Errno::EOPNOTSUPP),
        "unknown flag"
    );
    // A device that cannot track: no dirty HWPT for it, no attach to one.
    let c = p.test(op::MOCK_DOMAIN_FLAGS, hwpt, &[(1, 1 << 32)]);
    assert_eq!(c.err(), Some(Errno::EINVAL));
    assert_eq!(track(hwpt, 0), Ok(()));
}

/// A dirty leaf larger than the bitmap's chunk is reported whole: the
/// bits past the chunk that found it are carried into the next ones.
#[test]
fn a_dirty_huge_leaf_fills_the_bitmap_across_chunks() {
    use iommufd::uapi::{hwpt_alloc, HwptAlloc, HwptGetDirtyBitmap, HwptSetDirtyTracking};
    const MB: u64 = 1 << 20;
    let bitmap = BUFFER + 2 * MB;
    let platform = Selftest::new().unwrap();
    let p = Prog::with_memory(&platform, (bitmap + 2 * MB / 8 - 0x1000) as usize);
    let ioas = p.ctx.ioas_alloc().unwrap();
    let (_, _, idev) = p.mock_domain(ioas).unwrap();
    let iova = MOCK_APERTURE_START;
    p.map(ioas, BUFFER, 2 * MB, iova).unwrap();
    let c = HwptAlloc {
        size: core::mem::size_of::<HwptAlloc>() as u32,
        flags: hwpt_alloc::DIRTY_TRACKING,
        dev_id: idev,
        pt_id: ioas,
        ..HwptAlloc::default()
    };
    let (r, back) = iommufd::testing::ioctl_at(&p.ctx, &*p.mem, ARG, Cmd::HwptAlloc, &c);
    r.unwrap();
    let hwpt = back.out_hwpt_id;
    let t = HwptSetDirtyTracking {
        size: 16,
        flags: 1,
        hwpt_id: hwpt,
        reserved: 0,
    };
    iommufd::testing::ioctl_at(&p.ctx, &*p.mem, ARG, Cmd::HwptSetDirtyTracking, &t)
        .0
        .unwrap();
    // One write in the first 1 MiB leaf.
    p.mem.write(0x3000, &[1]).unwrap();
    let args = [(1, iova), (2, MB), (3, MOCK_PAGE_SIZE), (4, 0x3000)];
    assert_eq!(p.test(op::DIRTY, hwpt, &args).unwrap().args[5], 1);
    // One bit per byte of IOVA: 2 Mi bits, four chunks of the bitmap.
    let get = || {
        let c = HwptGetDirtyBitmap {
            size: 48,
            hwpt_id: hwpt,
            iova,
            length: 2 * MB,
            page_size: 1,
            data: bitmap,
            ..HwptGetDirtyBitmap::default()
        };
        let (r, _) = iommufd::testing::ioctl_at(&p.ctx, &*p.mem, ARG, Cmd::HwptGetDirtyBitmap, &c);
        r.unwrap();
        let mut b = vec![0u8; (2 * MB / 8) as usize];
        p.mem.read(bitmap, &mut b).unwrap();
        b
    };
    let b = get();
    let half = (MB / 8) as usize;
    assert!(b[..half].iter().all(|&x| x == 0xff), "the whole leaf");
    assert!(b[half..].iter().all(|&x| x == 0), "not the next one");
    p.mem.write(bitmap, &vec![0u8; 2 * half]).unwrap();
    assert!(get().iter().all(|&x| x == 0), "cleared by the read");
}

/// Access objects: pins by IOVA that count as the kernel's page pins and
/// go when an unmap takes their IOVAs, reads and writes through the IOAS
/// with its protections, and destruction with the descriptor.
#[test]
fn an_access_pins_reads_and_writes_through_the_ioas_until_unmap_or_close() {
    use iommufd::selftest::{ACCESS_CREATE_NEEDS_PIN_PAGES, ACCESS_RW_WRITE, ACCESS_WRITE};
    let platform = Selftest::new().unwrap();
    let p = Prog::new(&platform);
    let ioas = p.ctx.ioas_alloc().unwrap();
    let iova = MOCK_APERTURE_START;
    p.map(ioas, BUFFER, 4 * PAGE, iova).unwrap();
    let fd = p
        .test(
            op::CREATE_ACCESS,
            ioas,
            &[(0, u64::from(ACCESS_CREATE_NEEDS_PIN_PAGES) << 32)],
        )
        .unwrap()
        .args[0] as u32;
    assert_eq!(p.files.open(), 1);
    assert_eq!(
        p.ctx
            .ioas(ioas)
            .unwrap()
            .lock()
            .unwrap()
            .iopt
            .iova_alignment(),
        PAGE,
        "a pinning access needs whole pages"
    );
    let pin = |iova_: u64, len: u64, uptr: u64, flags: u64| {
        p.test(
            op::ACCESS_PAGES,
            fd,
            &[(0, flags), (1, iova_), (2, len), (3, uptr)],
        )
        .map(|c| (c.args[0] >> 32) as u32)
    };
    let item = pin(
        iova + PAGE,
        2 * PAGE,
        BUFFER + PAGE,
        u64::from(ACCESS_WRITE),
    )
    .unwrap();
    assert_eq!(p.check_refs(BUFFER + PAGE, 2 * PAGE, 1), Ok(()));
    assert_eq!(p.check_refs(BUFFER, PAGE, 0), Ok(()));
    // Other pages than the caller says, a hole, part of a page.
    assert_eq!(pin(iova, PAGE, BUFFER + PAGE, 0), Err(Errno::EBADE));
    assert_eq!(pin(iova + 3 * PAGE, 2 * PAGE, 0, 0), Err(Errno::ENOENT));
    assert_eq!(pin(iova + 8, PAGE, 0, 0), Err(Errno::EINVAL));
    // The pin goes with its item, and with an unmap of its IOVAs.
    let destroy = |item: u32| {
        p.test(op::DESTROY_ACCESS_PAGES, fd, &[(0, u64::from(item))])
            .map(|_| ())
    };
    assert_eq!(destroy(item), Ok(()));
    assert_eq!(destroy(item), Err(Errno::ENOENT));
    let item = pin(iova, PAGE, BUFFER, 0).unwrap();
    assert_eq!(p.ctx.ioas_unmap(ioas, iova, 4 * PAGE), Ok(4 * PAGE));
    assert_eq!(destroy(item), Err(Errno::ENOENT), "the unmap took it");
    assert_eq!(p.check_refs(BUFFER, 4 * PAGE, 0), Ok(()));
    // Reads and writes reach the memory behind the IOVAs.
    p.map(ioas, BUFFER, 2 * PAGE, iova).unwrap();
    p.mem.write(BUFFER + PAGE - 2, b"dma!").unwrap();
    let rw = |at: u64, len: u64, uptr: u64, flags: u64| {
        p.test(
            op::ACCESS_RW,
            fd,
            &[(0, at), (1, len), (2, uptr), (3, flags)],
        )
        .map(|_| ())
    };
    assert_eq!(rw(iova + PAGE - 2, 4, 0x3000, 0), Ok(()));
    let mut got = [0u8; 4];
    p.mem.read(0x3000, &mut got).unwrap();
    assert_eq!(&got, b"dma!", "across a page boundary");
    p.mem.write(0x3000, b"DMA").unwrap();
    assert_eq!(rw(iova + 10, 3, 0x3000, u64::from(ACCESS_RW_WRITE)), Ok(()));
    p.mem.read(BUFFER + 10, &mut got[..3]).unwrap();
    assert_eq!(&got[..3], b"DMA");
    assert_eq!(rw(iova + 2 * PAGE - 1, 2, 0x3000, 0), Err(Errno::ENOENT));
    assert_eq!(rw(iova, 0, 0x3000, 0), Err(Errno::EINVAL));
    // A read-only area refuses writes (EPERM).
    let ro = iommufd::uapi::IoasMap {
        size: 40,
        flags: ioas_map::FIXED_IOVA | ioas_map::READABLE,
        ioas_id: ioas,
        user_va: BUFFER + 4 * PAGE,
        length: PAGE,
        iova: iova + 8 * PAGE,
        ..IoasMap::default()
    };
    p.ctx.ioas_map(&ro).unwrap();
    assert_eq!(
        rw(iova + 8 * PAGE, 1, 0x3000, u64::from(ACCESS_RW_WRITE)),
        Err(Errno::EPERM)
    );
    assert_eq!(
        pin(iova + 8 * PAGE, PAGE, 0, u64::from(ACCESS_WRITE)),
        Err(Errno::EPERM)
    );
    // The access holds its IOAS; its descriptor's close destroys it.
    assert_eq!(p.ctx.destroy(ioas), Err(Errno::EBUSY));
    assert_eq!(
        p.test(op::ACCESS_RW, 7, &[(0, iova), (1, 1), (2, 0x3000)])
            .err(),
        Some(Errno::EBADFD)
    );
    p.files.close(fd as i32).unwrap();
    assert_eq!(p.ctx.destroy(ioas), Ok(()));
    assert_eq!(
        p.ctx.ids(),
        Vec::<u32>::new(),
        "the access object went with it"
    );
}

/// The VFIO container ioctls on the compat IOAS.
#[test]
fn vfio_type1_maps_unmaps_and_cuts_on_the_compat_ioas() {
    use iommufd::vfio::*;
    let platform = Selftest::new().unwrap();
    let p = Prog::new(&platform);
    let v = |num, arg| p.ctx.vfio_ioctl(num, arg, &*p.mem);
    assert_eq!(p.ctx.ioctl_value(GET_API_VERSION, 0, &*p.mem), Ok(0));
    assert_eq!(v(CHECK_EXTENSION, TYPE1V2_IOMMU), Ok(1));
    assert_eq!(v(CHECK_EXTENSION, 77), Ok(0));
    assert_eq!(
        v(SET_IOMMU, TYPE1V2_IOMMU),
        Err(Errno::ENODEV),
        "no compat IOAS"
    );
    assert_eq!(
        p.ctx.ioctl_value(0x3b00 | 99, 0, &*p.mem),
        Err(Errno::ENOTTY)
    );
    let ioas = p.ctx.ioas_alloc().unwrap();
    p.mock_domain(ioas).unwrap();
    let set = iommufd::uapi::VfioIoas {
        size: 12,
        ioas_id: ioas,
        op: vfio_ioas::SET,
        reserved: 0,
    };
    let (r, _) = iommufd::testing::ioctl_at(&p.ctx, &*p.mem, ARG, Cmd::VfioIoas, &set);
    r.unwrap();
    assert_eq!(v(SET_IOMMU, TYPE1_IOMMU), Ok(0));
    assert!(
        !p.ctx.ioas(ioas).unwrap().lock().unwrap().huge_pages(),
        "type1 cuts anywhere"
    );
    // struct vfio_iommu_type1_dma_map at 0x3000: argsz, flags, vaddr, iova, size
    let iova = MOCK_APERTURE_START;
    let mut map = [0u8; 32];
    map[0..4].copy_from_slice(&32u32.to_ne_bytes());
    map[4..8].copy_from_slice(&3u32.to_ne_bytes());
    map[8..16].copy_from_slice(&BUFFER.to_ne_bytes());
    map[16..24].copy_from_slice(&iova.to_ne_bytes());
    map[24..32].copy_from_slice(&(4 * PAGE).to_ne_bytes());
    p.mem.write(0x3000, &map).unwrap();
    assert_eq!(v(IOMMU_MAP_DMA, 0x3000), Ok(0));
    // Unmap one page in the middle: type1 cuts the mapping.
    let unmap = |at: u64, size: u64, flags: u32| {
        let mut u = [0u8; 24];
        u[0..4].copy_from_slice(&24u32.to_ne_bytes());
        u[4..8].copy_from_slice(&flags.to_ne_bytes());
        u[8..16].copy_from_slice(&at.to_ne_bytes());
        u[16..24].copy_from_slice(&size.to_ne_bytes());
        p.mem.write(0x3100, &u).unwrap();
        let r = v(IOMMU_UNMAP_DMA, 0x3100);
        let mut back = [0u8; 8];
        p.mem.read(0x3110, &mut back).unwrap();
        r.map(|_| u64::from_ne_bytes(back))
    };
    assert_eq!(unmap(iova + PAGE, PAGE, 0), Ok(PAGE));
    assert_eq!(unmap(iova + PAGE, PAGE, 0), Ok(0), "nothing there: success");
    assert_eq!(
        unmap(iova, 1, 2),
        Err(Errno::EINVAL),
        "UNMAP_ALL takes no range"
    );
    assert_eq!(unmap(0, 0, 2), Ok(3 * PAGE));
    // GET_INFO: page sizes, and the caps' size when there is no room.
    let mut info = [0u8; 24];
    info[0..4].copy_from_slice(&24u32.to_ne_bytes());
    p.mem.write(0x3200, &info).unwrap();
    assert_eq!(v(IOMMU_GET_INFO, 0x3200), Ok(0));
    p.mem.read(0x3200, &mut info).unwrap();
    let argsz = u32::from_ne_bytes(info[0..4].try_into().unwrap());
    let pgsizes = u64::from_ne_bytes(info[8..16].try_into().unwrap());
    assert_eq!(argsz, 24 + 16 + 32, "DMA avail, then one IOVA range");
    assert_eq!(pgsizes & (PAGE - 1), 0);
    assert_ne!(pgsizes & PAGE, 0);
    // The IOAS goes: there is no compat IOAS any more.
    let clear = iommufd::uapi::VfioIoas {
        op: vfio_ioas::CLEAR,
        ..set
    };
    iommufd::testing::ioctl_at(&p.ctx, &*p.mem, ARG, Cmd::VfioIoas, &clear)
        .0
        .unwrap();
    assert_eq!(v(IOMMU_MAP_DMA, 0x3000), Err(Errno::ENODEV));
}

/// The selftest's dma-buf: mapped by descriptor, within its size; a
/// revoke takes it out of every domain and refuses new maps (`ENODEV`)
/// until it is given back.
#[test]
fn a_dmabuf_maps_by_descriptor_and_a_revoke_takes_it_from_the_domains() {
    use iommufd::uapi::IoasMapFile;
    let platform = Selftest::new().unwrap();
    let p = Prog::new(&platform);
    let ioas = p.ctx.ioas_alloc().unwrap();
    let (_, hwpt, _) = p.mock_domain(ioas).unwrap();
    let fd = {
        use zerocopy::IntoBytes;
        let mut c = TestCmd {
            size: 72,
            op: op::DMABUF_GET,
            ..TestCmd::default()
        };
        c.args[0] = 4 * PAGE;
        p.mem.write(ARG, c.as_bytes()).unwrap();
        p.ctx
            .ioctl_value(Cmd::TestCmd.ioctl(), ARG, &*p.mem)
            .unwrap()
    };
    assert!(fd >= 100, "a descriptor, as the ioctl's value");
    assert_eq!(p.files.open(), 1);
    let map = |start: u64, length: u64, iova: Option<u64>| {
        let c = IoasMapFile {
            size: 40,
            flags: ioas_map::READABLE
                | ioas_map::WRITEABLE
                | iova.map_or(0, |_| ioas_map::FIXED_IOVA),
            ioas_id: ioas,
            fd,
            start,
            length,
            iova: iova.unwrap_or(0),
        };
        p.ctx.ioas_map_file(&c, &*p.mem)
    };
    assert_eq!(map(0, 0, None), Err(Errno::EINVAL));
    assert_eq!(map(4 * PAGE, 4 * PAGE, None), Err(Errno::EINVAL));
    assert_eq!(map(0, 4 * PAGE + 1, None), Err(Errno::EINVAL));
    let iova = map(0, 4 * PAGE, None).unwrap();
    let d = p.ctx.hwpt(hwpt).unwrap().domain.clone();
    assert!(d.iova_to_phys(iommu_core::Iova::new(iova)).is_some());
    // A copy shares the dma-buf's pages with a second IOAS and its domain.
    let other = p.ctx.ioas_alloc().unwrap();
    let (_, other_hwpt, _) = p.mock_domain(other).unwrap();
    let copy = iommufd::uapi::IoasCopy {
        size: 40,
        flags: ioas_map::READABLE | ioas_map::FIXED_IOVA,
        dst_ioas_id: other,
        src_ioas_id: ioas,
        length: 4 * PAGE,
        dst_iova: iova,
        src_iova: iova,
    };
    p.ctx.ioas_copy(&copy).unwrap();
    let od = p.ctx.hwpt(other_hwpt).unwrap().domain.clone();
    assert!(od.iova_to_phys(iommu_core::Iova::new(iova)).is_some());
    // Revoked: gone from the domain, no new maps.
    let revoke = |on: u64| {
        p.test(op::DMABUF_REVOKE, 0, &[(0, fd as u64 | (on << 32))])
            .map(|_| ())
    };
    assert_eq!(revoke(1), Ok(()));
    assert!(d.iova_to_phys(iommu_core::Iova::new(iova)).is_none());
    assert!(
        od.iova_to_phys(iommu_core::Iova::new(iova)).is_none(),
        "the copy's domain lets go too"
    );
    assert_eq!(map(0, 4 * PAGE, None), Err(Errno::ENODEV));
    assert_eq!(revoke(0), Ok(()));
    let again = map(0, 4 * PAGE, None).unwrap();
    assert!(d.iova_to_phys(iommu_core::Iova::new(again)).is_some());
    // The revoked area stays out; unmapping it is fine; its IOVA maps again.
    assert_eq!(p.ctx.ioas_unmap(ioas, iova, 4 * PAGE), Ok(4 * PAGE));
    assert_eq!(map(0, 4 * PAGE, Some(iova)), Ok(iova));
    // Not a descriptor of ours: an ordinary file, which this memory has not.
    let c = IoasMapFile {
        size: 40,
        flags: ioas_map::READABLE,
        ioas_id: ioas,
        fd: 3,
        length: PAGE,
        ..IoasMapFile::default()
    };
    assert_eq!(p.ctx.ioas_map_file(&c, &*p.mem), Err(Errno::EBADF));
    assert_eq!(
        p.test(op::DMABUF_GET, 0, &[(0, 513 * PAGE)]).err(),
        Some(Errno::EINVAL)
    );
}

/// Deterministic object-lifetime sequences, also the seed corpus of the
/// `iommufd_selftest` fuzz target: every paging HWPT maps exactly its
/// IOAS's areas after every step, and nothing is left at the end.
#[test]
fn seed_object_lifetime_sequences_keep_domains_exact_and_leave_nothing() {
    // By hand first: a dma-buf mapped under a mock domain, then revoked
    // (the domain must drop it); an access pinning, then an unmap.
    let revoke: &[[u8; 8]] = &[
        [0, 0, 0, 0, 0, 0, 0, 0],
        [5, 0, 0, 0, 0, 0, 0, 0x40],
        [18, 0, 0, 0, 0, 0, 0, 0],
        [18, 2, 0, 0, 0, 0, 0, 0x40],
        [18, 1, 0, 1, 0, 0, 0, 0],
        [18, 1, 0, 0, 0, 0, 0, 0],
        [18, 2, 0, 0, 1, 0, 0, 0x40],
    ];
    let pin: &[[u8; 8]] = &[
        [0, 0, 0, 0, 0, 0, 0, 0],
        [2, 0, 0, 0, 0, 0, 0, 0x40],
        [8, 0, 1, 0, 0, 0, 0, 0x40],
        [9, 0, 0, 0, 0, 0, 0, 0],
        [5, 0, 0, 0, 0, 0, 0, 0x40],
        [12, 0, 0, 8, 0, 0, 0, 0],
        [3, 0, 0, 0, 0, 0, 0, 0x40],
        [10, 0, 0, 0, 0, 0, 0, 0],
    ];
    for (n, seq) in [revoke, pin].into_iter().enumerate() {
        let bytes: Vec<u8> = seq.iter().flatten().copied().collect();
        iommufd::testing::selftest_ops(&bytes);
        if let Some(dir) = std::env::var_os("IOMMU_FUZZ_SEEDS") {
            let dir = std::path::Path::new(&dir).join("iommufd_selftest");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("hand{n}")), &bytes).unwrap();
        }
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut total = [0usize; 20];
    for n in 0..48 {
        // Setup first (IOASes, maps, mock devices), then anything.
        let mut bytes: Vec<u8> = [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
            .into_iter()
            .chain([2, 1, 3, 3, 0, 0, 5, 0, 5, 1, 0, 0, 0, 0, 0, 0])
            .collect();
        bytes.extend((0..200 + n * 30).map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        }));
        let done = iommufd::testing::selftest_ops(&bytes);
        for (t, d) in total.iter_mut().zip(done) {
            *t += d;
        }
        if let Some(dir) = std::env::var_os("IOMMU_FUZZ_SEEDS") {
            let dir = std::path::Path::new(&dir).join("iommufd_selftest");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seq{n:02}")), &bytes).unwrap();
        }
    }
    println!("successes by command kind: {total:?}");
    assert!(
        total.iter().all(|&n| n > 0),
        "every kind succeeded somewhere: {total:?}"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(128))]
    /// Any sequence of object commands keeps every domain exactly its
    /// IOAS and leaves nothing behind.
    #[test]
    fn object_lifetime_sequences_keep_domains_exact(
        data in proptest::collection::vec(proptest::num::u8::ANY, 0..960)
    ) {
        iommufd::testing::selftest_ops(&data);
    }
}

/// `IOMMU_HWPT_ALLOC` through the ioctl entry, with driver data.
fn hwpt_alloc(
    p: &Prog,
    dev: u32,
    pt: u32,
    flags: u32,
    fault: u32,
    data: Option<&[u8]>,
) -> Result<u32, Errno> {
    use iommufd::uapi::HwptAlloc;
    const DATA: u64 = 0x3800;
    if let Some(d) = data {
        p.mem.write(DATA, d).unwrap();
    }
    let c = HwptAlloc {
        size: core::mem::size_of::<HwptAlloc>() as u32,
        flags,
        dev_id: dev,
        pt_id: pt,
        data_type: if data.is_some() {
            iommufd::selftest::HWPT_DATA_SELFTEST
        } else {
            0
        },
        data_len: data.map_or(0, |d| d.len() as u32),
        data_uptr: DATA,
        fault_id: fault,
        ..HwptAlloc::default()
    };
    let (r, back) = iommufd::testing::ioctl_at(&p.ctx, &*p.mem, ARG, Cmd::HwptAlloc, &c);
    r.map(|()| back.out_hwpt_id)
}

/// `IOMMU_HWPT_INVALIDATE` of `entries` (each `len` bytes): the count
/// handled and the result.
fn invalidate(p: &Prog, id: u32, ty: u32, len: u32, entries: &[u8]) -> (u32, Result<(), Errno>) {
    use iommufd::uapi::HwptInvalidate;
    const DATA: u64 = 0x3900;
    p.mem.write(DATA, entries).unwrap();
    let c = HwptInvalidate {
        size: 32,
        hwpt_id: id,
        data_uptr: DATA,
        data_type: ty,
        entry_len: len,
        entry_num: (entries.len() as u32).checked_div(len).unwrap_or(1),
        ..HwptInvalidate::default()
    };
    let (r, back) = iommufd::testing::ioctl_at(&p.ctx, &*p.mem, ARG, Cmd::HwptInvalidate, &c);
    (back.entry_num, r)
}

/// Nested HWPTs over a nest-parent HWPT (no vIOMMU): the mock's IOTLB
/// values, the guest's invalidations with Linux's entry rules and
/// partial counts, and the parent held.
#[test]
fn nested_hwpts_over_a_parent_take_the_guests_invalidations() {
    use iommufd::selftest::{HWPT_INVALIDATE_DATA_SELFTEST, INVALIDATE_FLAG_ALL};
    use iommufd::uapi::hwpt_alloc::{FAULT_ID_VALID, NEST_PARENT};
    let platform = Selftest::new().unwrap();
    let p = Prog::new(&platform);
    let ioas = p.ctx.ioas_alloc().unwrap();
    let (_, _, idev) = p.mock_domain(ioas).unwrap();
    let parent = hwpt_alloc(&p, idev, ioas, NEST_PARENT, 0, None).unwrap();
    let plain = hwpt_alloc(&p, idev, ioas, 0, 0, None).unwrap();
    let data = 0xbadbeefu32.to_ne_bytes();
    assert_eq!(
        hwpt_alloc(&p, idev, plain, 0, 0, Some(&data)),
        Err(Errno::EINVAL),
        "not a nest parent"
    );
    assert_eq!(
        hwpt_alloc(&p, idev, parent, NEST_PARENT, 0, Some(&data)),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        hwpt_alloc(&p, idev, parent, 0, 0, Some(&data[..3])),
        Err(Errno::EINVAL),
        "short"
    );
    assert_eq!(
        hwpt_alloc(&p, idev, parent, FAULT_ID_VALID, 77, Some(&data)),
        Err(Errno::ENOENT)
    );
    let nested = hwpt_alloc(&p, idev, parent, 0, 0, Some(&data)).unwrap();
    let iotlb = |i: u64, v: u64| {
        p.test(op::MD_CHECK_IOTLB, nested, &[(0, i | (v << 32))])
            .map(|_| ())
    };
    for i in 0..4 {
        assert_eq!(iotlb(i, 0xbadbeef), Ok(()));
    }
    assert_eq!(
        p.ctx.destroy(parent),
        Err(Errno::EBUSY),
        "the nested HWPT holds it"
    );
    // struct iommu_hwpt_invalidate_selftest { flags, iotlb_id }
    let entry = |flags: u32, id: u32| [flags.to_ne_bytes(), id.to_ne_bytes()].concat();
    let two = [entry(0, 1), entry(0, 9)].concat();
    assert_eq!(
        invalidate(&p, nested, HWPT_INVALIDATE_DATA_SELFTEST, 8, &two),
        (1, Err(Errno::EINVAL))
    );
    assert_eq!(iotlb(1, 0), Ok(()), "the first was done");
    assert_eq!(iotlb(2, 0xbadbeef), Ok(()));
    assert_eq!(
        invalidate(&p, nested, 0x1234, 8, &entry(0, 0)),
        (0, Err(Errno::EINVAL))
    );
    assert_eq!(
        invalidate(&p, nested, HWPT_INVALIDATE_DATA_SELFTEST, 8, &entry(2, 0)),
        (0, Err(Errno::EOPNOTSUPP))
    );
    assert_eq!(
        invalidate(&p, parent, HWPT_INVALIDATE_DATA_SELFTEST, 8, &entry(0, 0)),
        (0, Err(Errno::EINVAL))
    );
    assert_eq!(
        invalidate(
            &p,
            nested,
            HWPT_INVALIDATE_DATA_SELFTEST,
            8,
            &entry(INVALIDATE_FLAG_ALL, 0)
        ),
        (1, Ok(()))
    );
    for i in 0..4 {
        assert_eq!(iotlb(i, 0), Ok(()));
    }
    p.ctx.destroy(nested).unwrap();
    p.ctx.destroy(parent).unwrap();
}

/// A mock vIOMMU: its data answered, vDEVICEs (attach to its nested
/// HWPT needs one), the device caches its invalidations clear, a vEVENTQ
/// with Linux's depth, overflow and read rules, fault queues read and
/// answered, and a vDEVICE left a tombstone by its device's destruction.
#[test]
fn a_mock_viommu_invalidates_reports_events_and_faults() {
    use iommufd::eventq::{PAGE_RESP_SUCCESS, VEVENTQ_FLAG_LOST_EVENTS};
    use iommufd::selftest::{VEVENTQ_TYPE_SELFTEST, VIOMMU_TYPE_SELFTEST};
    use iommufd::uapi::hwpt_alloc::{FAULT_ID_VALID, NEST_PARENT};
    use iommufd::uapi::{FaultAlloc, VeventqAlloc, ViommuAlloc};
    let platform = Selftest::new().unwrap();
    let p = Prog::new(&platform);
    let ioas = p.ctx.ioas_alloc().unwrap();
    let (stdev, _, idev) = p.mock_domain(ioas).unwrap();
    let parent = hwpt_alloc(&p, idev, ioas, NEST_PARENT, 0, None).unwrap();
    p.mem
        .write(0x3a00, &[0xef, 0xbe, 0, 0, 0, 0, 0, 0])
        .unwrap();
    let c = ViommuAlloc {
        size: core::mem::size_of::<ViommuAlloc>() as u32,
        r#type: VIOMMU_TYPE_SELFTEST,
        dev_id: idev,
        hwpt_id: parent,
        data_uptr: 0x3a00,
        data_len: 24,
        ..ViommuAlloc::default()
    };
    let (r, back) = iommufd::testing::ioctl_at(&p.ctx, &*p.mem, ARG, Cmd::ViommuAlloc, &c);
    r.unwrap();
    let viommu = back.out_viommu_id;
    let mut reply = [0u8; 8];
    p.mem.read(0x3a00, &mut reply).unwrap();
    assert_eq!(
        reply,
        [0xef, 0xbe, 0, 0, 0xef, 0xbe, 0, 0],
        "out_data is in_data"
    );
    let nested = hwpt_alloc(&p, idev, viommu, 0, 0, Some(&0u32.to_ne_bytes())).unwrap();
    let replace = |pt: u32| {
        p.test(op::MOCK_DOMAIN_REPLACE, stdev, &[(0, u64::from(pt))])
            .map(|_| ())
    };
    assert_eq!(replace(nested), Err(Errno::ENOENT), "no vDEVICE yet");
    let vdev = p.ctx.vdevice_alloc(viommu, idev, 0x99).unwrap();
    // The vEVENTQ: depth bounds, one per type.
    let veventq = |depth: u32| {
        let c = VeventqAlloc {
            size: 32,
            viommu_id: viommu,
            r#type: VEVENTQ_TYPE_SELFTEST,
            veventq_depth: depth,
            ..VeventqAlloc::default()
        };
        let (r, back) = iommufd::testing::ioctl_at(&p.ctx, &*p.mem, ARG, Cmd::VeventqAlloc, &c);
        r.map(|()| (back.out_veventq_id, back.out_veventq_fd as i32))
    };
    assert_eq!(veventq(0).err(), Some(Errno::EINVAL));
    assert_eq!(veventq((1 << 19) + 1).err(), Some(Errno::EINVAL));
    let (qid, qfd) = veventq(2).unwrap();
    assert_eq!(veventq(2).err(), Some(Errno::EEXIST));
    let trigger = || {
        p.test(op::TRIGGER_VEVENT, 0, &[(0, u64::from(idev))])
            .map(|_| ())
    };
    assert_eq!(
        trigger(),
        Err(Errno::ENOENT),
        "not attached through the vIOMMU"
    );
    replace(nested).unwrap();
    let q = p.files.clone();
    let read = |n: usize| iommufd::ctx::FileTable::get(&*q, qfd).unwrap().read(n);
    assert_eq!(read(7).err(), Some(Errno::EINVAL), "below a header");
    for _ in 0..3 {
        trigger().unwrap();
    }
    assert_eq!(
        read(8).err(),
        Some(Errno::EINVAL),
        "the first event does not fit"
    );
    let got = read(64).unwrap();
    let words: Vec<u32> = got
        .chunks_exact(4)
        .map(|w| u32::from_ne_bytes(w.try_into().unwrap()))
        .collect();
    // Two events (flags, sequence, virt_id), then the lost-events header.
    assert_eq!(
        words,
        vec![0, 0, 0x99, 0, 1, 0x99, VEVENTQ_FLAG_LOST_EVENTS, 2]
    );
    trigger().unwrap();
    assert_eq!(
        read(12).unwrap(),
        [0u32, 3, 0x99]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect::<Vec<_>>()
    );
    assert_eq!(p.ctx.destroy(viommu), Err(Errno::EBUSY));
    // Fault queue: an IOPF-capable nested HWPT, a fault read and answered.
    let c = FaultAlloc {
        size: 16,
        ..FaultAlloc::default()
    };
    let (r, back) = iommufd::testing::ioctl_at(&p.ctx, &*p.mem, ARG, Cmd::FaultQueueAlloc, &c);
    r.unwrap();
    let (fault, ffd) = (back.out_fault_id, back.out_fault_fd as i32);
    let iopf = hwpt_alloc(
        &p,
        idev,
        viommu,
        FAULT_ID_VALID,
        fault,
        Some(&0u32.to_ne_bytes()),
    )
    .unwrap();
    replace(iopf).unwrap();
    p.test(
        op::TRIGGER_IOPF,
        0,
        &[
            (0, u64::from(idev) | (1 << 32)),
            (1, 2 | (3 << 32)),
            (2, 0xdeadbeaf),
        ],
    )
    .unwrap();
    let f = iommufd::ctx::FileTable::get(&*p.files, ffd).unwrap();
    assert_eq!(f.read(41).err(), Some(Errno::ESPIPE));
    let rec = f.read(40).unwrap();
    let w = |i: usize| u32::from_ne_bytes(rec[i * 4..i * 4 + 4].try_into().unwrap());
    // flags (PASID_VALID | LAST_PAGE), dev_id, pasid, grpid, perm
    assert_eq!((w(0), w(1), w(2), w(3), w(4)), (3, idev, 1, 2, 3));
    assert_eq!(
        u64::from_ne_bytes(rec[24..32].try_into().unwrap()),
        0xdeadbeaf
    );
    let cookie = w(9);
    let resp = |cookie: u32, code: u32| [cookie.to_ne_bytes(), code.to_ne_bytes()].concat();
    assert_eq!(
        f.write(&resp(cookie + 1, PAGE_RESP_SUCCESS)),
        Err(Errno::EINVAL)
    );
    assert_eq!(f.write(&resp(cookie, 7)), Err(Errno::EINVAL));
    assert_eq!(f.write(&resp(cookie, PAGE_RESP_SUCCESS)), Ok(8));
    assert_eq!(p.ctx.destroy(fault), Err(Errno::EBUSY), "the HWPT holds it");
    replace(ioas).unwrap();
    p.ctx.destroy(iopf).unwrap();
    p.ctx.destroy(fault).unwrap();
    // The device goes: its vDEVICE is a tombstone (ENOENT, once).
    p.files.close(qfd).unwrap();
    p.ctx.destroy(qid).unwrap();
    p.ctx.destroy(stdev).unwrap();
    assert_eq!(p.ctx.destroy(vdev), Err(Errno::ENOENT));
    assert_eq!(p.ctx.destroy(vdev), Err(Errno::ENOENT));
}

/// PASID attach, replace and detach with Linux's rules: HWPTs made for
/// PASIDs only, beside a device attachment that is one too, on devices
/// that have PASIDs; an attached PASID is replaced, not attached again; a
/// failed replace (the mock fails every other set of PASID 1024) leaves
/// the PASID where it was.
#[test]
fn pasids_attach_replace_and_detach_with_linuxs_rules() {
    use iommufd::selftest::DEVICE_PASID;
    use iommufd::uapi::hwpt_alloc::PASID;
    let platform = Selftest::new().unwrap();
    let p = Prog::new(&platform);
    let ioas = p.ctx.ioas_alloc().unwrap();
    let c = p
        .test(
            op::MOCK_DOMAIN_FLAGS,
            ioas,
            &[(1, u64::from(DEVICE_PASID) << 32)],
        )
        .unwrap();
    let (stdev, idev) = (c.args[0] as u32, c.args[1] as u32);
    let plain = hwpt_alloc(&p, idev, ioas, 0, 0, None).unwrap();
    let s2 = hwpt_alloc(&p, idev, ioas, PASID, 0, None).unwrap();
    let s2b = hwpt_alloc(&p, idev, ioas, PASID, 0, None).unwrap();
    let attach = |pasid: u64, pt: u32| {
        p.test(
            op::PASID_ATTACH,
            stdev,
            &[(0, pasid | (u64::from(pt) << 32))],
        )
        .map(|_| ())
    };
    let replace = |pasid: u64, pt: u32| {
        p.test(
            op::PASID_REPLACE,
            stdev,
            &[(0, pasid | (u64::from(pt) << 32))],
        )
        .map(|_| ())
    };
    let check = |pasid: u64, pt: u32| {
        p.test(
            op::PASID_CHECK_HWPT,
            stdev,
            &[(0, pasid | (u64::from(pt) << 32))],
        )
        .map(|_| ())
    };
    // The device's own attachment (an automatic HWPT) is not for PASIDs.
    assert_eq!(attach(100, s2), Err(Errno::EINVAL));
    p.test(op::MOCK_DOMAIN_REPLACE, stdev, &[(0, u64::from(s2))])
        .unwrap();
    assert_eq!(
        attach(100, plain),
        Err(Errno::EINVAL),
        "not made for PASIDs"
    );
    assert_eq!(attach(100, ioas), Err(Errno::EINVAL), "no automatic HWPT");
    assert_eq!(
        attach(1 << 20, s2),
        Err(Errno::EINVAL),
        "beyond the device's PASIDs"
    );
    assert_eq!(attach(100, s2), Ok(()));
    assert_eq!(check(100, s2), Ok(()));
    assert_eq!(attach(100, s2b), Err(Errno::EBUSY));
    // The device's own attachment must stay one for PASIDs now.
    assert_eq!(
        p.test(op::MOCK_DOMAIN_REPLACE, stdev, &[(0, u64::from(plain))])
            .err(),
        Some(Errno::EINVAL)
    );
    assert_eq!(replace(200, s2b), Err(Errno::EINVAL), "not attached");
    assert_eq!(replace(100, s2b), Ok(()));
    assert_eq!(check(100, s2b), Ok(()));
    assert_eq!(p.ctx.destroy(s2b), Err(Errno::EBUSY), "the PASID holds it");
    assert_eq!(
        p.test(op::PASID_DETACH, stdev, &[(0, 100)]).map(|_| ()),
        Ok(())
    );
    assert_eq!(check(100, 0), Ok(()), "detached");
    // The mock fails the second set of PASID 1024: the replace fails and
    // the PASID stays.
    assert_eq!(attach(1024, s2), Ok(()));
    assert_eq!(replace(1024, s2b), Err(Errno::ENOMEM));
    assert_eq!(check(1024, s2), Ok(()));
    // A device without PASIDs cannot attach one, whatever the HWPT.
    let other = p.mock_domain(ioas).unwrap();
    assert_eq!(
        p.test(
            op::PASID_ATTACH,
            other.0,
            &[(0, 100 | (u64::from(s2) << 32))]
        )
        .err(),
        Some(Errno::EINVAL)
    );
    // Its device's destruction detaches the PASIDs.
    p.ctx.destroy(stdev).unwrap();
    p.ctx.destroy(s2).unwrap();
}

/// HW queues: guest memory pinned in the parent's IOAS while the queue
/// lives (its unmap is `EBUSY`), indexes in the driver's order, and a
/// queue that another depends on destroyed last.
#[test]
fn hw_queues_pin_their_memory_and_go_in_order() {
    use iommufd::selftest::{HW_QUEUE_TYPE_SELFTEST, VIOMMU_TYPE_SELFTEST};
    use iommufd::uapi::hwpt_alloc::NEST_PARENT;
    use iommufd::uapi::HwQueueAlloc;
    let platform = Selftest::new().unwrap();
    let p = Prog::new(&platform);
    let ioas = p.ctx.ioas_alloc().unwrap();
    let (_, _, idev) = p.mock_domain(ioas).unwrap();
    let parent = hwpt_alloc(&p, idev, ioas, NEST_PARENT, 0, None).unwrap();
    let viommu = p
        .ctx
        .viommu_alloc(idev, parent, VIOMMU_TYPE_SELFTEST, None)
        .unwrap();
    let queue = |ty: u32, index: u32, iova: u64, length: u64| {
        let c = HwQueueAlloc {
            size: 40,
            viommu_id: viommu,
            r#type: ty,
            index,
            nesting_parent_iova: iova,
            length,
            ..HwQueueAlloc::default()
        };
        let (r, back) = iommufd::testing::ioctl_at(&p.ctx, &*p.mem, ARG, Cmd::HwQueueAlloc, &c);
        r.map(|()| back.out_hw_queue_id)
    };
    let iova = MOCK_APERTURE_START;
    assert_eq!(queue(0, 0, iova, PAGE), Err(Errno::EOPNOTSUPP));
    assert_eq!(
        queue(HW_QUEUE_TYPE_SELFTEST, 0, iova, 0),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        queue(HW_QUEUE_TYPE_SELFTEST, 0, u64::MAX, PAGE),
        Err(Errno::EOVERFLOW)
    );
    assert_eq!(
        queue(HW_QUEUE_TYPE_SELFTEST, 0, iova, PAGE),
        Err(Errno::ENOENT),
        "not mapped"
    );
    p.map(ioas, BUFFER, 2 * PAGE, iova).unwrap();
    assert_eq!(
        queue(HW_QUEUE_TYPE_SELFTEST, 1, iova, PAGE),
        Err(Errno::EIO),
        "index 0 first"
    );
    assert_eq!(
        queue(HW_QUEUE_TYPE_SELFTEST, 2, iova, PAGE),
        Err(Errno::EINVAL)
    );
    let q0 = queue(HW_QUEUE_TYPE_SELFTEST, 0, iova, PAGE).unwrap();
    assert_eq!(
        queue(HW_QUEUE_TYPE_SELFTEST, 0, iova, PAGE),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        p.ctx.ioas_unmap(ioas, iova, 2 * PAGE),
        Err(Errno::EBUSY),
        "pinned by the queue"
    );
    let q1 = queue(HW_QUEUE_TYPE_SELFTEST, 1, iova + PAGE / 2, PAGE / 2).unwrap();
    assert_eq!(p.ctx.destroy(q0), Err(Errno::EBUSY), "q1 depends on it");
    assert_eq!(p.ctx.destroy(viommu), Err(Errno::EBUSY));
    p.ctx.destroy(q1).unwrap();
    p.ctx.destroy(q0).unwrap();
    assert_eq!(p.ctx.ioas_unmap(ioas, iova, 2 * PAGE), Ok(2 * PAGE));
    p.ctx.destroy(viommu).unwrap();
}

/// A vIOMMU's pages mapped through the context: only at the offset and
/// length the driver gave (`ENXIO` otherwise), holding the vIOMMU while
/// mapped.
#[test]
fn a_viommus_pages_map_at_their_offset_and_hold_it() {
    use iommufd::selftest::VIOMMU_TYPE_SELFTEST;
    use iommufd::uapi::hwpt_alloc::NEST_PARENT;
    let platform = Selftest::new().unwrap();
    let p = Prog::new(&platform);
    let ioas = p.ctx.ioas_alloc().unwrap();
    let (_, _, idev) = p.mock_domain(ioas).unwrap();
    let parent = hwpt_alloc(&p, idev, ioas, NEST_PARENT, 0, None).unwrap();
    let data = [
        0xbeefu32.to_ne_bytes(),
        [0; 4],
        [0; 4],
        [0; 4],
        [0; 4],
        [0; 4],
    ]
    .concat();
    let ud = iommu_core::UserData {
        ty: VIOMMU_TYPE_SELFTEST,
        data: &data,
    };
    let viommu = p
        .ctx
        .viommu_alloc(idev, parent, VIOMMU_TYPE_SELFTEST, Some(&ud))
        .unwrap();
    let (offset, length) = p
        .ctx
        .viommu(viommu)
        .unwrap()
        .viommu
        .ops()
        .mmap_region()
        .map(|(o, b)| (o, b.len() as u64))
        .unwrap();
    assert_eq!(p.ctx.mmap(offset + PAGE, length).err(), Some(Errno::ENXIO));
    assert_eq!(p.ctx.mmap(offset, length / 2).err(), Some(Errno::ENXIO));
    let (bytes, hold) = p.ctx.mmap(offset, length).unwrap();
    assert_eq!(&bytes[..4], &0xbeefu32.to_ne_bytes(), "the loopback word");
    assert_eq!(p.ctx.destroy(viommu), Err(Errno::EBUSY), "mapped");
    drop(hold);
    assert_eq!(p.ctx.destroy(viommu), Ok(()));
}

/// Pinned pages are bounded by the limit the embedder gives (the
/// caller's `RLIMIT_MEMLOCK`): each pages object counted once while a
/// domain or an access holds it; a map, attach, copy or pin past the
/// limit is `ENOMEM` and changes nothing.
#[test]
fn pinned_pages_stay_within_the_limit() {
    use iommufd::selftest::ACCESS_CREATE_NEEDS_PIN_PAGES;
    let platform = Selftest::new().unwrap();
    let p = Prog::new(&platform);
    p.ctx.set_pin_limit(Some(6));
    let ioas = p.ctx.ioas_alloc().unwrap();
    let iova = MOCK_APERTURE_START;
    // No domain: maps pin nothing.
    p.map(ioas, BUFFER, 8 * PAGE, iova).unwrap();
    assert_eq!(p.ctx.pinned_pages(), 0);
    // The first domain would pin all 8: refused, and no device is left.
    assert_eq!(p.mock_domain(ioas).err(), Some(Errno::ENOMEM));
    assert_eq!(platform.bus().devices().len(), 0);
    p.ctx.ioas_unmap(ioas, iova, 8 * PAGE).unwrap();
    p.map(ioas, BUFFER, 4 * PAGE, iova).unwrap();
    let (stdev, _, _) = p.mock_domain(ioas).unwrap();
    assert_eq!(p.ctx.pinned_pages(), 4);
    assert_eq!(
        p.map(ioas, BUFFER + 4 * PAGE, 3 * PAGE, iova + 0x10_0000),
        Err(Errno::ENOMEM)
    );
    assert_eq!(p.ctx.pinned_pages(), 4, "nothing changed");
    p.map(ioas, BUFFER + 4 * PAGE, 2 * PAGE, iova + 0x10_0000)
        .unwrap();
    assert_eq!(p.ctx.pinned_pages(), 6);
    // A copy shares the pages it copies: no more pins.
    let other = p.ctx.ioas_alloc().unwrap();
    let c = iommufd::uapi::IoasCopy {
        size: 40,
        flags: ioas_map::READABLE | ioas_map::FIXED_IOVA,
        dst_ioas_id: ioas,
        src_ioas_id: ioas,
        length: PAGE,
        dst_iova: iova + 0x20_0000,
        src_iova: iova,
    };
    assert_eq!(p.ctx.ioas_copy(&c), Ok(iova + 0x20_0000));
    assert_eq!(p.ctx.pinned_pages(), 6);
    // An access's pin where no domain is: counted, and refused past it.
    p.map(other, BUFFER + 8 * PAGE, 2 * PAGE, iova).unwrap();
    let fd = p
        .test(
            op::CREATE_ACCESS,
            other,
            &[(0, u64::from(ACCESS_CREATE_NEEDS_PIN_PAGES) << 32)],
        )
        .unwrap()
        .args[0] as u32;
    assert_eq!(
        p.test(op::ACCESS_PAGES, fd, &[(1, iova), (2, PAGE)]).err(),
        Some(Errno::ENOMEM)
    );
    // Unmapping frees pins.
    p.ctx.ioas_unmap(ioas, iova + 0x10_0000, 2 * PAGE).unwrap();
    assert_eq!(p.ctx.pinned_pages(), 4);
    assert!(p
        .test(op::ACCESS_PAGES, fd, &[(1, iova), (2, PAGE)])
        .is_ok());
    assert_eq!(p.ctx.pinned_pages(), 5);
    p.files.close(fd as i32).unwrap();
    p.ctx.destroy(stdev).unwrap();
    assert_eq!(p.ctx.pinned_pages(), 0);
    p.ctx.set_pin_limit(None);
    p.map(other, BUFFER, 16 * PAGE, iova + 0x40_0000).unwrap();
}

/// `IOMMU_IOAS_CHANGE_PROCESS`: only file maps can change process.
#[test]
fn change_process_takes_file_maps_only() {
    use iommufd::uapi::IoasChangeProcess;
    let platform = Selftest::new().unwrap();
    let p = Prog::new(&platform);
    let c = IoasChangeProcess {
        size: 8,
        reserved: 0,
    };
    assert_eq!(p.ctx.change_process(&c), Ok(()), "nothing mapped");
    let ioas = p.ctx.ioas_alloc().unwrap();
    p.map(ioas, BUFFER, PAGE, MOCK_APERTURE_START).unwrap();
    assert_eq!(p.ctx.change_process(&c), Err(Errno::EINVAL));
    assert_eq!(
        p.ctx.change_process(&IoasChangeProcess {
            size: 8,
            reserved: 1
        }),
        Err(Errno::EOPNOTSUPP)
    );
    p.ctx.ioas_unmap(ioas, MOCK_APERTURE_START, PAGE).unwrap();
    assert_eq!(p.ctx.change_process(&c), Ok(()));
}
