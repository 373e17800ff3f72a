//! Standard output that behaves like a Unix tool's: when the reader goes
//! away (`iommu --trace | head -1`), the tool stops quietly instead of
//! panicking on the closed pipe.

use std::fmt;
use std::io::{ErrorKind, Write};

/// Writes `args` to standard output. A closed pipe ends the process with
/// status 0 and no message: the reader asked for no more. Any other write
/// error is reported once on standard error, with status 1.
pub fn write(args: fmt::Arguments<'_>) {
    let result = {
        let mut out = std::io::stdout().lock();
        out.write_fmt(args).and_then(|()| out.flush())
    };
    if let Err(e) = result {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        let _ = writeln!(std::io::stderr(), "iommu: writing output: {e}");
        std::process::exit(1);
    }
}

/// `print!` through [`write()`].
macro_rules! out {
    ($($t:tt)*) => { $crate::out::write(format_args!($($t)*)) };
}

/// `println!` through [`write()`].
macro_rules! outln {
    () => { $crate::out::write(format_args!("\n")) };
    ($($t:tt)*) => { $crate::out::write(format_args!("{}\n", format_args!($($t)*))) };
}

pub(crate) use {out, outln};
