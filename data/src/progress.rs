//! Progress of a run: a bar per stage on a terminal (blocks done/total,
//! rows/s, calls in flight, the pool's actors), plain lines every few
//! seconds otherwise (logs, CI), and nothing when switched off.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stats::Stats;

/// How often a plain progress line is printed.
const LINE_EVERY: Duration = Duration::from_secs(5);

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

struct StageLine {
    name: String,
    done: u64,
    in_flight: usize,
    pool: Option<String>,
    bar: Option<ProgressBar>,
}

/// The run's progress display.
pub(crate) struct Progress {
    mode: ProgressMode,
    total: u64,
    rows: u64,
    stages: Vec<StageLine>,
    started: Instant,
    last_line: Instant,
    _bars: Option<MultiProgress>,
}

impl Progress {
    pub(crate) fn new(mode: ProgressMode, names: &[String], total: u64) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Auto,
            ProgressMode::Auto => ProgressMode::Lines,
            other => other,
        };
        let bars = (mode == ProgressMode::Auto)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        let style = ProgressStyle::with_template("{prefix:>28} {bar:30} {pos}/{len} blocks {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        let stages = names
            .iter()
            .map(|name| StageLine {
                name: name.clone(),
                done: 0,
                in_flight: 0,
                pool: None,
                bar: bars.as_ref().map(|bars| {
                    let bar = bars.add(ProgressBar::new(total));
                    bar.set_style(style.clone());
                    bar.set_prefix(shorten(name, 28));
                    bar
                }),
            })
            .collect();
        Self {
            mode,
            total,
            rows: 0,
            stages,
            started: Instant::now(),
            last_line: Instant::now(),
            _bars: bars,
        }
    }

    /// Stage `stage` finished a block (`rows`: output rows, when known).
    pub(crate) fn stage_done(&mut self, stage: usize, rows: u64) {
        if stage + 1 == self.stages.len() {
            self.rows += rows;
        }
        let line = &mut self.stages[stage];
        line.done += 1;
        if let Some(bar) = &line.bar {
            bar.set_position(line.done);
        }
    }

    /// The pool of `stage` now.
    pub(crate) fn pool(&mut self, stage: usize, description: String) {
        self.stages[stage].pool = Some(description);
    }

    /// Calls in flight per stage and store use; redraws or prints a line.
    pub(crate) fn tick(&mut self, in_flight: &[usize], charged: u64, budget: u64, peak: u64) {
        for (line, &count) in self.stages.iter_mut().zip(in_flight) {
            line.in_flight = count;
        }
        let rate = self.rows as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        match self.mode {
            ProgressMode::Auto => {
                for line in &self.stages {
                    if let Some(bar) = &line.bar {
                        let mut msg = format!("{} running", line.in_flight);
                        if let Some(pool) = &line.pool {
                            msg.push_str(", ");
                            msg.push_str(pool);
                        }
                        bar.set_message(msg);
                    }
                }
                if let Some(last) = self.stages.last().and_then(|l| l.bar.as_ref()) {
                    last.set_message(format!(
                        "{} running, {rate:.0} rows/s, budget {}/{} MiB",
                        self.stages.last().map_or(0, |l| l.in_flight),
                        charged >> 20,
                        budget >> 20
                    ));
                }
            }
            ProgressMode::Lines if self.last_line.elapsed() >= LINE_EVERY => {
                self.last_line = Instant::now();
                let stages: Vec<String> = self
                    .stages
                    .iter()
                    .map(|l| {
                        let pool = l
                            .pool
                            .as_deref()
                            .map(|p| format!(", {p}"))
                            .unwrap_or_default();
                        format!(
                            "{} {}/{} ({} running{pool})",
                            l.name, l.done, self.total, l.in_flight
                        )
                    })
                    .collect();
                eprintln!(
                    "photon-data: {} | {rate:.0} rows/s | in flight {} of {} MiB budget | peak store {} MiB",
                    stages.join(" | "),
                    charged >> 20,
                    budget >> 20,
                    peak >> 20
                );
            }
            _ => {}
        }
    }

    /// Clears the bars; prints the stats on a line in `Lines` mode.
    pub(crate) fn finish(&mut self, stats: &Stats) {
        for line in &self.stages {
            if let Some(bar) = &line.bar {
                bar.finish();
            }
        }
        if self.mode == ProgressMode::Lines {
            eprintln!("photon-data: done in {:.2}s", stats.wall.as_secs_f64());
        }
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
