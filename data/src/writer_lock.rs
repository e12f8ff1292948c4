//! One writer per destination. A write takes `_photon_writer.json` in the
//! destination before anything runs (created only if absent: an exclusive
//! create on local disks, a conditional put on object stores) and removes it
//! when it commits or gives up. A second writer finds it and is refused,
//! with the first writer named; a lock whose writer died (same host, and its
//! process is gone or is another process now) is taken over, and what that
//! writer left is cleaned up by the sink.

use object_store::path::Path;
use object_store::{PutMode, PutOptions, PutPayload};
use photon_proto::process_started;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::location::Location;

/// The lock's file name in the destination (`_`-prefixed: readers skip it).
pub const LOCK: &str = "_photon_writer.json";

/// Who holds a destination.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Holder {
    pub host: String,
    pub pid: u32,
    /// The process's start time (clock ticks after boot), so that a reused
    /// pid is not taken for the writer.
    pub pid_started: Option<u64>,
    /// The write's run id (its staging directory and part names carry it).
    pub run: String,
    /// When the write started, in ms since the epoch.
    pub since_unix_ms: u64,
}

impl Holder {
    /// This process, writing run `run`.
    pub(crate) fn me(run: &str) -> Self {
        let pid = std::process::id();
        Self {
            host: host_name(),
            pid,
            pid_started: process_started(pid),
            run: run.to_string(),
            since_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
        }
    }

    /// Whether the holder is known to have ended: it ran on this host and
    /// its process is gone (or the pid now names another process). A writer
    /// on another host cannot be checked from here, so it counts as alive.
    pub(crate) fn is_dead(&self) -> bool {
        if self.host != host_name() {
            return false;
        }
        match process_started(self.pid) {
            None => true,
            Some(started) => self.pid_started.is_some_and(|s| s != started),
        }
    }

    fn describe(&self) -> String {
        format!(
            "host {} pid {} (run {}, started at {} ms since the epoch)",
            self.host, self.pid, self.run, self.since_unix_ms
        )
    }
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// A destination's lock, held by this write.
pub(crate) struct WriterLock {
    path: Path,
    me: Holder,
}

impl WriterLock {
    /// Takes the lock of `location` for run `run`, taking over (once) from a
    /// dead writer; fails naming a live one.
    pub(crate) async fn take(location: &Location, run: &str) -> Result<Self> {
        let path = location.path.child(LOCK);
        let me = Holder::me(run);
        let body = serde_json::to_vec_pretty(&me).expect("plain fields");
        let mut took_over = false;
        loop {
            if let Created::Yes = create(location, &path, &body).await? {
                return Ok(WriterLock { path, me });
            }
            match read(location, &path).await? {
                Some(holder) if holder.is_dead() && !took_over => {
                    tracing::warn!(
                        destination = %location.display,
                        writer = %holder.describe(),
                        "taking over the destination from a writer that died"
                    );
                    location
                        .store
                        .delete(&path)
                        .await
                        .map_err(|e| io(location, "remove the dead writer's lock", &path, e))?;
                    took_over = true;
                }
                Some(holder) => return Err(busy(location, &holder)),
                // Released between our create and our read: try again.
                None => {}
            }
        }
    }

    /// Removes the lock if it is still this write's.
    pub(crate) async fn release(self, location: &Location) {
        if read(location, &self.path).await.ok().flatten().as_ref() == Some(&self.me) {
            let _ = location.store.delete(&self.path).await;
        }
    }
}

/// The holder of `location`'s lock, if it has one.
pub(crate) async fn holder(location: &Location) -> Result<Option<Holder>> {
    read(location, &location.path.child(LOCK)).await
}

/// The error for a destination a live writer holds.
pub(crate) fn busy(location: &Location, holder: &Holder) -> Error {
    Error::Invalid(format!(
        "output {} is being written by {}; wait for that write to end, or, if that writer is \
         gone, remove {}",
        location.display,
        holder.describe(),
        location.display_of(&location.path.child(LOCK))
    ))
}

enum Created {
    Yes,
    Exists,
}

async fn create(location: &Location, path: &Path, body: &[u8]) -> Result<Created> {
    if let Some(dir) = &location.local {
        // object_store would create the directory too, but not fsync it.
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Io(format!("cannot create {}: {e}", dir.display())))?;
    }
    let options = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    let payload = PutPayload::from(body.to_vec());
    match location.store.put_opts(path, payload, options).await {
        Ok(_) => Ok(Created::Yes),
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => Ok(Created::Exists),
        Err(object_store::Error::NotImplemented) => {
            // S3 without conditional puts (AWS_CONDITIONAL_PUT unset): look,
            // then write. Two writers starting at the same moment can both
            // pass; say so once per write.
            tracing::warn!(
                destination = %location.display,
                "this store has no conditional put (for S3 set AWS_CONDITIONAL_PUT=etag): the \
                 destination's writer lock cannot keep out a second writer that starts at the \
                 same moment"
            );
            if location.store.head(path).await.is_ok() {
                return Ok(Created::Exists);
            }
            location
                .store
                .put(path, PutPayload::from(body.to_vec()))
                .await
                .map_err(|e| io(location, "write", path, e))?;
            Ok(Created::Yes)
        }
        Err(e) => Err(io(location, "write", path, e)),
    }
}

/// The lock's holder; `None` when there is no lock. A lock that cannot be
/// parsed is an error naming it (something else wrote that file).
async fn read(location: &Location, path: &Path) -> Result<Option<Holder>> {
    let bytes = match location.store.get(path).await {
        Ok(found) => found
            .bytes()
            .await
            .map_err(|e| io(location, "read", path, e))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(io(location, "read", path, e)),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        Error::Invalid(format!(
            "{} is not a photon writer lock ({e}); remove it if no photon write is running",
            location.display_of(path)
        ))
    })
}

fn io(location: &Location, what: &str, path: &Path, e: object_store::Error) -> Error {
    Error::Io(format!("cannot {what} {}: {e}", location.display_of(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_process_is_alive_and_a_gone_or_reused_pid_is_dead() {
        let me = Holder::me("run");
        assert!(me.pid_started.is_some());
        assert!(!me.is_dead());
        let reused = Holder {
            pid_started: me.pid_started.map(|s| s + 1),
            ..me.clone()
        };
        assert!(reused.is_dead(), "the pid now names another process");
        let gone = Holder {
            pid: u32::MAX - 1,
            ..me.clone()
        };
        assert!(gone.is_dead());
        let elsewhere = Holder {
            host: "another-host".into(),
            pid: u32::MAX - 1,
            ..me
        };
        assert!(
            !elsewhere.is_dead(),
            "another host's writer cannot be checked"
        );
    }
}
