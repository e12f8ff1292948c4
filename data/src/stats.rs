//! What a run did, per stage. Each stage's worker appends a record (rows,
//! bytes, time) to the block's schema metadata, so the records travel with
//! the block to the driver for free; the driver adds what only it sees
//! (retries, time blocked by the memory budget, peak store use).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::Schema;
use serde::{Deserialize, Serialize};

/// The metadata key holding the stage records of a block.
const KEY: &str = "photon.stages";

/// What one stage did to one block.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct StageRecord {
    pub rows: u64,
    pub bytes: u64,
    pub micros: u64,
    /// CPU time of the worker process during the call.
    #[serde(default)]
    pub cpu_micros: u64,
    /// What ran the stage's function (its `describe`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran_on: Option<String>,
}

/// When a call started, in wall time and in the worker process's CPU time.
pub(crate) struct Timer {
    wall: Instant,
    cpu: Duration,
}

impl Timer {
    pub(crate) fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: process_cpu_time(),
        }
    }
}

/// CPU time this process has used, all threads together (a model's
/// intra-op threads included, which a thread clock would miss).
fn process_cpu_time() -> Duration {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

impl StageRecord {
    /// The rows and bytes of a stage's data (before a write turns it into a summary).
    pub(crate) fn of(batch: &RecordBatch) -> Self {
        Self {
            rows: batch.num_rows() as u64,
            bytes: batch.get_array_memory_size() as u64,
            micros: 0,
            cpu_micros: 0,
            ran_on: None,
        }
    }

    /// With what ran the stage's function.
    pub(crate) fn ran_on(mut self, description: Option<String>) -> Self {
        self.ran_on = description;
        self
    }

    /// With the stage's wall and CPU time since `started`.
    pub(crate) fn took(mut self, started: Timer) -> Self {
        self.micros = started.wall.elapsed().as_micros() as u64;
        self.cpu_micros = process_cpu_time().saturating_sub(started.cpu).as_micros() as u64;
        self
    }
}

/// The records of the stages a block went through so far.
pub(crate) fn history(batch: &RecordBatch) -> Vec<StageRecord> {
    batch
        .schema()
        .metadata()
        .get(KEY)
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default()
}

/// The batch without the records (what user functions and files see).
pub(crate) fn strip(batch: RecordBatch) -> RecordBatch {
    if !batch.schema().metadata().contains_key(KEY) {
        return batch;
    }
    let mut metadata = batch.schema().metadata().clone();
    metadata.remove(KEY);
    with_metadata(&batch, metadata)
}

/// The same columns under a schema with other metadata.
fn with_metadata(batch: &RecordBatch, metadata: HashMap<String, String>) -> RecordBatch {
    let schema = Schema::new_with_metadata(batch.schema().fields().clone(), metadata);
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(Arc::new(schema), batch.columns().to_vec(), &options)
        .expect("only metadata changed")
}

/// `batch` carrying `history` plus this stage's record.
pub(crate) fn append(
    batch: RecordBatch,
    history: &[StageRecord],
    record: StageRecord,
) -> RecordBatch {
    let mut records = history.to_vec();
    records.push(record);
    let mut metadata: HashMap<String, String> = batch.schema().metadata().clone();
    metadata.insert(
        KEY.into(),
        serde_json::to_string(&records).expect("plain numbers"),
    );
    with_metadata(&batch, metadata)
}

/// A schema as JSON: `[{"name", "type", "nullable"}]` (for manifests).
pub(crate) fn describe_schema(schema: &Schema) -> String {
    let fields: Vec<serde_json::Value> = schema
        .fields()
        .iter()
        .map(|f| {
            serde_json::json!({
                "name": f.name(),
                "type": f.data_type().to_string(),
                "nullable": f.is_nullable(),
            })
        })
        .collect();
    serde_json::to_string(&fields).expect("plain values")
}

/// One stage's totals.
#[derive(Clone, Debug, Default)]
pub struct StageStats {
    /// What the stage does (`read_parquet → select_columns`, `map_batches(Embed) ×1..=3 actors`).
    pub name: String,
    /// Blocks it finished.
    pub blocks: u64,
    /// Rows it produced.
    pub rows: u64,
    /// Bytes (in memory) it produced.
    pub bytes: u64,
    /// Time its calls took, summed over blocks (a worker's busy time).
    pub busy: Duration,
    /// CPU time of the worker processes during its calls, summed over blocks
    /// (calls that overlap in one actor, with `max_concurrency`, each count
    /// the whole process).
    pub cpu: Duration,
    /// From its first call to its last result.
    pub wall: Duration,
    /// Calls that failed for a cluster reason and ran again.
    pub retries: u64,
    /// What ran its function, as the function describes it (one entry per
    /// distinct description: a pool on CPU and GPU nodes shows both).
    pub ran_on: Vec<String>,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Per stage, in pipeline order.
    pub stages: Vec<StageStats>,
    /// When the run started (to time `first_block` from a caller's clock).
    pub started: Option<std::time::Instant>,
    /// The whole run.
    pub wall: Duration,
    /// From the run's start to the first block out of the last stage.
    pub first_block: Option<Duration>,
    /// Time no new block could start because blocks in flight filled the memory budget.
    pub backpressure: Duration,
    /// Most bytes held in the cluster's object stores during the run (sampled).
    pub peak_object_store_bytes: u64,
    /// Most resident memory of the job's processes across the cluster
    /// (sampled with the store, and once more just before actor pools end,
    /// so a run shorter than the sampling interval still counts its actors).
    pub peak_job_memory: photon::JobMemory,
    /// Blocks rebuilt from their source after a copy or an actor was lost.
    pub reconstructions: u64,
    /// Blocks skipped because the user function failed (within `max_errored_blocks`).
    pub skipped_blocks: u64,
}

impl Stats {
    /// Empty totals for `stages`.
    pub(crate) fn of_stages(stages: &[crate::executor::Stage]) -> Self {
        Self {
            stages: stages
                .iter()
                .map(|s| StageStats {
                    name: s.name.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// A block came out of the last stage with `records`: folds them in,
    /// notes the first block's time (from `started`) and shows what ran
    /// each stage.
    pub(crate) fn block_out(
        &mut self,
        records: &[StageRecord],
        started: std::time::Instant,
        progress: &mut crate::progress::Progress,
    ) {
        self.record(records);
        self.first_block.get_or_insert_with(|| started.elapsed());
        for (stage, record) in records.iter().enumerate() {
            if let Some(ran_on) = &record.ran_on {
                progress.ran_on(stage, ran_on);
            }
        }
    }

    /// Folds a finished block's records into the stage totals.
    pub(crate) fn record(&mut self, records: &[StageRecord]) {
        for (stage, record) in self.stages.iter_mut().zip(records) {
            stage.blocks += 1;
            stage.rows += record.rows;
            stage.bytes += record.bytes;
            stage.busy += Duration::from_micros(record.micros);
            stage.cpu += Duration::from_micros(record.cpu_micros);
            if let Some(description) = &record.ran_on
                && !stage.ran_on.contains(description)
            {
                stage.ran_on.push(description.clone());
            }
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for stage in &self.stages {
            writeln!(
                f,
                "{}: {} blocks, {} rows, {:.1} MiB, busy {:.2}s, cpu {:.2}s, wall {:.2}s, {} retries",
                stage.name,
                stage.blocks,
                stage.rows,
                stage.bytes as f64 / (1 << 20) as f64,
                stage.busy.as_secs_f64(),
                stage.cpu.as_secs_f64(),
                stage.wall.as_secs_f64(),
                stage.retries
            )?;
            if !stage.ran_on.is_empty() {
                writeln!(f, "  ran on {}", stage.ran_on.join("; "))?;
            }
        }
        if let Some(first) = self.first_block {
            write!(f, "first block out after {:.2}s; ", first.as_secs_f64())?;
        }
        write!(
            f,
            "total {:.2}s; blocked by the memory budget {:.2}s; peak object store {:.1} MiB; \
             peak job memory {:.1} MiB in {} processes; {} reconstructions; {} skipped blocks",
            self.wall.as_secs_f64(),
            self.backpressure.as_secs_f64(),
            self.peak_object_store_bytes as f64 / (1 << 20) as f64,
            self.peak_job_memory.resident_bytes as f64 / (1 << 20) as f64,
            self.peak_job_memory.processes,
            self.reconstructions,
            self.skipped_blocks
        )
    }
}
