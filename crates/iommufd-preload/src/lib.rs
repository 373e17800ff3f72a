//! `/dev/iommu` inside a process.
//!
//! Built as a shared object and loaded with `LD_PRELOAD`, this library
//! serves the calls a program makes on `/dev/iommu` with the [`iommufd`]
//! crate, so a program written for Linux's iommufd (Linux's own selftest,
//! a VMM) runs unmodified against iommu-rs:
//!
//! - `open`/`openat` (and their `64` names) of `/dev/iommu` make a new
//!   context ([`iommufd::ctx::Ictx`]), one per open as the kernel makes
//!   one per open file. The descriptor is a real one (an anonymous memory
//!   file), so `close`, `dup`, `poll` and `fork` keep working on it.
//! - `ioctl` on such a descriptor runs [`Ictx::ioctl`]; the caller's
//!   memory is read and written with `process_vm_readv`/`writev` on the
//!   process itself, so a bad pointer is `EFAULT`, never a crash.
//! - `dup`, `dup2`, `dup3` and `fcntl(F_DUPFD*)` name the same context;
//!   `close` drops a name, and the context goes with its last one.
//! - After `fork` the child holds a copy of every context, as its own
//!   state: objects a child makes are not seen by the parent. (The kernel
//!   shares one context between them; see the crate's README.)
//!
//! Every other descriptor and path goes straight to the system call.
//!
//! Why `unsafe` here: these are C entry points by definition, taking raw
//! pointers and forwarding to raw system calls. The state they reach is
//! the `iommufd` crate's, which has no `unsafe` at all.
#![allow(unsafe_code)]

use iommufd::ctx::{File, FileTable, Ictx, UserMemory};
use iommufd::iopt::Backing;
use iommufd::selftest::Selftest;
use iommufd::Errno;
use libc::{c_char, c_int, c_long, c_uint, c_ulong, c_void};
use std::collections::BTreeMap;
use std::ffi::CStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// The path this library serves.
pub const DEV_IOMMU: &CStr = c"/dev/iommu";

/// What one of our descriptors names.
#[derive(Clone)]
enum Entry {
    /// An open of `/dev/iommu`.
    Ctx(Arc<Ictx>),
    /// A file a command made (an access object's).
    File(Arc<dyn File>),
    /// `/proc/<pid>/task/<tid>/fail-nth`: Linux's failure injection, the
    /// selftest platform's `fail_nth` here.
    FailNth,
}

/// Our descriptors.
static FDS: Mutex<BTreeMap<c_int, Entry>> = Mutex::new(BTreeMap::new());
/// How many descriptors are ours: the hooks skip the lock while none.
static OPEN: AtomicUsize = AtomicUsize::new(0);

fn fds() -> MutexGuard<'static, BTreeMap<c_int, Entry>> {
    FDS.lock().unwrap_or_else(|e| e.into_inner())
}

fn entry(fd: c_int) -> Option<Entry> {
    if OPEN.load(Ordering::Acquire) == 0 {
        return None;
    }
    fds().get(&fd).cloned()
}

/// The context `fd` names, if it is one of ours.
pub fn context(fd: c_int) -> Option<Arc<Ictx>> {
    match entry(fd)? {
        Entry::Ctx(c) => Some(c),
        _ => None,
    }
}

/// Names `e` by `fd`; returns what `fd` named before (the caller drops
/// it outside the lock).
fn install(fd: c_int, e: Entry) -> Option<Entry> {
    let old = fds().insert(fd, e);
    if old.is_none() {
        OPEN.fetch_add(1, Ordering::AcqRel);
    }
    old
}

/// The process's descriptor table as the `iommufd` crate sees it.
struct Files;

impl FileTable for Files {
    fn install(&self, file: Arc<dyn File>) -> Result<i32, Errno> {
        // SAFETY: a constant C string and plain flags.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_memfd_create,
                c"iommufd-file".as_ptr(),
                libc::MFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(Errno::EMFILE);
        }
        let fd = fd as c_int;
        drop(install(fd, Entry::File(file)));
        Ok(fd)
    }

    fn get(&self, fd: i32) -> Option<Arc<dyn File>> {
        match entry(fd)? {
            Entry::File(f) => Some(f),
            _ => None,
        }
    }
}

/// Forgets `fd`, returning what it named.
fn forget(fd: c_int) -> Option<Entry> {
    if OPEN.load(Ordering::Acquire) == 0 {
        return None;
    }
    let old = fds().remove(&fd);
    if old.is_some() {
        OPEN.fetch_sub(1, Ordering::AcqRel);
    }
    old
}

fn set_errno(e: c_int) {
    // SAFETY: `__errno_location` returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

/// The result of a raw system call as the C library returns it: the
/// value, or -1 with errno set (`libc::syscall` sets errno already).
fn sys_ret(r: c_long) -> c_int {
    r as c_int
}

/// The calling process's memory, as the kernel's `copy_from_user` and
/// `copy_to_user` reach it: `process_vm_readv`/`writev` on the process
/// itself, which fail with `EFAULT` on an unmapped or protected address
/// instead of faulting.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessMemory;

impl UserMemory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        transfer(addr, buf.as_mut_ptr(), buf.len(), false)
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        transfer(addr, data.as_ptr().cast_mut(), data.len(), true)
    }

    /// Maps the file's pages in, shared, for DMA: the whole pages (huge
    /// ones for a hugetlbfs file) holding `[start, start + length)`.
    fn map_file(
        &self,
        fd: i32,
        start: u64,
        length: u64,
        writable: bool,
    ) -> Result<(u64, Backing), Errno> {
        // SAFETY: a zeroed stat for fstat to fill.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        // SAFETY: fstat writes the structure.
        if unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st) } != 0 {
            return Err(Errno::EBADF);
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Errno::EINVAL);
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let end = start.checked_add(length).ok_or(Errno::EOVERFLOW)?;
        if end > size {
            return Err(Errno::EINVAL);
        }
        let align = u64::try_from(st.st_blksize).unwrap_or(4096).max(4096);
        if !align.is_power_of_two() {
            return Err(Errno::EINVAL);
        }
        let off = start & !(align - 1);
        let len = (end - off).div_ceil(align) * align;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a fresh shared mapping of the caller's file, placed by
        // the kernel; nothing else refers to it until returned.
        let addr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len as usize,
                prot,
                libc::MAP_SHARED,
                fd,
                off as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EACCES) => Errno::EPERM,
                Some(libc::ENODEV) | Some(libc::EINVAL) => Errno::EINVAL,
                _ => Errno::ENOMEM,
            });
        }
        let map = FileMap {
            addr: addr as usize,
            len: len as usize,
        };
        Ok(((addr as u64) + (start - off), Backing(Arc::new(map))))
    }

    /// The page's frame number from `/proc/self/pagemap` (the page made
    /// present first), so that one file page mapped at two addresses is
    /// one page; the address where frame numbers are hidden.
    fn page_key(&self, addr: u64) -> u64 {
        let page = addr & !4095;
        let mut b = [0u8; 1];
        let _ = self.read(page, &mut b);
        pagemap_pfn(page).map_or(page, |pfn| (1 << 63) | pfn)
    }

    /// Every page of the range is mapped: `mincore`, which fails with
    /// `ENOMEM` where a page is not, over the range in chunks. (Whether a
    /// page may be read or written is not checked: a test access would
    /// race the program.)
    fn pin(&self, addr: u64, len: u64, _write: bool) -> Result<(), Errno> {
        const PAGE: u64 = 4096;
        const CHUNK: u64 = 1 << 16; // pages per call
        if len == 0 {
            return Ok(());
        }
        let end = addr.checked_add(len).ok_or(Errno::EFAULT)?;
        let mut page = addr & !(PAGE - 1);
        let mut vec = vec![0u8; CHUNK.min((end - page).div_ceil(PAGE)) as usize];
        while page < end {
            let n = (end - page).div_ceil(PAGE).min(CHUNK);
            // SAFETY: `vec` holds at least `n` bytes, one per page asked
            // about; the range itself is only looked up by the kernel.
            let r = unsafe {
                libc::mincore(
                    page as usize as *mut c_void,
                    (n * PAGE) as usize,
                    vec.as_mut_ptr(),
                )
            };
            if r != 0 {
                return Err(Errno::EFAULT);
            }
            page += n * PAGE;
        }
        Ok(())
    }
}

/// A file's pages mapped in for `IOMMU_IOAS_MAP_FILE`, unmapped when the
/// pages object goes.
struct FileMap {
    addr: usize,
    len: usize,
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: the mapping `map_file` made, which only the pages object
        // that is going refers to.
        unsafe { libc::munmap(self.addr as *mut c_void, self.len) };
    }
}

/// The frame number of the present page at `page`, if the kernel shows
/// frame numbers to this process.
fn pagemap_pfn(page: u64) -> Option<u64> {
    // SAFETY: a constant path, opened read-only with raw system calls
    // (the hooks are not re-entered).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c"/proc/self/pagemap".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    let mut e = [0u8; 8];
    // SAFETY: reads eight bytes into `e`; then the descriptor is closed.
    let n = unsafe {
        let n = libc::syscall(
            libc::SYS_pread64,
            fd,
            e.as_mut_ptr(),
            8usize,
            (page / 4096) * 8,
        );
        libc::syscall(libc::SYS_close, fd);
        n
    };
    let v = u64::from_ne_bytes(e);
    let pfn = v & ((1 << 55) - 1);
    (n == 8 && v >> 63 == 1 && pfn != 0).then_some(pfn)
}

fn transfer(addr: u64, local: *mut u8, len: usize, write: bool) -> Result<(), Errno> {
    if len == 0 {
        return Ok(());
    }
    addr.checked_add(len as u64).ok_or(Errno::EFAULT)?;
    let mut done = 0usize;
    while done < len {
        let l = libc::iovec {
            // SAFETY: `done < len`, inside the caller's buffer.
            iov_base: unsafe { local.add(done) }.cast(),
            iov_len: len - done,
        };
        let r = libc::iovec {
            iov_base: (addr as usize + done) as *mut c_void,
            iov_len: len - done,
        };
        // SAFETY: the local iovec covers the rest of the caller's buffer,
        // which is valid for `len` bytes (written to only when reading);
        // the remote one is checked by the kernel, which answers EFAULT.
        let n = unsafe {
            if write {
                libc::process_vm_writev(libc::getpid(), &l, 1, &r, 1, 0)
            } else {
                libc::process_vm_readv(libc::getpid(), &l, 1, &r, 1, 0)
            }
        };
        if n <= 0 {
            return Err(Errno::EFAULT);
        }
        done += n as usize;
    }
    Ok(())
}

/// Opens a new context: a real descriptor (an anonymous memory file with
/// the caller's close-on-exec choice) that names it.
fn open_iommufd(flags: c_int) -> c_int {
    let mfd_flags = if flags & libc::O_CLOEXEC != 0 {
        libc::MFD_CLOEXEC
    } else {
        0
    };
    // SAFETY: a constant C string and plain flags.
    let fd = unsafe { libc::syscall(libc::SYS_memfd_create, c"iommufd".as_ptr(), mfd_flags) };
    if fd < 0 {
        return -1;
    }
    let fd = fd as c_int;
    let ctx = Arc::new(Ictx::new());
    ctx.set_sys_resource(has_cap(CAP_SYS_RESOURCE));
    ctx.set_pin_limit(memlock_limit());
    ctx.set_user_memory(Arc::new(ProcessMemory));
    ctx.set_files(Arc::new(Files));
    if let Some(p) = platform() {
        ctx.enable_selftest(p);
    }
    install(fd, Entry::Ctx(ctx));
    fd
}

/// The process's selftest platform: the mock bus and IOMMU whose devices
/// `IOMMU_TEST_CMD` makes (one per process, as the kernel has one).
fn platform() -> Option<&'static Arc<Selftest>> {
    static PLATFORM: OnceLock<Option<Arc<Selftest>>> = OnceLock::new();
    PLATFORM.get_or_init(|| Selftest::new().ok()).as_ref()
}

/// `CAP_IPC_LOCK`: pinning beyond `RLIMIT_MEMLOCK`.
const CAP_IPC_LOCK: u32 = 14;
/// `CAP_SYS_RESOURCE`: setting `IOMMU_OPTION_RLIMIT_MODE`.
const CAP_SYS_RESOURCE: u32 = 24;

/// The pages a context may pin: `RLIMIT_MEMLOCK`, unless the process
/// holds `CAP_IPC_LOCK` (as Linux accounts pinned pages).
fn memlock_limit() -> Option<u64> {
    if has_cap(CAP_IPC_LOCK) {
        return None;
    }
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the structure.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0
        || r.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(r.rlim_cur / 4096)
}

/// Whether the process holds capability `cap` in its effective set.
fn has_cap(cap: u32) -> bool {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: c_int,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget with version 3 writes two data words.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) };
    let word = d[(cap / 32) as usize % 2].effective;
    r == 0 && word & (1 << (cap % 32)) != 0
}

fn is_dev_iommu(dirfd: c_int, path: *const c_char) -> bool {
    if path.is_null() {
        return false;
    }
    // SAFETY: the caller passes a C string, as the C library requires.
    let p = unsafe { CStr::from_ptr(path) };
    p == DEV_IOMMU && (dirfd == libc::AT_FDCWD || p.to_bytes().starts_with(b"/"))
}

/// A placeholder descriptor named `name` for `e`.
fn open_entry(name: &CStr, flags: c_int, e: Entry) -> c_int {
    let mfd_flags = if flags & libc::O_CLOEXEC != 0 {
        libc::MFD_CLOEXEC
    } else {
        0
    };
    // SAFETY: a C string and plain flags.
    let fd = unsafe { libc::syscall(libc::SYS_memfd_create, name.as_ptr(), mfd_flags) };
    if fd < 0 {
        return -1;
    }
    drop(install(fd as c_int, e));
    fd as c_int
}

/// Whether `path` (from `dirfd`) is a thread's `fail-nth`:
/// `/proc/self/task/N/fail-nth`, `/proc/N/task/N/fail-nth` or
/// `/proc/thread-self/fail-nth`.
fn is_fail_nth(path: &[u8]) -> bool {
    path.starts_with(b"/proc/") && path.ends_with(b"/fail-nth")
}

/// Whether `path` from `dirfd` is one of debugfs's failure-injection
/// knobs (`/sys/kernel/debug/fail*/...`), which the selftest writes to
/// set failure injection up: accepted and ignored, as the failures here
/// come from the platform's `fail_nth`.
fn is_debugfs_fail(dirfd: c_int, path: &[u8]) -> bool {
    const DEBUGFS: &[u8] = b"/sys/kernel/debug/";
    if let Some(rest) = path.strip_prefix(DEBUGFS) {
        return rest.starts_with(b"fail");
    }
    if path.starts_with(b"/") || !path.starts_with(b"fail") || dirfd < 0 {
        return false;
    }
    // Relative to a directory descriptor: is it debugfs?
    let link = format!("/proc/self/fd/{dirfd}\0");
    let mut buf = [0u8; 64];
    // SAFETY: a C string and a buffer of its length.
    let n = unsafe {
        libc::syscall(
            libc::SYS_readlinkat,
            libc::AT_FDCWD,
            link.as_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    n > 0
        && buf[..n as usize]
            .strip_suffix(b"/")
            .unwrap_or(&buf[..n as usize])
            == &DEBUGFS[..DEBUGFS.len() - 1]
}

fn do_openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    if is_dev_iommu(dirfd, path) {
        return open_iommufd(flags);
    }
    if !path.is_null() {
        // SAFETY: the caller passes a C string.
        let p = unsafe { CStr::from_ptr(path) }.to_bytes();
        if is_fail_nth(p) && platform().is_some() {
            return open_entry(c"fail-nth", flags, Entry::FailNth);
        }
        if is_debugfs_fail(dirfd, p) {
            // SAFETY: a constant path and the caller's flags.
            return sys_ret(unsafe {
                libc::syscall(
                    libc::SYS_openat,
                    libc::AT_FDCWD,
                    c"/dev/null".as_ptr(),
                    flags & !libc::O_CREAT,
                    0,
                )
            });
        }
    }
    // SAFETY: forwarded as given.
    sys_ret(unsafe { libc::syscall(libc::SYS_openat, dirfd, path, flags, mode) })
}

// The hooks. Variadic C functions (`open`, `openat`, `ioctl`, `fcntl`) are
// defined with their optional argument as a fixed one: the x86-64 and
// AArch64 calling conventions pass it in the same register either way,
// and a caller that passes none leaves a value the hook does not use.

/// `open(2)`.
///
/// # Safety
/// As the C library's: `path` is a C string.
#[no_mangle]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    do_openat(libc::AT_FDCWD, path, flags, mode)
}

/// `open64(2)`.
///
/// # Safety
/// As [`open`].
#[no_mangle]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: c_uint) -> c_int {
    do_openat(libc::AT_FDCWD, path, flags | libc::O_LARGEFILE, mode)
}

/// `openat(2)`.
///
/// # Safety
/// As the C library's: `path` is a C string.
#[no_mangle]
pub unsafe extern "C" fn openat(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
) -> c_int {
    do_openat(dirfd, path, flags, mode)
}

/// `openat64(2)`.
///
/// # Safety
/// As [`openat`].
#[no_mangle]
pub unsafe extern "C" fn openat64(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: c_uint,
) -> c_int {
    do_openat(dirfd, path, flags | libc::O_LARGEFILE, mode)
}

/// `close(2)`.
///
/// # Safety
/// None beyond the C library's.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let ctx = forget(fd);
    // SAFETY: a plain system call.
    let r = sys_ret(unsafe { libc::syscall(libc::SYS_close, fd) });
    // The last name of a context or file takes it with it (an access is
    // destroyed), outside the lock.
    drop(ctx);
    r
}

fn dup_to(old: c_int, new: c_int) -> c_int {
    if new >= 0 {
        if let Some(e) = entry(old) {
            let replaced = install(new, e);
            drop(replaced);
        } else {
            drop(forget(new));
        }
    }
    new
}

/// `dup(2)`.
///
/// # Safety
/// None beyond the C library's.
#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: a plain system call.
    let new = sys_ret(unsafe { libc::syscall(libc::SYS_dup, fd) });
    dup_to(fd, new)
}

/// `dup2(2)`.
///
/// # Safety
/// None beyond the C library's.
#[no_mangle]
pub unsafe extern "C" fn dup2(fd: c_int, new: c_int) -> c_int {
    if fd == new {
        // SAFETY: a plain system call (dup2 to itself checks `fd` only).
        let r = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) };
        return if r < 0 { -1 } else { fd };
    }
    // SAFETY: a plain system call.
    let r = sys_ret(unsafe { libc::syscall(libc::SYS_dup3, fd, new, 0) });
    dup_to(fd, r)
}

/// `dup3(2)`.
///
/// # Safety
/// None beyond the C library's.
#[no_mangle]
pub unsafe extern "C" fn dup3(fd: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: a plain system call.
    let r = sys_ret(unsafe { libc::syscall(libc::SYS_dup3, fd, new, flags) });
    dup_to(fd, r)
}

/// `fcntl(2)`: `F_DUPFD` and `F_DUPFD_CLOEXEC` name the context by the
/// new descriptor too.
///
/// # Safety
/// As the C library's: `arg` is what the command takes.
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: forwarded as given.
    let r = sys_ret(unsafe { libc::syscall(libc::SYS_fcntl, fd, cmd, arg) });
    if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
        return dup_to(fd, r);
    }
    r
}

/// `fcntl64`, the name a large-file build calls.
///
/// # Safety
/// As [`fcntl`].
#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: as the caller's.
    unsafe { fcntl(fd, cmd, arg) }
}

/// Reads the armed count of `fail-nth`, as Linux formats it.
fn fail_nth_read(buf: *mut c_void, count: usize, offset: i64) -> isize {
    let text = format!(
        "{}\n",
        platform().map_or(0, |p| p.fail_points().nth_remaining())
    );
    let bytes = text.as_bytes();
    let off = usize::try_from(offset).unwrap_or(usize::MAX);
    if off >= bytes.len() {
        return 0;
    }
    let n = count.min(bytes.len() - off);
    // SAFETY: the caller's buffer holds `count` bytes; `n` is at most that.
    unsafe { core::ptr::copy_nonoverlapping(bytes[off..].as_ptr(), buf.cast::<u8>(), n) };
    n as isize
}

/// Arms `fail-nth` with the decimal number written (0 disarms).
fn fail_nth_write(buf: *const c_void, count: usize) -> isize {
    // SAFETY: the caller's buffer holds `count` bytes.
    let bytes = unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), count) };
    let n = core::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    match (n, platform()) {
        (Some(n), Some(p)) => {
            p.fail_points().arm_nth(n);
            count as isize
        }
        _ => {
            set_errno(libc::EINVAL);
            -1
        }
    }
}

fn is_fail_nth_fd(fd: c_int) -> bool {
    matches!(entry(fd), Some(Entry::FailNth))
}

/// The file a command handed out behind `fd`, if any.
fn file_of(fd: c_int) -> Option<Arc<dyn File>> {
    match entry(fd)? {
        Entry::File(f) => Some(f),
        _ => None,
    }
}

/// A read of a command's file: its bytes copied to the caller's buffer
/// with the kernel's checked copy (`EFAULT` for a bad buffer).
fn file_read(f: &dyn File, buf: *mut c_void, count: usize) -> isize {
    match f.read(count) {
        Ok(bytes) => {
            let n = bytes.len().min(count);
            match ProcessMemory.write(buf as u64, &bytes[..n]) {
                Ok(()) => n as isize,
                Err(e) => {
                    set_errno(e.code());
                    -1
                }
            }
        }
        Err(e) => {
            set_errno(e.code());
            -1
        }
    }
}

/// A write to a command's file, the caller's bytes read with the
/// kernel's checked copy; no more than a megabyte is taken at once.
fn file_write(f: &dyn File, buf: *const c_void, count: usize) -> isize {
    let n = count.min(1 << 20);
    let mut data = vec![0u8; n];
    let r = ProcessMemory
        .read(buf as u64, &mut data)
        .and_then(|()| f.write(&data));
    match r {
        Ok(done) => done as isize,
        Err(e) => {
            set_errno(e.code());
            -1
        }
    }
}

/// `read(2)`.
///
/// # Safety
/// As the C library's: `buf` holds `count` bytes.
#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, count: usize) -> isize {
    if is_fail_nth_fd(fd) {
        return fail_nth_read(buf, count, 0);
    }
    if let Some(f) = file_of(fd) {
        return file_read(&*f, buf, count);
    }
    // SAFETY: forwarded as given.
    unsafe { libc::syscall(libc::SYS_read, fd, buf, count) as isize }
}

/// `write(2)`.
///
/// # Safety
/// As the C library's: `buf` holds `count` bytes.
#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: usize) -> isize {
    if is_fail_nth_fd(fd) {
        return fail_nth_write(buf, count);
    }
    if let Some(f) = file_of(fd) {
        return file_write(&*f, buf, count);
    }
    // SAFETY: forwarded as given.
    unsafe { libc::syscall(libc::SYS_write, fd, buf, count) as isize }
}

/// `pread(2)`.
///
/// # Safety
/// As the C library's: `buf` holds `count` bytes.
#[no_mangle]
pub unsafe extern "C" fn pread(fd: c_int, buf: *mut c_void, count: usize, offset: i64) -> isize {
    if is_fail_nth_fd(fd) {
        return fail_nth_read(buf, count, offset);
    }
    if file_of(fd).is_some() {
        // Queues have no position (Linux's `*ppos` check).
        set_errno(libc::ESPIPE);
        return -1;
    }
    // SAFETY: forwarded as given.
    unsafe { libc::syscall(libc::SYS_pread64, fd, buf, count, offset) as isize }
}

/// `pread64(2)`.
///
/// # Safety
/// As [`pread`].
#[no_mangle]
pub unsafe extern "C" fn pread64(fd: c_int, buf: *mut c_void, count: usize, offset: i64) -> isize {
    // SAFETY: as the caller's.
    unsafe { pread(fd, buf, count, offset) }
}

/// `pwrite(2)`.
///
/// # Safety
/// As the C library's: `buf` holds `count` bytes.
#[no_mangle]
pub unsafe extern "C" fn pwrite(fd: c_int, buf: *const c_void, count: usize, offset: i64) -> isize {
    if is_fail_nth_fd(fd) {
        return fail_nth_write(buf, count);
    }
    if file_of(fd).is_some() {
        set_errno(libc::ESPIPE);
        return -1;
    }
    // SAFETY: forwarded as given.
    unsafe { libc::syscall(libc::SYS_pwrite64, fd, buf, count, offset) as isize }
}

/// `pwrite64(2)`.
///
/// # Safety
/// As [`pwrite`].
#[no_mangle]
pub unsafe extern "C" fn pwrite64(
    fd: c_int,
    buf: *const c_void,
    count: usize,
    offset: i64,
) -> isize {
    // SAFETY: as the caller's.
    unsafe { pwrite(fd, buf, count, offset) }
}

/// Mappings of a context's descriptor, by address: what each holds.
static MMAPS: Mutex<BTreeMap<usize, Arc<dyn core::any::Any + Send + Sync>>> =
    Mutex::new(BTreeMap::new());

/// `mmap(2)`: of a context's descriptor, the memory a vIOMMU offers at
/// that offset (a copy of it, in fresh shared memory: the driver's later
/// writes are not seen); anything else, the system call.
///
/// # Safety
/// As the C library's.
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    let Some(ctx) = context(fd) else {
        // SAFETY: forwarded as given.
        return unsafe {
            libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, off) as *mut c_void
        };
    };
    let (bytes, hold) = match ctx.mmap(off as u64, len as u64) {
        Ok(r) => r,
        Err(e) => {
            set_errno(e.code());
            return libc::MAP_FAILED;
        }
    };
    let fixed = flags & libc::MAP_FIXED;
    // SAFETY: a fresh anonymous mapping (where the caller fixed it, if it
    // did), written before it is handed out.
    let p = unsafe {
        libc::syscall(
            libc::SYS_mmap,
            addr,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | fixed,
            -1,
            0,
        ) as *mut c_void
    };
    if p == libc::MAP_FAILED {
        return p;
    }
    // SAFETY: `p` holds `len` bytes, and `bytes` is `len` long.
    unsafe {
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), p.cast::<u8>(), bytes.len().min(len));
        libc::syscall(libc::SYS_mprotect, p, len, prot);
    }
    MMAPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(p as usize, hold);
    p
}

/// `mmap64`, the name a large-file build calls.
///
/// # Safety
/// As [`mmap`].
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    // SAFETY: as the caller's.
    unsafe { mmap(addr, len, prot, flags, fd, off) }
}

/// `munmap(2)`: a mapping of a context's descriptor lets go of what it
/// held.
///
/// # Safety
/// As the C library's.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: usize) -> c_int {
    // SAFETY: forwarded as given.
    let r = sys_ret(unsafe { libc::syscall(libc::SYS_munmap, addr, len) });
    if r == 0 {
        let held = MMAPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(addr as usize));
        drop(held);
    }
    r
}

/// `ioctl(2)`: on a context, Linux's iommufd command or VFIO container
/// command (some return a value); elsewhere the system call.
///
/// # Safety
/// As the C library's: `arg` is what the request takes.
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: c_ulong) -> c_int {
    let Some(ctx) = context(fd) else {
        // SAFETY: forwarded as given.
        return sys_ret(unsafe { libc::syscall(libc::SYS_ioctl, fd, request, arg) });
    };
    // The number is 32 bits on Linux; higher bits make it no command.
    let Ok(num) = u32::try_from(request) else {
        set_errno(libc::ENOTTY);
        return -1;
    };
    #[allow(clippy::useless_conversion)] // c_ulong is u32 on 32-bit targets
    let arg = u64::from(arg);
    // A panic must not unwind into C (that aborts the program): a defect
    // of ours is reported on stderr by the panic hook and the call fails
    // with EIO.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ctx.ioctl_value(num, arg, &ProcessMemory)
    }))
    .unwrap_or(Err(Errno::EIO));
    match r {
        Ok(v) => v,
        Err(e) => {
            set_errno(e.code());
            -1
        }
    }
}
