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
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

/// `1.50 GiB`, `256.00 MiB`, `12 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = None;
    for name in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = Some(name);
    }
    match unit {
        None => format!("{bytes} B"),
        Some(name) => format!("{value:.2} {name}"),
    }
}
