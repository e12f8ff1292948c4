//! `photon stop`: stops what `photon start` started on this machine.

use std::time::{Duration, Instant};

use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::session::PidFile;

/// Arguments of `photon stop`.
#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    /// Seconds to wait for a clean shutdown before SIGKILL.
    #[arg(long, default_value_t = 10)]
    grace_period: u64,
}

/// Signals the recorded process only if it still is that process (same pid,
/// start time and executable): a stale record whose pid now belongs to
/// another process is never signalled.
fn signal(process: &PidFile, signal: Signal) {
    if process.is_running() {
        let _ = kill(Pid::from_raw(process.pid as i32), signal);
    }
}

/// Runs `photon stop`: SIGTERM to every process (raylets first), then SIGKILL
/// to those still running after the grace period.
pub fn run(args: StopArgs) -> anyhow::Result<()> {
    let mut processes = PidFile::all()?;
    // Raylets first, so they can tell the head they leave.
    processes.sort_by_key(|p| p.role.starts_with("head"));
    if processes.is_empty() {
        println!("no photon processes started on this machine");
        return Ok(());
    }
    let (processes, ended): (Vec<PidFile>, Vec<PidFile>) =
        processes.into_iter().partition(PidFile::is_running);
    for process in &ended {
        println!(
            "{} (pid {}) had already ended: forgetting it",
            process.role, process.pid
        );
        PidFile::forget(process.pid);
    }
    for process in &processes {
        signal(process, Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(args.grace_period);
    while processes.iter().any(PidFile::is_running) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for process in &processes {
        if process.is_running() {
            println!(
                "{} (pid {}) did not stop in time: killing it",
                process.role, process.pid
            );
            signal(process, Signal::SIGKILL);
        } else {
            println!(
                "stopped {} (pid {}, {})",
                process.role, process.pid, process.address
            );
        }
        PidFile::forget(process.pid);
    }
    Ok(())
}
