//! What the kernel says about processes and the node's memory (`/proc`).
//! A few lines each; a crate such as `sysinfo` would bring a refresh model
//! we do not need (and it reads no cgroup limits).

use std::path::Path;

/// The value of a `Name:   1234 kB` line, in KiB.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))?
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .ok()
}

/// Resident memory of process `pid` (`VmRSS`), if it still runs.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(kib_field(&status, "VmRSS:")? * 1024)
}

/// Peak resident memory of process `pid` (`VmHWM`), if it still runs.
pub fn peak_resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(kib_field(&status, "VmHWM:")? * 1024)
}

/// The child processes of `pid` (from every thread's `children` list).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Private resident memory of process `pid` (`RssAnon`): what killing it
/// frees. Shared-memory store pages a zero-copy reader maps count in its
/// `VmRSS` but belong to the store, so they are left out.
pub fn private_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(kib_field(&status, "RssAnon:")? * 1024)
}

/// How full the memory this node may use is: the host's, or the cgroup's
/// (`memory.max`) when a container or slice caps it lower.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeMemory {
    /// Bytes in use (a cgroup's usage less its inactive page cache, which
    /// the kernel reclaims before it kills anything).
    pub used: u64,
    /// Bytes it may use.
    pub limit: u64,
    /// Where the figures come from (`/proc/meminfo`, or the cgroup's directory).
    pub source: String,
}

impl NodeMemory {
    /// The fraction in use.
    pub fn fraction(&self) -> f64 {
        self.used as f64 / self.limit.max(1) as f64
    }
}

/// The tighter of the host's memory and this process's cgroup v2 limit
/// (under `cgroup_root`, normally `/sys/fs/cgroup`).
pub fn node_memory(cgroup_root: &Path) -> Option<NodeMemory> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available = kib_field(&meminfo, "MemAvailable:")? * 1024;
    let total = kib_field(&meminfo, "MemTotal:")? * 1024;
    let host = NodeMemory {
        used: total.saturating_sub(available),
        limit: total,
        source: "/proc/meminfo".into(),
    };
    let own = std::fs::read_to_string("/proc/self/cgroup").ok();
    let cgroup = own
        .as_deref()
        .and_then(|text| text.lines().find_map(|line| line.strip_prefix("0::")))
        .and_then(|path| cgroup_memory(cgroup_root, path));
    Some(match cgroup {
        Some(cgroup) if cgroup.fraction() > host.fraction() => cgroup,
        _ => host,
    })
}

/// The memory of the nearest cgroup at or above `path` (relative to
/// `root`) whose `memory.max` is a number: its `memory.current` less the
/// `inactive_file` of its `memory.stat`.
pub fn cgroup_memory(root: &Path, path: &str) -> Option<NodeMemory> {
    let mut dir = root.join(path.trim_start_matches('/'));
    loop {
        let max = std::fs::read_to_string(dir.join("memory.max")).ok();
        if let Some(limit) = max.and_then(|m| m.trim().parse::<u64>().ok()) {
            let current: u64 = std::fs::read_to_string(dir.join("memory.current"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let inactive_file = std::fs::read_to_string(dir.join("memory.stat"))
                .ok()
                .and_then(|stat| {
                    stat.lines()
                        .find_map(|line| line.strip_prefix("inactive_file "))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
                .unwrap_or(0);
            return Some(NodeMemory {
                used: current.saturating_sub(inactive_file),
                limit,
                source: format!("cgroup {}", dir.display()),
            });
        }
        if dir == root || !dir.pop() || !dir.starts_with(root) {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_the_node() {
        let rss = resident_bytes(std::process::id()).unwrap();
        assert!(rss > 1 << 20, "{rss}");
        assert!(peak_resident_bytes(std::process::id()).unwrap() >= rss);
        let private = private_bytes(std::process::id()).unwrap();
        assert!(private > 0 && private <= rss, "{private} of {rss}");
        let node = node_memory(Path::new("/sys/fs/cgroup")).unwrap();
        assert!((0.0..1.0).contains(&node.fraction()), "{node:?}");
        assert_eq!(kib_field("VmRSS:\t  2048 kB\n", "VmRSS:"), Some(2048));
    }

    #[test]
    fn a_cgroup_limit_is_found_at_or_above_the_process_cgroup() {
        let root = tempfile::tempdir().unwrap();
        let pod = root.path().join("kubepods/pod1");
        let container = pod.join("c1");
        std::fs::create_dir_all(&container).unwrap();
        // The container itself is uncapped; its pod is capped at 1000 MiB.
        std::fs::write(container.join("memory.max"), "max\n").unwrap();
        std::fs::write(pod.join("memory.max"), format!("{}\n", 1000u64 << 20)).unwrap();
        std::fs::write(pod.join("memory.current"), format!("{}\n", 960u64 << 20)).unwrap();
        std::fs::write(
            pod.join("memory.stat"),
            format!("anon 1\ninactive_file {}\nactive_file 5\n", 10u64 << 20),
        )
        .unwrap();
        let memory = cgroup_memory(root.path(), "/kubepods/pod1/c1").unwrap();
        assert_eq!(memory.limit, 1000 << 20);
        assert_eq!(
            memory.used,
            950 << 20,
            "page cache the kernel can drop is left out"
        );
        assert!((memory.fraction() - 0.95).abs() < 1e-9);
        assert!(memory.source.contains("kubepods/pod1"), "{}", memory.source);
        // No limit anywhere up to the root: none.
        std::fs::remove_file(pod.join("memory.max")).unwrap();
        assert_eq!(cgroup_memory(root.path(), "/kubepods/pod1/c1"), None);
    }
}
