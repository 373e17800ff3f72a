//! The hooks called as a program calls them: `/dev/iommu` opens a
//! context, descriptors name it through `dup` and `fcntl`, `close` drops
//! it, bad pointers are `EFAULT`, and every other path or descriptor goes
//! to the system.

use iommufd::ctx::UserMemory;
use iommufd::uapi::Cmd;
use iommufd_preload::{close, context, dup, dup2, fcntl, ioctl, open, openat, ProcessMemory};
use libc::c_ulong;

/// The platform's failure injection is process-wide: one test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn ioas_alloc(fd: i32) -> Result<u32, i32> {
    // struct iommu_ioas_alloc { size, flags, out_ioas_id }
    let mut c = [12u32, 0, 0];
    // SAFETY: the structure lives for the call.
    let r = unsafe {
        ioctl(
            fd,
            Cmd::IoasAlloc.ioctl() as c_ulong,
            c.as_mut_ptr() as c_ulong,
        )
    };
    if r == 0 {
        Ok(c[2])
    } else {
        Err(errno())
    }
}

#[test]
fn an_open_of_dev_iommu_is_a_context_served_by_ioctl() {
    let _serial = serial();
    // SAFETY: a C string and flags.
    let fd = unsafe { open(c"/dev/iommu".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC, 0) };
    assert!(fd >= 0);
    assert!(context(fd).is_some());
    assert_eq!(ioas_alloc(fd), Ok(1));
    assert_eq!(ioas_alloc(fd), Ok(2), "the same context");

    // A bad pointer is EFAULT, an unknown number ENOTTY.
    // SAFETY: the hook checks the pointer; nothing is dereferenced here.
    let r = unsafe { ioctl(fd, Cmd::IoasAlloc.ioctl() as c_ulong, 8) };
    assert_eq!((r, errno()), (-1, libc::EFAULT));
    // SAFETY: as above.
    let r = unsafe { ioctl(fd, 0x3b00 | 0x7f, 0) };
    assert_eq!((r, errno()), (-1, libc::ENOTTY));

    // SAFETY: plain descriptors.
    unsafe {
        assert_eq!(close(fd), 0);
    }
    assert!(context(fd).is_none());
}

#[test]
fn dup_names_the_same_context_until_its_last_name_closes() {
    let _serial = serial();
    // SAFETY: a C string and flags.
    let fd = unsafe { openat(libc::AT_FDCWD, c"/dev/iommu".as_ptr(), libc::O_RDWR, 0) };
    assert!(fd >= 0);
    // SAFETY: plain descriptors.
    let (d1, d2) = unsafe { (dup(fd), fcntl(fd, libc::F_DUPFD_CLOEXEC, 100)) };
    assert!(d1 >= 0 && d2 >= 100);
    assert_eq!(ioas_alloc(d1), Ok(1));
    // SAFETY: plain descriptors.
    unsafe { assert_eq!(close(fd), 0) };
    assert_eq!(ioas_alloc(d2), Ok(2), "still the same context");
    // dup2 over a context's name drops that name.
    // SAFETY: a plain descriptor.
    let null = unsafe { open(c"/dev/null".as_ptr(), libc::O_RDONLY, 0) };
    assert!(null >= 0 && context(null).is_none());
    // SAFETY: plain descriptors.
    unsafe { assert_eq!(dup2(null, d1), d1) };
    assert!(context(d1).is_none());
    assert_eq!(ioas_alloc(d2), Ok(3));
    // SAFETY: plain descriptors.
    unsafe {
        for f in [d1, d2, null] {
            assert_eq!(close(f), 0);
        }
    }
    // A closed descriptor goes to the system: EBADF.
    // SAFETY: as above.
    let r = unsafe { ioctl(d2, Cmd::IoasAlloc.ioctl() as c_ulong, 0) };
    assert_eq!((r, errno()), (-1, libc::EBADF));
}

#[test]
fn other_paths_open_as_files() {
    let _serial = serial();
    // SAFETY: a C string and flags.
    let fd = unsafe { open(c"/dev/iommu-not".as_ptr(), libc::O_RDONLY, 0) };
    assert_eq!((fd, errno()), (-1, libc::ENOENT));
    // SAFETY: as above.
    let fd = unsafe {
        openat(
            libc::AT_FDCWD,
            c"/proc/self/status".as_ptr(),
            libc::O_RDONLY,
            0,
        )
    };
    assert!(fd >= 0 && context(fd).is_none());
    // SAFETY: a plain descriptor.
    unsafe { assert_eq!(close(fd), 0) };
}

#[test]
fn process_memory_reads_writes_and_pins_only_what_is_mapped() {
    let _serial = serial();
    let page = 4096usize;
    // SAFETY: a fresh anonymous mapping of three pages.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            3 * page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let base = p as u64;
    let m = ProcessMemory;
    m.write(base + 10, b"iommu").unwrap();
    let mut got = [0u8; 5];
    m.read(base + 10, &mut got).unwrap();
    assert_eq!(&got, b"iommu");
    assert_eq!(m.pin(base, 3 * page as u64, true), Ok(()));
    // The middle page goes: pins across it and reads of it fail.
    // SAFETY: the middle page of the mapping above.
    let r = unsafe { libc::munmap(p.cast::<u8>().add(page).cast(), page) };
    assert_eq!(r, 0);
    assert_eq!(
        m.pin(base, 3 * page as u64, false),
        Err(iommufd::Errno::EFAULT)
    );
    assert_eq!(m.pin(base, page as u64, false), Ok(()));
    assert_eq!(
        m.read(base + page as u64 - 2, &mut got),
        Err(iommufd::Errno::EFAULT)
    );
    assert_eq!(
        m.write(base + page as u64, b"x"),
        Err(iommufd::Errno::EFAULT)
    );
    assert_eq!(m.read(u64::MAX - 1, &mut got), Err(iommufd::Errno::EFAULT));
    // SAFETY: the first and last pages, still mapped.
    unsafe {
        libc::munmap(p, page);
        libc::munmap(p.cast::<u8>().add(2 * page).cast(), page);
    }
}

#[test]
fn fail_nth_arms_the_platforms_failure_injection() {
    let _serial = serial();
    use iommufd_preload::{pread, pwrite, read, write};
    // SAFETY: a C string and flags.
    let fd = unsafe { open(c"/proc/self/task/1/fail-nth".as_ptr(), libc::O_RDWR, 0) };
    assert!(fd >= 0);
    let mut buf = [0u8; 16];
    // SAFETY: the buffer lives for the calls.
    unsafe {
        assert_eq!(pwrite(fd, b"2".as_ptr().cast(), 1, 0), 1);
        assert_eq!(pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0), 2);
    }
    assert_eq!(&buf[..2], b"2\n");
    // The second allocation of a context fails: the second IOAS.
    // SAFETY: a C string and flags.
    let ctx = unsafe { open(c"/dev/iommu".as_ptr(), libc::O_RDWR, 0) };
    assert_eq!(ioas_alloc(ctx), Ok(1));
    assert_eq!(ioas_alloc(ctx), Err(libc::ENOMEM));
    assert_eq!(ioas_alloc(ctx), Ok(2), "once");
    // SAFETY: as above.
    unsafe {
        assert_eq!(read(fd, buf.as_mut_ptr().cast(), buf.len()), 2);
        assert_eq!(&buf[..2], b"0\n", "fired");
        assert_eq!(write(fd, b"x".as_ptr().cast(), 1), -1);
        assert_eq!(errno(), libc::EINVAL);
        assert_eq!(close(fd), 0);
        assert_eq!(close(ctx), 0);
    }
}

#[test]
fn a_files_pages_map_in_and_are_the_same_pages_as_the_callers() {
    let _serial = serial();
    let m = ProcessMemory;
    // SAFETY: a new memory file of two pages, mapped shared.
    let (fd, user) = unsafe {
        let fd = libc::memfd_create(c"hooks".as_ptr(), 0);
        assert!(fd >= 0);
        assert_eq!(libc::ftruncate(fd, 8192), 0);
        let p = libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        (fd, p as u64)
    };
    m.write(user + 4096 + 8, b"file").unwrap();
    let (addr, keep) = m.map_file(fd, 4096 + 8, 100, true).unwrap();
    let mut got = [0u8; 4];
    m.read(addr, &mut got).unwrap();
    assert_eq!(&got, b"file", "the file's bytes at the address given");
    assert_ne!(addr, user + 4096 + 8, "a mapping of its own");
    // Where the kernel shows frame numbers (keys with bit 63 set), the two
    // mappings are one page; otherwise keys are addresses.
    if m.page_key(user) >> 63 == 1 {
        assert_eq!(
            m.page_key(addr),
            m.page_key(user + 4096),
            "one page of memory"
        );
        assert_ne!(m.page_key(addr), m.page_key(user));
    }
    assert_eq!(
        m.map_file(fd, 8000, 400, false).err(),
        Some(iommufd::Errno::EINVAL),
        "past the end"
    );
    assert_eq!(
        m.map_file(-1, 0, 1, false).err(),
        Some(iommufd::Errno::EBADF)
    );
    drop(keep);
    // SAFETY: the mapping and descriptor made above.
    unsafe {
        libc::munmap(user as *mut libc::c_void, 8192);
        close(fd);
    }
}
