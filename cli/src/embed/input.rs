//! Reads the input of an embed job: a text column (and optionally an id
//! column) from Parquet files named by local paths, `file://` or `s3://` URLs,
//! directories or simple globs.
//!
//! Every file's schema is checked before any data is read, so a typo in a
//! column name fails in seconds rather than after reading half the input.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow::array::{Array, ArrayAccessor, ArrayRef, AsArray, Int64Array};
use arrow::datatypes::{DataType, Schema};
use futures::{StreamExt, TryStreamExt, stream};
use object_store::{ObjectMeta, ObjectStore};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReader;
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};
#[cfg(test)]
use photon_data::source::{glob_match, split_glob};

/// Files whose footers are fetched at once while checking schemas.
const METADATA_CONCURRENCY: usize = 16;
/// Files read at once.
const READ_CONCURRENCY: usize = 4;
const BATCH_ROWS: usize = 8_192;

/// The rows of an embed job, in file order then row order.
#[derive(Debug)]
pub struct EmbedInput {
    /// The id column as read (any Arrow type, concatenated over the files),
    /// or `Int64` 0.. over all rows when no id column was asked for.
    pub ids: ArrayRef,
    /// The texts, one per id. Plain strings: the model's tokenizer wants
    /// `&str`, and the three Arrow string layouts are merged here.
    pub texts: Vec<String>,
    /// The files read, in order, as URLs.
    pub files: Vec<String>,
}

/// One input file, listed but not yet opened.
struct InputFile {
    store: Arc<dyn ObjectStore>,
    meta: ObjectMeta,
    url: String,
}

/// One input file whose schema passed the checks.
struct CheckedFile {
    url: String,
    builder: ParquetRecordBatchStreamBuilder<ParquetObjectReader>,
    projection: Vec<usize>,
    id_type: Option<DataType>,
    rows: usize,
}

/// Reads column `column` (and `id_column`, if given) of every Parquet file
/// that `urls` name. Each URL is a file, a directory (its `*.parquet` files,
/// sorted) or a glob in the last path segment (`data/*.parquet`).
///
/// Fails, naming the file and column, on: no files, an unreadable file, a
/// missing column, a non-string text column, id columns of different types,
/// zero rows in total, or a null text.
pub async fn read_input(
    urls: &[String],
    column: &str,
    id_column: Option<&str>,
) -> Result<EmbedInput> {
    if urls.is_empty() {
        bail!("no input given; pass one or more Parquet files, directories or globs");
    }
    let mut files = Vec::new();
    for url in urls {
        files.extend(list_files(url).await?);
    }

    let checked: Vec<CheckedFile> = stream::iter(files)
        .map(|file| check_file(file, column, id_column))
        .buffered(METADATA_CONCURRENCY)
        .try_collect()
        .await?;
    if let Some(id_column) = id_column {
        let first = &checked[0];
        for file in &checked[1..] {
            if file.id_type != first.id_type {
                bail!(
                    "id column {id_column:?} is {} in {} but {} in {}; all inputs need the same id type",
                    type_name(first.id_type.as_ref()),
                    first.url,
                    type_name(file.id_type.as_ref()),
                    file.url
                );
            }
        }
    }
    let total: usize = checked.iter().map(|file| file.rows).sum();
    if total == 0 {
        let names: Vec<&str> = checked.iter().map(|file| file.url.as_str()).collect();
        bail!("the input has no rows (files: {})", names.join(", "));
    }

    let file_urls: Vec<String> = checked.iter().map(|file| file.url.clone()).collect();
    let parts: Vec<(Vec<String>, Vec<ArrayRef>)> = stream::iter(checked)
        .map(|file| read_file(file, column, id_column))
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;

    let mut texts = Vec::with_capacity(total);
    let mut id_arrays = Vec::new();
    for (file_texts, file_ids) in parts {
        texts.extend(file_texts);
        id_arrays.extend(file_ids);
    }
    let ids: ArrayRef = match id_column {
        Some(_) => {
            let refs: Vec<&dyn Array> = id_arrays.iter().map(|array| array.as_ref()).collect();
            arrow::compute::concat(&refs).context("cannot join the id columns of the inputs")?
        }
        None => Arc::new(Int64Array::from_iter_values(0..total as i64)),
    };
    anyhow::ensure!(
        ids.len() == texts.len() && texts.len() == total,
        "read {} texts and {} ids but the file footers promise {total} rows",
        texts.len(),
        ids.len()
    );
    Ok(EmbedInput {
        ids,
        texts,
        files: file_urls,
    })
}

/// The files one URL names, sorted (photon-data's listing: files,
/// directories of `*.parquet`, globs).
async fn list_files(url: &str) -> Result<Vec<InputFile>> {
    let files = photon_data::source::list_files(url).await?;
    Ok(files
        .into_iter()
        .map(|(store, meta, url)| InputFile { store, meta, url })
        .collect())
}

/// Opens the footer of `file` and checks its columns.
async fn check_file(file: InputFile, column: &str, id_column: Option<&str>) -> Result<CheckedFile> {
    let url = file.url;
    let reader = ParquetObjectReader::new(file.store, file.meta.location.clone())
        .with_file_size(file.meta.size);
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .with_context(|| format!("input {url} is not a readable Parquet file"))?;
    let schema = builder.schema().clone();

    let text_index = column_index(&schema, column, &url, "--column")?;
    let text_type = schema.field(text_index).data_type();
    if !is_text(text_type) {
        bail!(
            "input {url} column {column:?} has type {text_type}, not a string \
             (Utf8, LargeUtf8 or Utf8View); pass --column with a text column"
        );
    }
    let mut projection = vec![text_index];
    let mut id_type = None;
    if let Some(id_column) = id_column {
        let id_index = column_index(&schema, id_column, &url, "--id-column")?;
        id_type = Some(schema.field(id_index).data_type().clone());
        projection.push(id_index);
    }
    let rows = builder.metadata().file_metadata().num_rows();
    let rows = usize::try_from(rows)
        .with_context(|| format!("input {url} claims {rows} rows; the file is corrupt"))?;
    Ok(CheckedFile {
        url,
        builder,
        projection,
        id_type,
        rows,
    })
}

fn column_index(schema: &Schema, column: &str, url: &str, flag: &str) -> Result<usize> {
    schema.index_of(column).map_err(|_| {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        anyhow::anyhow!(
            "input {url} has no column {column:?}; its columns are: {} — pass {flag} with one of them",
            names.join(", ")
        )
    })
}

fn is_text(data_type: &DataType) -> bool {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        // pyarrow writes categoricals as dictionaries; they cast to Utf8.
        DataType::Dictionary(_, values) => {
            matches!(
                **values,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )
        }
        _ => false,
    }
}

fn type_name(data_type: Option<&DataType>) -> String {
    data_type.map_or_else(|| "missing".to_string(), ToString::to_string)
}

/// Reads the projected columns of one file: I/O here, decoding on a blocking
/// thread per row group so that decompression does not stall the runtime.
async fn read_file(
    file: CheckedFile,
    column: &str,
    id_column: Option<&str>,
) -> Result<(Vec<String>, Vec<ArrayRef>)> {
    let url = file.url;
    let mask = ProjectionMask::roots(file.builder.parquet_schema(), file.projection);
    let mut stream = file
        .builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .with_context(|| format!("cannot read input {url}"))?;
    let mut texts = Vec::with_capacity(file.rows);
    let mut ids = Vec::new();
    while let Some(reader) = stream
        .next_row_group()
        .await
        .with_context(|| format!("cannot read input {url}"))?
    {
        let (url_, column_, id_column_) = (
            url.clone(),
            column.to_string(),
            id_column.map(str::to_string),
        );
        let first_row = texts.len();
        let (group_texts, group_ids) = tokio::task::spawn_blocking(move || {
            decode_row_group(reader, &url_, &column_, id_column_.as_deref(), first_row)
        })
        .await
        .context("the Parquet decoding thread panicked")??;
        texts.extend(group_texts);
        ids.extend(group_ids);
    }
    Ok((texts, ids))
}

fn decode_row_group(
    reader: ParquetRecordBatchReader,
    url: &str,
    column: &str,
    id_column: Option<&str>,
    first_row: usize,
) -> Result<(Vec<String>, Vec<ArrayRef>)> {
    let mut texts = Vec::new();
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch.with_context(|| format!("cannot read input {url}"))?;
        let array = batch
            .column_by_name(column)
            .with_context(|| format!("input {url} lost column {column:?} while reading"))?;
        let row = first_row + texts.len();
        push_texts(array, &mut texts, |i| null_text(url, column, row + i))?;
        if let Some(id_column) = id_column {
            let array = batch
                .column_by_name(id_column)
                .with_context(|| format!("input {url} lost column {id_column:?} while reading"))?;
            ids.push(array.clone());
        }
    }
    Ok((texts, ids))
}

fn null_text(url: &str, column: &str, row: usize) -> anyhow::Error {
    anyhow::anyhow!(
        "input {url} row {row}: column {column:?} is null; drop or fill null texts before embedding"
    )
}

pub(crate) fn push_texts(
    array: &ArrayRef,
    texts: &mut Vec<String>,
    null_error: impl Fn(usize) -> anyhow::Error,
) -> Result<()> {
    fn push<'a>(
        array: impl ArrayAccessor<Item = &'a str>,
        texts: &mut Vec<String>,
        null_error: impl Fn(usize) -> anyhow::Error,
    ) -> Result<()> {
        for i in 0..array.len() {
            if array.is_null(i) {
                return Err(null_error(i));
            }
            texts.push(array.value(i).to_string());
        }
        Ok(())
    }
    match array.data_type() {
        DataType::Utf8 => push(array.as_string::<i32>(), texts, null_error),
        DataType::LargeUtf8 => push(array.as_string::<i64>(), texts, null_error),
        DataType::Utf8View => push(array.as_string_view(), texts, null_error),
        DataType::Dictionary(..) => {
            let plain = arrow::compute::cast(array, &DataType::Utf8)?;
            push(plain.as_string::<i32>(), texts, null_error)
        }
        other => bail!("text column has type {other}, not a string"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::corpus::{sample_sentences, write_sample_corpus};
    use arrow::array::{BinaryArray, Int32Array, LargeStringArray, StringArray, StringViewArray};
    use arrow::datatypes::Field;
    use arrow::record_batch::RecordBatch;
    use parquet::arrow::ArrowWriter;

    fn write_batch(path: &std::path::Path, columns: Vec<(&str, ArrayRef)>) {
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let file = std::fs::File::create(path).unwrap();
        let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    fn path_str(path: &std::path::Path) -> String {
        path.to_str().unwrap().to_string()
    }

    async fn read_err(urls: &[String], column: &str, id_column: Option<&str>) -> String {
        format!(
            "{:#}",
            read_input(urls, column, id_column).await.unwrap_err()
        )
    }

    #[tokio::test]
    async fn round_trips_the_sample_corpus() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corpus.parquet");
        write_sample_corpus(&path, 5_000, 11).unwrap();

        let url = path_str(&path);
        let input = read_input(std::slice::from_ref(&url), "text", Some("id"))
            .await
            .unwrap();
        assert_eq!(input.texts, sample_sentences(5_000, 11));
        assert_eq!(input.ids.data_type(), &DataType::Int64);
        let ids = input.ids.as_primitive::<arrow::datatypes::Int64Type>();
        assert!(ids.values().iter().copied().eq(0..5_000));
        assert_eq!(input.files, vec![url]);

        // file:// URL, and generated ids when none are asked for.
        let file_url = format!("file://{}", path.display());
        let input = read_input(&[file_url], "text", None).await.unwrap();
        assert_eq!(input.texts.len(), 5_000);
        let ids = input.ids.as_primitive::<arrow::datatypes::Int64Type>();
        assert!(ids.values().iter().copied().eq(0..5_000));
    }

    #[tokio::test]
    async fn reads_directories_and_globs_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        // Written out of order; read back sorted by name.
        for (name, seed) in [("b.parquet", 2), ("a.parquet", 1), ("c.parquet", 3)] {
            write_sample_corpus(&data.join(name), 100, seed).unwrap();
        }
        std::fs::write(data.join("_SUCCESS"), "{}").unwrap();
        std::fs::write(data.join("notes.txt"), "not parquet").unwrap();
        std::fs::create_dir(data.join("nested")).unwrap();
        write_sample_corpus(&data.join("nested/d.parquet"), 100, 4).unwrap();

        let expected: Vec<String> = [1, 2, 3]
            .into_iter()
            .flat_map(|seed| sample_sentences(100, seed))
            .collect();
        let input = read_input(&[path_str(&data)], "text", Some("id"))
            .await
            .unwrap();
        assert_eq!(input.texts, expected);
        assert_eq!(input.ids.len(), 300);
        let dir_url = path_str(&data);
        assert_eq!(
            input.files,
            ["a", "b", "c"].map(|n| format!("{dir_url}/{n}.parquet"))
        );
        // Generated ids run across files.
        let input = read_input(&[format!("{dir_url}/")], "text", None)
            .await
            .unwrap();
        let ids = input.ids.as_primitive::<arrow::datatypes::Int64Type>();
        assert!(ids.values().iter().copied().eq(0..300));

        let input = read_input(&[format!("{dir_url}/*.parquet")], "text", None)
            .await
            .unwrap();
        assert_eq!(input.texts, expected);
        let input = read_input(&[format!("{dir_url}/?.parquet")], "text", None)
            .await
            .unwrap();
        assert_eq!(input.files.len(), 3);
        let input = read_input(&[format!("{dir_url}/b*")], "text", None)
            .await
            .unwrap();
        assert_eq!(input.texts, sample_sentences(100, 2));

        let err = read_err(&[format!("{dir_url}/z*.parquet")], "text", None).await;
        assert_eq!(err, format!("input {dir_url}/z*.parquet matched no files"));
    }

    #[tokio::test]
    async fn accepts_every_string_layout() {
        let dir = tempfile::tempdir().unwrap();
        let text = vec!["alpha", "beta"];
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(text.clone())),
            Arc::new(LargeStringArray::from(text.clone())),
            Arc::new(StringViewArray::from(text.clone())),
            Arc::new(
                text.iter()
                    .copied()
                    .collect::<arrow::array::DictionaryArray<arrow::datatypes::Int32Type>>(),
            ),
        ];
        for (i, array) in arrays.into_iter().enumerate() {
            let path = dir.path().join(format!("{i}.parquet"));
            let ids: ArrayRef = Arc::new(Int32Array::from(vec![10, 20]));
            write_batch(&path, vec![("key", ids), ("body", array)]);
            let input = read_input(&[path_str(&path)], "body", Some("key"))
                .await
                .unwrap();
            assert_eq!(input.texts, text, "layout {i}");
            assert_eq!(
                input
                    .ids
                    .as_primitive::<arrow::datatypes::Int32Type>()
                    .values(),
                &[10, 20]
            );
        }
    }

    #[tokio::test]
    async fn missing_columns_name_the_file_and_the_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.parquet");
        write_sample_corpus(&path, 10, 1).unwrap();
        let url = path_str(&path);

        let err = read_err(std::slice::from_ref(&url), "txt", None).await;
        assert_eq!(
            err,
            format!(
                "input {url} has no column \"txt\"; its columns are: id, text — pass --column with one of them"
            )
        );
        let err = read_err(std::slice::from_ref(&url), "text", Some("key")).await;
        assert_eq!(
            err,
            format!(
                "input {url} has no column \"key\"; its columns are: id, text — pass --id-column with one of them"
            )
        );
    }

    #[tokio::test]
    async fn non_string_text_columns_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.parquet");
        let ids: ArrayRef = Arc::new(Int32Array::from(vec![1, 2]));
        let bytes: ArrayRef = Arc::new(BinaryArray::from(vec![b"x".as_ref(), b"y".as_ref()]));
        write_batch(&path, vec![("id", ids), ("blob", bytes)]);
        let url = path_str(&path);
        let err = read_err(std::slice::from_ref(&url), "id", None).await;
        assert!(
            err.starts_with(&format!(
                "input {url} column \"id\" has type Int32, not a string"
            )),
            "{err}"
        );
        let err = read_err(std::slice::from_ref(&url), "blob", None).await;
        assert!(err.contains("column \"blob\" has type Binary"), "{err}");
        assert!(err.contains("pass --column with a text column"), "{err}");
    }

    #[tokio::test]
    async fn corrupt_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        write_sample_corpus(&dir.path().join("a.parquet"), 10, 1).unwrap();
        let bad = dir.path().join("x.parquet");
        std::fs::write(&bad, b"this is not a parquet file at all").unwrap();
        let err = read_err(&[path_str(dir.path())], "text", None).await;
        assert!(
            err.starts_with(&format!(
                "input {} is not a readable Parquet file: ",
                bad.display()
            )),
            "{err}"
        );
    }

    #[tokio::test]
    async fn empty_and_missing_inputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = read_err(&[path_str(&empty)], "text", None).await;
        assert_eq!(
            err,
            format!("input {} has no *.parquet files", empty.display())
        );

        let missing = dir.path().join("missing.parquet");
        let err = read_err(&[path_str(&missing)], "text", None).await;
        assert_eq!(err, format!("input {} does not exist", missing.display()));

        let err = read_err(&[], "text", None).await;
        assert!(err.starts_with("no input given"), "{err}");

        let zero = dir.path().join("zero.parquet");
        write_sample_corpus(&zero, 0, 1).unwrap();
        let err = read_err(&[path_str(&zero)], "text", None).await;
        assert_eq!(
            err,
            format!("the input has no rows (files: {})", zero.display())
        );
    }

    #[tokio::test]
    async fn null_texts_name_the_file_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.parquet");
        let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, true)]));
        // Two row groups, so the row index must count across them.
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_size(3)
            .build();
        let file = std::fs::File::create(&path).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(properties)).unwrap();
        let texts = StringArray::from(vec![Some("a"), Some("b"), Some("c"), Some("d"), None]);
        writer
            .write(&RecordBatch::try_new(schema, vec![Arc::new(texts)]).unwrap())
            .unwrap();
        writer.close().unwrap();
        let url = path_str(&path);
        let err = read_err(std::slice::from_ref(&url), "text", None).await;
        assert_eq!(
            err,
            format!(
                "input {url} row 4: column \"text\" is null; drop or fill null texts before embedding"
            )
        );
    }

    #[tokio::test]
    async fn id_types_must_agree_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let texts: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
        let a = dir.path().join("a.parquet");
        let b = dir.path().join("b.parquet");
        write_batch(
            &a,
            vec![
                ("id", Arc::new(Int32Array::from(vec![1])) as ArrayRef),
                ("text", texts.clone()),
            ],
        );
        write_batch(
            &b,
            vec![
                ("id", Arc::new(StringArray::from(vec!["x"])) as ArrayRef),
                ("text", texts),
            ],
        );
        let err = read_err(&[path_str(dir.path())], "text", Some("id")).await;
        assert_eq!(
            err,
            format!(
                "id column \"id\" is Int32 in {} but Utf8 in {}; all inputs need the same id type",
                a.display(),
                b.display()
            )
        );
    }

    #[test]
    fn globs_match_names() {
        assert!(glob_match("*.parquet", "a.parquet"));
        assert!(glob_match("part-*", "part-00001.parquet"));
        assert!(glob_match("?.parquet", "b.parquet"));
        assert!(glob_match("*a*b*", "xxaxxbxx"));
        assert!(!glob_match("*.parquet", "a.parquet.tmp"));
        assert!(!glob_match("?.parquet", "ab.parquet"));
        assert_eq!(split_glob("data/*.parquet"), Some(("data", "*.parquet")));
        assert_eq!(split_glob("*.parquet"), Some((".", "*.parquet")));
        assert_eq!(split_glob("/*.parquet"), Some(("/", "*.parquet")));
        assert_eq!(
            split_glob("s3://bucket/p/*.parquet"),
            Some(("s3://bucket/p", "*.parquet"))
        );
        assert_eq!(split_glob("data/a.parquet"), None);
    }
}
