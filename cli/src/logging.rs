//! Where the `photon` command's logs go. Commands that run a cluster inside
//! this process for the user (`photon embed`) keep the terminal for their
//! progress and summary: the head's, raylet's and driver's INFO lines go to
//! the session's log file (named once at the start), and only warnings and
//! errors reach the terminal. `-v`, `PHOTON_LOG` or `RUST_LOG` bring the INFO
//! lines back to the terminal. Other commands log INFO to the terminal.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use anyhow::Context;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The log file, once a command opened one.
static LOG_FILE: OnceLock<Mutex<File>> = OnceLock::new();

/// What reaches the terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Terminal {
    /// INFO and above.
    Info,
    /// Warnings and errors only (the rest goes to the log file).
    Quiet,
}

/// The filter the user asked for, if any: `PHOTON_LOG`, else `RUST_LOG`.
fn user_filter() -> Option<EnvFilter> {
    EnvFilter::try_from_env("PHOTON_LOG")
        .or_else(|_| EnvFilter::try_from_env("RUST_LOG"))
        .ok()
}

/// Installs the subscriber: the terminal at `terminal` (unless `verbose` or
/// a user filter says otherwise), the log file at INFO once one is opened.
pub fn init(terminal: Terminal, verbose: bool) {
    let terminal_filter = match (user_filter(), verbose, terminal) {
        (Some(filter), _, _) => filter,
        (None, true, _) | (None, false, Terminal::Info) => EnvFilter::new("info"),
        (None, false, Terminal::Quiet) => EnvFilter::new("warn"),
    };
    let file_filter = user_filter().unwrap_or_else(|| EnvFilter::new("info"));
    let to_terminal = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(terminal_filter);
    let to_file = tracing_subscriber::fmt::layer()
        .with_writer(FileWriter)
        .with_ansi(false)
        .with_filter(file_filter);
    let _ = tracing_subscriber::registry()
        .with(to_terminal)
        .with(to_file)
        .try_init();
}

/// Sends the log to `path` (created, appended to) from now on.
pub fn log_to(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the log file {}", path.display()))?;
    LOG_FILE
        .set(Mutex::new(file))
        .map_err(|_| anyhow::anyhow!("the log already goes to a file"))
}

/// Writes to the log file, or nowhere before one is opened.
struct FileWriter;

impl<'a> MakeWriter<'a> for FileWriter {
    type Writer = FileWriter;

    fn make_writer(&'a self) -> Self::Writer {
        FileWriter
    }
}

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match LOG_FILE.get() {
            Some(file) => file.lock().unwrap_or_else(|p| p.into_inner()).write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match LOG_FILE.get() {
            Some(file) => file.lock().unwrap_or_else(|p| p.into_inner()).flush(),
            None => Ok(()),
        }
    }
}
