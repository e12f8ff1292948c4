//! Arrow `RecordBatch` values: stored as Arrow IPC stream bytes (not
//! serde), and read back zero-copy: the batch's buffers point into the
//! object's shared-memory mapping, which stays pinned until the batch (and
//! every array sliced from it) is dropped.

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};

use crate::error::{Error, Result};
use crate::object_io::ObjectBytes;

/// Arrow IPC stream bytes of `batch`, buffers 64-byte aligned (the store
/// aligns objects to 64 bytes too, so mapped buffers stay aligned).
pub fn encode_batch(batch: &RecordBatch) -> Result<Vec<u8>> {
    let error = |e: arrow::error::ArrowError| {
        Error::Serialization(format!("cannot write a record batch as Arrow IPC: {e}"))
    };
    let options =
        IpcWriteOptions::try_new(64, false, arrow::ipc::MetadataVersion::V5).map_err(error)?;
    let mut writer =
        StreamWriter::try_new_with_options(Vec::new(), &batch.schema(), options).map_err(error)?;
    writer.write(batch).map_err(error)?;
    writer.into_inner().map_err(error)
}

/// The record batch in `bytes` (one batch in Arrow IPC stream format),
/// sharing the bytes' memory; `what` names it in errors.
pub fn decode_batch(bytes: &ObjectBytes, what: &str) -> Result<RecordBatch> {
    let mut buffer = Buffer::from(bytes.share());
    let mut decoder = StreamDecoder::new();
    let error = |e: arrow::error::ArrowError| {
        Error::Serialization(format!("cannot read {what} as an Arrow record batch: {e}"))
    };
    while !buffer.is_empty() {
        if let Some(batch) = decoder.decode(&mut buffer).map_err(error)? {
            return Ok(batch);
        }
    }
    Err(Error::Serialization(format!(
        "{what} holds no Arrow record batch (was it stored with put_batch, or returned as a RecordBatch?)"
    )))
}
