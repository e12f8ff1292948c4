//! `photon microbenchmark data`: an identity `map_batches` over about 1 GiB
//! of Parquet on the local cluster, next to reading and writing the same
//! files in this one process (the reference, measured in the same run, with
//! a thread per core like the cluster gets).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{BinaryArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use photon::Config;
use photon_data::{BatchUdf, MapOptions, ProgressMode, register_udf};

use super::{Report, median};

/// Rows per call of the identity function: what the reference's Parquet
/// reader yields per batch (the parquet crate's default).
const BATCH_ROWS: usize = 1024;

/// Rows per generated file and payload bytes per row: 16 files of 64 MiB.
const FILES: usize = 16;
const ROWS_PER_FILE: usize = 64 * 1024;
const PAYLOAD: usize = 1024;

/// Passes batches through: the framework's cost and nothing else.
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

/// Rounds of reference-then-tasks. The first is cold (worker processes
/// start, memory is touched for the first time, which costs a lot in a VM);
/// the later ones show the steady state.
const ROUNDS: usize = 4;

/// Runs the figures.
pub fn run(report: &mut Report) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("input");
    let bytes = generate(&input)?;
    report.figure("data_input_bytes", bytes as f64, "B");
    let blocks = FILES * 4;
    let rows = FILES * ROWS_PER_FILE;
    let ctx = photon::init(Config::default())?;
    let input_url = input.display().to_string();

    // Interleaved, so that both see the same machine; each round's outputs
    // are removed before the next so that both write into fresh files.
    let mut references = Vec::new();
    let mut tasks = Vec::new();
    let mut whole_blocks = Vec::new();
    let mut parts = 0;
    for _ in 0..ROUNDS {
        let reference_dir = dir.path().join("reference");
        let started = Instant::now();
        reference(&input, &reference_dir)?;
        references.push(started.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&reference_dir)?;

        // Tasks: read → identity → write fuse into one task per block, which
        // streams batches of `BATCH_ROWS` from the file to the part.
        let (seconds, written) = identity_tasks(
            &ctx,
            &input_url,
            bytes / blocks as u64,
            Some(BATCH_ROWS),
            dir.path(),
        )?;
        tasks.push(seconds);
        parts = written;
        // The same with the function called on whole blocks (no batch size).
        let (seconds, _) =
            identity_tasks(&ctx, &input_url, bytes / blocks as u64, None, dir.path())?;
        whole_blocks.push(seconds);
    }
    let (reference_cold, tasks_cold) = (references[0], tasks[0]);
    let reference = median(references[1..].to_vec());
    let tasks_s = median(tasks[1..].to_vec());
    let whole_blocks_s = median(whole_blocks[1..].to_vec());
    report.figure("data_reference_read_write_s", reference, "s");
    report.figure(
        "data_reference_gbps",
        bytes as f64 / reference / 1e9,
        "GB/s",
    );
    report.figure("data_identity_tasks_s", tasks_s, "s");
    report.figure(
        "data_identity_tasks_rows_per_s",
        rows as f64 / tasks_s,
        "1/s",
    );
    report.figure(
        "data_identity_tasks_gbps",
        bytes as f64 / tasks_s / 1e9,
        "GB/s",
    );
    report.figure(
        "data_identity_tasks_overhead_pct",
        (tasks_s / reference - 1.0) * 100.0,
        "%",
    );
    report.figure("data_identity_tasks_overhead_pct_goal", 15.0, "%");
    report.figure(
        "data_identity_tasks_per_block_overhead_ms",
        (tasks_s - reference) * 1e3 / parts as f64,
        "ms",
    );
    report.figure("data_identity_whole_blocks_s", whole_blocks_s, "s");
    report.figure(
        "data_identity_whole_blocks_overhead_pct",
        (whole_blocks_s / reference - 1.0) * 100.0,
        "%",
    );
    report.figure("data_cold_reference_read_write_s", reference_cold, "s");
    report.figure("data_cold_identity_tasks_s", tasks_cold, "s");
    report.figure(
        "data_cold_identity_tasks_overhead_pct",
        (tasks_cold / reference_cold - 1.0) * 100.0,
        "%",
    );

    // An actor pool: every block crosses the object store between stages.
    let started = Instant::now();
    let actors = photon_data::read_parquet(&ctx, [input_url])
        .block_bytes(bytes / blocks as u64)
        .map_batches::<Identity>((), MapOptions::new().actors(1..=2).num_cpus(0.5))
        .progress(ProgressMode::Off);
    let written = actors.write_parquet(&dir.path().join("actors").display().to_string(), false)?;
    let actors_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        written.rows == rows as u64,
        "actors wrote {} rows",
        written.rows
    );
    report.figure("data_identity_actors_s", actors_s, "s");
    report.figure(
        "data_identity_actors_gbps",
        bytes as f64 / actors_s / 1e9,
        "GB/s",
    );
    report.figure(
        "data_identity_actors_overhead_pct",
        (actors_s / reference - 1.0) * 100.0,
        "%",
    );
    if let Some(stats) = actors.stats() {
        report.figure(
            "data_identity_actors_peak_store_mib",
            stats.peak_object_store_bytes as f64 / (1 << 20) as f64,
            "MiB",
        );
    }
    Ok(())
}

/// Runs read → identity → write as tasks into a fresh directory under
/// `scratch` (removed after); returns the seconds taken and the parts written.
fn identity_tasks(
    ctx: &photon::Context,
    input_url: &str,
    block_bytes: u64,
    batch_size: Option<usize>,
    scratch: &Path,
) -> anyhow::Result<(f64, usize)> {
    let output = scratch.join("tasks");
    let options = match batch_size {
        Some(rows) => MapOptions::new().batch_size(rows),
        None => MapOptions::new(),
    };
    let started = Instant::now();
    let written = photon_data::read_parquet(ctx, [input_url.to_string()])
        .block_bytes(block_bytes)
        .map_batches::<Identity>((), options)
        .progress(ProgressMode::Off)
        .write_parquet(&output.display().to_string(), false)?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        written.rows == (FILES * ROWS_PER_FILE) as u64,
        "tasks wrote {} rows",
        written.rows
    );
    std::fs::remove_dir_all(&output)?;
    Ok((seconds, written.parts.len()))
}

/// Writes the input: ids and incompressible payloads. Returns its bytes.
fn generate(dir: &Path) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("payload", DataType::Binary, false),
    ]));
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut total = 0;
    for file in 0..FILES {
        let first = (file * ROWS_PER_FILE) as i64;
        let ids = Int64Array::from_iter_values(first..first + ROWS_PER_FILE as i64);
        let mut payload = vec![0u8; ROWS_PER_FILE * PAYLOAD];
        for chunk in payload.chunks_mut(8) {
            // xorshift: fast, and snappy cannot shrink it.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        let payloads = BinaryArray::from_iter_values(payload.chunks(PAYLOAD));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(payloads)])?;
        let path = dir.join(format!("input-{file:03}.parquet"));
        write(&path, &batch)?;
        total += std::fs::metadata(&path)?.len();
    }
    Ok(total)
}

fn write(path: &Path, batch: &RecordBatch) -> anyhow::Result<()> {
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_size(ROWS_PER_FILE / 4)
        .build();
    let mut writer = ArrowWriter::try_new(
        std::fs::File::create(path)?,
        batch.schema(),
        Some(properties),
    )?;
    writer.write(batch)?;
    writer.close()?;
    Ok(())
}

/// Reads and rewrites every file, a thread per core.
fn reference(input: &Path, output: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(output)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(input)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunks: Vec<Vec<PathBuf>> = (0..threads)
        .map(|t| files.iter().skip(t).step_by(threads).cloned().collect())
        .collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = chunks
            .into_iter()
            .map(|files| {
                scope.spawn(move || -> anyhow::Result<()> {
                    for file in files {
                        let reader =
                            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file)?)?
                                .build()?;
                        let name = file.file_name().expect("a file");
                        let properties = WriterProperties::builder()
                            .set_compression(Compression::SNAPPY)
                            .build();
                        let mut writer = None;
                        for batch in reader {
                            let batch = batch?;
                            let writer = match &mut writer {
                                Some(writer) => writer,
                                None => writer.insert(ArrowWriter::try_new(
                                    std::fs::File::create(output.join(name))?,
                                    batch.schema(),
                                    Some(properties.clone()),
                                )?),
                            };
                            writer.write(&batch)?;
                        }
                        if let Some(writer) = writer {
                            writer.close()?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("reference thread"))
    })
}
