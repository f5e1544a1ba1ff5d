//! Progress of long admin operations (replica moves, decommissions): a bar when
//! stderr is a terminal, otherwise one line each time the count changes, so that logs
//! and scripts see the same facts a person does.

use std::{
    io::{IsTerminal, Write},
    time::Instant,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Counts `done` out of `total` units of work.
pub struct Progress {
    what: String,
    total: u64,
    last: Option<u64>,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Starts showing progress of `what` (for example "replicas moved off store 4").
    pub fn new(what: impl Into<String>, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})")
                    .expect("the template is valid")
                    .progress_chars("=> "),
            );
            bar
        });
        let what = what.into();
        if let Some(b) = &bar {
            b.set_message(what.clone());
        }
        Progress {
            what,
            total,
            last: None,
            started: Instant::now(),
            bar,
        }
    }

    /// Records that `done` units are finished; `lines` gets a line if not on a terminal.
    pub fn set(&mut self, done: u64, lines: &mut dyn Write) {
        let done = done.min(self.total);
        if self.last == Some(done) {
            return;
        }
        self.last = Some(done);
        match &self.bar {
            Some(b) => b.set_position(done),
            None => {
                let _ = writeln!(
                    lines,
                    "{}: {done}/{} ({:.1}s)",
                    self.what,
                    self.total,
                    self.started.elapsed().as_secs_f64()
                );
            }
        }
    }

    /// Removes the bar (the caller prints the outcome).
    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}
