//! Progress of the examples' long loops (an epoch, an evaluation, decoding an image folder):
//! indicatif's bar with the rate and the ETA on a terminal, and where there is none (output
//! sent to a log file, CI) a plain line every [`PLAIN_EVERY`] instead, which a bar cannot give
//! there: a run on a slow adapter (lavapipe on 2 cores trains the default model at about 25
//! images/s, an epoch in about 35 minutes) still shows how far it is and how long it has left.

#![allow(dead_code)] // each example uses its part

use indicatif::{HumanDuration, ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Time between two plain progress lines.
pub const PLAIN_EVERY: Duration = Duration::from_secs(30);

pub struct Progress {
    bar: ProgressBar,
    label: String,
    unit: &'static str,
    /// Without a terminal: when the last plain line was printed (None: a bar, or quiet).
    plain: Option<Instant>,
}

impl Progress {
    /// Progress over `len` items (`unit`, e.g. "images"), labelled `label` (e.g. "epoch 1/8");
    /// nothing at all when `quiet`.
    pub fn new(label: &str, len: u64, unit: &'static str, quiet: bool) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            // Counted without a terminal too (indicatif then draws nothing), for the rate and ETA.
            ProgressBar::new(len)
        };
        let template = "{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}";
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        Progress {
            bar,
            label: label.to_string(),
            unit,
            plain: (!quiet && !terminal).then(Instant::now),
        }
    }

    /// The length, when it is known only after the start (decoding a folder).
    pub fn set_length(&self, len: u64) {
        self.bar.set_length(len);
    }

    /// Move to `pos` items done, with `msg` after the rate (running loss and accuracy).
    pub fn set(&mut self, pos: u64, msg: String) {
        self.bar.set_position(pos);
        if let Some(last) = &mut self.plain {
            let len = self.bar.length().unwrap_or(0);
            if last.elapsed() >= PLAIN_EVERY && pos < len {
                *last = Instant::now();
                let sep = if msg.is_empty() { "" } else { ", " };
                eprintln!(
                    "{}: {pos}/{len} {} ({:.0}%), {:.1} {}/s, eta {}{sep}{msg}",
                    self.label,
                    self.unit,
                    100.0 * pos as f64 / len.max(1) as f64,
                    self.bar.per_sec(),
                    self.unit,
                    HumanDuration(self.bar.eta()),
                );
            }
        }
        self.bar.set_message(msg);
    }

    /// Clear the bar (the caller prints the result).
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}
