//! A fused read → steps → write stage run batch by batch. Reading a local
//! Parquet file page by page, passing small batches through the steps and
//! encoding each into the part keeps the working set in cache; materialising
//! the block (tens of MiB) costs several extra passes through memory, which
//! on this kind of machine is most of the framework's overhead over a plain
//! read-and-write loop.
//!
//! A stage streams only when that cannot change what a function sees: every
//! `map_batches` in it has a `batch_size` (without one, the function gets the
//! whole block, as in Ray), so its calls get the same rows as when the block
//! is sliced whole: batches of exactly `batch_size` rows from the block's
//! start, the last one shorter.

use std::collections::VecDeque;
use std::path::PathBuf;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::block_progress::BlockProgress;
use crate::location;
use crate::part::{Encoded, PartWriter};
use crate::stats::StageRecord;
use crate::steps::{RowsToRead, Source, Step, Udfs, add_row_numbers, select};

/// Rows per read batch when no function asks for a size.
const DEFAULT_BATCH_ROWS: usize = 1024;

/// A stage that can stream: its local file, the rows to read, where it writes.
pub(crate) struct Plan<'a> {
    path: PathBuf,
    url: &'a str,
    to_read: RowsToRead<'a>,
    row_numbers: Option<&'a str>,
    first_row: u64,
    staging: &'a str,
    read_batch_rows: usize,
}

/// The plan for streaming `source` through `steps`, when they allow it: a
/// local Parquet source, a stage that ends in a write, and a batch size on
/// every function.
pub(crate) fn plan<'a>(source: &'a Source, steps: &'a [Step]) -> Option<Plan<'a>> {
    let Source::Parquet {
        url,
        row_groups,
        skip,
        rows,
        columns,
        row_numbers,
        first_row,
    } = source
    else {
        return None;
    };
    let Some(Step::Write { staging }) = steps.last() else {
        return None;
    };
    let mut batch_sizes = steps.iter().filter_map(|step| match step {
        Step::Map { batch_size, .. } => Some(*batch_size),
        _ => None,
    });
    if *rows == 0 || batch_sizes.clone().any(|size| size.is_none()) {
        return None;
    }
    let path = location::resolve(url).ok()?.local?;
    let first_size = batch_sizes.next().flatten();
    Some(Plan {
        path,
        url,
        to_read: RowsToRead {
            row_groups,
            skip: *skip,
            rows: *rows,
            columns: columns.as_deref(),
        },
        row_numbers: row_numbers.as_deref(),
        first_row: *first_row,
        staging,
        read_batch_rows: first_size.unwrap_or(DEFAULT_BATCH_ROWS).clamp(1, *rows),
    })
}

/// Runs the stage: the encoded part (to publish) and the record of its output.
pub(crate) fn run(
    plan: &Plan<'_>,
    steps: &[Step],
    udfs: &mut Udfs,
    part: &str,
) -> Result<(Encoded, StageRecord), String> {
    let read_error = |e: &dyn std::fmt::Display| format!("cannot read {}: {e}", plan.url);
    let reader = plan
        .to_read
        .local_reader(&plan.path, plan.read_batch_rows)
        .map_err(|e| read_error(&e))?;

    let mut writer = PartWriter::new(plan.staging, part)?;
    let mut record = StageRecord::default();
    let mut sink = |batch: RecordBatch| {
        record.rows += batch.num_rows() as u64;
        record.bytes += batch.get_array_memory_size() as u64;
        writer.write(&batch)
    };
    let mut pipeline = Pipeline::new(steps, udfs);
    let progress = BlockProgress::start(plan.to_read.rows);
    let mut read = 0;
    for batch in reader {
        let batch = batch.map_err(|e| read_error(&e))?;
        let first = plan.first_row + read as u64;
        read += batch.num_rows();
        let batch = match plan.row_numbers {
            Some(name) => add_row_numbers(batch, name, first)?,
            None => batch,
        };
        pipeline.feed(0, batch, &mut sink)?;
        progress.set_done(read);
    }
    plan.to_read.check_count(read).map_err(|e| read_error(&e))?;
    pipeline.finish(&mut sink)?;
    Ok((writer.finish()?, record))
}

/// The steps of a stage, fed one batch at a time.
struct Pipeline<'a> {
    steps: &'a [Step],
    udfs: &'a mut Udfs,
    /// For each `Map` step, the rows waiting for a full batch.
    batchers: Vec<Option<Rebatcher>>,
}

type Sink<'s> = dyn FnMut(RecordBatch) -> Result<(), String> + 's;

impl<'a> Pipeline<'a> {
    fn new(steps: &'a [Step], udfs: &'a mut Udfs) -> Self {
        let batchers = steps
            .iter()
            .map(|step| match step {
                Step::Map { batch_size, .. } => {
                    Some(Rebatcher::new(batch_size.expect("planned with sizes")))
                }
                _ => None,
            })
            .collect();
        Self {
            steps,
            udfs,
            batchers,
        }
    }

    /// Passes `batch` through the steps from `from` on; what comes out of the
    /// last one goes to `sink`.
    fn feed(
        &mut self,
        from: usize,
        mut batch: RecordBatch,
        sink: &mut Sink<'_>,
    ) -> Result<(), String> {
        for index in from..self.steps.len() {
            match &self.steps[index] {
                Step::Select(columns) => batch = select(&batch, columns)?,
                Step::Filter(predicate) => batch = predicate.apply(&batch)?,
                Step::Map { .. } => {
                    let batcher = self.batchers[index].as_mut().expect("one per map");
                    for ready in batcher.push(batch)? {
                        let output = self.call(index, ready, true)?;
                        self.feed(index + 1, output, sink)?;
                    }
                    return Ok(());
                }
                Step::Write { .. } => break,
            }
        }
        sink(batch)
    }

    /// Calls each function on the rows it still holds, in step order (a
    /// step's last call feeds the next step before that one finishes).
    fn finish(&mut self, sink: &mut Sink<'_>) -> Result<(), String> {
        for index in 0..self.steps.len() {
            let Some(batcher) = self.batchers[index].as_mut() else {
                continue;
            };
            let whole_block = batcher.called_rows == 0;
            if let Some(rest) = batcher.finish()? {
                let output = self.call(index, rest, !whole_block)?;
                self.feed(index + 1, output, sink)?;
            }
        }
        Ok(())
    }

    /// Calls step `index`'s function; `part_of_block`: name the rows in an error.
    fn call(
        &mut self,
        index: usize,
        batch: RecordBatch,
        part_of_block: bool,
    ) -> Result<RecordBatch, String> {
        let batcher = self.batchers[index].as_mut().expect("one per map");
        let start = batcher.called_rows;
        let end = start + batch.num_rows();
        batcher.called_rows = end;
        let udf = self.udfs.0[index]
            .as_mut()
            .expect("constructed for each map step");
        udf.call(batch).map_err(|e| {
            if part_of_block {
                format!("rows {start}..{end} of the block: {e}")
            } else {
                e
            }
        })
    }
}

/// Regroups a stream of batches into batches of exactly `size` rows (the
/// last one shorter), slicing without copying where a batch holds enough.
struct Rebatcher {
    size: usize,
    pending: VecDeque<RecordBatch>,
    pending_rows: usize,
    /// The schema of what came in, so a step that got no rows can still be
    /// called once on an empty batch (as it is on an empty block).
    schema: Option<SchemaRef>,
    /// Rows handed to the function so far.
    called_rows: usize,
}

impl Rebatcher {
    fn new(size: usize) -> Self {
        Self {
            size,
            pending: VecDeque::new(),
            pending_rows: 0,
            schema: None,
            called_rows: 0,
        }
    }

    /// Takes `batch`; returns the full batches now ready.
    fn push(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>, String> {
        self.schema.get_or_insert_with(|| batch.schema());
        if batch.num_rows() > 0 {
            self.pending_rows += batch.num_rows();
            self.pending.push_back(batch);
        }
        let mut ready = Vec::new();
        while self.pending_rows >= self.size {
            ready.push(self.take(self.size)?);
        }
        Ok(ready)
    }

    /// What is left: the short last batch, or an empty one if the function
    /// has not been called at all.
    fn finish(&mut self) -> Result<Option<RecordBatch>, String> {
        if self.pending_rows > 0 {
            return self.take(self.pending_rows).map(Some);
        }
        Ok(match (&self.schema, self.called_rows) {
            (Some(schema), 0) => Some(RecordBatch::new_empty(schema.clone())),
            _ => None,
        })
    }

    fn take(&mut self, rows: usize) -> Result<RecordBatch, String> {
        let mut pieces = Vec::new();
        let mut needed = rows;
        while needed > 0 {
            let batch = self
                .pending
                .pop_front()
                .expect("pending rows cover the take");
            if batch.num_rows() <= needed {
                needed -= batch.num_rows();
                pieces.push(batch);
            } else {
                pieces.push(batch.slice(0, needed));
                self.pending
                    .push_front(batch.slice(needed, batch.num_rows() - needed));
                needed = 0;
            }
        }
        self.pending_rows -= rows;
        if pieces.len() == 1 {
            return Ok(pieces.pop().expect("one piece"));
        }
        arrow::compute::concat_batches(&pieces[0].schema(), &pieces)
            .map_err(|e| format!("the function's inputs do not share one schema: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn ids(range: std::ops::Range<i64>) -> RecordBatch {
        let schema = Schema::new(vec![Field::new("id", DataType::Int64, false)]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(Int64Array::from_iter_values(range))],
        )
        .unwrap()
    }

    fn first_ids(batches: &[RecordBatch]) -> Vec<(i64, usize)> {
        batches
            .iter()
            .map(|b| {
                let column = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                (column.value(0), column.len())
            })
            .collect()
    }

    #[test]
    fn batches_are_regrouped_to_the_size_from_the_blocks_start() {
        let mut batcher = Rebatcher::new(4);
        let mut out = batcher.push(ids(0..3)).unwrap();
        out.extend(batcher.push(ids(3..13)).unwrap());
        out.extend(batcher.push(ids(13..13)).unwrap());
        out.extend(batcher.push(ids(13..14)).unwrap());
        assert_eq!(first_ids(&out), vec![(0, 4), (4, 4), (8, 4)]);
        batcher.called_rows = 12;
        let rest = batcher.finish().unwrap().unwrap();
        assert_eq!(first_ids(&[rest]), vec![(12, 2)]);
        assert!(batcher.finish().unwrap().is_none());
    }

    #[test]
    fn a_step_that_got_no_rows_is_called_once_on_an_empty_batch() {
        let mut batcher = Rebatcher::new(4);
        assert!(batcher.push(ids(0..0)).unwrap().is_empty());
        let empty = batcher.finish().unwrap().unwrap();
        assert_eq!(
            (empty.num_rows(), empty.schema().field(0).name().as_str()),
            (0, "id")
        );
    }
}
