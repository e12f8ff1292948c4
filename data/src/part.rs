//! Writing one output part, whole or not at all, so that a retried or
//! rebuilt block replaces its own part: locally, encoded straight into a
//! temporary file that is renamed over the part; elsewhere, encoded in memory
//! and stored with one atomic put. Batches go in one at a time, so a stage
//! that streams never holds its whole output.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use object_store::PutPayload;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::location::{self, Location};
use crate::stats;

/// The one-row summary a `Write` step leaves: the part, its rows and bytes,
/// and the written schema (JSON).
fn summary_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("part", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("schema", DataType::Utf8, false),
    ]))
}

/// A part being encoded under a staging location.
pub(crate) struct PartWriter {
    part: String,
    staging: Location,
    encoder: Option<Encoder>,
    /// The first batch's schema, which every batch must have.
    schema: Option<SchemaRef>,
    rows: u64,
    /// Bytes to reserve for a part encoded in memory (growing a buffer of
    /// many MiB by doubling copies it each time).
    expected_bytes: usize,
}

enum Encoder {
    File {
        writer: ArrowWriter<File>,
        temporary: PathBuf,
    },
    Memory(ArrowWriter<Vec<u8>>),
}

/// A finished part: its rows and the written schema, with the bytes still to
/// store when the staging location is not local.
pub(crate) struct Encoded {
    part: String,
    staging: Location,
    rows: u64,
    schema: SchemaRef,
    bytes: u64,
    to_put: Option<Vec<u8>>,
}

impl PartWriter {
    /// A writer of `part` under `staging` (a URL); nothing is created until
    /// the first batch, whose schema the part takes.
    pub(crate) fn new(staging: &str, part: &str) -> Result<Self, String> {
        Ok(Self {
            part: part.to_string(),
            staging: location::resolve(staging).map_err(|e| e.to_string())?,
            encoder: None,
            schema: None,
            rows: 0,
            expected_bytes: 0,
        })
    }

    /// Reserves about `bytes` up front when the part is encoded in memory.
    pub(crate) fn expecting_bytes(mut self, bytes: usize) -> Self {
        self.expected_bytes = bytes;
        self
    }

    /// Encodes `batch` into the part.
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<(), String> {
        if self.encoder.is_none() {
            self.encoder = Some(self.open(batch.schema())?);
            self.schema = Some(batch.schema());
        }
        let schema = self.schema.as_ref().expect("set with the encoder");
        if batch.schema().fields() != schema.fields() {
            return Err(format!(
                "the stage's output batches do not share one schema: part {} started with \
                 {} and then got {}",
                self.part,
                stats::describe_schema(schema),
                stats::describe_schema(&batch.schema())
            ));
        }
        let written = match self.encoder.as_mut().expect("opened above") {
            Encoder::File { writer, .. } => writer.write(batch),
            Encoder::Memory(writer) => writer.write(batch),
        };
        written.map_err(|e| self.encode_error(e))?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    fn open(&self, schema: SchemaRef) -> Result<Encoder, String> {
        static TEMPORARIES: AtomicU64 = AtomicU64::new(0);
        let properties = Some(part_properties());
        let Some(dir) = &self.staging.local else {
            let buffer = Vec::with_capacity(self.expected_bytes + (64 << 10));
            let writer = ArrowWriter::try_new(buffer, schema, properties)
                .map_err(|e| self.encode_error(e))?;
            return Ok(Encoder::Memory(writer));
        };
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        let temporary = dir.join(format!(
            ".{}.{}-{}.tmp",
            self.part,
            std::process::id(),
            TEMPORARIES.fetch_add(1, Ordering::Relaxed)
        ));
        let file = File::create_new(&temporary).map_err(|e| io("create", &temporary, e))?;
        match ArrowWriter::try_new(file, schema, properties) {
            Ok(writer) => Ok(Encoder::File { writer, temporary }),
            Err(e) => {
                let _ = std::fs::remove_file(&temporary);
                Err(self.encode_error(e))
            }
        }
    }

    /// Finishes the encoding; a local part is renamed into place here, any
    /// other is stored by [`Encoded::publish`].
    pub(crate) fn finish(mut self) -> Result<Encoded, String> {
        let encoder = self.encoder.take().ok_or_else(|| {
            format!(
                "part {} got no batch, so it has no schema to write",
                self.part
            )
        })?;
        let (bytes, to_put) = match encoder {
            Encoder::Memory(writer) => {
                let buffer = writer.into_inner().map_err(|e| self.encode_error(e))?;
                (buffer.len() as u64, Some(buffer))
            }
            Encoder::File { writer, temporary } => {
                let renamed = self.close_and_rename(writer, &temporary);
                if renamed.is_err() {
                    let _ = std::fs::remove_file(&temporary);
                }
                (renamed?, None)
            }
        };
        Ok(Encoded {
            part: std::mem::take(&mut self.part),
            staging: self.staging.clone(),
            rows: self.rows,
            schema: self.schema.take().expect("set with the encoder"),
            bytes,
            to_put,
        })
    }

    fn close_and_rename(&self, writer: ArrowWriter<File>, temporary: &Path) -> Result<u64, String> {
        let file = writer.into_inner().map_err(|e| self.encode_error(e))?;
        // On the disk before it can be published (the commit syncs the
        // directory its name moves into).
        file.sync_all().map_err(|e| io("sync", temporary, e))?;
        let bytes = file
            .metadata()
            .map_err(|e| io("inspect", temporary, e))?
            .len();
        let dir = self
            .staging
            .local
            .as_ref()
            .expect("a file encoder is local");
        let target = dir.join(&self.part);
        std::fs::rename(temporary, &target).map_err(|e| io("write", &target, e))?;
        Ok(bytes)
    }

    fn encode_error(&self, e: parquet::errors::ParquetError) -> String {
        format!("cannot encode part {}: {e}", self.part)
    }
}

impl Drop for PartWriter {
    /// A part abandoned half-written (an error, a panicking function) leaves
    /// no temporary file behind.
    fn drop(&mut self) {
        if let Some(Encoder::File { temporary, .. }) = &self.encoder {
            let _ = std::fs::remove_file(temporary);
        }
    }
}

impl Encoded {
    /// Stores a part encoded in memory (one atomic put), then returns the
    /// stage's one-row summary.
    pub(crate) async fn publish(self) -> Result<RecordBatch, String> {
        if let Some(buffer) = self.to_put {
            let path = self.staging.path.child(self.part.as_str());
            self.staging
                .store
                .put(&path, PutPayload::from(buffer))
                .await
                .map_err(|e| format!("cannot write {}: {e}", self.staging.display_of(&path)))?;
        }
        RecordBatch::try_new(
            summary_schema(),
            vec![
                Arc::new(StringArray::from(vec![self.part])),
                Arc::new(UInt64Array::from(vec![self.rows])),
                Arc::new(UInt64Array::from(vec![self.bytes])),
                Arc::new(StringArray::from(vec![stats::describe_schema(
                    &self.schema,
                )])),
            ],
        )
        .map_err(|e| e.to_string())
    }
}

/// Writes `block` as one part under `staging`; returns the stage's summary.
pub(crate) async fn write_block(
    block: &RecordBatch,
    staging: &str,
    part: &str,
) -> Result<RecordBatch, String> {
    let encoded = photon::run_blocking(|| {
        let mut writer =
            PartWriter::new(staging, part)?.expecting_bytes(block.get_array_memory_size());
        writer.write(block)?;
        writer.finish()
    })?;
    encoded.publish().await
}

fn part_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build()
}

fn io(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("cannot {what} {}: {e}", path.display())
}
