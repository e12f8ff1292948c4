//! The `photon` command. Thin: parses arguments once and hands them to the
//! library code of the subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod advertise;
mod connect;
mod embed;
mod job;
mod logging;
mod microbenchmark;
mod model;
mod session;
mod start;
mod status;
mod stop;
mod tls;

/// Photon: distributed batch inference and embedding jobs.
#[derive(Debug, Parser)]
#[command(name = "photon", version, about, propagate_version = true)]
struct Cli {
    /// Show INFO logs on the terminal (`photon embed` otherwise writes them
    /// to its session's log file); `PHOTON_LOG`/`RUST_LOG` set a filter.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a head node (`--head`) or a raylet joining one (`--address`).
    Start(start::StartArgs),
    /// Show the cluster's nodes, their resources and liveness.
    Status(status::StatusArgs),
    /// Submit jobs to a running cluster and follow, inspect, stop and list them.
    Job {
        #[command(subcommand)]
        command: job::JobCommand,
    },
    /// Stop what `photon start` started on this machine.
    Stop(stop::StopArgs),
    /// Embed a Parquet column of texts with a sentence-transformers model
    /// (all-MiniLM-L6-v2 by default) and write the vectors to Parquet.
    Embed(embed::EmbedArgs),
    /// The local model cache: fetch the default model, show where it is.
    Model {
        #[command(subcommand)]
        command: model::ModelCommand,
    },
    /// Write a sample corpus of English-like sentences (5–60 words) as
    /// Parquet with columns `id` and `text`, to try `photon embed` on.
    SampleCorpus {
        /// The Parquet file to write.
        #[arg(long)]
        output: std::path::PathBuf,
        /// Number of sentences.
        #[arg(long, default_value_t = 20_000)]
        rows: usize,
        /// Seed: the same seed gives the same corpus.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write the sentences as text, one per line, instead of Parquet
        /// (for programs without a Parquet reader, like the GPU check's
        /// sentence-transformers run).
        #[arg(long)]
        lines: bool,
    },
    /// Measure Photon's building blocks on this machine against references
    /// measured in the same run.
    Microbenchmark {
        #[command(subcommand)]
        which: microbenchmark::Which,
    },
}

/// mimalloc keeps freed memory for reuse where glibc's malloc hands big
/// buffers back to the kernel: `photon microbenchmark data` took 4.7M page
/// faults with glibc, 0.18M with mimalloc (same build, runs interleaved).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // A worker process (started by a raylet for `photon::remote` functions and
    // actors defined in this binary) runs the worker loop and exits here.
    photon::worker_entry();
    let cli = Cli::parse();
    // `photon embed` keeps the terminal for its progress and summary.
    let terminal = match cli.command {
        Command::Embed(_) => logging::Terminal::Quiet,
        _ => logging::Terminal::Info,
    };
    logging::init(terminal, cli.verbose);
    let result = match cli.command {
        Command::Start(args) => start::run(args),
        Command::Status(args) => status::run(args),
        Command::Stop(args) => stop::run(args),
        Command::Job { command } => match job::run(command) {
            Ok(code) => return code,
            Err(err) => Err(err),
        },
        Command::Embed(args) => embed::run(args),
        Command::Model { command } => model::run(command),
        Command::SampleCorpus {
            output,
            rows,
            seed,
            lines,
        } => {
            let written = if lines {
                let mut text = embed::corpus::sample_sentences(rows, seed).join("\n");
                text.push('\n');
                std::fs::write(&output, text)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", output.display()))
            } else {
                embed::corpus::write_sample_corpus(&output, rows, seed)
            };
            written.map(|()| println!("wrote {rows} sentences to {}", output.display()))
        }
        Command::Microbenchmark { which } => microbenchmark::run(which),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
