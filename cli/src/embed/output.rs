//! Writes the embeddings of a job as Parquet parts under an output directory
//! (local, `file://` or `s3://`), all or nothing.
//!
//! Parts are written under `_temporary-<nonce>/` and moved into place only
//! after every part succeeded; `_SUCCESS`, holding the job's manifest, comes
//! last. A reader that sees `_SUCCESS` sees the whole output; a failed job
//! leaves the previous contents as they were.

use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, PutPayload, WriteMultipart};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use photon_data::location::{self as store, Location};

/// Rows per output file: big enough for efficient reads, small enough that a
/// part fits in memory while it is encoded.
const ROWS_PER_FILE: usize = 50_000;
const ROWS_PER_ROW_GROUP: usize = 10_000;
/// Parts encoded or uploaded at once.
const PART_CONCURRENCY: usize = 2;
const UPLOAD_CHUNK: usize = 8 << 20;
const UPLOAD_CONCURRENCY: usize = 4;
const SUCCESS: &str = "_SUCCESS";

/// What [`write_embeddings`] published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSummary {
    /// The part files, as URLs, in row order.
    pub files: Vec<String>,
    /// Rows written over all parts.
    pub rows: usize,
    /// Bytes of the part files.
    pub bytes: u64,
}

/// Fails if `output_url` already holds files and `overwrite` is false, or if
/// it is a file. Cheap: call it before loading a model or reading input.
pub async fn check_output(output_url: &str, overwrite: bool) -> Result<()> {
    check_location(&store::resolve(output_url)?, overwrite).await
}

async fn check_location(location: &Location, overwrite: bool) -> Result<()> {
    let url = &location.display;
    let is_file = match &location.local {
        Some(local) => local.exists() && !local.is_dir(),
        None => location.path.as_ref() != "" && location.store.head(&location.path).await.is_ok(),
    };
    if is_file {
        bail!("output {url} is a file; pass a directory for the embeddings");
    }
    if overwrite || location.local.as_ref().is_some_and(|local| !local.exists()) {
        return Ok(());
    }
    let existing: Vec<ObjectMeta> = location
        .store
        .list(Some(&location.path))
        .take(4)
        .try_collect()
        .await
        .with_context(|| format!("cannot list output {url}"))?;
    if !existing.is_empty() {
        let mut names: Vec<String> = existing
            .iter()
            .take(3)
            .map(|meta| relative_name(location, &meta.location))
            .collect();
        if existing.len() > 3 {
            names.push("…".to_string());
        }
        bail!(
            "output {url} already has files ({}); pass --overwrite to replace them",
            names.join(", ")
        );
    }
    Ok(())
}

/// Writes `ids` with their embeddings (`embeddings` holds `ids.len() * dim`
/// values, row after row) as `part-NNNNN.parquet` files of at most 50,000
/// rows with schema `id: <ids' type>, embedding: FixedSizeList<Float32, dim>`,
/// then `_SUCCESS` with `manifest` plus the file list, row count and dimension.
///
/// Refuses an output directory that has files unless `overwrite`; with it,
/// old `part-*` files and `_SUCCESS` are removed just before the new parts
/// are moved in. Other files in the directory are left alone.
pub async fn write_embeddings(
    output_url: &str,
    ids: &ArrayRef,
    embeddings: &[f32],
    dim: usize,
    overwrite: bool,
    manifest: serde_json::Value,
) -> Result<OutputSummary> {
    write_parts(
        output_url,
        ids,
        embeddings,
        dim,
        overwrite,
        manifest,
        ROWS_PER_FILE,
    )
    .await
}

async fn write_parts(
    output_url: &str,
    ids: &ArrayRef,
    embeddings: &[f32],
    dim: usize,
    overwrite: bool,
    manifest: serde_json::Value,
    rows_per_file: usize,
) -> Result<OutputSummary> {
    ensure!(
        (1..=i32::MAX as usize).contains(&dim),
        "embedding dimension {dim} is out of range"
    );
    let rows = ids.len();
    ensure!(
        embeddings.len() == rows * dim,
        "{} embedding values for {rows} ids of dimension {dim}; expected {}",
        embeddings.len(),
        rows * dim
    );
    let location = store::resolve(output_url)?;
    // Again, in case the directory filled up since the command checked it.
    check_location(&location, overwrite).await?;
    let url = location.display.clone();

    let staging_name = format!("_temporary-{}", nonce());
    let staging = location.path.child(staging_name.as_str());
    let parts = rows.div_ceil(rows_per_file).max(1);
    let written: Result<Vec<(String, u64)>> = stream::iter(0..parts)
        .map(|part| {
            let start = part * rows_per_file;
            let len = rows_per_file.min(rows - start);
            let part_ids = ids.slice(start, len);
            let values = embeddings[start * dim..(start + len) * dim].to_vec();
            let name = format!("part-{part:05}.parquet");
            let store = location.store.clone();
            let path = staging.child(name.as_str());
            async move {
                let bytes = tokio::task::spawn_blocking(move || encode_part(part_ids, values, dim))
                    .await
                    .context("the Parquet encoding thread panicked")??;
                let size = bytes.len() as u64;
                upload(&store, &path, bytes)
                    .await
                    .with_context(|| format!("cannot write {name}"))?;
                Ok((name, size))
            }
        })
        .buffered(PART_CONCURRENCY)
        .try_collect()
        .await;
    let written = match written {
        Ok(written) => written,
        Err(err) => {
            remove_staging(&location, &staging_name).await;
            return Err(err.context(format!(
                "cannot write embeddings to {url}; its contents are unchanged"
            )));
        }
    };

    if overwrite {
        remove_previous(&location).await?;
    }
    for (name, _) in &written {
        let to = location.path.child(name.as_str());
        location
            .store
            .rename(&staging.child(name.as_str()), &to)
            .await
            .with_context(|| format!("cannot move {name} into output {url}"))?;
    }
    remove_staging(&location, &staging_name).await;

    let names: Vec<&str> = written.iter().map(|(name, _)| name.as_str()).collect();
    let mut success = match manifest {
        serde_json::Value::Object(map) => map,
        serde_json::Value::Null => serde_json::Map::new(),
        other => serde_json::Map::from_iter([("manifest".to_string(), other)]),
    };
    success.insert("files".into(), names.clone().into());
    success.insert("rows".into(), rows.into());
    success.insert("dim".into(), dim.into());
    let success = serde_json::to_vec_pretty(&success)?;
    location
        .store
        .put(&location.path.child(SUCCESS), PutPayload::from(success))
        .await
        .with_context(|| format!("cannot write {url}/{SUCCESS}"))?;

    Ok(OutputSummary {
        files: names
            .iter()
            .map(|name| location.display_of(&location.path.child(*name)))
            .collect(),
        rows,
        bytes: written.iter().map(|(_, size)| size).sum(),
    })
}

fn output_schema(id_type: &DataType, dim: usize) -> SchemaRef {
    let item = Field::new("item", DataType::Float32, false);
    Arc::new(Schema::new(vec![
        Field::new("id", id_type.clone(), true),
        Field::new(
            "embedding",
            DataType::FixedSizeList(Arc::new(item), dim as i32),
            false,
        ),
    ]))
}

/// One part as Parquet bytes. CPU-bound: runs on a blocking thread.
fn encode_part(ids: ArrayRef, values: Vec<f32>, dim: usize) -> Result<Bytes> {
    let schema = output_schema(ids.data_type(), dim);
    let DataType::FixedSizeList(item, _) = schema.field(1).data_type() else {
        unreachable!("the embedding column is a fixed-size list");
    };
    let embeddings = FixedSizeListArray::try_new(
        item.clone(),
        dim as i32,
        Arc::new(Float32Array::from(values)),
        None,
    )?;
    let batch = RecordBatch::try_new(schema.clone(), vec![ids, Arc::new(embeddings)])?;
    // Float vectors barely compress; snappy costs little and is what most
    // readers expect.
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_size(ROWS_PER_ROW_GROUP)
        .build();
    let mut buffer = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buffer, schema, Some(properties))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(Bytes::from(buffer))
}

/// Multipart upload, so large parts stream to S3 in chunks.
async fn upload(store: &Arc<dyn ObjectStore>, path: &Path, bytes: Bytes) -> Result<()> {
    let mut writer =
        WriteMultipart::new_with_chunk_size(store.put_multipart(path).await?, UPLOAD_CHUNK);
    let mut offset = 0;
    while offset < bytes.len() {
        if let Err(err) = writer.wait_for_capacity(UPLOAD_CONCURRENCY).await {
            let _ = writer.abort().await;
            return Err(err.into());
        }
        let end = bytes.len().min(offset + UPLOAD_CHUNK);
        writer.put(bytes.slice(offset..end));
        offset = end;
    }
    writer.finish().await?;
    Ok(())
}

/// Removes `_SUCCESS` (first, so no reader trusts a half-replaced output)
/// and the `part-*` files of an earlier run.
async fn remove_previous(location: &Location) -> Result<()> {
    let url = &location.display;
    let listing = match location
        .store
        .list_with_delimiter(Some(&location.path))
        .await
    {
        Ok(listing) => listing,
        Err(object_store::Error::NotFound { .. }) => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("cannot list output {url}")),
    };
    let mut old: Vec<Path> = listing
        .objects
        .into_iter()
        .map(|meta| meta.location)
        .filter(|path| {
            path.filename()
                .is_some_and(|name| name == SUCCESS || name.starts_with("part-"))
        })
        .collect();
    // `_` sorts before `p`, but say it rather than rely on it.
    old.sort_by_key(|path| path.filename() != Some(SUCCESS));
    for path in old {
        match location.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(err) => {
                return Err(err).with_context(|| {
                    format!(
                        "cannot remove {} to overwrite it",
                        location.display_of(&path)
                    )
                });
            }
        }
    }
    Ok(())
}

/// Best effort: a leftover `_temporary-*` holds no published data.
async fn remove_staging(location: &Location, staging_name: &str) {
    let staging = location.path.child(staging_name);
    if let Some(local) = &location.local {
        let dir = local.join(staging_name);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        return;
    }
    let leftovers: Vec<ObjectMeta> = location
        .store
        .list(Some(&staging))
        .filter_map(|meta| async move { meta.ok() })
        .collect()
        .await;
    for meta in leftovers {
        let _ = location.store.delete(&meta.location).await;
    }
}

fn relative_name(location: &Location, path: &Path) -> String {
    path.prefix_match(&location.path)
        .map(|parts| {
            parts
                .map(|part| part.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_else(|| path.to_string())
}

/// Unique enough among concurrent writers to one directory.
fn nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!("{:x}-{nanos:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, Int64Array, StringArray, UnionArray};
    use arrow::datatypes::{Float32Type, Int64Type, UnionFields};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// Rows of every part file in `dir`, in name order, concatenated.
    fn read_dir(dir: &std::path::Path) -> Vec<RecordBatch> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with("part-"))
            .collect();
        names.sort();
        names
            .iter()
            .flat_map(|name| {
                let file = std::fs::File::open(dir.join(name)).unwrap();
                ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap()
                    .map(Result::unwrap)
            })
            .collect()
    }

    fn listing(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn embeddings(rows: usize, dim: usize, offset: f32) -> Vec<f32> {
        (0..rows * dim).map(|i| i as f32 * 0.5 + offset).collect()
    }

    fn success(dir: &std::path::Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join(SUCCESS)).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn writes_parts_that_read_back_equal() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let url = out.to_str().unwrap();
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(100..1_101));
        let values = embeddings(1_001, 3, 0.0);
        let manifest = serde_json::json!({"model": "tiny", "input": ["a.parquet"]});

        let summary = write_parts(url, &ids, &values, 3, false, manifest, 400)
            .await
            .unwrap();
        assert_eq!(summary.rows, 1_001);
        assert_eq!(
            summary.files,
            (0..3)
                .map(|i| format!("{url}/part-0000{i}.parquet"))
                .collect::<Vec<_>>()
        );
        let on_disk: u64 = (0..3)
            .map(|i| {
                std::fs::metadata(out.join(format!("part-0000{i}.parquet")))
                    .unwrap()
                    .len()
            })
            .sum();
        assert_eq!(summary.bytes, on_disk);
        assert_eq!(
            listing(&out),
            [
                "_SUCCESS",
                "part-00000.parquet",
                "part-00001.parquet",
                "part-00002.parquet"
            ]
        );

        let batches = read_dir(&out);
        let rows: Vec<usize> = batches.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(rows, vec![400, 400, 201]);
        let schema = batches[0].schema();
        assert_eq!(schema.field(0).name(), "id");
        assert_eq!(schema.field(0).data_type(), &DataType::Int64);
        assert_eq!(schema.field(1).name(), "embedding");
        assert_eq!(
            schema.field(1).data_type(),
            &DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), 3)
        );
        let read_ids: Vec<i64> = batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(read_ids, (100..1_101).collect::<Vec<i64>>());
        let read_values: Vec<f32> = batches
            .iter()
            .flat_map(|b| {
                let list = b.column(1).as_fixed_size_list();
                list.values()
                    .as_primitive::<Float32Type>()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(read_values, values);

        assert_eq!(
            success(&out),
            serde_json::json!({
                "model": "tiny",
                "input": ["a.parquet"],
                "files": ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"],
                "rows": 1_001,
                "dim": 3,
            })
        );
    }

    #[tokio::test]
    async fn keeps_the_id_type_and_accepts_file_urls() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/out", dir.path().display());
        let ids: ArrayRef = Arc::new(StringArray::from(vec!["a", "b"]));
        let summary = write_embeddings(&url, &ids, &[1.0, 2.0], 1, false, serde_json::Value::Null)
            .await
            .unwrap();
        assert_eq!(summary.files, vec![format!("{url}/part-00000.parquet")]);
        let batches = read_dir(&dir.path().join("out"));
        let read: Vec<&str> = batches[0]
            .column(0)
            .as_string::<i32>()
            .iter()
            .flatten()
            .collect();
        assert_eq!(read, ["a", "b"]);
    }

    #[tokio::test]
    async fn refuses_existing_output_without_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let url = out.to_str().unwrap();
        // Missing and empty directories are fine.
        check_output(url, false).await.unwrap();
        std::fs::create_dir(&out).unwrap();
        check_output(url, false).await.unwrap();

        let ids: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        write_embeddings(
            url,
            &ids,
            &[1.0, 2.0],
            1,
            false,
            serde_json::json!({"run": 1}),
        )
        .await
        .unwrap();
        let expected = format!(
            "output {url} already has files (_SUCCESS, part-00000.parquet); pass --overwrite to replace them"
        );
        let err = check_output(url, false).await.unwrap_err();
        assert_eq!(format!("{err:#}"), expected);
        let err = write_embeddings(
            url,
            &ids,
            &[5.0, 6.0],
            1,
            false,
            serde_json::json!({"run": 2}),
        )
        .await
        .unwrap_err();
        assert_eq!(format!("{err:#}"), expected);
        // The first run's output is untouched.
        assert_eq!(success(&out)["run"], 1);
        assert_eq!(listing(&out), ["_SUCCESS", "part-00000.parquet"]);
        check_output(url, true).await.unwrap();

        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = check_output(file.to_str().unwrap(), true)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "output {} is a file; pass a directory for the embeddings",
                file.display()
            )
        );
    }

    #[tokio::test]
    async fn overwrite_replaces_parts_and_keeps_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let url = out.to_str().unwrap();
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(0..10));
        write_parts(
            url,
            &ids,
            &embeddings(10, 2, 0.0),
            2,
            false,
            serde_json::json!({"run": 1}),
            4,
        )
        .await
        .unwrap();
        std::fs::write(out.join("README"), "keep me").unwrap();
        assert_eq!(listing(&out).len(), 5);

        let new_ids: ArrayRef = Arc::new(Int64Array::from_iter_values(50..53));
        let new_values = embeddings(3, 2, 7.0);
        let summary = write_parts(
            url,
            &new_ids,
            &new_values,
            2,
            true,
            serde_json::json!({"run": 2}),
            4,
        )
        .await
        .unwrap();
        assert_eq!(summary.rows, 3);
        assert_eq!(listing(&out), ["README", "_SUCCESS", "part-00000.parquet"]);
        let batches = read_dir(&out);
        assert_eq!(batches.len(), 1);
        assert_eq!(
            batches[0].column(0).as_primitive::<Int64Type>().values(),
            &[50, 51, 52]
        );
        let list = batches[0].column(1).as_fixed_size_list();
        assert_eq!(
            list.values().as_primitive::<Float32Type>().values(),
            &new_values[..]
        );
        let manifest = success(&out);
        assert_eq!(manifest["run"], 2);
        assert_eq!(manifest["rows"], 3);
        assert_eq!(manifest["files"], serde_json::json!(["part-00000.parquet"]));
    }

    #[tokio::test]
    async fn a_failed_write_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let url = out.to_str().unwrap();
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![1]));
        write_embeddings(url, &ids, &[1.0], 1, false, serde_json::json!({"run": 1}))
            .await
            .unwrap();

        // Parquet cannot store union columns, so encoding the part fails.
        let fields =
            UnionFields::try_new(vec![0], vec![Field::new("n", DataType::Int64, false)]).unwrap();
        let union: ArrayRef = Arc::new(
            UnionArray::try_new(
                fields,
                vec![0, 0].into(),
                None,
                vec![Arc::new(Int64Array::from(vec![1, 2]))],
            )
            .unwrap(),
        );
        assert_eq!(union.len(), 2);
        let err = write_embeddings(
            url,
            &union,
            &[1.0, 2.0],
            1,
            true,
            serde_json::json!({"run": 2}),
        )
        .await
        .unwrap_err();
        assert!(
            format!("{err:#}").starts_with(&format!(
                "cannot write embeddings to {url}; its contents are unchanged"
            )),
            "{err:#}"
        );
        assert_eq!(listing(&out), ["_SUCCESS", "part-00000.parquet"]);
        assert_eq!(success(&out)["run"], 1);
    }

    #[tokio::test]
    async fn mismatched_lengths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        let url = dir.path().join("out");
        let err = write_embeddings(
            url.to_str().unwrap(),
            &ids,
            &[1.0; 5],
            2,
            false,
            serde_json::Value::Null,
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "5 embedding values for 2 ids of dimension 2; expected 4"
        );
        assert!(!url.exists());
    }
}
