//! A deterministic English-like sample corpus, so embedding jobs and
//! benchmarks can run without downloading a data set.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use photon_inference::sample_text::SampleSentences;
pub use photon_inference::sample_text::sample_sentences;

/// Rows per Parquet row group of the sample corpus.
const ROW_GROUP_ROWS: usize = 2_000;
/// Writes `rows` sample sentences to a Parquet file at `path` with columns
/// `id: Int64` (0..rows) and `text: Utf8`, in zstd-compressed row groups of
/// 2,000 rows. Writes to a temporary name first, so `path` never holds a
/// partial file.
pub fn write_sample_corpus(path: &Path, rows: usize, seed: u64) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create directory {}", parent.display()))?;
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp_name);
    let result = write_corpus_file(&tmp, rows, seed).and_then(|()| {
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write the sample corpus {}", path.display()))
}

fn write_corpus_file(path: &Path, rows: usize, seed: u64) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_size(ROW_GROUP_ROWS)
        .build();
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(properties))?;
    // One stream across batches, so the corpus does not depend on the batch size.
    let mut sentences = SampleSentences::new(seed);
    let mut start = 0;
    while start < rows {
        let len = ROW_GROUP_ROWS.min(rows - start);
        let ids = Int64Array::from_iter_values(start as i64..(start + len) as i64);
        let texts: StringArray = sentences.by_ref().take(len).map(Some).collect();
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(texts)])?;
        writer.write(&batch)?;
        start += len;
    }
    writer.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    #[test]
    fn corpus_file_has_ids_texts_and_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/corpus.parquet");
        write_sample_corpus(&path, 4_500, 3).unwrap();
        assert!(!dir.path().join("nested/corpus.parquet.tmp").exists());
        let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let metadata = reader.metadata();
        assert_eq!(metadata.file_metadata().num_rows(), 4_500);
        let groups: Vec<i64> = metadata.row_groups().iter().map(|g| g.num_rows()).collect();
        assert_eq!(groups, vec![2_000, 2_000, 500]);
        assert_eq!(
            metadata.row_group(0).column(1).compression(),
            Compression::ZSTD(ZstdLevel::default())
        );
    }
}
