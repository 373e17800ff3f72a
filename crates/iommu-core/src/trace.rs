//! Tracing, when feature `tracing` is on: the `tracing` crate's span and
//! event macros. Without it the same calls compile to nothing, so a kernel
//! build carries no subscriber machinery.

#[cfg(feature = "tracing")]
pub(crate) use tracing::{debug, debug_span, error, info, trace_span, warn};

#[cfg(not(feature = "tracing"))]
mod off {
    /// A span that is never recorded.
    pub(crate) struct NoSpan;

    impl NoSpan {
        pub(crate) fn entered(self) -> Self {
            self
        }
    }

    macro_rules! span {
        ($($t:tt)*) => {
            $crate::trace::NoSpan
        };
    }
    macro_rules! event {
        ($($t:tt)*) => {
            ()
        };
    }
    pub(crate) use event as debug;
    pub(crate) use event as error;
    pub(crate) use event as info;
    pub(crate) use event as warn;
    pub(crate) use span as debug_span;
    pub(crate) use span as trace_span;
}

#[cfg(not(feature = "tracing"))]
pub(crate) use off::*;
