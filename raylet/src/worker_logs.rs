//! Forwards what a job's workers print to the head, which appends it to the
//! job's log: `photon job logs` then shows driver and worker output together,
//! each worker line prefixed with its actor class or `worker`, pid and node
//! (as Ray does). Workers write straight to their own files (a stalled head
//! never blocks a worker); this tails those files.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use photon_proto::WorkerId;
use tokio_util::sync::CancellationToken;

use crate::actors::ActorHost;
use crate::head_link::HeadLink;
use crate::worker_pool::WorkerPool;

/// Environment variable carrying a worker's job id (set by the SDK).
pub const JOB_ID_ENV: &str = "PHOTON_JOB_ID";
/// How often worker files are read.
const PERIOD: Duration = Duration::from_millis(250);
/// The most read from one file per pass.
const MAX_READ: u64 = 1 << 20;

/// One output file of a worker, read up to `offset`.
struct TailedFile {
    path: PathBuf,
    offset: u64,
    /// An incomplete last line, held until its newline arrives.
    partial: Vec<u8>,
}

impl TailedFile {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// Appends the complete lines written since the last read to `out`, each
    /// after `prefix`; with `last`, an incomplete final line too.
    fn read_lines(&mut self, prefix: &str, last: bool, out: &mut Vec<u8>) {
        if let Ok(mut file) = std::fs::File::open(&self.path)
            && file.seek(SeekFrom::Start(self.offset)).is_ok()
        {
            // A live worker's backlog is read a chunk per pass; an ended
            // one's to the end, since this is the last pass that sees it.
            loop {
                let mut fresh = Vec::new();
                let Ok(read) = (&mut file).take(MAX_READ).read_to_end(&mut fresh) else {
                    break;
                };
                self.offset += read as u64;
                self.partial.extend_from_slice(&fresh);
                if !last || (read as u64) < MAX_READ {
                    break;
                }
            }
        }
        let complete = match self.partial.iter().rposition(|&b| b == b'\n') {
            Some(end) => end + 1,
            None if last => self.partial.len(),
            None => 0,
        };
        let rest = self.partial.split_off(complete);
        for line in self.partial.split_inclusive(|&b| b == b'\n') {
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                out.push(b'\n');
            }
        }
        self.partial = rest;
    }
}

/// A worker of a job whose output is being forwarded.
struct TailedWorker {
    job: String,
    prefix: String,
    files: [TailedFile; 2],
}

/// Tails the output files of every job's workers on this node.
pub struct LogForwarder {
    pool: Arc<WorkerPool>,
    actors: Arc<ActorHost>,
    link: Arc<HeadLink>,
    log_dir: PathBuf,
    host: String,
    /// One pass at a time, so no line is read twice.
    tailed: tokio::sync::Mutex<HashMap<WorkerId, TailedWorker>>,
}

impl LogForwarder {
    /// A forwarder of the workers of `pool`, whose files are in `log_dir`.
    pub fn new(
        pool: Arc<WorkerPool>,
        actors: Arc<ActorHost>,
        link: Arc<HeadLink>,
        log_dir: PathBuf,
        host: String,
    ) -> Self {
        Self {
            pool,
            actors,
            link,
            log_dir,
            host,
            tailed: Default::default(),
        }
    }

    /// Forwards every `PERIOD` until `cancel`, then a last time.
    pub async fn run(&self, cancel: CancellationToken) {
        let mut ticks = tokio::time::interval(PERIOD);
        loop {
            let stopping = tokio::select! {
                () = cancel.cancelled() => true,
                _ = ticks.tick() => false,
            };
            self.pass(stopping).await;
            if stopping {
                return;
            }
        }
    }

    /// Kills job `job`'s workers, waits (briefly) until they are reaped, and
    /// forwards what they printed last, so the job's log is complete when
    /// the head records the job's end. Returns how many were killed.
    pub async fn end_job(&self, job: &str) -> u32 {
        // Track the job's workers first: one that started since the last
        // pass would otherwise end unseen.
        self.pass(false).await;
        // A detached actor outlives its job.
        let detached = |worker| self.actors.hosts_detached(worker);
        let killed = self.pool.kill_job(job, detached);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !self.pool.job_workers(job, detached).is_empty()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.pass(false).await;
        killed
    }

    /// Reads new output of every job worker (all of it for workers that
    /// ended, or all workers when `last`) and hands it to the head.
    async fn pass(&self, last: bool) {
        let mut tailed = self.tailed.lock().await;
        let live: HashMap<WorkerId, _> = self.pool.live().into_iter().map(|w| (w.id, w)).collect();
        for (id, worker) in &live {
            let Some(job) = worker.spec.env.get(JOB_ID_ENV) else {
                continue;
            };
            let name = self
                .actors
                .actor_of_worker(*id)
                .map(|spec| short_class(&spec.class_name).to_string())
                .unwrap_or_else(|| "worker".into());
            let log_dir = &self.log_dir;
            let entry = tailed.entry(*id).or_insert_with(|| TailedWorker {
                job: job.clone(),
                prefix: String::new(),
                files: ["out", "err"].map(|ext| TailedFile::new(worker_file(log_dir, *id, ext))),
            });
            // An actor's worker learns its class after it starts.
            entry.prefix = format!("({name} pid={}, ip={}) ", worker.pid, self.host);
        }
        let mut batches: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        tailed.retain(|id, worker| {
            let ended = last || !live.contains_key(id);
            let batch = batches.entry(worker.job.clone()).or_default();
            for file in &mut worker.files {
                file.read_lines(&worker.prefix, ended, batch);
            }
            !ended
        });
        for (job, data) in batches {
            if !data.is_empty() {
                self.link.append_worker_logs(job, data).await;
            }
        }
    }
}

/// A worker's output file, as the worker pool names it.
fn worker_file(log_dir: &Path, id: WorkerId, ext: &str) -> PathBuf {
    log_dir.join(format!("worker-{id}.{ext}"))
}

/// `my_crate::module::Embedder` → `Embedder`.
fn short_class(class: &str) -> &str {
    class.rsplit("::").next().unwrap_or(class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_lines_are_prefixed_and_a_partial_one_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.out");
        std::fs::write(&path, "one\ntwo\nthr").unwrap();
        let mut file = TailedFile::new(path.clone());
        let mut out = Vec::new();
        file.read_lines("(A pid=1) ", false, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "(A pid=1) one\n(A pid=1) two\n"
        );
        let mut handle = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut handle, b"ee\nfour").unwrap();
        let mut out = Vec::new();
        file.read_lines("> ", false, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "> three\n");
        let mut out = Vec::new();
        file.read_lines("> ", true, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "> four\n");
        assert_eq!(short_class("a::b::Embedder"), "Embedder");
    }
}
