//! The worker side of a pipeline: what a read task, a map task and a pool
//! actor run on one block. A stage is a source (or an input block) followed
//! by steps fused into one call, so a block crosses the object store once
//! per stage, not once per operator.

use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use futures::TryStreamExt;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderBuilder, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};
use serde::{Deserialize, Serialize};

use crate::block_progress::BlockProgress;
use crate::filter::Predicate;
use crate::stats::{self, StageRecord};
use crate::udf::{self, DynUdf};
use crate::{location, part, streaming};

/// Where a block's rows come from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Source {
    /// Rows `skip .. skip + rows` of the given row groups of a Parquet file.
    Parquet {
        /// The file.
        url: String,
        /// Its row groups holding the rows.
        row_groups: Vec<usize>,
        /// Rows to skip at the start of the first row group.
        skip: usize,
        /// Rows to read.
        rows: usize,
        /// Columns to read (all when `None`).
        columns: Option<Vec<String>>,
        /// Append the rows' numbers over the whole input (Int64) under this
        /// name; the block's first row has number `first_row`.
        row_numbers: Option<String>,
        /// The input-wide number of the block's first row.
        first_row: u64,
    },
    /// Several sources' rows, one after another (each with its row count):
    /// a block that `repartition` made span files.
    Concat(Vec<(Source, usize)>),
    /// Int64 ids `start..end` in a column `id`.
    Range {
        /// First id.
        start: i64,
        /// One past the last id.
        end: i64,
    },
}

/// One operation of a stage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Step {
    /// Keep these columns, in this order.
    Select(Vec<String>),
    /// Keep the rows the predicate holds for.
    Filter(Predicate),
    /// A user function, called on slices of at most `batch_size` rows.
    Map {
        /// Its registered type name.
        udf: String,
        /// Its constructor's arguments (JSON).
        args: Vec<u8>,
        /// Rows per call; the whole block when `None`.
        batch_size: Option<usize>,
    },
    /// Write the block as a Parquet part under `staging` (a URL), named by
    /// the call's `part` argument; the block becomes a one-row summary (the
    /// part, its rows and bytes, its schema: see `part.rs`).
    Write {
        /// The staging directory.
        staging: String,
    },
}

/// Runs a source stage: read the block, then its steps.
#[photon::remote]
pub async fn read_stage(
    source: Source,
    steps: Vec<Step>,
    part: String,
) -> Result<RecordBatch, String> {
    let started = stats::Timer::start();
    let mut udfs = Udfs::new(&steps)?;
    if let Some(plan) = streaming::plan(&source, &steps) {
        let (encoded, record) =
            photon::run_blocking(|| streaming::run(&plan, &steps, &mut udfs, &part))?;
        let output = encoded.publish().await?;
        let record = record.ran_on(udfs.describe());
        return Ok(stats::append(output, &[], record.took(started)));
    }
    let block = read_source(&source).await?;
    let output = run_sync_steps(block, &steps, &mut udfs)?;
    let record = StageRecord::of(&output).ran_on(udfs.describe());
    let output = finish_writes(output, &steps, &part).await?;
    Ok(stats::append(output, &[], record.took(started)))
}

/// Runs a task stage on a block made by an earlier stage.
#[photon::remote]
pub async fn map_stage(
    block: RecordBatch,
    steps: Vec<Step>,
    part: String,
) -> Result<RecordBatch, String> {
    let started = stats::Timer::start();
    let history = stats::history(&block);
    let mut udfs = Udfs::new(&steps)?;
    let output = run_sync_steps(stats::strip(block), &steps, &mut udfs)?;
    let record = StageRecord::of(&output).ran_on(udfs.describe());
    let output = finish_writes(output, &steps, &part).await?;
    Ok(stats::append(output, &history, record.took(started)))
}

/// An actor of a pool: constructs its stage's functions once, then runs
/// block after block. With `max_concurrency` above one, each concurrent
/// call gets its own constructed functions (made on first need, then reused).
pub struct StageActor {
    steps: Vec<Step>,
    idle: Mutex<Vec<Udfs>>,
}

#[photon::actor]
impl StageActor {
    /// Constructs the stage's functions (a model loads here).
    pub fn new(steps: Vec<Step>) -> Result<Self, String> {
        let udfs = Udfs::new(&steps)?;
        Ok(StageActor {
            steps,
            idle: Mutex::new(vec![udfs]),
        })
    }

    /// Answers once the constructor has run: the pool sends a new actor
    /// blocks only after this (or a call) came back.
    pub fn constructed(&self) -> bool {
        true
    }

    /// Runs the stage on one block (`part`: its part name when the stage writes).
    pub async fn apply(&self, block: RecordBatch, part: String) -> Result<RecordBatch, String> {
        let started = stats::Timer::start();
        let history = stats::history(&block);
        let spare = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut udfs = match spare {
            Some(udfs) => udfs,
            None => Udfs::new(&self.steps)?,
        };
        let output =
            photon::run_blocking(|| run_sync_steps(stats::strip(block), &self.steps, &mut udfs));
        let ran_on = udfs.describe();
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(udfs);
        let output = output?;
        let record = StageRecord::of(&output).ran_on(ran_on);
        let output = finish_writes(output, &self.steps, &part).await?;
        Ok(stats::append(output, &history, record.took(started)))
    }
}

/// The constructed functions of a stage's `Map` steps, by step index.
pub(crate) struct Udfs(pub(crate) Vec<Option<DynUdf>>);

impl Udfs {
    fn new(steps: &[Step]) -> Result<Self, String> {
        steps
            .iter()
            .map(|step| match step {
                Step::Map { udf, args, .. } => udf::construct_by_name(udf, args).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<_, _>>()
            .map(Udfs)
    }

    /// What runs the stage's last function (its `describe`).
    pub(crate) fn describe(&self) -> Option<String> {
        self.0.iter().rev().flatten().next()?.describe()
    }

    /// The index of the last `Map` step: the one whose progress through the
    /// block is the stage's.
    pub(crate) fn last_map(&self) -> Option<usize> {
        self.0.iter().rposition(Option::is_some)
    }
}

/// Every step but a trailing `Write` (which needs I/O, done after).
fn run_sync_steps(
    mut block: RecordBatch,
    steps: &[Step],
    udfs: &mut Udfs,
) -> Result<RecordBatch, String> {
    let last_map = udfs.last_map();
    for (index, step) in steps.iter().enumerate() {
        block = match step {
            Step::Select(columns) => select(&block, columns)?,
            Step::Filter(predicate) => predicate.apply(&block)?,
            Step::Map { batch_size, .. } => {
                let progress = if last_map == Some(index) {
                    BlockProgress::start(block.num_rows())
                } else {
                    BlockProgress::default()
                };
                let udf = udfs.0[index]
                    .as_mut()
                    .expect("constructed for each map step");
                map_in_slices(block, *batch_size, udf, &progress)?
            }
            Step::Write { .. } => return Ok(block),
        };
    }
    Ok(block)
}

async fn finish_writes(
    block: RecordBatch,
    steps: &[Step],
    part: &str,
) -> Result<RecordBatch, String> {
    match steps.last() {
        Some(Step::Write { staging }) => part::write_block(&block, staging, part).await,
        _ => Ok(block),
    }
}

/// Keeps `columns`, in order.
pub(crate) fn select(block: &RecordBatch, columns: &[String]) -> Result<RecordBatch, String> {
    let schema = block.schema();
    let indices = columns
        .iter()
        .map(|name| {
            schema.index_of(name).map_err(|_| {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                format!(
                    "select_columns: the block has no column {name:?} (its columns: {})",
                    names.join(", ")
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    block.project(&indices).map_err(|e| e.to_string())
}

/// Calls `udf` on zero-copy slices of at most `batch_size` rows and joins
/// the results, counting each slice's rows in `progress`.
fn map_in_slices(
    block: RecordBatch,
    batch_size: Option<usize>,
    udf: &mut DynUdf,
    progress: &BlockProgress,
) -> Result<RecordBatch, String> {
    let rows = block.num_rows();
    let size = batch_size.unwrap_or(rows).max(1);
    if rows <= size {
        return progress.slice(rows, || udf.call(block));
    }
    let mut outputs = Vec::with_capacity(rows.div_ceil(size));
    let mut offset = 0;
    while offset < rows {
        let length = size.min(rows - offset);
        outputs.push(
            progress
                .slice(length, || udf.call(block.slice(offset, length)))
                .map_err(|e| format!("rows {offset}..{} of the block: {e}", offset + length))?,
        );
        offset += length;
    }
    let schema = outputs[0].schema();
    arrow::compute::concat_batches(&schema, &outputs)
        .map_err(|e| format!("the function's outputs do not share one schema: {e}"))
}

/// Reads one source block.
pub(crate) async fn read_source(source: &Source) -> Result<RecordBatch, String> {
    match source {
        Source::Concat(parts) => {
            let mut batches = Vec::with_capacity(parts.len());
            for (part, _) in parts {
                batches.push(Box::pin(read_source(part)).await?);
            }
            let schema = batches.first().ok_or("an empty block")?.schema();
            arrow::compute::concat_batches(&schema, &batches).map_err(|e| e.to_string())
        }
        Source::Range { start, end } => {
            let ids = arrow::array::Int64Array::from_iter_values(*start..*end);
            let schema = Schema::new(vec![Field::new("id", DataType::Int64, false)]);
            RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ids)]).map_err(|e| e.to_string())
        }
        Source::Parquet {
            url,
            row_groups,
            skip,
            rows,
            columns,
            row_numbers,
            first_row,
        } => {
            let to_read = RowsToRead {
                row_groups,
                skip: *skip,
                rows: *rows,
                columns: columns.as_deref(),
            };
            let block = read_parquet_block(url, &to_read)
                .await
                .map_err(|e| format!("cannot read {url} on {}: {e}", photon::where_this_runs()))?;
            match row_numbers {
                Some(name) => add_row_numbers(block, name, *first_row),
                None => Ok(block),
            }
        }
    }
}

/// Which rows of a Parquet file a block reads.
pub(crate) struct RowsToRead<'a> {
    pub row_groups: &'a [usize],
    pub skip: usize,
    pub rows: usize,
    pub columns: Option<&'a [String]>,
}

impl RowsToRead<'_> {
    /// Applies the row groups, rows and columns to a reader's builder.
    fn select<T>(&self, builder: ArrowReaderBuilder<T>) -> Result<ArrowReaderBuilder<T>, String> {
        let mut builder = builder
            .with_row_groups(self.row_groups.to_vec())
            .with_row_selection(RowSelection::from(vec![
                RowSelector::skip(self.skip),
                RowSelector::select(self.rows),
            ]));
        if let Some(columns) = self.columns {
            let schema = builder.schema().clone();
            let indices = columns
                .iter()
                .map(|c| schema.index_of(c).map_err(|_| format!("no column {c:?}")))
                .collect::<Result<Vec<_>, _>>()?;
            let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
            builder = builder.with_projection(mask);
        }
        Ok(builder)
    }

    /// A synchronous reader of a local file, in batches of `batch_rows`:
    /// it reads page by page, where the object-store reader fetches each
    /// column chunk into one buffer first (one more pass over the block).
    pub(crate) fn local_reader(
        &self,
        path: &std::path::Path,
        batch_rows: usize,
    ) -> Result<ParquetRecordBatchReader, String> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| e.to_string())?;
        self.select(builder)?
            .with_batch_size(batch_rows.max(1))
            .build()
            .map_err(|e| e.to_string())
    }

    pub(crate) fn check_count(&self, read: usize) -> Result<(), String> {
        if read != self.rows {
            return Err(format!(
                "read {read} rows where the footer promised {}; the file changed or is corrupt",
                self.rows
            ));
        }
        Ok(())
    }
}

async fn read_parquet_block(url: &str, to_read: &RowsToRead<'_>) -> Result<RecordBatch, String> {
    let location = location::resolve(url).map_err(|e| e.to_string())?;
    let (schema, batches): (SchemaRef, Vec<RecordBatch>) = match &location.local {
        Some(path) => photon::run_blocking(|| {
            let reader = to_read.local_reader(path, to_read.rows)?;
            let schema = arrow::record_batch::RecordBatchReader::schema(&reader);
            let batches = reader
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((schema, batches))
        })?,
        None => {
            let meta = location
                .store
                .head(&location.path)
                .await
                .map_err(|e| e.to_string())?;
            let reader = ParquetObjectReader::new(location.store.clone(), location.path.clone())
                .with_file_size(meta.size);
            let builder = ParquetRecordBatchStreamBuilder::new(reader)
                .await
                .map_err(|e| e.to_string())?;
            let stream = to_read
                .select(builder)?
                .with_batch_size(to_read.rows.max(1))
                .build()
                .map_err(|e| e.to_string())?;
            let schema = stream.schema().clone();
            (
                schema,
                stream.try_collect().await.map_err(|e| e.to_string())?,
            )
        }
    };
    let block = match batches.len() {
        1 => batches.into_iter().next().expect("one"),
        _ => {
            let schema = batches.first().map_or(schema, |b| b.schema());
            arrow::compute::concat_batches(&schema, &batches).map_err(|e| e.to_string())?
        }
    };
    to_read.check_count(block.num_rows())?;
    Ok(block)
}

/// `block` with an Int64 column `name` numbering its rows from `first`.
pub(crate) fn add_row_numbers(
    block: RecordBatch,
    name: &str,
    first: u64,
) -> Result<RecordBatch, String> {
    let first = first as i64;
    let numbers =
        arrow::array::Int64Array::from_iter_values(first..first + block.num_rows() as i64);
    let mut fields: Vec<Field> = block
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(name, DataType::Int64, false));
    let mut columns = block.columns().to_vec();
    columns.push(Arc::new(numbers));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}
