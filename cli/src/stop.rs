//! `photon stop`: stops what `photon start` started on this machine.

use std::time::{Duration, Instant};

use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::session::{ClusterFile, PidFile};

/// Arguments of `photon stop`.
#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    /// Seconds to wait for a clean shutdown before SIGKILL.
    #[arg(long, default_value_t = 10)]
    grace_period: u64,
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

/// Runs `photon stop`: SIGTERM to every process (raylets first), then SIGKILL
/// to those still running after the grace period.
pub fn run(args: StopArgs) -> anyhow::Result<()> {
    let mut processes = PidFile::all();
    // Raylets first, so they can tell the head they leave.
    processes.sort_by_key(|p| p.role.starts_with("head"));
    if processes.is_empty() {
        println!("no photon processes started on this machine");
        return Ok(());
    }
    for process in &processes {
        if alive(process.pid) {
            let _ = kill(Pid::from_raw(process.pid as i32), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(args.grace_period);
    while processes.iter().any(|p| alive(p.pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for process in &processes {
        if alive(process.pid) {
            println!(
                "{} (pid {}) did not stop in time: killing it",
                process.role, process.pid
            );
            let _ = kill(Pid::from_raw(process.pid as i32), Signal::SIGKILL);
        } else {
            println!(
                "stopped {} (pid {}, {})",
                process.role, process.pid, process.address
            );
        }
        PidFile::remove(process.pid);
        ClusterFile::remove_if_owned_by(process.pid);
    }
    Ok(())
}
