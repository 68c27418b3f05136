//! What `cr migrate` shows on a terminal while it works: the phase, and
//! during the transfer the bytes sent, the throughput and the time left
//! (indicatif). Off when standard error is not a terminal, so logs and
//! `--json` stay clean.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Bytes written through it are counted for the progress bar.
pub struct Counted<W> {
    pub inner: W,
    pub sent: Arc<AtomicU64>,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The bar of one migration.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// Bytes the data streams have taken so far.
    pub sent: Arc<AtomicU64>,
}

impl Progress {
    /// A bar on standard error when it is a terminal, else nothing.
    pub fn new(container: &str, peer: &str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{prefix} {spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(format!("{container} -> {peer}:"));
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Progress {
            bar,
            sent: Arc::default(),
        }
    }

    /// A new phase.
    pub fn phase(&self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(what.to_string());
        }
    }

    /// The transfer of `total` bytes begins: bytes, rate and time left.
    pub fn transfer(&self, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} transfer [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta} left",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
        }
    }

    /// Moves the bar to the bytes counted so far.
    pub fn tick(&self) {
        if let Some(bar) = &self.bar {
            bar.set_position(self.sent.load(Ordering::Relaxed));
        }
    }

    /// Back to a phase after the transfer.
    pub fn after_transfer(&self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.set_style(
                ProgressStyle::with_template("{prefix} {spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(what.to_string());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
