//! `IOMMU_IOAS_MAP` + `IOMMU_IOAS_UNMAP` of 4 KiB and of 2 MiB of this
//! process's memory to the selftest's mock domain (a real 2 KiB-page
//! table), as an unmodified program makes them through the preload
//! library: the `ioctl` hook (the descriptor looked up, the structures
//! read and written with `process_vm_readv`/`writev`, the pages checked
//! present); through the `iommufd` crate's API on the same context; and
//! the core's own `Domain::map` + `unmap` of the same size on the same
//! domain.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use iommu_core::{Iova, PhysAddr, Prot};
use iommufd::selftest::{op, TestCmd, MOCK_APERTURE_START};
use iommufd::uapi::{ioas_map, Cmd, IoasAlloc, IoasMap, IoasUnmap};
use iommufd_preload::{context, ioctl, open};
use zerocopy::IntoBytes;

fn call<T: IntoBytes + zerocopy::FromBytes + zerocopy::Immutable>(fd: i32, cmd: Cmd, s: &mut T) {
    // SAFETY: the structure lives for the call and the hook reads and
    // writes it through the kernel's checked copies.
    let r = unsafe { ioctl(fd, cmd.ioctl() as _, s as *mut T as usize as _) };
    assert_eq!(r, 0, "{}", cmd.name());
}

fn bench(c: &mut Criterion) {
    // A page-aligned buffer of 2 MiB, touched so that it is present.
    let mut buf = vec![1u8; 0x40_0000];
    let off = (0x20_0000 - (buf.as_ptr() as usize % 0x20_0000)) % 0x20_0000;
    let user = buf[off..].as_mut_ptr() as u64;
    for (name, size) in [("4k", 0x1000u64), ("2m", 0x20_0000)] {
        // SAFETY: a C string and flags.
        let fd = unsafe { open(c"/dev/iommu".as_ptr(), libc::O_RDWR, 0) };
        assert!(fd >= 0);
        let mut alloc = IoasAlloc {
            size: 12,
            ..IoasAlloc::default()
        };
        call(fd, Cmd::IoasAlloc, &mut alloc);
        let ioas = alloc.out_ioas_id;
        let mut mock = TestCmd {
            size: 72,
            op: op::MOCK_DOMAIN,
            id: ioas,
            ..TestCmd::default()
        };
        call(fd, Cmd::TestCmd, &mut mock);
        let hwpt = (mock.args[0] >> 32) as u32;
        let ctx = context(fd).unwrap();
        let domain = ctx.hwpt(hwpt).unwrap().domain.clone();
        let iova = MOCK_APERTURE_START;
        let mut map = IoasMap {
            size: 40,
            flags: ioas_map::FIXED_IOVA | ioas_map::READABLE | ioas_map::WRITEABLE,
            ioas_id: ioas,
            reserved: 0,
            user_va: user,
            length: size,
            iova,
        };
        let mut unmap = IoasUnmap {
            size: 24,
            ioas_id: ioas,
            iova,
            length: size,
        };
        let mut g = c.benchmark_group(format!("iommufd-preload/ioas_map_unmap_{name}"));
        g.bench_function("preload", |b| {
            b.iter(|| {
                call(black_box(fd), Cmd::IoasMap, &mut map);
                unmap.length = size;
                call(black_box(fd), Cmd::IoasUnmap, &mut unmap);
            })
        });
        g.bench_function("api", |b| {
            b.iter(|| {
                ctx.ioas_map(black_box(&map)).unwrap();
                ctx.ioas_unmap(ioas, black_box(iova), size).unwrap();
            })
        });
        g.bench_function("core", |b| {
            b.iter(|| {
                domain
                    .map(
                        Iova::new(black_box(iova)),
                        PhysAddr::new(user),
                        size,
                        Prot::RW | Prot::CACHE,
                    )
                    .unwrap();
                domain.unmap(Iova::new(black_box(iova)), size).unwrap();
            })
        });
        g.finish();
        drop(ctx);
        // SAFETY: the descriptor opened above.
        unsafe { iommufd_preload::close(fd) };
    }
    drop(buf);
}

criterion_group!(benches, bench);
criterion_main!(benches);
