//! Where an input or output URL points: an object store and a path inside it.
//! Local paths and `file://` go through object_store's local filesystem so
//! that S3 and local files share one code path.

use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

/// A resolved URL.
#[derive(Clone)]
pub struct Location {
    /// The store holding it.
    pub store: Arc<dyn ObjectStore>,
    /// The object (or prefix, for a directory) inside `store`.
    pub path: Path,
    /// The URL as the user wrote it, without a trailing `/`; used in messages.
    pub display: String,
    /// The filesystem path for local locations: object_store cannot tell a
    /// missing directory from an empty one, or remove empty directories.
    pub local: Option<PathBuf>,
}

impl Location {
    /// How to name `path` (an object under this location) in messages.
    pub fn display_of(&self, path: &Path) -> String {
        let relative = path.prefix_match(&self.path).map(|parts| {
            parts
                .map(|part| part.as_ref().to_string())
                .collect::<Vec<_>>()
        });
        match relative {
            Some(parts) if !parts.is_empty() => format!("{}/{}", self.display, parts.join("/")),
            _ => self.display.clone(),
        }
    }
}

fn invalid(message: String) -> Error {
    Error::Invalid(message)
}

/// Resolves a local path, `file://` URL, `memory://` URL or (with the `s3`
/// feature) `s3://` URL.
pub fn resolve(url: &str) -> Result<Location> {
    let display = match url.trim_end_matches('/') {
        "" => url.to_string(),
        trimmed => trimmed.to_string(),
    };
    if let Some((scheme, _)) = url.split_once("://") {
        return match scheme {
            "file" => {
                let parsed = url::Url::parse(url)
                    .map_err(|e| invalid(format!("{url} is not a valid URL: {e}")))?;
                let path = parsed
                    .to_file_path()
                    .map_err(|()| invalid(format!("{url} is not a local file URL")))?;
                local(&path, display)
            }
            "s3" => s3(url, display),
            "memory" => memory(url, display),
            other => Err(invalid(format!(
                "{url}: unsupported URL scheme {other:?}; use a local path, file://, s3:// or \
                 memory://"
            ))),
        };
    }
    let path = FsPath::new(url);
    if path.is_relative() {
        // Named by its absolute path from here on: the URLs handed to tasks
        // are these, and a worker resolves a relative path in its own
        // directory on its own node, not the caller's.
        let absolute = absolute(path)?;
        let display = absolute.display().to_string();
        return local(&absolute, display);
    }
    local(path, display)
}

/// `path` made absolute against this process's working directory, with `.`
/// and `..` resolved.
fn absolute(path: &FsPath) -> Result<PathBuf> {
    let absolute = std::path::absolute(path).map_err(|e| {
        invalid(format!(
            "cannot make {} an absolute path: {e}",
            path.display()
        ))
    })?;
    Ok(normalize(&absolute))
}

fn local(path: &FsPath, display: String) -> Result<Location> {
    let absolute = absolute(path)?;
    let object_path = Path::from_absolute_path(&absolute)
        .map_err(|e| invalid(format!("{display} is not a usable local path: {e}")))?;
    Ok(Location {
        store: Arc::new(LocalFileSystem::new()),
        path: object_path,
        display,
        local: Some(absolute),
    })
}

/// `memory://name/path`: files in shared memory (`/dev/shm`), seen by every
/// process of this machine (driver, raylet, workers) but no other machine,
/// and gone at reboot. For tests and single-node scratch data: an in-process
/// store would be invisible to the worker processes.
fn memory(url: &str, display: String) -> Result<Location> {
    // `memory:///x` and `memory://x` name the same dataset; the path must
    // stay under the memory root (joining an absolute path would leave it).
    let rest = url.trim_start_matches("memory://").trim_start_matches('/');
    let parts: Vec<&str> = rest.split('/').filter(|part| !part.is_empty()).collect();
    if parts.is_empty() {
        return Err(invalid(format!(
            "{url}: name a dataset, e.g. memory://my-data/part.parquet"
        )));
    }
    if parts.iter().any(|&part| part == ".." || part == ".") {
        return Err(invalid(format!(
            "{url}: memory:// paths may not hold `.` or `..`"
        )));
    }
    let root = memory_root()?;
    local(&root.join(parts.join("/")), display)
}

/// The directory holding this user's `memory://` files.
fn memory_root() -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let base = match FsPath::new("/dev/shm") {
        shm if shm.is_dir() => shm.to_path_buf(),
        _ => std::env::temp_dir(),
    };
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    let root = base.join(format!("photon-memory-{uid}"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&root)
        .map_err(|e| invalid(format!("cannot create {}: {e}", root.display())))?;
    // /dev/shm is shared by every user: use the directory only if it is a
    // real directory of ours that no one else can read or write.
    let owned = std::fs::symlink_metadata(&root)
        .is_ok_and(|m| m.file_type().is_dir() && m.uid() == uid && m.mode() & 0o077 == 0);
    if !owned {
        return Err(invalid(format!(
            "{} is not a private directory of this user (uid {uid}): remove it and retry",
            root.display()
        )));
    }
    Ok(root)
}

/// Drops `.` and resolves `..` lexically: object_store paths may hold neither.
fn normalize(path: &FsPath) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(feature = "s3")]
fn s3(url: &str, display: String) -> Result<Location> {
    let parsed =
        url::Url::parse(url).map_err(|e| invalid(format!("{url} is not a valid URL: {e}")))?;
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_url(url)
        .build()
        .map_err(|e| {
            invalid(format!(
                "cannot open {url} (credentials come from the AWS_* variables): {e}"
            ))
        })?;
    let path = Path::from_url_path(parsed.path())
        .map_err(|e| invalid(format!("{url} has an invalid object path: {e}")))?;
    Ok(Location {
        store: Arc::new(store),
        path,
        display,
        local: None,
    })
}

#[cfg(not(feature = "s3"))]
fn s3(url: &str, _display: String) -> Result<Location> {
    Err(invalid(format!(
        "{url}: this photon was built without S3 support; rebuild it with `--features s3`"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_are_absolute_and_normalized() {
        let location = resolve("/tmp/a/./b/../c/").unwrap();
        assert_eq!(location.path.as_ref(), "tmp/a/c");
        assert_eq!(location.display, "/tmp/a/./b/../c");
        assert_eq!(location.local.as_deref(), Some(FsPath::new("/tmp/a/c")));
        let child = location.path.child("part-00000.parquet");
        assert_eq!(
            location.display_of(&child),
            "/tmp/a/./b/../c/part-00000.parquet"
        );
    }

    #[test]
    fn a_relative_path_is_named_by_its_absolute_path() {
        let location = resolve("data/./in.parquet").unwrap();
        let expected = std::env::current_dir().unwrap().join("data/in.parquet");
        assert_eq!(location.display, expected.display().to_string());
        assert_eq!(location.local.as_deref(), Some(expected.as_path()));
    }

    #[test]
    fn file_urls_are_local() {
        let location = resolve("file:///tmp/x%20y").unwrap();
        assert_eq!(location.local.as_deref(), Some(FsPath::new("/tmp/x y")));
    }

    #[test]
    fn memory_urls_live_in_shared_memory() {
        let location = resolve("memory://tests/a/b.parquet").unwrap();
        let local = location.local.unwrap();
        assert!(local.ends_with("tests/a/b.parquet"), "{}", local.display());
        assert!(
            local
                .parent()
                .and_then(|p| p.parent())
                .and_then(|p| p.parent())
                .and_then(|p| p.file_name())
                .is_some_and(|name| name.to_string_lossy().starts_with("photon-memory-")),
            "{}",
            local.display()
        );
        assert_eq!(location.display, "memory://tests/a/b.parquet");
        let err = resolve("memory://../x").err().unwrap().to_string();
        assert!(err.contains("may not hold `.` or `..`"), "{err}");
        // An absolute-looking path stays under the memory root.
        let rooted = resolve("memory:///etc/x").unwrap().local.unwrap();
        assert!(rooted.ends_with("etc/x") && rooted != FsPath::new("/etc/x"));
        let err = resolve("memory://").err().unwrap().to_string();
        assert!(err.contains("name a dataset"), "{err}");
    }

    #[test]
    fn unknown_schemes_are_refused() {
        let err = resolve("gs://bucket/x").err().unwrap().to_string();
        assert!(err.contains("unsupported URL scheme \"gs\""), "{err}");
    }

    #[cfg(not(feature = "s3"))]
    #[test]
    fn s3_without_the_feature_says_how_to_get_it() {
        let err = resolve("s3://bucket/x").err().unwrap().to_string();
        assert!(err.contains("--features s3"), "{err}");
    }
}
