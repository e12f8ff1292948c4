//! Hosts for multi-host tests: network namespaces, each with its own address
//! on a private /24, joined by a bridge that lives in a namespace of its own
//! (no address anywhere outside namespaces the test creates). Processes
//! started in a host see only its `eth0` and its own loopback: another
//! host's 127.0.0.1 is not theirs. Everything is removed on drop.

use std::os::fd::AsFd;
use std::process::{Command, Stdio};

/// `ip` with `args`, which must succeed.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A set of namespace hosts on one bridge.
pub struct Hosts {
    tag: String,
    subnet: String,
    count: usize,
}

impl Hosts {
    /// `count` hosts, or why they cannot be made here (not root, no `ip`,
    /// no namespaces).
    pub fn create(count: usize) -> Result<Self, String> {
        static CREATED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        remove_stale_namespaces();
        // Unique per test process (nextest runs tests in parallel) and per
        // set within one. Each set has its own bridge, so subnets may repeat.
        let pid = std::process::id();
        let set = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let hosts = Self {
            tag: format!("ph{pid}x{set}"),
            subnet: "10.77.0".to_string(),
            count,
        };
        hosts.build().inspect_err(|_| hosts.remove())?;
        Ok(hosts)
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.tag)
    }

    /// The namespace of host `i`.
    pub fn name(&self, i: usize) -> String {
        format!("{}-h{i}", self.tag)
    }

    /// The address of host `i`.
    pub fn address(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    fn build(&self) -> Result<(), String> {
        let switch = self.switch();
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for i in 0..self.count {
            let host = self.name(i);
            let (inside, port) = (format!("{}a{i}", self.tag), format!("{}b{i}", self.tag));
            ip(&["netns", "add", &host])?;
            ip(&[
                "link", "add", &inside, "type", "veth", "peer", "name", &port,
            ])?;
            ip(&["link", "set", &inside, "netns", &host])?;
            ip(&["link", "set", &port, "netns", &switch])?;
            ip(&["-n", &host, "link", "set", &inside, "name", "eth0"])?;
            let cidr = format!("{}/24", self.address(i));
            ip(&["-n", &host, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &switch, "link", "set", &port, "up"])?;
        }
        Ok(())
    }

    /// `program` run inside host `i`.
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name(i), program]);
        command
    }

    /// Runs `f` on a thread inside host `i`'s network (for sockets the test
    /// opens itself).
    pub fn within<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name(i));
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let namespace = std::fs::File::open(&path).unwrap();
                    nix::sched::setns(namespace.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .unwrap();
                    f()
                })
                .join()
                .unwrap()
        })
    }

    /// SIGKILLs every process in host `i`: the host fails.
    pub fn kill_all(&self, i: usize) {
        let output = Command::new("ip")
            .args(["netns", "pids", &self.name(i)])
            .output()
            .unwrap();
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }

    fn remove(&self) {
        for i in 0..self.count {
            self.kill_all(i);
            let _ = ip(&["netns", "del", &self.name(i)]);
        }
        let _ = ip(&["netns", "del", &self.switch()]);
    }
}

/// Removes the namespaces of test processes that ended without cleaning up
/// (a test killed by a timeout never runs `Drop`): `ph<pid>x<set>-…`.
fn remove_stale_namespaces() {
    let Ok(listed) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let owner = name
            .strip_prefix("ph")
            .and_then(|rest| rest.split_once('x'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        if let Some(pid) = owner
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let pids = Command::new("ip").args(["netns", "pids", name]).output();
            for pid in pids
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
                .split_whitespace()
            {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.remove();
    }
}
