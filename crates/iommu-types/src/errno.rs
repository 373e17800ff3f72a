//! Linux error numbers, as the IOMMU API returns them.
//!
//! The core's contract is Linux's: a caller that checks for `EBUSY` must see
//! `EBUSY`. Each variant carries the kernel's number and description.

use core::fmt;

/// A Linux error number returned by an IOMMU operation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum Errno {
    /// Operation not permitted.
    EPERM,
    /// No such file or directory.
    ENOENT,
    /// Input/output error (`dma_set_mask` with an unusable mask).
    EIO,
    /// No such device or address (an mmap offset nothing offers).
    ENXIO,
    /// Argument list too long (a user structure longer than the kernel's
    /// whose extra bytes are not zero).
    E2BIG,
    /// Out of memory.
    ENOMEM,
    /// Bad address (a virtio-iommu request the device could not read).
    EFAULT,
    /// Permission denied.
    EACCES,
    /// Device or resource busy.
    EBUSY,
    /// File exists (a mapping is already in the way).
    EEXIST,
    /// No such device (or the operation is not provided).
    ENODEV,
    /// Invalid argument.
    EINVAL,
    /// Inappropriate ioctl for device (an ioctl number the file does not know).
    ENOTTY,
    /// No space left on device (an id space is exhausted).
    ENOSPC,
    /// Result out of range (outside the address space).
    ERANGE,
    /// Function not implemented (no handler installed).
    ENOSYS,
    /// Value too large (an address computation overflows).
    EOVERFLOW,
    /// Message too long (a reply array larger than the room given for it).
    EMSGSIZE,
    /// Operation not supported.
    EOPNOTSUPP,
    /// Address already in use (an IOVA range another rule already claims).
    EADDRINUSE,
    /// Bad file descriptor (no open file by that number).
    EBADF,
    /// Try again (a queue with nothing to read yet).
    EAGAIN,
    /// Illegal seek (a read or write of a queue by a count it cannot take).
    ESPIPE,
    /// Too many open files (no descriptor left for a new file).
    EMFILE,
    /// Invalid exchange (a check found other pages than expected).
    EBADE,
    /// File descriptor in bad state (a descriptor of the wrong kind of file).
    EBADFD,
    /// Connection timed out (hardware did not complete a command in time).
    ETIMEDOUT,
}

impl Errno {
    /// The positive Linux error number (`EBUSY` is 16).
    pub const fn code(self) -> i32 {
        match self {
            Errno::EPERM => 1,
            Errno::ENOENT => 2,
            Errno::EIO => 5,
            Errno::ENXIO => 6,
            Errno::E2BIG => 7,
            Errno::ENOMEM => 12,
            Errno::EFAULT => 14,
            Errno::EACCES => 13,
            Errno::EBUSY => 16,
            Errno::EEXIST => 17,
            Errno::ENODEV => 19,
            Errno::EINVAL => 22,
            Errno::ENOTTY => 25,
            Errno::ENOSPC => 28,
            Errno::ERANGE => 34,
            Errno::ENOSYS => 38,
            Errno::EOVERFLOW => 75,
            Errno::EMSGSIZE => 90,
            Errno::EOPNOTSUPP => 95,
            Errno::EADDRINUSE => 98,
            Errno::EBADF => 9,
            Errno::EAGAIN => 11,
            Errno::ESPIPE => 29,
            Errno::EMFILE => 24,
            Errno::EBADE => 52,
            Errno::EBADFD => 77,
            Errno::ETIMEDOUT => 110,
        }
    }

    /// The symbolic name, e.g. `"EBUSY"`.
    pub const fn name(self) -> &'static str {
        match self {
            Errno::EPERM => "EPERM",
            Errno::ENOENT => "ENOENT",
            Errno::EIO => "EIO",
            Errno::ENXIO => "ENXIO",
            Errno::E2BIG => "E2BIG",
            Errno::ENOMEM => "ENOMEM",
            Errno::EFAULT => "EFAULT",
            Errno::EACCES => "EACCES",
            Errno::EBUSY => "EBUSY",
            Errno::EEXIST => "EEXIST",
            Errno::ENODEV => "ENODEV",
            Errno::EINVAL => "EINVAL",
            Errno::ENOTTY => "ENOTTY",
            Errno::ENOSPC => "ENOSPC",
            Errno::ERANGE => "ERANGE",
            Errno::ENOSYS => "ENOSYS",
            Errno::EOVERFLOW => "EOVERFLOW",
            Errno::EMSGSIZE => "EMSGSIZE",
            Errno::EOPNOTSUPP => "EOPNOTSUPP",
            Errno::EADDRINUSE => "EADDRINUSE",
            Errno::EBADF => "EBADF",
            Errno::EAGAIN => "EAGAIN",
            Errno::ESPIPE => "ESPIPE",
            Errno::EMFILE => "EMFILE",
            Errno::EBADE => "EBADE",
            Errno::EBADFD => "EBADFD",
            Errno::ETIMEDOUT => "ETIMEDOUT",
        }
    }

    /// The C library's description of the number.
    pub const fn description(self) -> &'static str {
        match self {
            Errno::EPERM => "Operation not permitted",
            Errno::ENOENT => "No such file or directory",
            Errno::EIO => "Input/output error",
            Errno::ENXIO => "No such device or address",
            Errno::E2BIG => "Argument list too long",
            Errno::ENOMEM => "Cannot allocate memory",
            Errno::EFAULT => "Bad address",
            Errno::EACCES => "Permission denied",
            Errno::EBUSY => "Device or resource busy",
            Errno::EEXIST => "File exists",
            Errno::ENODEV => "No such device",
            Errno::EINVAL => "Invalid argument",
            Errno::ENOTTY => "Inappropriate ioctl for device",
            Errno::ENOSPC => "No space left on device",
            Errno::ERANGE => "Numerical result out of range",
            Errno::ENOSYS => "Function not implemented",
            Errno::EOVERFLOW => "Value too large for defined data type",
            Errno::EMSGSIZE => "Message too long",
            Errno::EOPNOTSUPP => "Operation not supported",
            Errno::EADDRINUSE => "Address already in use",
            Errno::EBADF => "Bad file descriptor",
            Errno::EAGAIN => "Resource temporarily unavailable",
            Errno::ESPIPE => "Illegal seek",
            Errno::EMFILE => "Too many open files",
            Errno::EBADE => "Invalid exchange",
            Errno::EBADFD => "File descriptor in bad state",
            Errno::ETIMEDOUT => "Connection timed out",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.description())
    }
}

impl core::error::Error for Errno {}
