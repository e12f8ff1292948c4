//! The `photon` command. Thin: parses arguments once and hands them to the
//! library code of the subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Parquet I/O for `photon embed`; the command wiring comes next.
#[allow(dead_code)]
mod embed;
mod microbenchmark;
mod session;
mod start;
mod status;
mod stop;

/// Photon: distributed batch inference and embedding jobs.
#[derive(Debug, Parser)]
#[command(name = "photon", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a head node (`--head`) or a raylet joining one (`--address`).
    Start(start::StartArgs),
    /// Show the cluster's nodes, their resources and liveness.
    Status(status::StatusArgs),
    /// Stop what `photon start` started on this machine.
    Stop(stop::StopArgs),
    /// Measure Photon's building blocks on this machine against references
    /// measured in the same run.
    Microbenchmark {
        #[command(subcommand)]
        which: microbenchmark::Which,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PHOTON_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Start(args) => start::run(args),
        Command::Status(args) => status::run(args),
        Command::Stop(args) => stop::run(args),
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
