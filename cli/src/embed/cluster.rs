//! `photon embed`'s model as a photon-data function: the pipeline
//! `read_parquet → map_batches(embedder actors) → write_parquet` runs it on
//! a cluster's actors (an embedded local cluster by default) or, with
//! `--in-process`, in the calling process. Each actor loads the model once
//! and embeds block after block; the data layer validates the input first,
//! rebuilds what a dead node lost and writes each part exactly once, with
//! `_SUCCESS` last.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use photon_data::{BatchUdf, register_udf};
use photon_inference::{Backend, DeviceChoice, EmbedderOptions, Precision, SentenceEmbedder};
use serde::{Deserialize, Serialize};

use super::texts::push_texts;

/// The row-number column `read_parquet` adds when no id column is given.
pub const ROW_NUMBER: &str = "_row";

/// What each embedder actor is constructed from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EmbedSpec {
    /// The sentence-transformers directory, as the driver's machine names it.
    pub model: PathBuf,
    /// The model directory's name in the workers' directory, where the
    /// driver shipped it (`Config::files`): used on nodes that lack `model`.
    #[serde(default)]
    pub shipped_model: Option<String>,
    /// The text column.
    pub column: String,
    /// The column that becomes `id`.
    pub id_column: String,
    /// CPU threads per actor (0: one per core).
    pub threads: usize,
    /// Most texts per model batch.
    pub batch_size: Option<usize>,
    /// `auto`, `fast-cpu` or `candle`.
    pub backend: String,
    /// `cpu`, `gpu`, `auto` (the GPU when `num_gpus` > 0) or `auto-visible`
    /// (the GPU when one is visible: the in-process run, which has no actors).
    #[serde(default)]
    pub device: String,
    /// `fp32`, `fp16` or `bf16`; `None` for the engine's default.
    #[serde(default)]
    pub precision: Option<Precision>,
    /// GPUs each actor was given: with `device` auto, the GPU engine runs
    /// exactly when this is above 0.
    #[serde(default)]
    pub num_gpus: f64,
    /// Testing: milliseconds to sleep after each model batch.
    #[serde(default)]
    pub slow_batches_ms: u64,
}

impl EmbedSpec {
    /// Where the model is on this node: the driver's path where this node
    /// has it (the driver's own, a shared file system), else the shipped copy.
    fn model_here(&self) -> Result<PathBuf, String> {
        if self.model.is_dir() {
            return Ok(self.model.clone());
        }
        let shipped = self.shipped_model.as_ref().and_then(|name| {
            let dir = std::env::var_os(photon::packages::WORKING_DIR_ENV)?;
            Some(PathBuf::from(dir).join(name))
        });
        match shipped {
            Some(dir) if dir.is_dir() => Ok(dir),
            _ => Err(format!(
                "the model {} is not on this node and was not shipped with the job",
                self.model.display()
            )),
        }
    }
}

/// One actor's model: embeds a block's texts into `id, embedding` rows.
pub struct EmbedBatches {
    embedder: SentenceEmbedder,
    spec: EmbedSpec,
}

impl BatchUdf for EmbedBatches {
    type Args = EmbedSpec;

    fn new(spec: EmbedSpec) -> Result<Self, String> {
        let backend = match spec.backend.as_str() {
            "fast-cpu" => Backend::FastCpu,
            "candle" => Backend::Candle,
            _ => Backend::Auto,
        };
        let device = match spec.device.as_str() {
            "cpu" => DeviceChoice::Cpu,
            "gpu" => DeviceChoice::Gpu,
            "auto-visible" => DeviceChoice::Auto,
            _ if spec.num_gpus > 0.0 => DeviceChoice::Gpu,
            _ => DeviceChoice::Cpu,
        };
        let options = EmbedderOptions {
            backend,
            device,
            precision: spec.precision,
            threads: spec.threads,
            max_batch_rows: spec.batch_size,
            ..EmbedderOptions::default()
        };
        let model = spec.model_here()?;
        // An actor's worker knows its node (the in-process run has none).
        let node = std::env::var("PHOTON_NODE_ID").ok();
        let embedder = SentenceEmbedder::load(&model, options).map_err(|e| match (e, node) {
            (e @ photon_inference::InferenceError::Gpu(_), Some(node)) => format!(
                "node {node}: an actor given {} GPU(s) cannot run the model: {e:#}",
                spec.num_gpus
            ),
            (e @ photon_inference::InferenceError::Gpu(_), None) => format!("{e:#}"),
            (e, _) => format!("cannot load the model {}: {e:#}", model.display()),
        })?;
        Ok(Self { embedder, spec })
    }

    fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, String> {
        let column = &self.spec.column;
        let array = batch
            .column_by_name(column)
            .ok_or_else(|| format!("the block has no column {column:?}"))?;
        let mut texts = Vec::with_capacity(batch.num_rows());
        push_texts(array, &mut texts, |row| {
            anyhow::anyhow!(
                "row {row} of the block: column {column:?} is null; drop or fill null texts \
                 before embedding"
            )
        })
        .map_err(|e| e.to_string())?;
        let ids = batch
            .column_by_name(&self.spec.id_column)
            .ok_or_else(|| format!("the block has no column {:?}", self.spec.id_column))?
            .clone();
        // Rows done batch by batch, so the driver's progress moves inside
        // a block of thousands of rows.
        let progress = photon_data::BlockProgress::current();
        let slow = std::time::Duration::from_millis(self.spec.slow_batches_ms);
        let rows_done = |rows: usize| {
            if !slow.is_zero() {
                std::thread::sleep(slow);
            }
            progress.rows_done(rows as u64);
        };
        let embeddings = self
            .embedder
            .embed_reporting(&texts, &rows_done)
            .map_err(|e| format!("{e:#}"))?;
        embedding_batch(ids, embeddings.values, self.embedder.dim())
    }

    fn describe(&self) -> Option<String> {
        Some(self.embedder.engine_info().to_string())
    }

    fn input_columns(spec: &EmbedSpec) -> Vec<(String, Vec<DataType>)> {
        let text_types = vec![DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View];
        let mut columns = vec![(spec.column.clone(), text_types)];
        if spec.id_column != ROW_NUMBER {
            columns.push((spec.id_column.clone(), Vec::new()));
        }
        columns
    }
}
register_udf!(EmbedBatches);

/// `id` and `embedding: FixedSizeList<Float32, dim>`, as the in-process path writes.
fn embedding_batch(ids: ArrayRef, values: Vec<f32>, dim: usize) -> Result<RecordBatch, String> {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let embeddings = FixedSizeListArray::try_new(
        item.clone(),
        dim as i32,
        Arc::new(Float32Array::from(values)),
        None,
    )
    .map_err(|e| e.to_string())?;
    let schema = Schema::new(vec![
        Field::new("id", ids.data_type().clone(), true),
        Field::new(
            "embedding",
            DataType::FixedSizeList(item, dim as i32),
            false,
        ),
    ]);
    RecordBatch::try_new(Arc::new(schema), vec![ids, Arc::new(embeddings)])
        .map_err(|e| e.to_string())
}
