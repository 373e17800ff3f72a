//! Tracing, when feature `tracing` is on: the `tracing` crate's span and
//! event macros. Without it the same calls compile to nothing, so a kernel
//! build carries no subscriber machinery.

#[cfg(feature = "tracing")]
pub(crate) use tracing::{debug, error, info, warn};

#[cfg(feature = "tracing")]
pub(crate) use on::{debug_span, trace_span};

/// Whether a subscriber may record the core's debug spans: the hot paths
/// take their traced variant only then.
#[cfg(feature = "tracing")]
#[inline(always)]
pub(crate) fn listening() -> bool {
    on::listening(tracing::Level::DEBUG)
}

/// Nobody listens without the `tracing` feature.
#[cfg(not(feature = "tracing"))]
#[inline(always)]
pub(crate) const fn listening() -> bool {
    false
}

/// Spans that cost one relaxed load when nobody listens: the level is
/// checked against the global maximum before `tracing` builds anything,
/// so the hot paths (map, unmap, sync) carry no span machinery then.
#[cfg(feature = "tracing")]
pub(crate) mod on {
    /// A span, or nothing when its level is off.
    pub(crate) struct Span(pub(crate) Option<tracing::Span>);

    /// An entered [`Span`]; leaves it when dropped. Its drop is a test
    /// and, only for a span, an out-of-line call: the compiler's own drop
    /// of an `Option<EnteredSpan>` is a call even for `None`.
    pub(crate) struct Entered(core::mem::ManuallyDrop<Option<tracing::span::EnteredSpan>>);

    impl Span {
        #[inline(always)]
        pub(crate) fn entered(self) -> Entered {
            Entered(core::mem::ManuallyDrop::new(
                self.0.map(tracing::Span::entered),
            ))
        }
    }

    impl Drop for Entered {
        #[inline(always)]
        fn drop(&mut self) {
            if let Some(s) = self.0.take() {
                leave(s);
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn leave(s: tracing::span::EnteredSpan) {
        drop(s);
    }

    /// Whether anyone may record at `level` (the static and the global
    /// maximum level; a subscriber still filters each span itself).
    #[inline(always)]
    pub(crate) fn listening(level: tracing::Level) -> bool {
        use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
        level <= STATIC_MAX_LEVEL && level <= LevelFilter::current()
    }

    macro_rules! debug_span {
        ($($t:tt)*) => {
            $crate::trace::on::Span(
                $crate::trace::on::listening(tracing::Level::DEBUG)
                    .then(|| tracing::debug_span!($($t)*)),
            )
        };
    }
    macro_rules! trace_span {
        ($($t:tt)*) => {
            $crate::trace::on::Span(
                $crate::trace::on::listening(tracing::Level::TRACE)
                    .then(|| tracing::trace_span!($($t)*)),
            )
        };
    }
    pub(crate) use debug_span;
    pub(crate) use trace_span;
}

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
