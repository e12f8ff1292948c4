//! Batch functions the tests run (registered, so workers find them).

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use photon_data::{BatchUdf, register_udf};

fn ids(batch: &RecordBatch) -> Result<&Int64Array, String> {
    batch
        .column_by_name("id")
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .ok_or_else(|| "no Int64 column id".to_string())
}

/// `batch` with `column` appended as `field`.
fn with_column(
    batch: &RecordBatch,
    field: Field,
    column: impl Array + 'static,
) -> Result<RecordBatch, String> {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(field);
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(column));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

/// Adds `square` = id² (and sleeps `pause_ms` per batch, to stretch a run).
pub struct Square {
    pause: Duration,
}

impl BatchUdf for Square {
    type Args = u64;

    fn new(pause_ms: u64) -> Result<Self, String> {
        Ok(Square {
            pause: Duration::from_millis(pause_ms),
        })
    }

    fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, String> {
        std::thread::sleep(self.pause);
        let squares: Int64Array = ids(&batch)?.iter().map(|v| v.map(|v| v * v)).collect();
        with_column(&batch, Field::new("square", DataType::Int64, true), squares)
    }

    fn input_columns(_: &u64) -> Vec<(String, Vec<DataType>)> {
        vec![("id".into(), vec![DataType::Int64])]
    }
}
register_udf!(Square);

/// Adds `call_rows`: how many rows the call that saw the row got.
pub struct CallRows;

impl BatchUdf for CallRows {
    type Args = ();

    fn new((): ()) -> Result<Self, String> {
        Ok(CallRows)
    }

    fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, String> {
        let rows = Int64Array::from(vec![batch.num_rows() as i64; batch.num_rows()]);
        with_column(
            &batch,
            Field::new("call_rows", DataType::Int64, false),
            rows,
        )
    }
}
register_udf!(CallRows);

/// Adds `pid`: the process that ran the call (which actor got the block);
/// sleeps `pause_ms` per batch, to stretch a run.
pub struct WorkerPid {
    pause: Duration,
}

impl BatchUdf for WorkerPid {
    type Args = u64;

    fn new(pause_ms: u64) -> Result<Self, String> {
        Ok(WorkerPid {
            pause: Duration::from_millis(pause_ms),
        })
    }

    fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, String> {
        std::thread::sleep(self.pause);
        let pids = Int64Array::from(vec![i64::from(std::process::id()); batch.num_rows()]);
        with_column(&batch, Field::new("pid", DataType::Int64, false), pids)
    }
}
register_udf!(WorkerPid);

/// Fails on the batch holding id `bad`.
pub struct FailOn {
    bad: i64,
}

impl BatchUdf for FailOn {
    type Args = i64;

    fn new(bad: i64) -> Result<Self, String> {
        Ok(FailOn { bad })
    }

    fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, String> {
        if ids(&batch)?.iter().any(|v| v == Some(self.bad)) {
            return Err(format!("id {} is cursed", self.bad));
        }
        Ok(batch)
    }
}
register_udf!(FailOn);

/// Counts the characters of `text` into `length` (needs a string column).
pub struct TextLength;

impl BatchUdf for TextLength {
    type Args = ();

    fn new((): ()) -> Result<Self, String> {
        Ok(TextLength)
    }

    fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, String> {
        let text = batch
            .column_by_name("text")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or("no Utf8 column text")?;
        let lengths: UInt64Array = text.iter().map(|t| t.map(|t| t.len() as u64)).collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, true),
                Field::new("length", DataType::UInt64, true),
            ])),
            vec![
                batch.column_by_name("id").ok_or("no id")?.clone(),
                Arc::new(lengths),
            ],
        )
        .map_err(|e| e.to_string())
    }

    fn input_columns(_: &()) -> Vec<(String, Vec<DataType>)> {
        vec![("text".into(), vec![DataType::Utf8, DataType::LargeUtf8])]
    }
}
register_udf!(TextLength);

/// Passes batches through (4× the store test, the benchmark's shape).
pub struct Identity;

impl BatchUdf for Identity {
    type Args = ();

    fn new((): ()) -> Result<Self, String> {
        Ok(Identity)
    }

    fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, String> {
        Ok(batch)
    }
}
register_udf!(Identity);

/// Adds `construction`: which construction of this function (in this
/// process) ran the call.
pub struct Construction {
    number: i64,
}

static CONSTRUCTIONS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

impl BatchUdf for Construction {
    type Args = ();

    fn new((): ()) -> Result<Self, String> {
        let number = CONSTRUCTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Construction { number })
    }

    fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, String> {
        let numbers = Int64Array::from(vec![self.number; batch.num_rows()]);
        with_column(
            &batch,
            Field::new("construction", DataType::Int64, false),
            numbers,
        )
    }
}
register_udf!(Construction);

/// Adds `run`: the number it was constructed with; sleeps 40 ms per call,
/// so a run's blocks take a while.
pub struct Tag {
    run: i64,
}

impl BatchUdf for Tag {
    type Args = i64;

    fn new(run: i64) -> Result<Self, String> {
        Ok(Tag { run })
    }

    fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, String> {
        std::thread::sleep(Duration::from_millis(40));
        let runs = Int64Array::from(vec![self.run; batch.num_rows()]);
        with_column(&batch, Field::new("run", DataType::Int64, false), runs)
    }
}
register_udf!(Tag);
