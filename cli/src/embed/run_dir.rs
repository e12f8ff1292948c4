//! Each `photon embed` run's own directory under `$PHOTON_HOME/embed-runs/`:
//! the command's log (`photon.log`: the driver's and, with an embedded
//! cluster, the head's and raylet's lines) and the embedded cluster's session
//! (its workers' logs under `logs/`). Kept after the run so its logs can be
//! read; only the newest few runs are kept.

use std::path::PathBuf;

use anyhow::Context;

/// The command's log file in a run directory.
pub const LOG_FILE: &str = "photon.log";
/// Run directories kept (the oldest beyond this are removed at the next run).
const KEEP: usize = 10;

/// Creates a new run directory (0700), named by time and process id so that
/// names sort by age, after removing the oldest runs beyond [`KEEP`].
pub fn create() -> anyhow::Result<PathBuf> {
    let base = crate::session::home()?.join("embed-runs");
    crate::session::create_private_dir(&base)?;
    prune(&base);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let dir = base.join(format!("{}-{}", now.as_millis(), std::process::id()));
    crate::session::create_private_dir(&dir)
        .with_context(|| format!("cannot create the run directory {}", dir.display()))?;
    Ok(dir)
}

/// Removes the oldest run directories so that, with the new one, at most
/// `KEEP` remain. A directory another run is using is not touched: only
/// runs older than the newest `KEEP - 1` go.
fn prune(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let mut runs: Vec<(u128, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let millis = name.split_once('-')?.0.parse().ok()?;
            Some((millis, e.path()))
        })
        .collect();
    runs.sort();
    let excess = (runs.len() + 1).saturating_sub(KEEP);
    for (_, dir) in runs.into_iter().take(excess) {
        let _ = std::fs::remove_dir_all(dir);
    }
}
