//! The progress bar on stderr (indicatif): it appears only when a size's run has lasted more than a
//! second and stderr is a terminal, and is cleared when the size completes, so short runs, pipes and
//! test logs see nothing of it. The bench thread updates it from counters every ~100 ms; nothing on the
//! data path touches it.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Runs shorter than this never show a bar.
const SHOW_AFTER: Duration = Duration::from_secs(1);

/// One size's progress: messages measured out of the count, or time out of the duration.
pub struct Progress {
    enabled: bool,
    label: String,
    started: Instant,
    goal: Goal,
    bar: Option<ProgressBar>,
}

#[derive(Clone, Copy)]
enum Goal {
    Count(u64),
    Time(Duration),
}

impl Progress {
    /// A progress reporter; `enabled: false` never draws (e.g. `--no-progress`).
    pub fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            label: String::new(),
            started: Instant::now(),
            goal: Goal::Count(0),
            bar: None,
        }
    }

    /// Names what is being measured next (e.g. `"4k"`).
    pub fn label(&mut self, label: &str) {
        self.label = label.to_string();
    }

    /// A run of `count` messages (or `duration`, if given) begins.
    pub fn start(&mut self, count: u64, duration: Option<Duration>) {
        self.finish();
        self.started = Instant::now();
        self.goal = duration.map_or(Goal::Count(count), Goal::Time);
    }

    /// `measured` messages are done so far.
    pub fn update(&mut self, measured: u64) {
        if !self.enabled {
            return;
        }
        let elapsed = self.started.elapsed();
        if self.bar.is_none() && elapsed >= SHOW_AFTER {
            let (len, template) = match self.goal {
                Goal::Count(n) => (n, "{msg:>6} [{bar:40}] {pos}/{len} msgs, {elapsed}"),
                Goal::Time(d) => (
                    u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                    "{msg:>6} [{bar:40}] {pos}/{len} ms",
                ),
            };
            // Draws nothing when stderr is not a terminal.
            let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(self.label.clone());
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(match self.goal {
                Goal::Count(_) => measured,
                Goal::Time(_) => u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            });
        }
    }

    /// The run ended: clear the bar.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
