//! Progress of a run, in rows: rows done of the total, rows/s over the last
//! few seconds of work (not counting the start-up before the first rows)
//! and the time left, counting the rows of blocks still being
//! worked on as their calls report them (a block of thousands of rows
//! otherwise shows nothing for many seconds, then jumps). On a terminal,
//! indicatif draws a bar for the rows and one per stage (blocks done, calls
//! running, the pool's actors); otherwise a plain line goes to stderr every
//! few seconds (`PHOTON_PROGRESS_INTERVAL_MS`, default 5000).

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stats::Stats;

/// How often a plain progress line is printed, unless the environment says.
const LINE_EVERY: Duration = Duration::from_secs(5);
/// Overrides [`LINE_EVERY`], in milliseconds.
pub const INTERVAL_ENV: &str = "PHOTON_PROGRESS_INTERVAL_MS";
/// The rate is over this much recent time (all of it, early in a run).
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Where progress goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgressMode {
    /// Bars on a terminal, lines otherwise.
    #[default]
    Auto,
    /// Plain lines on stderr.
    Lines,
    /// Nothing.
    Off,
}

impl ProgressMode {
    /// `Auto` decided for this process's stderr.
    fn resolved(self) -> Self {
        match self {
            ProgressMode::Auto if !std::io::stderr().is_terminal() => ProgressMode::Lines,
            other => other,
        }
    }
}

/// Rows done of a total, drawn as a bar or printed as lines: the progress of
/// a pipeline, and of anything else that counts rows (`photon embed
/// --in-process`).
pub struct RowsProgress {
    mode: ProgressMode,
    label: String,
    total: u64,
    done: u64,
    /// Recent (time, rows done) samples, oldest first.
    samples: VecDeque<(Instant, u64)>,
    bar: Option<ProgressBar>,
    line_every: Duration,
    last_line: Instant,
}

impl RowsProgress {
    /// Progress over `total` rows, named `label` (`photon-data`, `photon embed`).
    pub fn new(label: &str, total: u64, mode: ProgressMode) -> Self {
        Self::with_bars(label, total, mode, None)
    }

    fn with_bars(
        label: &str,
        total: u64,
        mode: ProgressMode,
        bars: Option<&MultiProgress>,
    ) -> Self {
        let mode = mode.resolved();
        let bar = (mode == ProgressMode::Auto).then(|| {
            // A bar draws on stderr unless a group of bars draws it.
            let bar = ProgressBar::new(total);
            let bar = match bars {
                Some(bars) => bars.add(bar),
                None => bar,
            };
            bar.set_style(
                ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len} rows {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        let line_every = std::env::var(INTERVAL_ENV)
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(LINE_EVERY, Duration::from_millis);
        let now = Instant::now();
        Self {
            mode,
            label: label.to_string(),
            total,
            done: 0,
            samples: VecDeque::from([(now, 0)]),
            bar,
            line_every,
            last_line: now,
        }
    }

    /// `done` rows are done; `detail` says what runs (stages, pools). Redraws
    /// the bar, or prints a line when one is due.
    pub fn set(&mut self, done: u64, detail: &str) {
        let now = Instant::now();
        self.done = done.min(self.total);
        if self.done == 0 {
            // Nothing done yet (workers starting, a model loading): the rate
            // counts from the last moment before the first rows, not from
            // the start, so it shows the pace of the work from the outset.
            self.samples.clear();
        }
        self.samples.push_back((now, self.done));
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= RATE_WINDOW {
            self.samples.pop_front();
        }
        let rate = self.rate();
        let eta = self.eta(rate);
        match (&self.bar, self.mode) {
            (Some(bar), _) => {
                bar.set_position(self.done);
                bar.set_message(format!("{rate:.0} rows/s, eta {eta} | {detail}"));
            }
            (None, ProgressMode::Lines) if self.last_line.elapsed() >= self.line_every => {
                self.last_line = now;
                eprintln!("{}: {} | {detail}", self.label, self.status(rate, &eta));
            }
            _ => {}
        }
    }

    /// `12345/20000 rows (61.7%), 218 rows/s, eta 35 s`.
    fn status(&self, rate: f64, eta: &str) -> String {
        format!(
            "{}/{} rows ({:.1}%), {rate:.0} rows/s, eta {eta}",
            self.done,
            self.total,
            100.0 * self.done as f64 / self.total.max(1) as f64
        )
    }

    /// Rows per second over the recent window.
    pub fn rate(&self) -> f64 {
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return 0.0;
        };
        let seconds = last.0.duration_since(first.0).as_secs_f64();
        if seconds < 1e-3 {
            return 0.0;
        }
        (last.1 - first.1) as f64 / seconds
    }

    fn eta(&self, rate: f64) -> String {
        let left = self.total.saturating_sub(self.done);
        if left == 0 {
            return "0 s".into();
        }
        if rate <= 0.0 {
            return "?".into();
        }
        let seconds = (left as f64 / rate).round() as u64;
        match seconds {
            0..60 => format!("{seconds} s"),
            60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
            _ => format!("{}h{:02}m", seconds / 3600, seconds / 60 % 60),
        }
    }

    /// Ends the bar, or prints a last line.
    pub fn finish(&mut self, detail: &str) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None if self.mode == ProgressMode::Lines => {
                let rate = self.rate();
                eprintln!("{}: {} | {detail}", self.label, self.status(rate, "0 s"));
            }
            None => {}
        }
    }
}

struct StageLine {
    name: String,
    done: u64,
    in_flight: usize,
    pool: Option<String>,
    ran_on: Option<String>,
    bar: Option<ProgressBar>,
}

impl StageLine {
    /// `running 2, 1 active, 1 constructing; fast-cpu, cpu, fp32`.
    fn describe(&self) -> String {
        let mut text = format!("{} running", self.in_flight);
        if let Some(pool) = &self.pool {
            text.push_str(", ");
            text.push_str(pool);
        }
        if let Some(ran_on) = &self.ran_on {
            text.push_str("; ");
            text.push_str(ran_on);
        }
        text
    }
}

/// A pipeline run's progress: its rows, and each stage's blocks.
pub(crate) struct Progress {
    rows: RowsProgress,
    blocks: u64,
    stages: Vec<StageLine>,
    _bars: Option<MultiProgress>,
}

impl Progress {
    pub(crate) fn new(mode: ProgressMode, names: &[String], blocks: u64, rows: u64) -> Self {
        let mode = mode.resolved();
        let bars = (mode == ProgressMode::Auto)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        let rows = RowsProgress::with_bars("photon-data", rows, mode, bars.as_ref());
        let style =
            ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len} blocks {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        let stages = names
            .iter()
            .map(|name| StageLine {
                name: name.clone(),
                done: 0,
                in_flight: 0,
                pool: None,
                ran_on: None,
                bar: bars.as_ref().map(|bars| {
                    let bar = bars.add(ProgressBar::new(blocks));
                    bar.set_style(style.clone());
                    bar.set_prefix(shorten(name, 28));
                    bar
                }),
            })
            .collect();
        Self {
            rows,
            blocks,
            stages,
            _bars: bars,
        }
    }

    /// Stage `stage` finished a block.
    pub(crate) fn stage_done(&mut self, stage: usize) {
        let line = &mut self.stages[stage];
        line.done += 1;
        if let Some(bar) = &line.bar {
            bar.set_position(line.done);
        }
    }

    /// What ran the function of `stage` (the latest block's description).
    pub(crate) fn ran_on(&mut self, stage: usize, description: &str) {
        self.stages[stage].ran_on = Some(description.to_string());
    }

    /// The pool of `stage` now.
    pub(crate) fn pool(&mut self, stage: usize, description: String) {
        self.stages[stage].pool = Some(description);
    }

    /// Rows done (those of running blocks included, as far as their calls
    /// reported), calls in flight per stage and store use; redraws or prints.
    pub(crate) fn tick(&mut self, rows_done: u64, in_flight: &[usize], charged: u64, budget: u64) {
        for (line, &count) in self.stages.iter_mut().zip(in_flight) {
            line.in_flight = count;
            if let Some(bar) = &line.bar {
                bar.set_message(line.describe());
            }
        }
        let detail = self.detail(charged, budget);
        self.rows.set(rows_done, &detail);
    }

    /// `read 4/4 blocks (0 running) | map_batches(Embed) 1/4 blocks (…) | store 12/4096 MiB`.
    fn detail(&self, charged: u64, budget: u64) -> String {
        let stages: Vec<String> = self
            .stages
            .iter()
            .map(|line| {
                format!(
                    "{} {}/{} blocks ({})",
                    line.name,
                    line.done,
                    self.blocks,
                    line.describe()
                )
            })
            .collect();
        if budget == 0 {
            // A local run: no object store to budget.
            return stages.join(" | ");
        }
        format!(
            "{} | in flight {} of {} MiB budget",
            stages.join(" | "),
            charged >> 20,
            budget >> 20
        )
    }

    /// Clears the bars, or prints a last line.
    pub(crate) fn finish(&mut self, stats: &Stats) {
        for line in &self.stages {
            if let Some(bar) = &line.bar {
                bar.finish_and_clear();
            }
        }
        self.rows
            .finish(&format!("done in {:.2} s", stats.wall.as_secs_f64()));
    }
}

fn shorten(name: &str, width: usize) -> String {
    if name.chars().count() <= width {
        return name.to_string();
    }
    let mut short: String = name.chars().take(width - 1).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_covers_the_recent_window_and_the_eta_follows_it() {
        let mut progress = RowsProgress::new("test", 1_000, ProgressMode::Off);
        let start = Instant::now() - Duration::from_secs(30);
        // 10 rows/s for 20 s, then 50 rows/s for the last 10 s.
        progress.samples = VecDeque::from([
            (start, 0),
            (start + Duration::from_secs(20), 200),
            (start + Duration::from_secs(25), 450),
            (start + Duration::from_secs(30), 700),
        ]);
        progress.set(700, "");
        let rate = progress.rate();
        assert!(
            (45.0..=55.0).contains(&rate),
            "recent rate, not the average: {rate}"
        );
        assert_eq!(progress.eta(rate), "6 s");
        assert_eq!(progress.eta(0.0), "?");
        assert_eq!(progress.eta(1.0), "5m00s");
    }
}
