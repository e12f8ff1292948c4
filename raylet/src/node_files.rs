//! What a long-running node keeps on disk: the output files of ended
//! workers and cached job binaries go once unused for the retention time.
//! Nothing is lost by it: a job's worker output reaches the head as it is
//! printed (the head keeps job logs by its own retention), and a package
//! comes back from the head when a worker needs it again.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use photon_proto::WorkerId;

/// How long an ended worker's output and an unused package stay by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// How often the node looks.
pub const PERIOD: Duration = Duration::from_secs(60);

/// The directory prefix `photon start` gives each raylet process's worker
/// logs (`worker-logs-<pid>`).
pub const LOG_DIR_PREFIX: &str = "worker-logs-";

/// What one pass removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Worker output files (`worker-<id>.out` / `.err`).
    pub worker_files: usize,
    /// Cached job binaries.
    pub packages: usize,
}

/// Removes, under `log_dir`, the output files of workers not in `live`
/// and, under `package_dir`, the packages and unpacked working directories
/// no live worker uses (`running`), of each whichever was last modified more
/// than `retention` ago.
pub fn prune(
    log_dir: &Path,
    live: &HashSet<WorkerId>,
    package_dir: &Path,
    running: &HashSet<PathBuf>,
    retention: Duration,
) -> Pruned {
    let worker_files = remove_stale(log_dir, retention, |path| {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some(id) = name.strip_prefix("worker-").and_then(|rest| {
            rest.strip_suffix(".out")
                .or_else(|| rest.strip_suffix(".err"))
        }) else {
            return false;
        };
        id.parse::<WorkerId>().is_ok_and(|id| !live.contains(&id))
    });
    let worker_files = worker_files + prune_dirs_of_ended_raylets(log_dir, retention);
    let packages = remove_stale(package_dir, retention, |path| {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        crate::packages::is_cache_entry(name) && !running.contains(path)
    });
    Pruned {
        worker_files,
        packages,
    }
}

/// Beside `log_dir` (a `worker-logs-<pid>` of this raylet), the same
/// directories of raylet processes that have ended: their workers ended
/// with them, so their stale files go, and the directory once empty.
fn prune_dirs_of_ended_raylets(log_dir: &Path, retention: Duration) -> usize {
    let raylet_pid = |dir: &Path| -> Option<u32> {
        dir.file_name()?
            .to_str()?
            .strip_prefix(LOG_DIR_PREFIX)?
            .parse()
            .ok()
    };
    let (Some(own), Some(parent)) = (raylet_pid(log_dir), log_dir.parent()) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for dir in entries.flatten().map(|e| e.path()) {
        let Some(pid) = raylet_pid(&dir) else {
            continue;
        };
        if pid == own || photon_proto::process_started(pid).is_some() {
            continue;
        }
        removed += remove_stale(&dir, retention, |_| true);
        let _ = std::fs::remove_dir(&dir); // only if empty
    }
    removed
}

/// Removes the files (and directories, with what they hold) of `dir` that
/// `removable` accepts and that were last modified over `retention` ago;
/// returns how many.
fn remove_stale(dir: &Path, retention: Duration, removable: impl Fn(&Path) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| now.duration_since(modified).ok())
            .is_some_and(|age| age > retention);
        let removed_it = || {
            if path.is_dir() {
                std::fs::remove_dir_all(&path).is_ok()
            } else {
                std::fs::remove_file(&path).is_ok()
            }
        };
        if stale && removable(&path) && removed_it() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, age: Duration) -> PathBuf {
        let path = dir.join(name);
        let file = std::fs::File::create(&path).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
        path
    }

    #[test]
    fn only_old_files_of_ended_workers_and_unused_packages_go() {
        let logs = tempfile::tempdir().unwrap();
        let packages = tempfile::tempdir().unwrap();
        let (ended, live) = (WorkerId::random(), WorkerId::random());
        let day = Duration::from_secs(24 * 3600);
        let hour = Duration::from_secs(3600);
        let old_ended = [
            file(logs.path(), &format!("worker-{ended}.out"), day),
            file(logs.path(), &format!("worker-{ended}.err"), day),
        ];
        let kept_logs = [
            file(logs.path(), &format!("worker-{live}.out"), day),
            file(
                logs.path(),
                &format!("worker-{}.err", WorkerId::random()),
                hour,
            ),
            file(logs.path(), "raylet.log", day),
        ];
        let unused = file(packages.path(), &"a".repeat(64), day);
        let running = file(packages.path(), &"b".repeat(64), day);
        let recent = file(packages.path(), &"c".repeat(64), hour);
        let pruned = prune(
            logs.path(),
            &HashSet::from([live]),
            packages.path(),
            &HashSet::from([running.clone()]),
            2 * hour,
        );
        assert_eq!(
            pruned,
            Pruned {
                worker_files: 2,
                packages: 1
            }
        );
        assert!(old_ended.iter().all(|p| !p.exists()) && !unused.exists());
        assert!(kept_logs.iter().all(|p| p.exists()) && running.exists() && recent.exists());
    }

    #[test]
    fn directories_of_ended_raylets_go_once_their_files_are_old() {
        let home = tempfile::tempdir().unwrap();
        let dir = |pid: u32| {
            let path = home.path().join(format!("{LOG_DIR_PREFIX}{pid}"));
            std::fs::create_dir(&path).unwrap();
            path
        };
        let day = Duration::from_secs(24 * 3600);
        let own = dir(std::process::id());
        // A pid no process has (above the kernel's pid_max).
        let ended = dir(u32::MAX - 1);
        file(&ended, &format!("worker-{}.out", WorkerId::random()), day);
        let ended_recent = dir(u32::MAX - 2);
        let recent = file(&ended_recent, "worker-x.err", Duration::ZERO);
        let parent = dir(std::os::unix::process::parent_id());
        let parents = file(&parent, "worker-y.out", day);
        let pruned = prune(
            &own,
            &HashSet::new(),
            home.path(),
            &HashSet::new(),
            Duration::from_secs(3600),
        );
        assert_eq!(pruned.worker_files, 1);
        assert!(!ended.exists(), "an ended raylet's emptied directory goes");
        assert!(
            recent.exists() && parents.exists(),
            "recent files and live raylets' stay"
        );
    }
}
