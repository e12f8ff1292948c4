//! `photon microbenchmark`: programs that print figures, each next to a
//! reference measured in the same run. Not tests: nothing here asserts speed.

use clap::Subcommand;
use serde::Serialize;

mod core;
mod data;
mod embed;
mod gpu_embed;
mod head;
mod packages;
mod processes;
mod store;
mod transfer;

/// Which microbenchmark to run.
#[derive(Debug, Subcommand)]
pub enum Which {
    /// The shared-memory object store: puts, gets, cross-process reads, against memcpy.
    Store {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The SDK through real processes: cluster start, tasks and actor calls
    /// (sync and async), small puts and gets, a 100 MiB put.
    Core {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// photon-data: an identity map_batches over ~1 GiB of Parquet (tasks and
    /// an actor pool), against reading and writing the files in one process.
    Data {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Head CPU and memory with simulated raylets (heartbeats + resource updates).
    Head {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Cluster sizes to simulate.
        #[arg(long, value_delimiter = ',', default_values_t = [10, 100, 1000])]
        nodes: Vec<usize>,
    },
    /// Moving a 256 MiB object between two raylets on loopback.
    Transfer {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Also over TLS (`--tls auto`), against plaintext in the same run.
        #[arg(long)]
        tls: bool,
    },
    /// A 90 MB model-like directory shipped to 2 nodes through the head's
    /// package store (pack, upload, fetch, verify, unpack), cold and
    /// cached, against copying it on this disk.
    Packages {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The in-process sentence embedder on a generated corpus, with 1 and all
    /// threads, against candle-transformers' BERT as-is and sorted.
    Embed {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Sentences in the generated corpus (5–60 words each).
        #[arg(long, default_value_t = 20_000)]
        rows: usize,
        /// Sentences the candle references embed (they are slow).
        #[arg(long, default_value_t = 2_000)]
        candle_rows: usize,
        /// Model directory (default: the cached all-MiniLM-L6-v2, fetched if missing).
        #[arg(long)]
        model: Option<std::path::PathBuf>,
    },
    /// The GPU engine against the CPU engine in the same run: cosines (tiny
    /// models by layer count, then the real model per precision, and against
    /// sentence-transformers' vectors), rows/s, first batch, device memory,
    /// tokenization per core. Fails when a cosine is under 0.999.
    GpuEmbed {
        /// One JSON object per figure.
        #[arg(long)]
        json: bool,
        /// Corpus rows checked against the CPU engine.
        #[arg(long, default_value_t = 2_000)]
        check_rows: usize,
        /// Corpus rows timed per precision.
        #[arg(long, default_value_t = 20_000)]
        rows: usize,
        /// Model directory (default: the cached all-MiniLM-L6-v2).
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        /// sentence-transformers' vectors for the model (a JSON file with
        /// `sentences` and `embeddings`).
        #[arg(long)]
        fixture: Option<std::path::PathBuf>,
    },
    /// Internal: the second process of the cross-process read benchmark.
    #[command(hide = true)]
    StoreReader {
        /// The object descriptor, as JSON.
        descriptor: String,
        /// Map lazily instead of pre-faulting the whole object.
        #[arg(long)]
        lazy: bool,
    },
}

/// Runs the chosen microbenchmark.
pub fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Store { json } => {
            let mut report = Report::new(json);
            store::run(&mut report)
        }
        Which::Core { json } => core::run(&mut Report::new(json)),
        Which::Data { json } => data::run(&mut Report::new(json)),
        Which::Head { json, nodes } => head::run(&mut Report::new(json), &nodes),
        Which::Transfer { json, tls } => transfer::run(&mut Report::new(json), tls),
        Which::Packages { json } => packages::run(&mut Report::new(json)),
        Which::Embed {
            json,
            rows,
            candle_rows,
            model,
        } => {
            let bench = embed::EmbedBench {
                rows,
                candle_rows,
                model,
            };
            embed::run(&mut Report::new(json), &bench)
        }
        Which::GpuEmbed {
            json,
            check_rows,
            rows,
            model,
            fixture,
        } => {
            let bench = gpu_embed::GpuEmbedBench {
                check_rows,
                rows,
                model,
                fixture,
            };
            gpu_embed::run(&mut Report::new(json), &bench)
        }
        Which::StoreReader { descriptor, lazy } => store::read_in_child(&descriptor, lazy),
    }
}

/// One measured figure.
#[derive(Debug, Serialize)]
pub struct Figure {
    /// Stable name, e.g. `store_put_100mib_gbps`.
    pub name: String,
    /// The measurement.
    pub value: f64,
    /// Unit of `value`.
    pub unit: &'static str,
}

/// Prints figures as they are measured: JSON lines or a table.
pub struct Report {
    json: bool,
    header_printed: bool,
}

impl Report {
    fn new(json: bool) -> Self {
        Self {
            json,
            header_printed: false,
        }
    }

    /// Prints one figure now, so a long run shows progress.
    pub fn figure(&mut self, name: &str, value: f64, unit: &'static str) {
        // Cosines near 1 differ in the fourth decimal and beyond.
        let scale = if unit == "cosine" { 1e6 } else { 1e3 };
        let figure = Figure {
            name: name.to_string(),
            value: (value * scale).round() / scale,
            unit,
        };
        let mut line = String::new();
        if self.json {
            line = serde_json::to_string(&figure).expect("figures serialize");
        } else {
            if !self.header_printed {
                line = format!("{:<44} {:>14}  unit\n", "name", "value");
                self.header_printed = true;
            }
            line += &format!(
                "{:<44} {:>14.3}  {}",
                figure.name, figure.value, figure.unit
            );
        }
        print_line(&line);
    }
}

/// Prints a line; a closed pipe (`| head`) ends the program quietly.
fn print_line(line: &str) {
    use std::io::Write;
    if let Err(err) = writeln!(std::io::stdout(), "{line}") {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        panic!("cannot write to stdout: {err}");
    }
}

/// Median of a non-empty sample.
pub fn median(mut sample: Vec<f64>) -> f64 {
    sample.sort_by(f64::total_cmp);
    sample[sample.len() / 2]
}
