//! Spilling objects to, and restoring them from, a location reached through
//! the `object_store` crate (a local directory by default; any URL it supports).
//!
//! The I/O runs on a dedicated thread with its own small tokio runtime, so the
//! store's synchronous API never needs (or blocks) a caller's async runtime.
//! Objects chosen together are fused into one file per spill: one request and
//! one file instead of one per object.

use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore as RemoteStore, PutPayload};
use tokio::sync::mpsc;
use tracing::warn;

use crate::error::{Error, Result};

enum Request {
    Write {
        name: String,
        data: Bytes,
        reply: std_mpsc::SyncSender<Result<(), String>>,
    },
    Read {
        name: String,
        range: Range<u64>,
        reply: std_mpsc::SyncSender<Result<Bytes, String>>,
    },
    Delete {
        name: String,
    },
}

/// Handle to the spill thread. Dropping it deletes every spill file still
/// present and, for the default location, the spill directory.
///
/// The default directory is created at the first spill, not at open: a
/// process that is killed (raylets are, in failure tests and in real life)
/// cannot remove it, and most stores never spill at all.
pub struct Spiller {
    requests: Option<mpsc::UnboundedSender<Request>>,
    thread: Option<JoinHandle<()>>,
    location: String,
    owned_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Spiller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spiller")
            .field("location", &self.location)
            .finish()
    }
}

impl Spiller {
    /// Opens the spill location: `url`, or a fresh directory under `fallback_root`.
    /// `tag` keeps this store's files apart from other stores' at a shared URL.
    pub fn open(url: Option<&str>, fallback_root: &FsPath, tag: &str) -> Result<Self> {
        let (target, location, owned_dir) = open_location(url, fallback_root, tag)?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("photon-spill".into())
            .spawn(move || run(target, receiver))
            .map_err(Error::io("cannot start the spill thread"))?;
        Ok(Self {
            requests: Some(sender),
            thread: Some(thread),
            location,
            owned_dir,
        })
    }

    /// Where spilled objects go, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Writes `data` to the spill file `name`; blocks until done.
    pub fn write(&self, name: &str, data: Bytes) -> Result<(), String> {
        let (reply, done) = std_mpsc::sync_channel(1);
        self.send(Request::Write {
            name: name.to_string(),
            data,
            reply,
        })?;
        done.recv()
            .map_err(|_| "the spill thread stopped".to_string())?
    }

    /// Reads `range` of the spill file `name`; blocks until done.
    pub fn read(&self, name: &str, range: Range<u64>) -> Result<Bytes, String> {
        let (reply, done) = std_mpsc::sync_channel(1);
        self.send(Request::Read {
            name: name.to_string(),
            range,
            reply,
        })?;
        done.recv()
            .map_err(|_| "the spill thread stopped".to_string())?
    }

    /// Deletes the spill file `name` in the background.
    pub fn delete(&self, name: &str) {
        let _ = self.send(Request::Delete {
            name: name.to_string(),
        });
    }

    fn send(&self, request: Request) -> Result<(), String> {
        self.requests
            .as_ref()
            .and_then(|sender| sender.send(request).ok())
            .ok_or_else(|| "the spill thread stopped".to_string())
    }
}

impl Drop for Spiller {
    fn drop(&mut self) {
        // Closing the channel ends the thread after it deleted our files.
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Some(dir) = &self.owned_dir
            && let Err(err) = std::fs::remove_dir_all(dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            warn!(dir = %dir.display(), %err, "could not remove spill directory");
        }
    }
}

/// Where spill files go: a store reached through `object_store`, or the
/// default local directory, created at the first write.
enum Target {
    Open(Arc<dyn RemoteStore>, Path),
    LocalDirToCreate(PathBuf),
}

impl Target {
    /// The store and prefix to write to, creating the directory if needed.
    fn for_write(&mut self) -> Result<(Arc<dyn RemoteStore>, Path)> {
        if let Target::LocalDirToCreate(dir) = self {
            *self = Target::Open(local_dir(dir)?, Path::default());
        }
        Ok(self.opened().expect("opened above"))
    }

    fn opened(&self) -> Option<(Arc<dyn RemoteStore>, Path)> {
        match self {
            Target::Open(store, prefix) => Some((store.clone(), prefix.clone())),
            Target::LocalDirToCreate(_) => None,
        }
    }
}

fn open_location(
    url: Option<&str>,
    fallback_root: &FsPath,
    tag: &str,
) -> Result<(Target, String, Option<PathBuf>)> {
    let dir_name = format!("photon-spill-{tag}");
    match url {
        None => {
            if !fallback_root.is_dir() {
                return Err(Error::Config(format!(
                    "the spill directory's parent {} is not a directory; create it or set a spill url",
                    fallback_root.display()
                )));
            }
            let dir = fallback_root.join(&dir_name);
            let location = dir.display().to_string();
            Ok((Target::LocalDirToCreate(dir.clone()), location, Some(dir)))
        }
        Some(url) if url.contains("://") => {
            let parsed = url::Url::parse(url).map_err(|err| {
                Error::Config(format!("spill url {url:?} is not a valid URL: {err}"))
            })?;
            let (store, prefix) = object_store::parse_url(&parsed).map_err(|err| {
                Error::Config(format!(
                    "spill url {url:?} is not supported: {err} (local paths, file:// and memory:// always work; s3:// needs the `s3` feature)"
                ))
            })?;
            let prefix = prefix.child(dir_name.as_str());
            Ok((
                Target::Open(Arc::from(store), prefix),
                url.to_string(),
                None,
            ))
        }
        Some(path) => {
            let store = local_dir(FsPath::new(path))?;
            let target = Target::Open(store, Path::from(dir_name.as_str()));
            Ok((target, path.to_string(), None))
        }
    }
}

fn local_dir(dir: &FsPath) -> Result<Arc<dyn RemoteStore>> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(Error::io(format!(
            "cannot create spill directory {}",
            dir.display()
        )))?;
    let store = LocalFileSystem::new_with_prefix(dir)
        .map_err(|err| Error::Config(format!("spill directory {}: {err}", dir.display())))?;
    Ok(Arc::new(store))
}

fn run(mut target: Target, mut requests: mpsc::UnboundedReceiver<Request>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            warn!(%err, "cannot start the spill runtime; spilling is disabled");
            return;
        }
    };
    runtime.block_on(async move {
        let mut written: std::collections::HashSet<String> = Default::default();
        while let Some(request) = requests.recv().await {
            match request {
                Request::Write { name, data, reply } => {
                    let result = match target.for_write() {
                        Ok((store, prefix)) => store
                            .put(&prefix.child(name.as_str()), PutPayload::from(data))
                            .await
                            .map(|_| ())
                            .map_err(|err| err.to_string()),
                        Err(err) => Err(err.to_string()),
                    };
                    if result.is_ok() {
                        written.insert(name);
                    }
                    let _ = reply.send(result);
                }
                Request::Read { name, range, reply } => {
                    let result = match target.opened() {
                        Some((store, prefix)) => store
                            .get_range(&prefix.child(name.as_str()), range)
                            .await
                            .map_err(|err| err.to_string()),
                        None => Err(format!("no spill file {name}: nothing was spilled yet")),
                    };
                    let _ = reply.send(result);
                }
                Request::Delete { name } => {
                    written.remove(&name);
                    if let Some((store, prefix)) = target.opened() {
                        delete(&*store, &prefix, &name).await;
                    }
                }
            }
        }
        if let Some((store, prefix)) = target.opened() {
            for name in written {
                delete(&*store, &prefix, &name).await;
            }
        }
    });
}

async fn delete(store: &dyn RemoteStore, prefix: &Path, name: &str) {
    if let Err(err) = store.delete(&prefix.child(name)).await {
        warn!(file = name, %err, "could not delete spill file");
    }
}
