//! Progress reporting for long work (transfers, the demo): `indicatif` bars on stderr, hidden
//! when stderr is not a terminal, and human-readable sizes.

#![forbid(unsafe_code)]

use indicatif::{ProgressBar, ProgressStyle};

/// Transfers smaller than this show no bar.
pub const PROGRESS_THRESHOLD_BYTES: u64 = 8 << 20;

/// A byte-counting progress bar on stderr; hidden for totals below
/// [`PROGRESS_THRESHOLD_BYTES`].
pub fn progress_bar(total: u64, message: &str) -> ProgressBar {
    if total < PROGRESS_THRESHOLD_BYTES {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "   {msg:>20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

/// `1.50 GiB`, `256.00 MiB`, `12 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}
