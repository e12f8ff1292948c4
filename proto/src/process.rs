//! Local processes named on the wire: a driver or worker tells its raylet
//! which process it is, so that what it holds (pins, half-written objects) is
//! released when it ends, however it ends.

use crate::v1::ClientProcess;

/// When process `pid` started (field 22 of `/proc/PID/stat`, clock ticks
/// since boot), or `None` if this host has no such live process: a zombie
/// (ended, not yet reaped by its parent) has ended, and holds nothing.
pub fn process_started(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces and parentheses:
    // the state (field 3), then 18 more to the start time.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    if matches!(fields.next()?, "Z" | "X") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

impl ClientProcess {
    /// This process (read once: clients name themselves on every store call).
    pub fn this_process() -> Self {
        static ME: std::sync::OnceLock<ClientProcess> = std::sync::OnceLock::new();
        let pid = std::process::id();
        let me = *ME.get_or_init(|| Self {
            pid,
            started: process_started(pid).unwrap_or(0),
        });
        // A forked child is another process.
        if me.pid == pid {
            me
        } else {
            Self {
                pid,
                started: process_started(pid).unwrap_or(0),
            }
        }
    }

    /// Whether this host sees the process as it described itself: the pid
    /// exists and started when it said. False for a process in another pid
    /// namespace (or one that has ended).
    pub fn is_visible_and_alive(&self) -> bool {
        self.pid != 0 && self.started != 0 && process_started(self.pid) == Some(self.started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let me = ClientProcess::this_process();
        assert_eq!(me.pid, std::process::id());
        assert!(me.is_visible_and_alive());
        let reborn = ClientProcess {
            started: me.started + 1,
            ..me
        };
        assert!(!reborn.is_visible_and_alive());
        assert!(!ClientProcess::default().is_visible_and_alive());
    }

    #[test]
    fn an_exited_process_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let started = process_started(pid).unwrap_or(1);
        child.wait().unwrap();
        assert!(!ClientProcess { pid, started }.is_visible_and_alive());
    }

    /// SIGKILL, without reaping.
    fn sigkill(pid: u32) {
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    }

    #[test]
    fn a_zombie_is_not_alive() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        let started = process_started(pid).expect("a running child");
        assert!(ClientProcess { pid, started }.is_visible_and_alive());
        // Killed but not reaped: its /proc entry stays, in state Z.
        sigkill(pid);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap()
            .contains(") Z ")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never ended"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!ClientProcess { pid, started }.is_visible_and_alive());
        child.wait().unwrap();
    }
}
