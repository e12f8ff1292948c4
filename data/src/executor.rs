//! The streaming executor: runs a pipeline's stages concurrently in the
//! driver, one block at a time per call, with
//! - a memory budget: a new block starts only while the blocks in flight
//!   (estimated from observed bytes per row) fit in it;
//! - actor pools that start at `min` while the first blocks are read, grow
//!   while blocks queue and every actor is busy, shrink when idle, and never
//!   take the CPUs the stages that feed them need;
//! - recovery: a block whose actor, worker or node died, or whose input was
//!   lost, runs again from its source (its lineage: file and rows); a user
//!   function's error fails the run naming the block's source rows, unless
//!   `max_errored_blocks` allows skipping it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use photon::{Context, ObjectRef};

use crate::error::{Error, Result};
use crate::pool::Pool;
use crate::progress::Progress;
use crate::sink::part_name;
use crate::source::SourceBlock;
use crate::stats::{self, Stats};
use crate::steps::{Step, map_stage, read_stage};

/// Attempts per block for cluster failures (lost nodes, dead actors).
const MAX_ATTEMPTS: u32 = 5;
/// How long one wait for results lasts before the loop looks around again.
const POLL: Duration = Duration::from_millis(50);
/// How long a failed run waits for its running calls to end.
const SETTLE: Duration = Duration::from_secs(60);
/// How often the object store's use is sampled for the stats.
const SAMPLE: Duration = Duration::from_millis(500);

/// How a stage runs.
pub(crate) enum Compute {
    /// As tasks, each needing these resources.
    Tasks(photon::TaskOptions),
    /// On a pool of actors.
    Actors(Pool),
}

/// A stage: steps fused into one call per block.
pub(crate) struct Stage {
    pub name: String,
    pub steps: Vec<Step>,
    pub compute: Compute,
    /// User-function errors tolerated before the run fails.
    pub max_errored_blocks: usize,
}

/// Where blocks come from.
pub(crate) enum Input {
    /// Read by the first stage.
    Sources(Vec<SourceBlock>),
    /// Already in the object store (`from_batches`).
    Objects(Vec<(ObjectRef<RecordBatch>, SourceBlock)>),
}

/// A finished block: its index and its last stage's output.
pub(crate) struct Output {
    pub index: usize,
    pub batch: RecordBatch,
}

struct Block {
    source: SourceBlock,
    /// The put object a `from_batches` block starts from.
    object: Option<ObjectRef<RecordBatch>>,
    attempts: u32,
    /// Estimated bytes it holds in the store while in flight.
    charge: u64,
}

struct Running {
    block: usize,
    stage: usize,
    output: ObjectRef<RecordBatch>,
    /// The pool actor running it.
    actor: Option<usize>,
    started: Instant,
}

/// One run of a pipeline.
pub(crate) struct Executor {
    ctx: Context,
    stages: Vec<Stage>,
    blocks: Vec<Block>,
    /// Next block to start.
    next: usize,
    /// Blocks waiting for each stage, with their input.
    queues: Vec<VecDeque<(usize, Option<ObjectRef<RecordBatch>>)>>,
    running: Vec<Running>,
    budget: u64,
    charged: u64,
    /// Largest observed bytes per row of any stage's output.
    bytes_per_row: Option<f64>,
    pub stats: Stats,
    stage_started: Vec<Option<Instant>>,
    skipped: Vec<String>,
    progress: Progress,
    /// Source rows of the blocks out of the last stage (or skipped).
    rows_finished: u64,
    last_sample: Instant,
    started: Instant,
    blocked_since: Option<Instant>,
}

impl Executor {
    pub(crate) fn new(
        ctx: Context,
        stages: Vec<Stage>,
        input: Input,
        budget: u64,
        progress: Progress,
    ) -> Self {
        let blocks: Vec<Block> = match input {
            Input::Sources(sources) => sources
                .into_iter()
                .map(|source| Block {
                    source,
                    object: None,
                    attempts: 0,
                    charge: 0,
                })
                .collect(),
            Input::Objects(objects) => objects
                .into_iter()
                .map(|(object, source)| Block {
                    source,
                    object: Some(object),
                    attempts: 0,
                    charge: 0,
                })
                .collect(),
        };
        let started = Instant::now();
        let stats = Stats {
            started: Some(started),
            ..Stats::of_stages(&stages)
        };
        Self {
            ctx,
            queues: stages.iter().map(|_| VecDeque::new()).collect(),
            stage_started: vec![None; stages.len()],
            stages,
            blocks,
            next: 0,
            running: Vec::new(),
            budget,
            charged: 0,
            bytes_per_row: None,
            stats,
            skipped: Vec::new(),
            progress,
            rows_finished: 0,
            last_sample: Instant::now() - SAMPLE,
            started,
            blocked_since: None,
        }
    }

    /// Blocks skipped after user-function errors.
    pub(crate) fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Runs until every block is out; `deliver` gets each finished block
    /// (in completion order) and may stop the run early by returning false.
    pub(crate) fn run(&mut self, mut deliver: impl FnMut(Output) -> Result<bool>) -> Result<()> {
        let result = self.drive(&mut deliver);
        self.sample_job_memory();
        for stage in &mut self.stages {
            if let Compute::Actors(pool) = &mut stage.compute {
                pool.shutdown(&self.ctx);
            }
        }
        if result.is_err() {
            self.settle();
        }
        self.stats.wall = self.started.elapsed();
        if let Some(since) = self.blocked_since.take() {
            self.stats.backpressure += since.elapsed();
        }
        self.progress.finish(&self.stats);
        result
    }

    /// After a failure: waits for the calls still running (actor calls end
    /// with their actors, stopped just before), so that none writes a part
    /// after the caller removed the staged ones. A task that outlasts
    /// `SETTLE` is left running, with a warning.
    fn settle(&mut self) {
        let outputs: Vec<ObjectRef<RecordBatch>> =
            self.running.drain(..).map(|r| r.output).collect();
        if outputs.is_empty() {
            return;
        }
        tracing::info!(
            running = outputs.len(),
            "the run failed: waiting for its running calls to end before cleaning up"
        );
        let (_, still_running) = self.ctx.wait(&outputs, outputs.len(), Some(SETTLE));
        if !still_running.is_empty() {
            tracing::warn!(
                running = still_running.len(),
                "calls still running {SETTLE:?} after the run failed; a part they write later \
                 may be left in the destination's _temporary-* directory"
            );
        }
    }

    fn drive(&mut self, deliver: &mut impl FnMut(Output) -> Result<bool>) -> Result<()> {
        for index in 0..self.stages.len() {
            if let Compute::Actors(pool) = &mut self.stages[index].compute {
                pool.start(&self.ctx)?;
            }
        }
        loop {
            self.admit();
            for stage in 0..self.stages.len() {
                self.dispatch(stage)?;
            }
            if self.running.is_empty() && self.next == self.blocks.len() {
                return Ok(());
            }
            let refs: Vec<ObjectRef<RecordBatch>> =
                self.running.iter().map(|r| r.output.clone()).collect();
            let (ready, _) = self.ctx.wait(&refs, 1, Some(POLL));
            for object in ready {
                let position = self
                    .running
                    .iter()
                    .position(|r| r.output.id() == object.id())
                    .expect("a running call");
                let running = self.running.swap_remove(position);
                if !self.finished(running, deliver)? {
                    return Ok(());
                }
            }
            self.look_around();
        }
    }

    /// Starts blocks while the budget allows (always at least one) and no
    /// pool has a full backlog.
    fn admit(&mut self) {
        while self.next < self.blocks.len() {
            if self.pool_backlog_full() {
                return;
            }
            let charge = self.estimate(&self.blocks[self.next].source);
            if self.charged > 0 && self.charged + charge > self.budget {
                self.blocked_since.get_or_insert_with(Instant::now);
                return;
            }
            if let Some(since) = self.blocked_since.take() {
                self.stats.backpressure += since.elapsed();
            }
            let index = self.next;
            self.next += 1;
            self.blocks[index].charge = charge;
            self.charged += charge;
            let input = self.blocks[index].object.clone();
            self.queues[0].push_back((index, input));
        }
    }

    /// Whether as many blocks as some pool can take next are already on
    /// their way to it (read, being read, or queued at it). Reading further
    /// ahead of a slow pool only fills the object store: with a 1..=2 pool
    /// of identity actors, 1 GiB of Parquet sat in the store at once, every
    /// block in fresh shared memory.
    fn pool_backlog_full(&self) -> bool {
        self.stages
            .iter()
            .enumerate()
            .any(|(stage, s)| match &s.compute {
                Compute::Actors(pool) => {
                    let running = self.running.iter().filter(|r| r.stage < stage).count();
                    let queued: usize = self.queues[..=stage].iter().map(VecDeque::len).sum();
                    running + queued >= pool.backlog_limit()
                }
                Compute::Tasks(_) => false,
            })
    }

    /// Store bytes a block holds while in flight: its input and its output
    /// of the current stage, at the largest bytes per row seen so far.
    fn estimate(&self, source: &SourceBlock) -> u64 {
        let per_row = self
            .bytes_per_row
            .unwrap_or(source.bytes as f64 / source.rows.max(1) as f64)
            .max(source.bytes as f64 / source.rows.max(1) as f64);
        (2.0 * per_row * source.rows as f64) as u64
    }

    fn dispatch(&mut self, stage: usize) -> Result<()> {
        while let Some((block, input)) = self.queues[stage].front().cloned() {
            if block != 0 && self.first_block_upstream_of(stage) {
                // The first block goes first (it is the small one with
                // `first_block_rows`): later blocks whose reads finished
                // sooner would queue ahead of it at the actors.
                return Ok(());
            }
            let steps = self.stages[stage].steps.clone();
            // Only a stage ending in a write uses it.
            let part = part_name(block);
            let (output, actor) = match &mut self.stages[stage].compute {
                Compute::Tasks(options) => {
                    let output = match &input {
                        None => read_stage::remote_with(
                            &self.ctx,
                            options.clone(),
                            self.blocks[block].source.source.clone(),
                            steps,
                            part,
                        ),
                        Some(input) => {
                            map_stage::remote_with(&self.ctx, options.clone(), input, steps, part)
                        }
                    };
                    (output, None)
                }
                Compute::Actors(pool) => {
                    let Some(input) = &input else {
                        unreachable!("an actor stage is never the first")
                    };
                    match pool.call(input, part) {
                        Some((actor, output)) => (output, Some(actor)),
                        None => {
                            pool.grow_if_needed(&self.ctx, self.queues[stage].len())?;
                            return Ok(());
                        }
                    }
                }
            };
            self.queues[stage].pop_front();
            tracing::debug!(block, stage, ?actor, "block submitted");
            self.stage_started[stage].get_or_insert_with(Instant::now);
            self.running.push(Running {
                block,
                stage,
                output,
                actor,
                started: Instant::now(),
            });
        }
        Ok(())
    }

    /// Whether block 0 is still queued or running in a stage before `stage`
    /// (then it will reach `stage`: no wait on it can last forever).
    fn first_block_upstream_of(&self, stage: usize) -> bool {
        self.running.iter().any(|r| r.block == 0 && r.stage < stage)
            || self.queues[..stage]
                .iter()
                .any(|queue| queue.iter().any(|(block, _)| *block == 0))
    }

    /// Handles a finished call. False when `deliver` wants no more.
    fn finished(
        &mut self,
        running: Running,
        deliver: &mut impl FnMut(Output) -> Result<bool>,
    ) -> Result<bool> {
        let Running {
            block,
            stage,
            output,
            actor,
            started,
        } = running;
        if let (Some(actor), Compute::Actors(pool)) = (actor, &mut self.stages[stage].compute) {
            pool.done(actor, started.elapsed());
        }
        let outcome = self.ctx.runtime().block_on(self.ctx.ready_async(&output));
        if let Err(err) = outcome {
            return self.failed(block, stage, actor, err).map(|()| true);
        }
        self.stats.stages[stage].wall = self.stage_started[stage]
            .map(|s| s.elapsed())
            .unwrap_or_default();
        if stage + 1 < self.stages.len() {
            self.progress.stage_done(stage);
            // Earlier blocks first (this queue only grows here, so it stays
            // sorted): the small first block reaches the next stage before
            // blocks whose reads happened to finish sooner.
            let queue = &mut self.queues[stage + 1];
            let at = queue.partition_point(|(queued, _)| *queued < block);
            queue.insert(at, (block, Some(output)));
            return Ok(true);
        }
        // The last stage: fetch the result (a write summary, or the data).
        let batch = match self.ctx.get_batch(&output) {
            Ok(batch) => batch,
            Err(err) => return self.failed(block, stage, actor, err).map(|()| true),
        };
        let records = stats::history(&batch);
        self.stats
            .block_out(&records, self.started, &mut self.progress);
        for record in &records {
            if record.rows > 0 {
                let per_row = record.bytes as f64 / record.rows as f64;
                self.bytes_per_row = Some(self.bytes_per_row.unwrap_or(0.0).max(per_row));
            }
        }
        self.charged -= self.blocks[block].charge;
        self.progress.stage_done(stage);
        self.rows_finished += self.blocks[block].source.rows as u64;
        deliver(Output {
            index: block,
            batch: stats::strip(batch),
        })
    }

    /// A call failed: run the block again from its source, skip it, or fail.
    fn failed(
        &mut self,
        block: usize,
        stage: usize,
        actor: Option<usize>,
        err: photon::Error,
    ) -> Result<()> {
        let origin = self.blocks[block].source.origin.clone();
        let name = self.stages[stage].name.clone();
        match err {
            photon::Error::TaskFailed { message, .. } => {
                if self.skipped.len() < self.stages[stage].max_errored_blocks {
                    tracing::warn!(block, %origin, %message, "skipping a block the function failed on");
                    self.skipped.push(format!("{origin}: {message}"));
                    self.stats.skipped_blocks += 1;
                    self.charged -= self.blocks[block].charge;
                    self.rows_finished += self.blocks[block].source.rows as u64;
                    return Ok(());
                }
                Err(Error::Udf(format!(
                    "{name} failed on block {block} ({origin}): {message}"
                )))
            }
            photon::Error::ActorDied { reason, .. } if reason.contains("constructor failed") => {
                // Starting another actor would fail the same way.
                Err(Error::Udf(format!(
                    "{name}: its actors cannot start: {reason}"
                )))
            }
            other => {
                if let (Some(actor), Compute::Actors(pool)) =
                    (actor, &mut self.stages[stage].compute)
                    && matches!(other, photon::Error::ActorDied { .. })
                {
                    pool.lost(actor, &self.ctx);
                }
                let entry = &mut self.blocks[block];
                entry.attempts += 1;
                if entry.attempts >= MAX_ATTEMPTS {
                    return Err(Error::Cluster(format!(
                        "{name}: block {block} ({origin}) failed {} times; last: {other}",
                        entry.attempts
                    )));
                }
                tracing::info!(block, %origin, stage = %name, error = %other, "running the block again from its source");
                self.stats.stages[stage].retries += 1;
                // Past the first stage, earlier stages' work is redone too.
                if stage > 0 {
                    self.stats.reconstructions += 1;
                }
                let input = entry.object.clone();
                self.queues[0].push_front((block, input));
                Ok(())
            }
        }
    }

    /// Samples the store, scales pools down, refreshes progress.
    fn look_around(&mut self) {
        if self.last_sample.elapsed() >= SAMPLE {
            self.last_sample = Instant::now();
            if let Ok(used) = self.ctx.object_store_used() {
                self.stats.peak_object_store_bytes = self.stats.peak_object_store_bytes.max(used);
            }
            self.sample_job_memory();
        }
        let upstream_busy: Vec<bool> = (0..self.stages.len())
            .map(|stage| {
                self.next < self.blocks.len()
                    || self.running.iter().any(|r| r.stage < stage)
                    || self.queues[..stage].iter().any(|q| !q.is_empty())
            })
            .collect();
        for (index, stage) in self.stages.iter_mut().enumerate() {
            if let Compute::Actors(pool) = &mut stage.compute {
                pool.note_constructed(&self.ctx);
                if self.queues[index].is_empty() && !upstream_busy[index] {
                    pool.shrink_idle(&self.ctx);
                }
                self.progress.pool(index, pool.describe());
            }
        }
        let in_flight: Vec<usize> = (0..self.stages.len())
            .map(|s| self.running.iter().filter(|r| r.stage == s).count())
            .collect();
        let rows_done = self.rows_finished + self.rows_in_flight();
        self.progress
            .tick(rows_done, &in_flight, self.charged, self.budget);
    }

    /// Keeps the largest resident memory of the job's processes seen so far.
    fn sample_job_memory(&mut self) {
        if let Ok(now) = self.ctx.job_memory()
            && now.resident_bytes > self.stats.peak_job_memory.resident_bytes
        {
            self.stats.peak_job_memory = now;
        }
    }

    /// Source rows that the last stage's running calls have done, as far as
    /// they reported (a call reports the share of its block it has done).
    fn rows_in_flight(&self) -> u64 {
        let last = self.stages.len() - 1;
        self.running
            .iter()
            .filter(|r| r.stage == last)
            .filter_map(|r| {
                let progress = self.ctx.progress(&r.output)?;
                let rows = self.blocks[r.block].source.rows as u64;
                Some(rows * progress.done / progress.total.max(1))
            })
            .sum()
    }
}
