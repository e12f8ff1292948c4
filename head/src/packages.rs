//! Job packages: uploaded programs and working directories, stored once per
//! content hash (sha256) under `<data_dir>/packages/`, so resubmitting the
//! same binary uploads nothing and raylets can fetch a job's binary by hash.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Bytes per chunk of an upload or download (well under gRPC's 4 MiB limit).
pub const CHUNK: usize = 1 << 20;

/// The package store of one head.
#[derive(Debug, Clone)]
pub struct Packages {
    dir: PathBuf,
}

impl Packages {
    /// Packages under `data_dir/packages`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("packages"),
        }
    }

    /// Where package `sha256` is (or would be) stored; `None` for a name that
    /// is not a sha256 in hex (it could otherwise name any file).
    pub fn path(&self, sha256: &str) -> Option<PathBuf> {
        let valid = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| self.dir.join(sha256.to_ascii_lowercase()))
    }

    /// Whether package `sha256` is stored; a stored one counts as just used.
    pub fn has(&self, sha256: &str) -> bool {
        let stored = self.path(sha256).filter(|p| p.is_file());
        if let Some(path) = &stored {
            touch(path);
        }
        stored.is_some()
    }

    /// Deletes package `sha256` (no job uses it any more).
    pub fn remove(&self, sha256: &str) {
        if let Some(path) = self.path(sha256) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Deletes the packages not in `in_use` that were last stored, checked
    /// for or downloaded longer than `grace` ago (a package a driver shipped
    /// with `Config::files` is named by no job record: use keeps it); returns
    /// how many.
    pub fn remove_unused(
        &self,
        in_use: &std::collections::HashSet<String>,
        grace: std::time::Duration,
    ) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified.elapsed().is_ok_and(|age| age > grace));
            if self.path(&name).is_some() && !in_use.contains(&name) && stale {
                self.remove(&name);
                removed += 1;
            }
        }
        removed
    }

    /// Starts an upload announced as `sha256`.
    pub fn begin_upload(&self, sha256: &str) -> Result<Upload, String> {
        let target = self
            .path(sha256)
            .ok_or_else(|| format!("{sha256:?} is not a sha256 in hex"))?;
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let temp = tempfile::NamedTempFile::new_in(&self.dir)
            .map_err(|e| format!("cannot create a file in {}: {e}", self.dir.display()))?;
        Ok(Upload {
            announced: sha256.to_ascii_lowercase(),
            target,
            temp,
            hasher: Sha256::new(),
            size: 0,
        })
    }
}

/// A package being uploaded: written to a temporary file and renamed into
/// place only when its bytes hash to what was announced.
pub struct Upload {
    announced: String,
    target: PathBuf,
    temp: tempfile::NamedTempFile,
    hasher: Sha256,
    size: u64,
}

impl Upload {
    /// Appends a chunk.
    pub fn write(&mut self, data: &[u8]) -> Result<(), String> {
        self.hasher.update(data);
        self.size += data.len() as u64;
        self.temp
            .write_all(data)
            .map_err(|e| format!("cannot write package {}: {e}", self.announced))
    }

    /// Verifies the hash and stores the package (executable: it may be a
    /// program). Returns its size.
    pub fn finish(self) -> Result<u64, String> {
        let actual = hex::encode(self.hasher.finalize());
        if actual != self.announced {
            return Err(format!(
                "the uploaded bytes hash to {actual}, not to the announced {}; nothing was stored",
                self.announced
            ));
        }
        let file = self.temp.as_file();
        file.sync_all()
            .and_then(|()| file.set_permissions(std::fs::Permissions::from_mode(0o755)))
            .map_err(|e| format!("cannot store package {actual}: {e}"))?;
        self.temp
            .persist(&self.target)
            .map_err(|e| format!("cannot store package {actual}: {e}"))?;
        Ok(self.size)
    }
}

/// Marks a package as just used (its mtime), so unused-package removal keeps it.
fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn a_package_checked_for_counts_as_used_and_stays() {
        let dir = tempfile::tempdir().unwrap();
        let packages = Packages::new(dir.path());
        let mut stored = Vec::new();
        for content in [&b"checked"[..], b"forgotten"] {
            let hash = sha256_hex(content);
            let mut upload = packages.begin_upload(&hash).unwrap();
            upload.write(content).unwrap();
            upload.finish().unwrap();
            let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
            std::fs::File::open(packages.path(&hash).unwrap())
                .unwrap()
                .set_modified(two_hours_ago)
                .unwrap();
            stored.push(hash);
        }
        assert!(packages.has(&stored[0]));
        let removed = packages.remove_unused(
            &std::collections::HashSet::new(),
            std::time::Duration::from_secs(3600),
        );
        assert_eq!(removed, 1);
        assert!(packages.has(&stored[0]) && !packages.has(&stored[1]));
    }

    #[test]
    fn a_package_is_stored_only_when_its_hash_matches() {
        let dir = tempfile::tempdir().unwrap();
        let packages = Packages::new(dir.path());
        let hash = sha256_hex(b"hello world");
        let mut upload = packages.begin_upload(&hash).unwrap();
        upload.write(b"hello ").unwrap();
        upload.write(b"world").unwrap();
        assert_eq!(upload.finish().unwrap(), 11);
        assert!(packages.has(&hash));
        assert_eq!(
            std::fs::read(packages.path(&hash).unwrap()).unwrap(),
            b"hello world"
        );

        let other = sha256_hex(b"other");
        let mut upload = packages.begin_upload(&other).unwrap();
        upload.write(b"not other").unwrap();
        let err = upload.finish().unwrap_err();
        assert!(err.contains("not to the announced"), "{err}");
        assert!(!packages.has(&other));
        // Only the good package is left: no temporary files.
        assert_eq!(
            std::fs::read_dir(dir.path().join("packages"))
                .unwrap()
                .count(),
            1
        );
        assert!(packages.begin_upload("../../etc/passwd").is_err());
    }
}
