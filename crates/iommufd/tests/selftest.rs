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
}

impl Prog {
    fn new(platform: &Arc<Selftest>) -> Self {
        let mem = Arc::new(Space::new(0x1000, 0x10_0000 + 16 * PAGE as usize));
        let ctx = Arc::new(Ictx::new());
        ctx.set_user_memory(mem.clone());
        ctx.enable_selftest(platform);
        Prog { ctx, mem }
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
