//! A pipeline run in the calling process: photon-data without a cluster (no
//! head, raylet or workers). The plan, the stage functions and the sink are
//! the ones a cluster runs, so a pipeline reads, fails and writes the same
//! way in both places; only the compute differs:
//! - the first stage (the read) runs up to `parallel_reads` blocks at once,
//!   each on a thread of its own, delivered in order ahead of the rest;
//! - every later stage runs one block at a time, and an actor stage's
//!   functions are constructed once (a model loads once), as one actor of
//!   the pool would;
//! - every call runs on a blocking thread (driving its own I/O there), so
//!   the runtime's threads stay free for the progress line and the reads;
//! - blocks pass between stages as values: nothing goes through an object
//!   store, and the blocks read ahead are what bounds memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use arrow::array::RecordBatch;

use crate::block_progress::{self, LocalCall};
use crate::error::{Error, Result};
use crate::executor::{Compute, Output, Stage};
use crate::progress::Progress;
use crate::sink::part_name;
use crate::source::SourceBlock;
use crate::stats::{self, Stats};
use crate::steps::{StageActor, Step, map_stage, read_stage};

/// How often the progress line refreshes while a block runs.
const TICK: Duration = Duration::from_millis(200);

/// Where a pipeline runs when it runs in this process: a runtime for its
/// I/O and calls. Cheap to clone.
#[derive(Clone)]
pub struct Local {
    runtime: Arc<tokio::runtime::Runtime>,
    parallel_reads: usize,
}

impl Local {
    /// A local runner: [`photon::runtime_threads`] runtime threads (calls
    /// run on blocking threads), reading two blocks at once.
    pub fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(photon::runtime_threads())
            .thread_name("photon-data-local")
            .enable_all()
            .build()
            .map_err(|e| Error::Invalid(format!("cannot start a runtime for a local run: {e}")))?;
        Ok(Self {
            runtime: Arc::new(runtime),
            parallel_reads: 2,
        })
    }

    /// Blocks the first stage runs at once (at least one); as many are
    /// held, finished, ahead of the next stage. The plan cuts the input into
    /// at least this many blocks.
    pub fn parallel_reads(mut self, blocks: usize) -> Self {
        self.parallel_reads = blocks.max(1);
        self
    }

    /// Blocks the first stage runs at once.
    pub(crate) fn reads_at_once(&self) -> usize {
        self.parallel_reads
    }

    /// The runtime pipelines of this runner use.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }
}

/// A block to run: its source, and its rows when the pipeline started
/// from batches in memory.
pub(crate) struct LocalBlock {
    pub source: SourceBlock,
    pub batch: Option<RecordBatch>,
}

/// Runs `stages` over `blocks`; `deliver` gets each finished block in
/// order and may stop the run by returning false. Returns the blocks
/// skipped after function errors.
pub(crate) fn run(
    local: &Local,
    stages: &[Stage],
    blocks: Vec<LocalBlock>,
    progress: Progress,
    stats: &mut Stats,
    deliver: impl FnMut(Output) -> Result<bool>,
) -> Result<Vec<String>> {
    let mut run = LocalRun {
        stages,
        sources: blocks.iter().map(|b| b.source.clone()).collect(),
        progress,
        stats,
        skipped: Vec::new(),
        rows_finished: 0,
        started: Instant::now(),
    };
    run.stats.started = Some(run.started);
    let result = local.runtime.block_on(async {
        let (reads, reader) = read_ahead(local, stages[0].steps.clone(), blocks);
        let result = run.drive(reads, deliver).await;
        // Reads still running when the run stopped end before the caller
        // cleans up (a read stage may write parts).
        let _ = reader.await;
        result
    });
    run.stats.wall = run.started.elapsed();
    run.progress.finish(run.stats);
    result.map(|()| run.skipped)
}

struct LocalRun<'a> {
    stages: &'a [Stage],
    sources: Vec<SourceBlock>,
    progress: Progress,
    stats: &'a mut Stats,
    skipped: Vec<String>,
    /// Source rows of the blocks out of the last stage (or skipped).
    rows_finished: u64,
    started: Instant,
}

/// What runs a stage after the first: its steps as a task would, or the
/// one actor constructed for it.
#[derive(Clone)]
enum Runs {
    Task(Vec<Step>),
    Actor(Arc<StageActor>),
}

impl LocalRun<'_> {
    /// Takes the read blocks through the later stages, in order.
    async fn drive(
        &mut self,
        mut reads: Reads,
        mut deliver: impl FnMut(Output) -> Result<bool>,
    ) -> Result<()> {
        // Actors construct while the first blocks are read.
        let mut later = Vec::with_capacity(self.stages.len() - 1);
        for stage in &self.stages[1..] {
            later.push(match &stage.compute {
                Compute::Actors(_) => {
                    let steps = stage.steps.clone();
                    let actor = tokio::task::spawn_blocking(move || StageActor::new(steps))
                        .await
                        .map_err(|e| Error::Udf(format!("{}: {e}", stage.name)))?
                        .map_err(|e| {
                            Error::Udf(format!("{}: its actor cannot start: {e}", stage.name))
                        })?;
                    Runs::Actor(Arc::new(actor))
                }
                Compute::Tasks(_) => Runs::Task(stage.steps.clone()),
            });
        }
        while let Some((index, first)) = reads.recv().await {
            // (A one-stage pipeline's block is counted when it is delivered.)
            if first.is_ok() && self.stages.len() > 1 {
                self.progress.stage_done(0);
            }
            let mut output = first;
            for (stage, runs) in later.iter().enumerate().map(|(i, r)| (i + 1, r)) {
                let Ok(block) = output else { break };
                output = self.run_stage(index, stage, runs.clone(), block).await;
                if output.is_ok() && stage + 1 < self.stages.len() {
                    self.progress.stage_done(stage);
                }
            }
            match output {
                Ok(batch) => {
                    if !self.finished(index, batch, &mut deliver)? {
                        return Ok(());
                    }
                }
                Err((stage, message)) => self.failed(index, stage, message)?,
            }
        }
        Ok(())
    }

    /// Runs stage `stage` (past the first) on block `index`, refreshing the
    /// progress with the rows its call reports.
    async fn run_stage(
        &mut self,
        index: usize,
        stage: usize,
        runs: Runs,
        block: RecordBatch,
    ) -> StageOutput {
        let call = Arc::new(LocalCall::default());
        let part = part_name(index);
        let mut running =
            on_blocking_thread(block_progress::scope_local(call.clone(), async move {
                match runs {
                    Runs::Task(steps) => map_stage(block, steps, part).await,
                    Runs::Actor(actor) => actor.apply(block, part).await,
                }
            }));
        let last = stage + 1 == self.stages.len();
        let mut in_flight = vec![0; self.stages.len()];
        in_flight[stage] = 1;
        let mut ticks = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                joined = &mut running => {
                    return joined
                        .unwrap_or_else(|e| Err(format!("the call panicked: {e}")))
                        .map_err(|message| (stage, message));
                }
                _ = ticks.tick() => {
                    let rows = self.sources[index].rows as u64;
                    let within = if last { call.fraction_of(rows) } else { 0 };
                    self.progress.tick(self.rows_finished + within, &in_flight, 0, 0);
                }
            }
        }
    }

    /// Block `index` came out of the last stage. False when `deliver`
    /// wants no more.
    fn finished(
        &mut self,
        index: usize,
        batch: RecordBatch,
        deliver: &mut impl FnMut(Output) -> Result<bool>,
    ) -> Result<bool> {
        let records = stats::history(&batch);
        self.stats
            .block_out(&records, self.started, &mut self.progress);
        for totals in &mut self.stats.stages {
            totals.wall = self.started.elapsed();
        }
        self.progress.stage_done(self.stages.len() - 1);
        self.rows_finished += self.sources[index].rows as u64;
        self.progress
            .tick(self.rows_finished, &vec![0; self.stages.len()], 0, 0);
        deliver(Output {
            index,
            batch: stats::strip(batch),
        })
    }

    /// A stage's call failed on block `index`: skip the block while the
    /// stage allows, else fail the run naming the block's source rows.
    fn failed(&mut self, index: usize, stage: usize, message: String) -> Result<()> {
        let origin = &self.sources[index].origin;
        let name = &self.stages[stage].name;
        if self.skipped.len() < self.stages[stage].max_errored_blocks {
            tracing::warn!(block = index, %origin, %message, "skipping a block the function failed on");
            self.skipped.push(format!("{origin}: {message}"));
            self.stats.skipped_blocks += 1;
            self.rows_finished += self.sources[index].rows as u64;
            return Ok(());
        }
        Err(Error::Udf(format!(
            "{name} failed on block {index} ({origin}): {message}"
        )))
    }
}

/// A stage's output for a block, or the failed stage and its error.
type StageOutput = std::result::Result<RecordBatch, (usize, String)>;

/// The first stage's outputs, by block index.
type Reads = tokio::sync::mpsc::Receiver<(usize, StageOutput)>;

/// Runs `call` on a blocking thread, which drives its I/O: a user
/// function there holds neither a runtime thread nor the caller's.
fn on_blocking_thread<F>(call: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || runtime.block_on(call))
}

/// The first stage over every block, `parallel_reads` at a time, delivered
/// in block order. Dropping the receiver stops the reads: those running
/// finish before the returned handle does, so none writes after the run
/// has cleaned up.
fn read_ahead(
    local: &Local,
    steps: Vec<Step>,
    blocks: Vec<LocalBlock>,
) -> (Reads, tokio::task::JoinHandle<()>) {
    let parallel = local.parallel_reads;
    let (sender, receiver) = tokio::sync::mpsc::channel(parallel);
    let reader = local.runtime.spawn(async move {
        let mut blocks = blocks.into_iter().enumerate();
        let mut running = VecDeque::new();
        loop {
            while running.len() < parallel {
                let Some((index, block)) = blocks.next() else {
                    break;
                };
                let steps = steps.clone();
                let part = part_name(index);
                let read = on_blocking_thread(async move {
                    match block.batch {
                        Some(batch) => map_stage(batch, steps, part).await,
                        None => read_stage(block.source.source, steps, part).await,
                    }
                });
                running.push_back((index, read));
            }
            let Some((index, read)) = running.pop_front() else {
                return;
            };
            let output = read
                .await
                .unwrap_or_else(|e| Err(format!("the call panicked: {e}")));
            if sender
                .send((index, output.map_err(|message| (0, message))))
                .await
                .is_err()
            {
                for (_, read) in running {
                    let _ = read.await;
                }
                return;
            }
        }
    });
    (receiver, reader)
}
