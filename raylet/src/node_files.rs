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

/// What one pass removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Worker output files (`worker-<id>.out` / `.err`).
    pub worker_files: usize,
    /// Cached job binaries.
    pub packages: usize,
}

/// Removes, under `log_dir`, the output files of workers not in `live`
/// and, under `package_dir`, the packages no live worker runs (`running`),
/// of each whichever was last modified more than `retention` ago.
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
    let packages = remove_stale(package_dir, retention, |path| {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let is_package = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
        is_package && !running.contains(path)
    });
    Pruned {
        worker_files,
        packages,
    }
}

/// Removes the files of `dir` that `removable` accepts and that were last
/// modified over `retention` ago; returns how many.
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
        if stale && removable(&path) && std::fs::remove_file(&path).is_ok() {
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
}
