//! What the kernel says about processes and the node's memory (`/proc`).
//! A few lines each; a crate such as `sysinfo` would bring a refresh model
//! we do not need.

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

/// Fraction of the node's memory in use (1 - MemAvailable / MemTotal).
pub fn node_memory_used() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available = kib_field(&meminfo, "MemAvailable:")? as f64;
    let total = kib_field(&meminfo, "MemTotal:")? as f64;
    Some(1.0 - available / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_the_node() {
        let rss = resident_bytes(std::process::id()).unwrap();
        assert!(rss > 1 << 20, "{rss}");
        assert!(peak_resident_bytes(std::process::id()).unwrap() >= rss);
        let used = node_memory_used().unwrap();
        assert!((0.0..1.0).contains(&used), "{used}");
        assert_eq!(kib_field("VmRSS:\t  2048 kB\n", "VmRSS:"), Some(2048));
    }
}
