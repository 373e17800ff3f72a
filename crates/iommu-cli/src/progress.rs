//! Progress on standard error for work that takes more than a moment
//! (benchmarks, large platforms), drawn only when standard error is a
//! terminal, so pipes and logs stay clean.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal as _;
use std::time::Duration;

fn target(show: bool) -> ProgressDrawTarget {
    if show && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// A spinner with `msg`, ticking on its own; hidden unless `show` and
/// standard error is a terminal.
pub fn spinner(show: bool, msg: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, target(show));
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(msg.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A bar of `len` steps named by their messages.
pub fn steps(len: u64, msg: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), target(true));
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(msg.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
