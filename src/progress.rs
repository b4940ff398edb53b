//! Lines printed beside a progress bar.

use indicatif::ProgressBar;

/// Prints `line` above `bar`, or straight to stderr when the bar is hidden
/// (stderr not a terminal: CI logs, pipes), where `ProgressBar::println`
/// prints nothing and failures would vanish.
pub fn note(bar: &ProgressBar, line: impl AsRef<str>) {
    if bar.is_hidden() {
        eprintln!("{}", line.as_ref());
    } else {
        bar.println(line);
    }
}
