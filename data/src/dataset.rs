//! The user's handle: a lazy pipeline built with `read_parquet`, `range` or
//! `from_batches`, then `select_columns`, `limit`, `map_batches`, and run by
//! `write_parquet`, `iter_batches`, `count`, `take` or `schema`.

use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use photon::{Context, TaskOptions};

use crate::error::{Error, Result};
use crate::executor::{Compute, Executor, Input, Output, Stage};
use crate::filter::{self, Predicate};
use crate::local::{self, Local, LocalBlock};
use crate::pool::{Pool, PoolSpec};
use crate::progress::{Progress, ProgressMode};
use crate::sink::{Part, Sink, WriteSummary};
use crate::source::{self, Cutting, Needs, SourceBlock};
use crate::stats::Stats;
use crate::steps::{Source, Step};
use crate::udf::{self, BatchUdf};

/// Default target size of a block read from Parquet.
pub const DEFAULT_BLOCK_BYTES: u64 = 64 << 20;
/// Rows per block of `range`.
const RANGE_BLOCK_ROWS: usize = 100_000;

/// How `write_parquet_with` writes.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// Replace what the destination holds.
    pub overwrite: bool,
    /// Stored under `metadata` in the `_SUCCESS` manifest (the job's model,
    /// inputs, versions).
    pub metadata: serde_json::Value,
}

/// How `map_batches` runs its function.
#[derive(Clone, Debug)]
pub struct MapOptions {
    batch_size: Option<usize>,
    actors: Option<RangeInclusive<usize>>,
    num_cpus: f64,
    num_gpus: f64,
    resources: Vec<(String, f64)>,
    max_concurrency: u32,
    max_errored_blocks: usize,
}

impl Default for MapOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl MapOptions {
    /// As tasks, one CPU each, whole blocks per call, no errors tolerated.
    pub fn new() -> Self {
        Self {
            batch_size: None,
            actors: None,
            num_cpus: 1.0,
            num_gpus: 0.0,
            resources: Vec::new(),
            max_concurrency: 1,
            max_errored_blocks: 0,
        }
    }

    /// Rows per call of the function (zero-copy slices of a block).
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch_size = Some(rows.max(1));
        self
    }

    /// On a pool of `min..=max` actors instead of tasks (the function is
    /// constructed once per actor).
    pub fn actors(mut self, range: RangeInclusive<usize>) -> Self {
        self.actors = Some(range);
        self
    }

    /// CPUs per task or actor (0 allowed).
    pub fn num_cpus(mut self, cpus: f64) -> Self {
        self.num_cpus = cpus;
        self
    }

    /// GPUs per task or actor; fractions share a GPU.
    pub fn num_gpus(mut self, gpus: f64) -> Self {
        self.num_gpus = gpus;
        self
    }

    /// An amount of a custom resource per task or actor (only nodes started
    /// with it run them).
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources.push((name.to_string(), amount));
        self
    }

    /// Blocks one actor works on at once.
    pub fn max_concurrency(mut self, calls: u32) -> Self {
        self.max_concurrency = calls.max(1);
        self
    }

    /// Blocks the function may fail on before the run fails; skipped blocks
    /// are listed in the manifest.
    pub fn max_errored_blocks(mut self, blocks: usize) -> Self {
        self.max_errored_blocks = blocks;
        self
    }
}

#[derive(Clone)]
enum SourceSpec {
    Parquet(Vec<String>),
    Range(i64),
    Batches(Vec<RecordBatch>),
}

#[derive(Clone)]
struct MapOp {
    /// Short name for stage names.
    label: String,
    udf: String,
    args: Vec<u8>,
    options: MapOptions,
    input_columns: Vec<(String, Vec<DataType>)>,
}

#[derive(Clone)]
enum Op {
    Select(Vec<String>),
    Filter(Predicate),
    Map(MapOp),
}

/// Where a pipeline runs: on a cluster (`&Context`), or in this process
/// (`&Local`). Every constructor takes either.
#[derive(Clone)]
pub enum Runner {
    /// Tasks and actors on the cluster the context is connected to.
    Cluster(Context),
    /// In the calling process, without a cluster.
    Local(Local),
}

impl From<&Context> for Runner {
    fn from(ctx: &Context) -> Self {
        Self::Cluster(ctx.clone())
    }
}

impl From<&Local> for Runner {
    fn from(local: &Local) -> Self {
        Self::Local(local.clone())
    }
}

impl Runner {
    /// The runtime the pipeline's I/O runs on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        match self {
            Self::Cluster(ctx) => ctx.runtime(),
            Self::Local(local) => local.runtime(),
        }
    }
}

/// A lazy pipeline. Nothing runs until a consuming method is called.
#[derive(Clone)]
pub struct Dataset {
    runner: Runner,
    source: SourceSpec,
    ops: Vec<Op>,
    limit: Option<usize>,
    repartition: Option<usize>,
    row_numbers: Option<String>,
    block_bytes: u64,
    first_block_rows: Option<usize>,
    read_cpus: f64,
    memory_budget: Option<u64>,
    progress: ProgressMode,
    /// An error found while building (reported when the pipeline runs).
    invalid: Option<String>,
    last_stats: Arc<Mutex<Option<Stats>>>,
}

/// Reads Parquet files: local paths, `file://` or `s3://` URLs, directories
/// (their `*.parquet`) and `dir/*.parquet` globs.
pub fn read_parquet<S: Into<String>>(
    on: impl Into<Runner>,
    urls: impl IntoIterator<Item = S>,
) -> Dataset {
    Dataset::new(
        on.into(),
        SourceSpec::Parquet(urls.into_iter().map(Into::into).collect()),
    )
}

/// Ids `0..n` in an Int64 column `id`.
pub fn range(on: impl Into<Runner>, n: u64) -> Dataset {
    Dataset::new(on.into(), SourceSpec::Range(n.min(i64::MAX as u64) as i64))
}

/// The given batches, one block each.
pub fn from_batches(on: impl Into<Runner>, batches: Vec<RecordBatch>) -> Dataset {
    Dataset::new(on.into(), SourceSpec::Batches(batches))
}

/// One stage before its compute is built.
struct Draft {
    names: Vec<String>,
    steps: Vec<Step>,
    actors: Option<MapOptions>,
    cpus: f64,
    gpus: f64,
    resources: Vec<(String, f64)>,
    max_errored_blocks: usize,
}

impl Dataset {
    fn new(runner: Runner, source: SourceSpec) -> Self {
        Self {
            runner,
            source,
            ops: Vec::new(),
            limit: None,
            repartition: None,
            row_numbers: None,
            block_bytes: DEFAULT_BLOCK_BYTES,
            first_block_rows: None,
            read_cpus: 1.0,
            memory_budget: None,
            progress: ProgressMode::Auto,
            invalid: None,
            last_stats: Arc::default(),
        }
    }

    /// Keeps these columns, in this order (read only these from Parquet).
    pub fn select_columns(mut self, columns: &[&str]) -> Self {
        self.ops.push(Op::Select(
            columns.iter().map(|c| (*c).to_string()).collect(),
        ));
        self
    }

    /// Adds an Int64 column `column` numbering the rows over the whole input
    /// (files in name order), as they were read: ids for inputs without one.
    /// Parquet sources only.
    pub fn with_row_numbers(mut self, column: &str) -> Self {
        if !matches!(self.source, SourceSpec::Parquet(_)) {
            self.invalid
                .get_or_insert("with_row_numbers works on read_parquet sources".into());
        }
        self.row_numbers = Some(column.to_string());
        self
    }

    /// Keeps the rows `predicate` holds for: `filter(col("lang").eq("en"))`.
    /// Columns a filter reads before the first `map_batches` are checked
    /// against the input before anything runs.
    pub fn filter(mut self, predicate: Predicate) -> Self {
        self.ops.push(Op::Filter(predicate));
        self
    }

    /// Runs the pipeline as `blocks` blocks of equal input rows (fewer when
    /// the input has fewer rows), so a write makes that many parts. Every operator maps a block to one
    /// block, so the rows are rebalanced where they are read; a filter or a
    /// function that drops rows can leave blocks of unequal size.
    pub fn repartition(mut self, blocks: usize) -> Self {
        if blocks == 0 {
            self.invalid
                .get_or_insert("repartition(0): a pipeline needs one block at least".into());
        }
        self.repartition = Some(blocks.max(1));
        self
    }

    /// Keeps the first `rows` input rows.
    pub fn limit(mut self, rows: usize) -> Self {
        self.limit = Some(self.limit.map_or(rows, |l| l.min(rows)));
        self
    }

    /// Transforms every batch with `U`, constructed from `args` on each
    /// worker (once per actor with `MapOptions::actors`).
    pub fn map_batches<U: BatchUdf>(mut self, args: U::Args, options: MapOptions) -> Self {
        let name = std::any::type_name::<U>();
        if !udf::is_registered::<U>() {
            self.invalid.get_or_insert(format!(
                "map_batches: {name} is not registered; add photon_data::register_udf!({name}) \
                 next to it"
            ));
        }
        let args_bytes = match udf::encode_args::<U>(&args) {
            Ok(bytes) => bytes,
            Err(err) => {
                self.invalid.get_or_insert(err.to_string());
                Vec::new()
            }
        };
        if let Some(range) = &options.actors
            && (range.is_empty() || *range.end() == 0)
        {
            self.invalid.get_or_insert(format!(
                "map_batches({name}): actors({}..={}) is empty",
                range.start(),
                range.end()
            ));
        }
        self.ops.push(Op::Map(MapOp {
            label: name.rsplit("::").next().unwrap_or(name).to_string(),
            udf: name.to_string(),
            args: args_bytes,
            input_columns: U::input_columns(&args),
            options,
        }));
        self
    }

    /// Target in-memory size of a block read from Parquet (1–128 MiB is
    /// sensible; default 64 MiB). Small inputs are split further so every
    /// worker gets work.
    pub fn block_bytes(mut self, bytes: u64) -> Self {
        self.block_bytes = bytes.max(1);
        self
    }

    /// Makes the first block at most `rows` rows (the rest keep their
    /// size), so the first results, and the first step of the progress
    /// bar, come out soon after the pipeline starts. Ignored with
    /// `repartition`.
    pub fn first_block_rows(mut self, rows: usize) -> Self {
        self.first_block_rows = Some(rows.max(1));
        self
    }

    /// CPUs each read task reserves (default 1). Reading is mostly I/O and
    /// decoding: 0 leaves every CPU to an actor pool whose work dwarfs it
    /// (a model), so a 2-CPU node can run 2 one-CPU actors and still read.
    pub fn read_num_cpus(mut self, cpus: f64) -> Self {
        self.read_cpus = cpus.max(0.0);
        self
    }

    /// Bytes of blocks in flight (default: half the driver node's object store).
    pub fn memory_budget(mut self, bytes: u64) -> Self {
        self.memory_budget = Some(bytes);
        self
    }

    /// Where progress goes (default: bars on a terminal, lines otherwise).
    pub fn progress(mut self, mode: ProgressMode) -> Self {
        self.progress = mode;
        self
    }

    /// What the last run of this dataset (or a clone) did.
    pub fn stats(&self) -> Option<Stats> {
        self.last_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Writes the rows as Parquet parts under `url`, exactly once, with a
    /// `_SUCCESS` manifest last. Refuses a non-empty destination unless
    /// `overwrite`.
    pub fn write_parquet(&self, url: &str, overwrite: bool) -> Result<WriteSummary> {
        self.write_parquet_with(
            url,
            WriteOptions {
                overwrite,
                ..WriteOptions::default()
            },
        )
    }

    /// [`Dataset::write_parquet`] with options (extra manifest metadata).
    pub fn write_parquet_with(&self, url: &str, options: WriteOptions) -> Result<WriteSummary> {
        let runtime = self.runner.runtime().clone();
        let sink = runtime.block_on(Sink::prepare(url, options.overwrite))?;
        let write = Step::Write {
            staging: sink.staging_url(),
        };
        let mut parts: Vec<(usize, Part)> = Vec::new();
        let mut schema = None;
        let result = self.execute(Some(write), |output| {
            let (part, written_schema) = summary_of(&output)?;
            schema.get_or_insert(written_schema);
            parts.push((output.index, part));
            Ok(true)
        });
        match result {
            Ok(skipped) => {
                parts.sort_by_key(|(index, _)| *index);
                let parts = parts.into_iter().map(|(_, part)| part).collect();
                let schema = schema.unwrap_or_default();
                runtime.block_on(sink.commit(parts, schema, skipped, options.metadata))
            }
            Err(err) => {
                runtime.block_on(sink.abort());
                Err(err)
            }
        }
    }

    /// Every output batch, in the order blocks finish, streamed: blocks keep
    /// running while the caller works through earlier ones.
    pub fn iter_batches(&self) -> impl Iterator<Item = Result<RecordBatch>> + use<> {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Result<RecordBatch>>(4);
        let dataset = self.clone();
        std::thread::spawn(move || {
            let result = dataset.execute(None, |output| Ok(sender.send(Ok(output.batch)).is_ok()));
            if let Err(err) = result {
                let _ = sender.send(Err(err));
            }
        });
        receiver.into_iter()
    }

    /// Rows in the output (read from the footers when nothing maps the rows).
    pub fn count(&self) -> Result<u64> {
        if !self
            .ops
            .iter()
            .any(|op| matches!(op, Op::Map(_) | Op::Filter(_)))
        {
            let (_, blocks) = self.plan(&[], 1)?;
            return Ok(blocks.iter().map(|b| b.rows as u64).sum());
        }
        let mut rows = 0u64;
        for batch in self.iter_batches() {
            rows += batch?.num_rows() as u64;
        }
        Ok(rows)
    }

    /// The output of the first `rows` input rows.
    pub fn take(&self, rows: usize) -> Result<Vec<RecordBatch>> {
        let mut batches = Vec::new();
        for batch in self.clone().limit(rows).iter_batches() {
            batches.push(batch?);
        }
        Ok(batches)
    }

    /// The output's schema (runs one row through the functions, if any).
    pub fn schema(&self) -> Result<SchemaRef> {
        if !self.ops.iter().any(|op| matches!(op, Op::Map(_))) {
            let (schema, _) = self.plan(&[], 1)?;
            return Ok(schema);
        }
        let batches = self.take(1)?;
        batches.first().map(RecordBatch::schema).ok_or_else(|| {
            Error::Invalid("the pipeline produced no rows to take a schema from".into())
        })
    }

    /// Compiles, plans and runs the pipeline; returns the skipped blocks.
    fn execute(
        &self,
        write: Option<Step>,
        deliver: impl FnMut(Output) -> Result<bool>,
    ) -> Result<Vec<String>> {
        if let Some(invalid) = &self.invalid {
            return Err(Error::Invalid(invalid.clone()));
        }
        let (drafts, typed) = self.compile(write);
        let pool_max = drafts
            .iter()
            .filter_map(|d| d.actors.as_ref().and_then(|a| a.actors.clone()))
            .map(|r| *r.end())
            .max()
            .unwrap_or(0);
        let ctx = match &self.runner {
            Runner::Cluster(ctx) => ctx,
            Runner::Local(local) => return self.execute_locally(local, drafts, &typed, deliver),
        };
        let cpus: f64 = ctx
            .cluster_nodes()?
            .iter()
            .map(|n| n.total.get("CPU").copied().unwrap_or(0.0))
            .sum();
        let min_blocks = (2 * pool_max).max(2 * cpus.ceil() as usize).max(1);
        let (schema, sources) = self.plan(&typed, min_blocks)?;
        self.check_filters(&schema)?;
        let input = match &self.source {
            SourceSpec::Batches(_) => {
                let mut objects = Vec::new();
                for (batch, source) in self.input_batches()?.iter().zip(sources) {
                    objects.push((ctx.put_batch(batch)?, source));
                }
                Input::Objects(objects)
            }
            _ => Input::Sources(sources),
        };
        let stages = build_stages(drafts);
        let budget = match self.memory_budget {
            Some(budget) => budget,
            None => default_budget(ctx)?,
        };
        let sources: Vec<&SourceBlock> = match &input {
            Input::Sources(s) => s.iter().collect(),
            Input::Objects(o) => o.iter().map(|(_, source)| source).collect(),
        };
        let progress = self.progress_of(&stages, &sources);
        let mut executor = Executor::new(ctx.clone(), stages, input, budget, progress);
        let result = executor.run(deliver);
        *self.last_stats.lock().unwrap_or_else(|p| p.into_inner()) = Some(executor.stats.clone());
        result.map(|()| executor.skipped().to_vec())
    }

    /// [`Dataset::execute`] in this process: the same plan (cut for the
    /// blocks read at once), stages and checks.
    fn execute_locally(
        &self,
        local: &Local,
        drafts: Vec<Draft>,
        typed: &[(String, Vec<DataType>)],
        deliver: impl FnMut(Output) -> Result<bool>,
    ) -> Result<Vec<String>> {
        let (schema, sources) = self.plan(typed, local.reads_at_once())?;
        self.check_filters(&schema)?;
        let blocks: Vec<LocalBlock> = match &self.source {
            SourceSpec::Batches(_) => self
                .input_batches()?
                .into_iter()
                .zip(sources)
                .map(|(batch, source)| LocalBlock {
                    source,
                    batch: Some(batch),
                })
                .collect(),
            _ => sources
                .into_iter()
                .map(|source| LocalBlock {
                    source,
                    batch: None,
                })
                .collect(),
        };
        let stages = build_stages(drafts);
        let progress = self.progress_of(
            &stages,
            &blocks.iter().map(|b| &b.source).collect::<Vec<_>>(),
        );
        let mut stats = Stats::of_stages(&stages);
        let result = local::run(local, &stages, blocks, progress, &mut stats, deliver);
        *self.last_stats.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
        result
    }

    /// The progress display of a run of `stages` over `sources`.
    fn progress_of(&self, stages: &[Stage], sources: &[&SourceBlock]) -> Progress {
        let names: Vec<String> = stages.iter().map(|s| s.name.clone()).collect();
        let rows = sources.iter().map(|s| s.rows as u64).sum();
        Progress::new(self.progress, &names, sources.len() as u64, rows)
    }

    /// The source's blocks, checked against what the pipeline needs.
    fn plan(
        &self,
        typed: &[(String, Vec<DataType>)],
        min_blocks: usize,
    ) -> Result<(SchemaRef, Vec<SourceBlock>)> {
        match &self.source {
            SourceSpec::Parquet(urls) => {
                let columns = self.read_columns();
                let needs = Needs {
                    columns: columns.as_deref(),
                    typed,
                };
                let cutting = Cutting {
                    target_bytes: self.block_bytes,
                    min_blocks,
                    limit: self.limit,
                    row_numbers: self.row_numbers.clone(),
                    exact_blocks: self.repartition,
                    first_block_rows: self.first_block_rows,
                };
                self.runner
                    .runtime()
                    .block_on(source::plan(urls, &needs, &cutting))
            }
            SourceSpec::Range(n) => {
                let rows = (*n as usize)
                    .div_ceil(min_blocks.max(1))
                    .clamp(1, RANGE_BLOCK_ROWS);
                let mut blocks = source::range_blocks(*n, rows);
                if let Some(limit) = self.limit {
                    source::truncate(&mut blocks, limit);
                }
                match (self.repartition, self.first_block_rows) {
                    (Some(count), _) => blocks = source::rebalance(blocks, count),
                    (None, Some(rows)) => source::small_first_block(&mut blocks, rows),
                    (None, None) => {}
                }
                let schema = arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
                    "id",
                    DataType::Int64,
                    false,
                )]);
                Ok((Arc::new(schema), blocks))
            }
            SourceSpec::Batches(_) => {
                let batches = self.input_batches()?;
                let blocks = batches
                    .iter()
                    .enumerate()
                    .map(|(i, b)| SourceBlock {
                        source: Source::Range { start: 0, end: 0 },
                        rows: b.num_rows(),
                        bytes: b.get_array_memory_size() as u64,
                        origin: format!("batch {i} rows 0..{}", b.num_rows()),
                    })
                    .collect();
                Ok((batches[0].schema(), blocks))
            }
        }
    }

    /// The batches of a `from_batches` source after `limit` and
    /// `repartition` (zero-copy slices; a repartition concatenates first).
    fn input_batches(&self) -> Result<Vec<RecordBatch>> {
        let SourceSpec::Batches(batches) = &self.source else {
            return Ok(Vec::new());
        };
        let Some(first) = batches.first() else {
            return Err(Error::Invalid("from_batches was given no batches".into()));
        };
        if let Some((index, other)) = batches
            .iter()
            .enumerate()
            .find(|(_, b)| b.schema().fields() != first.schema().fields())
        {
            return Err(Error::Invalid(format!(
                "from_batches: batch {index} has schema {:?}, but batch 0 has {:?}; give \
                 batches of one schema",
                other.schema(),
                first.schema()
            )));
        }
        let mut batches = batches.clone();
        if let Some(limit) = self.limit {
            let mut left = limit;
            let mut kept = Vec::new();
            for batch in batches {
                if left == 0 {
                    break;
                }
                let rows = batch.num_rows().min(left);
                left -= rows;
                if rows > 0 {
                    kept.push(batch.slice(0, rows));
                }
            }
            batches = kept;
        }
        if let Some(count) = self.repartition {
            let all = arrow::compute::concat_batches(&first.schema(), &batches)
                .map_err(|e| Error::Invalid(format!("from_batches: {e}")))?;
            let total = all.num_rows();
            let count = count.clamp(1, total.max(1));
            batches = (0..count)
                .map(|i| {
                    let start = total * i / count;
                    all.slice(start, total * (i + 1) / count - start)
                })
                .collect();
        }
        if batches.is_empty() {
            batches.push(first.slice(0, 0));
        }
        Ok(batches)
    }

    /// Checks the columns filters read before the first `map_batches`
    /// against the input schema (as earlier `select_columns` leave it).
    fn check_filters(&self, schema: &SchemaRef) -> Result<()> {
        let input = match &self.source {
            SourceSpec::Parquet(urls) => format!("input {}", urls.join(", ")),
            SourceSpec::Range(_) => "range".to_string(),
            SourceSpec::Batches(_) => "from_batches".to_string(),
        };
        let mut schema = schema.clone();
        if let Some(name) = &self.row_numbers {
            // Added to every block as it is read (see `steps::add_row_numbers`).
            let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
            fields.push(Arc::new(arrow::datatypes::Field::new(
                name,
                arrow::datatypes::DataType::Int64,
                false,
            )));
            schema = Arc::new(arrow::datatypes::Schema::new(fields));
        }
        for op in &self.ops {
            match op {
                Op::Map(_) => break,
                Op::Select(columns) => {
                    let indices: Vec<usize> = columns
                        .iter()
                        .filter_map(|c| schema.index_of(c).ok())
                        .collect();
                    schema = Arc::new(
                        schema
                            .project(&indices)
                            .map_err(|e| Error::Invalid(format!("select_columns: {e}")))?,
                    );
                }
                Op::Filter(predicate) => filter::check(predicate, &schema, &input)?,
            }
        }
        Ok(())
    }

    /// Columns a leading `select_columns` asks of a Parquet source.
    fn read_columns(&self) -> Option<Vec<String>> {
        match self.ops.first() {
            Some(Op::Select(columns)) => Some(columns.clone()),
            _ => None,
        }
    }

    /// Fuses operators into stages: the source with everything up to the
    /// first actor pool; each pool with what follows it up to the next pool
    /// or task map; the write at the end of the last stage.
    fn compile(&self, write: Option<Step>) -> (Vec<Draft>, Vec<(String, Vec<DataType>)>) {
        let source_name = match &self.source {
            SourceSpec::Parquet(_) => "read_parquet",
            SourceSpec::Range(_) => "range",
            SourceSpec::Batches(_) => "from_batches",
        };
        let mut drafts = vec![Draft {
            names: vec![source_name.to_string()],
            steps: Vec::new(),
            actors: None,
            cpus: self.read_cpus,
            gpus: 0.0,
            resources: Vec::new(),
            max_errored_blocks: 0,
        }];
        let mut typed = None;
        let read_columns = self.read_columns();
        for (index, op) in self.ops.iter().enumerate() {
            let current = drafts.last_mut().expect("one at least");
            match op {
                Op::Select(columns) => {
                    if index == 0 && read_columns.is_some() {
                        current.names.push("select_columns".into());
                        continue; // read as a projection
                    }
                    current.names.push("select_columns".into());
                    current.steps.push(Step::Select(columns.clone()));
                }
                Op::Filter(predicate) => {
                    current.names.push("filter".into());
                    current.steps.push(Step::Filter(predicate.clone()));
                }
                Op::Map(map) => {
                    typed.get_or_insert_with(|| map.input_columns.clone());
                    let step = Step::Map {
                        udf: map.udf.clone(),
                        args: map.args.clone(),
                        batch_size: map.options.batch_size,
                    };
                    let name = format!("map_batches({})", map.label);
                    if map.options.actors.is_none() && current.actors.is_none() {
                        current.names.push(name);
                        current.steps.push(step);
                        current.cpus = current.cpus.max(map.options.num_cpus);
                        current.gpus = current.gpus.max(map.options.num_gpus);
                        current
                            .resources
                            .extend(map.options.resources.iter().cloned());
                        current.max_errored_blocks = current
                            .max_errored_blocks
                            .max(map.options.max_errored_blocks);
                    } else {
                        drafts.push(Draft {
                            names: vec![name],
                            steps: vec![step],
                            actors: map.options.actors.as_ref().map(|_| map.options.clone()),
                            cpus: map.options.num_cpus,
                            gpus: map.options.num_gpus,
                            resources: map.options.resources.clone(),
                            max_errored_blocks: map.options.max_errored_blocks,
                        });
                    }
                }
            }
        }
        if let Some(write) = write {
            let last = drafts.last_mut().expect("one at least");
            last.names.push("write_parquet".into());
            last.steps.push(write);
        }
        (drafts, typed.unwrap_or_default())
    }
}

fn build_stages(drafts: Vec<Draft>) -> Vec<Stage> {
    let mut stages = Vec::with_capacity(drafts.len());
    let mut upstream_cpus: f64 = 0.0;
    for draft in drafts {
        let name = draft.names.join(" → ");
        let compute = match &draft.actors {
            Some(options) => {
                let range = options.actors.clone().expect("an actor stage");
                let spec = PoolSpec {
                    min: *range.start(),
                    max: *range.end(),
                    num_cpus: draft.cpus,
                    num_gpus: draft.gpus,
                    resources: draft.resources.clone(),
                    max_concurrency: options.max_concurrency,
                };
                Compute::Actors(Pool::new(spec, draft.steps.clone(), upstream_cpus))
            }
            None => {
                upstream_cpus = upstream_cpus.max(draft.cpus);
                Compute::Tasks(TaskOptions::new().num_cpus(draft.cpus).num_gpus(draft.gpus))
            }
        };
        stages.push(Stage {
            name,
            steps: draft.steps,
            compute,
            max_errored_blocks: draft.max_errored_blocks,
        });
    }
    stages
}

/// A write stage's one-row summary: the part and the written schema.
fn summary_of(output: &Output) -> Result<(Part, String)> {
    use arrow::array::{Array, StringArray, UInt64Array};
    let batch = &output.batch;
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| Error::Cluster(format!("a write summary has no {name} column")))
    };
    let part = column("part")?;
    let rows = column("rows")?;
    let bytes = column("bytes")?;
    let schema = column("schema")?;
    let (Some(part), Some(rows), Some(bytes), Some(schema)) = (
        part.as_any().downcast_ref::<StringArray>(),
        rows.as_any().downcast_ref::<UInt64Array>(),
        bytes.as_any().downcast_ref::<UInt64Array>(),
        schema.as_any().downcast_ref::<StringArray>(),
    ) else {
        return Err(Error::Cluster(
            "a write summary has unexpected types".into(),
        ));
    };
    if part.is_empty() {
        return Err(Error::Cluster("an empty write summary".into()));
    }
    Ok((
        Part {
            name: part.value(0).to_string(),
            rows: rows.value(0),
            bytes: bytes.value(0),
        },
        schema.value(0).to_string(),
    ))
}

/// Half the object store of the driver's node.
fn default_budget(ctx: &Context) -> Result<u64> {
    let nodes = ctx.cluster_nodes()?;
    let local = nodes
        .iter()
        .find(|n| n.address == ctx.raylet_address())
        .or(nodes.first())
        .map_or(0, |n| n.object_store_capacity);
    Ok((local / 2).max(1 << 20))
}
