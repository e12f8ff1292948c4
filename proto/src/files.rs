//! Private files: what holds a token or a key is written 0600 in a 0700
//! directory, by every crate that writes one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Creates `dir` (and missing parents) with mode 0700; an existing one is left as it is.
pub fn create_private_dir(dir: &Path) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|err| format!("cannot create directory {}: {err}", dir.display()))
}

/// Writes `contents` to `path` with mode 0600, atomically (a temp file
/// renamed over it, so an existing file's looser mode never survives).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), String> {
    let failed = |err: std::io::Error| format!("cannot write {}: {err}", path.display());
    // A name of this process's own, so concurrent writers never share one.
    let temp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = fs::remove_file(&temp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(failed)?;
    file.write_all(contents).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    fs::rename(&temp, path).map_err(failed)
}
