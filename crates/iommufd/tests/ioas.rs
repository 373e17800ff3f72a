//! The IOAS commands through the ioctl entry, with Linux's errnos: a
//! program's structures live in a fake address space, as they would in a
//! process, so every command is read and answered through the caller's
//! memory.

use iommufd::ctx::{Ictx, UserMemory};
use iommufd::iopt::PAGE_SIZE;
use iommufd::testing::Space;
use iommufd::uapi::*;
use iommufd::Errno;
use std::sync::Arc;
use zerocopy::{FromBytes, IntoBytes};

/// Where the program keeps its structures, and its data buffer.
const ARG: u64 = 0x1000;
const RANGES: u64 = 0x2000;
const BUFFER: u64 = 0x40_0000;

struct Prog {
    ctx: Ictx,
    mem: Space,
}

impl Prog {
    fn new() -> Self {
        Prog {
            ctx: Ictx::new(),
            mem: Space::new(0x1000, 0x8000),
        }
    }

    /// Issues `cmd` with `s` at `ARG`; returns the structure as written back.
    fn ioctl<T: IntoBytes + FromBytes + zerocopy::Immutable>(
        &self,
        cmd: Cmd,
        s: &T,
    ) -> Result<T, Errno> {
        let (r, back) = iommufd::testing::ioctl_at(&self.ctx, &self.mem, ARG, cmd, s);
        r.map(|()| back)
    }

    /// Runs `f` on IOAS `id`'s table (what no ioctl does yet: reserve).
    fn iopt<R>(&self, id: u32, f: impl FnOnce(&mut iommufd::iopt::IoPagetable) -> R) -> R {
        f(&mut self.ctx.ioas(id).unwrap().lock().unwrap().iopt)
    }

    fn ioas(&self) -> u32 {
        self.ioctl(
            Cmd::IoasAlloc,
            &IoasAlloc {
                size: 12,
                ..IoasAlloc::default()
            },
        )
        .unwrap()
        .out_ioas_id
    }

    fn map(&self, ioas: u32, va: u64, length: u64, iova: Option<u64>) -> Result<u64, Errno> {
        let flags =
            ioas_map::READABLE | ioas_map::WRITEABLE | iova.map_or(0, |_| ioas_map::FIXED_IOVA);
        self.ioctl(
            Cmd::IoasMap,
            &IoasMap {
                size: 40,
                flags,
                ioas_id: ioas,
                user_va: va,
                length,
                iova: iova.unwrap_or(0),
                ..IoasMap::default()
            },
        )
        .map(|c| c.iova)
    }

    fn unmap(&self, ioas: u32, iova: u64, length: u64) -> Result<u64, Errno> {
        self.ioctl(
            Cmd::IoasUnmap,
            &IoasUnmap {
                size: 24,
                ioas_id: ioas,
                iova,
                length,
            },
        )
        .map(|c| c.length)
    }

    fn ranges(&self, ioas: u32, room: u32) -> Result<(u32, Vec<(u64, u64)>), Errno> {
        let r = self.ioctl(
            Cmd::IoasIovaRanges,
            &IoasIovaRanges {
                size: 32,
                ioas_id: ioas,
                num_iovas: room,
                allowed_iovas: RANGES,
                ..IoasIovaRanges::default()
            },
        );
        let got = (0..room.min(8) as u64)
            .map(|i| {
                let mut b = [0u8; 16];
                self.mem.read(RANGES + 16 * i, &mut b).unwrap();
                let r = IovaRange::read_from_bytes(&b).unwrap();
                (r.start, r.last)
            })
            .collect();
        r.map(|c| (c.num_iovas, got))
    }

    fn allow(&self, ioas: u32, ranges: &[(u64, u64)]) -> Result<(), Errno> {
        for (i, &(start, last)) in ranges.iter().enumerate() {
            self.mem
                .write(RANGES + 16 * i as u64, IovaRange { start, last }.as_bytes())
                .unwrap();
        }
        self.ioctl(
            Cmd::IoasAllowIovas,
            &IoasAllowIovas {
                size: 24,
                ioas_id: ioas,
                num_iovas: ranges.len() as u32,
                allowed_iovas: RANGES,
                ..IoasAllowIovas::default()
            },
        )
        .map(|_| ())
    }
}

#[test]
fn ids_are_the_lowest_free_and_destroy_frees_them() {
    let p = Prog::new();
    assert_eq!((p.ioas(), p.ioas(), p.ioas()), (1, 2, 3));
    let destroy = |id| p.ioctl(Cmd::Destroy, &Destroy { size: 8, id }).map(|_| ());
    destroy(2).unwrap();
    assert_eq!(destroy(2), Err(Errno::ENOENT));
    assert_eq!(destroy(0), Err(Errno::ENOENT));
    assert_eq!(p.ioas(), 2, "the lowest free id again");
    // Held by something else (an operation in flight): EBUSY.
    let held = p.ctx.ioas(3).unwrap();
    assert_eq!(destroy(3), Err(Errno::EBUSY));
    drop(held);
    destroy(3).unwrap();
    assert_eq!(p.ctx.ids(), vec![1, 2]);
    // Flags: EOPNOTSUPP, and nothing allocated.
    let r = p.ioctl(
        Cmd::IoasAlloc,
        &IoasAlloc {
            size: 12,
            flags: 1,
            out_ioas_id: 0,
        },
    );
    assert_eq!(r.err(), Some(Errno::EOPNOTSUPP));
    assert_eq!(p.ctx.ids(), vec![1, 2]);
}

#[test]
fn a_map_takes_an_aligned_iova_avoiding_what_is_mapped_and_reserved() {
    let p = Prog::new();
    let ioas = p.ioas();
    // Ten 4 KiB maps: distinct, never 0, page offset kept.
    let mut iovas: Vec<u64> = (0..10)
        .map(|_| p.map(ioas, BUFFER, PAGE_SIZE, None).unwrap())
        .collect();
    assert!(iovas.iter().all(|&i| i != 0 && i % PAGE_SIZE == 0));
    iovas.sort_unstable();
    iovas.dedup();
    assert_eq!(iovas.len(), 10);
    for &i in &iovas {
        assert_eq!(p.unmap(ioas, i, PAGE_SIZE), Ok(PAGE_SIZE));
    }
    // Aligned to the length's lowest set bit, as the selftest expects.
    let mut held = Vec::new();
    for n in 1..=10u64 {
        let len = PAGE_SIZE * n;
        let iova = p.map(ioas, 1 << 31, len, None).unwrap();
        assert_eq!(iova % (1 << len.trailing_zeros()), 0, "{len:#x}");
        held.push((iova, len));
    }
    for (iova, len) in held.drain(..) {
        assert_eq!(p.unmap(ioas, iova, len), Ok(len));
    }
    // A reserved range is avoided.
    let (rs, rl) = (PAGE_SIZE * 4, PAGE_SIZE * 104 - 1);
    p.iopt(ioas, |t| t.reserve(rs, rl, 1)).unwrap();
    for n in 1..=10u64 {
        let len = PAGE_SIZE * n;
        let iova = p.map(ioas, BUFFER, len, None).unwrap();
        assert!(iova + len - 1 < rs || iova > rl, "{iova:#x}+{len:#x}");
        held.push((iova, len));
    }
    // A page offset in the user address carries over to the IOVA.
    let iova = p.map(ioas, BUFFER + 0x123, 0x100, None).unwrap();
    assert_eq!(iova % PAGE_SIZE, 0x123);
    // Fixed: over an area EEXIST, over a reserved range EINVAL.
    assert_eq!(
        p.map(ioas, BUFFER, PAGE_SIZE, Some(held[0].0)),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        p.map(ioas, BUFFER, PAGE_SIZE, Some(rs + PAGE_SIZE)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        p.map(ioas, BUFFER, PAGE_SIZE, Some(u64::MAX - 0x800)),
        Err(Errno::EOVERFLOW)
    );
}

#[test]
fn map_refuses_what_linux_refuses() {
    let p = Prog::new();
    let ioas = p.ioas();
    let base = IoasMap {
        size: 40,
        flags: ioas_map::READABLE,
        ioas_id: ioas,
        user_va: BUFFER,
        length: PAGE_SIZE,
        ..IoasMap::default()
    };
    let cases = [
        (
            IoasMap {
                flags: 1 << 3,
                ..base
            },
            Errno::EOPNOTSUPP,
        ),
        (
            IoasMap {
                reserved: 1,
                ..base
            },
            Errno::EOPNOTSUPP,
        ),
        (
            IoasMap {
                length: u64::MAX,
                ..base
            },
            Errno::EOVERFLOW,
        ),
        (
            IoasMap {
                flags: ioas_map::FIXED_IOVA,
                ..base
            },
            Errno::EINVAL,
        ),
        (
            IoasMap {
                ioas_id: 99,
                ..base
            },
            Errno::ENOENT,
        ),
        (IoasMap { length: 0, ..base }, Errno::EINVAL),
        (
            IoasMap {
                user_va: u64::MAX - 10,
                ..base
            },
            Errno::EOVERFLOW,
        ),
    ];
    for (c, e) in cases {
        assert_eq!(p.ioctl(Cmd::IoasMap, &c).err(), Some(e), "{c:?}");
    }
    assert_eq!(p.iopt(ioas, |t| t.areas().count()), 0);
    // The reply goes where the caller's structure is: a bad pointer is EFAULT.
    assert_eq!(
        p.ctx.ioctl(Cmd::IoasMap.ioctl(), 0x10, &p.mem),
        Err(Errno::EFAULT)
    );
    assert_eq!(
        p.ctx.ioctl(Cmd::HwptAlloc.ioctl() + 0x20, ARG, &p.mem),
        Err(Errno::ENOTTY)
    );
}

#[test]
fn unmap_removes_whole_areas_only() {
    let p = Prog::new();
    let ioas = p.ioas();
    for i in 0..4u64 {
        p.map(ioas, BUFFER, PAGE_SIZE * 2, Some(0x10_0000 + i * 0x2000))
            .unwrap();
    }
    // Cutting an area: ENOENT; one starting inside it too.
    assert_eq!(p.unmap(ioas, 0x10_0000, PAGE_SIZE), Err(Errno::ENOENT));
    assert_eq!(p.unmap(ioas, 0x10_1000, 0x2000), Err(Errno::ENOENT));
    // Nothing there: ENOENT; no length: EINVAL; past the end: EOVERFLOW.
    assert_eq!(p.unmap(ioas, 0x90_0000, PAGE_SIZE), Err(Errno::ENOENT));
    assert_eq!(p.unmap(ioas, 0x10_0000, 0), Err(Errno::EINVAL));
    assert_eq!(p.unmap(ioas, u64::MAX - 1, 4), Err(Errno::EOVERFLOW));
    // A range covering two whole areas and a hole.
    assert_eq!(p.unmap(ioas, 0x0f_0000, 0x1_4000), Ok(0x4000));
    // A range that covers one whole area then cuts the next: the first
    // is gone (as in Linux), the answer ENOENT.
    assert_eq!(p.unmap(ioas, 0x10_4000, 0x3000), Err(Errno::ENOENT));
    assert_eq!(p.unmap(ioas, 0x10_4000, 0x2000), Err(Errno::ENOENT));
    // Everything: iova 0, length u64::MAX.
    assert_eq!(p.unmap(ioas, 0, u64::MAX), Ok(0x2000));
    assert_eq!(p.unmap(ioas, 0, u64::MAX), Ok(0), "an empty IOAS too");
}

#[test]
fn copy_shares_the_pages_of_a_contiguous_source() {
    let p = Prog::new();
    let (a, b) = (p.ioas(), p.ioas());
    p.map(a, BUFFER, 0x2000, Some(0x10_0000)).unwrap();
    p.map(a, BUFFER + 0x8000, 0x1000, Some(0x10_2000)).unwrap();
    let copy = |src_iova, length, flags, dst_iova| {
        p.ioctl(
            Cmd::IoasCopy,
            &IoasCopy {
                size: 40,
                flags,
                dst_ioas_id: b,
                src_ioas_id: a,
                length,
                dst_iova,
                src_iova,
            },
        )
        .map(|c| c.dst_iova)
    };
    let rw = ioas_map::READABLE | ioas_map::WRITEABLE;
    // Across both areas, from the middle of the first.
    let at = copy(0x10_1000, 0x2000, rw | ioas_map::FIXED_IOVA, 0x50_0000).unwrap();
    assert_eq!(at, 0x50_0000);
    let dst = p.ctx.ioas(b).unwrap();
    let src = p.ctx.ioas(a).unwrap();
    {
        let (d, s) = (dst.lock().unwrap(), src.lock().unwrap());
        let da: Vec<_> = d.iopt.areas().cloned().collect();
        assert_eq!(da.len(), 2);
        assert_eq!(da[0].uaddr(0x50_0000), BUFFER + 0x1000);
        assert_eq!(da[1].uaddr(0x50_1000), BUFFER + 0x8000);
        let sa: Vec<_> = s.iopt.areas().cloned().collect();
        assert!(Arc::ptr_eq(&da[0].pages, &sa[0].pages), "the same pages");
    }
    // A gap in the source: ENOENT; no read or write: EINVAL.
    assert_eq!(copy(0x10_2000, 0x2000, rw, 0), Err(Errno::ENOENT));
    assert_eq!(copy(0x10_0000, 0x1000, 0, 0), Err(Errno::EINVAL));
    // Read-only source pages cannot be copied writable.
    let c = p.ctx.ioas(a).unwrap();
    c.lock()
        .unwrap()
        .iopt
        .map_user(BUFFER, 0x1000, Some(0x20_0000), iommu_types::Prot::READ)
        .unwrap();
    assert_eq!(copy(0x20_0000, 0x1000, rw, 0), Err(Errno::EPERM));
    assert!(copy(0x20_0000, 0x1000, ioas_map::READABLE, 0).is_ok());
    // Into the same IOAS.
    let same = p
        .ioctl(
            Cmd::IoasCopy,
            &IoasCopy {
                size: 40,
                flags: rw,
                dst_ioas_id: a,
                src_ioas_id: a,
                length: 0x1000,
                dst_iova: 0,
                src_iova: 0x10_0000,
            },
        )
        .unwrap();
    assert_ne!(same.dst_iova, 0x10_0000);
}

#[test]
fn iova_ranges_are_the_holes_between_reserved_ranges() {
    let p = Prog::new();
    let ioas = p.ioas();
    assert_eq!(
        p.ranges(ioas, 4),
        Ok((1, vec![(0, u64::MAX), (0, 0), (0, 0), (0, 0)]))
    );
    {
        let i = p.ctx.ioas(ioas).unwrap();
        let mut g = i.lock().unwrap();
        g.iopt.reserve(0x1000, 0x1fff, 1).unwrap();
        g.iopt.reserve(0x1800, 0x2fff, 2).unwrap();
        g.iopt.reserve(0xffff_0000, 0xffff_ffff, 1).unwrap();
    }
    let (n, got) = p.ranges(ioas, 3).unwrap();
    assert_eq!(n, 3);
    assert_eq!(
        got,
        vec![(0, 0xfff), (0x3000, 0xfffe_ffff), (0x1_0000_0000, u64::MAX)]
    );
    // Too little room: EMSGSIZE, with the count written back.
    assert_eq!(p.ranges(ioas, 1).err(), Some(Errno::EMSGSIZE));
    let mut b = [0u8; 32];
    p.mem.read(ARG, &mut b).unwrap();
    assert_eq!(IoasIovaRanges::read_from_bytes(&b).unwrap().num_iovas, 3);
    // Dropping one owner's reservations.
    p.iopt(ioas, |t| t.remove_reserved(1));
    assert_eq!(
        p.ranges(ioas, 2).unwrap().1,
        vec![(0, 0x17ff), (0x3000, u64::MAX)]
    );
}

#[test]
fn allowed_ranges_steer_allocation_and_never_cover_a_reservation() {
    let p = Prog::new();
    let ioas = p.ioas();
    p.iopt(ioas, |t| t.reserve(PAGE_SIZE * 4, PAGE_SIZE * 104 - 1, 7))
        .unwrap();
    assert_eq!(
        p.allow(ioas, &[(PAGE_SIZE, PAGE_SIZE * 600)]),
        Err(Errno::EADDRINUSE)
    );
    assert_eq!(p.allow(ioas, &[(0x5000, 0x5000)]), Err(Errno::EINVAL));
    assert_eq!(
        p.allow(ioas, &[(0x20_0000, 0x30_0000), (0x30_0000, 0x40_0000)]),
        Err(Errno::EINVAL),
        "overlapping"
    );
    let (lo, hi) = (PAGE_SIZE * 200, PAGE_SIZE * 600 - 1);
    p.allow(ioas, &[(lo, hi)]).unwrap();
    for n in 1..=10u64 {
        let len = PAGE_SIZE * n;
        let iova = p.map(ioas, BUFFER, len, None).unwrap();
        assert!(iova >= lo && iova + len - 1 <= hi, "{iova:#x}");
    }
    // A reservation over an allowed range: EADDRINUSE.
    let r = p.iopt(ioas, |t| t.reserve(hi, hi + 0x1000, 8));
    assert_eq!(r, Err(Errno::EADDRINUSE));
    // Space runs out inside the allowed range: ENOSPC.
    assert_eq!(
        p.map(ioas, BUFFER, PAGE_SIZE * 400, None),
        Err(Errno::ENOSPC)
    );
    // No ranges: everything allowed again.
    p.allow(ioas, &[]).unwrap();
    assert!(p.map(ioas, BUFFER, PAGE_SIZE * 400, None).is_ok());
    // An absurd count is refused before anything is read.
    let r = p.ioctl(
        Cmd::IoasAllowIovas,
        &IoasAllowIovas {
            size: 24,
            ioas_id: ioas,
            num_iovas: u32::MAX,
            allowed_iovas: RANGES,
            ..IoasAllowIovas::default()
        },
    );
    assert_eq!(r.err(), Some(Errno::ENOMEM));
}

/// Deterministic command sequences, also the seed corpus of the
/// `iommufd_ioas` fuzz target.
#[test]
fn seed_sequences_of_ioas_commands_follow_linuxs_rules() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut total = [0usize; 10];
    for n in 0..32 {
        let bytes: Vec<u8> = (0..64 + n * 40)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let done = iommufd::testing::ioas_ops(&bytes);
        for (t, d) in total.iter_mut().zip(done) {
            *t += d;
        }
        if let Some(dir) = std::env::var_os("IOMMU_FUZZ_SEEDS") {
            let dir = std::path::Path::new(&dir).join("iommufd_ioas");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seq{n:02}")), &bytes).unwrap();
        }
    }
    println!("changes by command kind: {total:?}");
    // Every kind of command changed something somewhere: the rules were
    // checked on real state.
    assert!(total.iter().all(|&n| n > 0), "{total:?}");
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(256))]
    /// Any sequence of IOAS commands answers and leaves the areas as the
    /// model of Linux's rules says.
    #[test]
    fn ioas_command_sequences_follow_linuxs_rules(
        data in proptest::collection::vec(proptest::num::u8::ANY, 0..800)
    ) {
        iommufd::testing::ioas_ops(&data);
    }
}
