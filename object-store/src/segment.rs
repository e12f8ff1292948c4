//! The store's directory and its memory-mapped segment file.
//!
//! A store owns `ROOT/photon-store-<pid>-<nonce>/segment`, a sparse file of
//! `capacity` bytes mapped shared and read-write. The directory is 0700 and the
//! file 0600. The segment is held under an exclusive `flock` for the store's
//! life, which is how a later store tells a dead session's directory (lock
//! free) from a live one, and cleans it up. The directory is removed on drop.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use memmap2::{MmapOptions, MmapRaw};
use tracing::{info, warn};

use crate::config::StoreConfig;
use crate::error::{Error, Result};

const DIR_PREFIX: &str = "photon-store-";
/// A lock-free store directory younger than this may be one being set up.
const STALE_GRACE: Duration = Duration::from_secs(60);

/// The mapped segment. Dropping it unmaps and removes the directory.
#[derive(Debug)]
pub struct Segment {
    dir: PathBuf,
    path: PathBuf,
    mmap: MmapRaw,
    // Keeps the flock for the store's life.
    _file: File,
}

impl Segment {
    /// Creates and maps a segment of `config.capacity` bytes, in `shm_root` when
    /// it has room, else in `fallback_root`.
    pub fn create(config: &StoreConfig) -> Result<Self> {
        if config.capacity == 0 {
            return Err(Error::Config("capacity must be greater than 0".into()));
        }
        let root = choose_root(config)?;
        remove_stale_stores(&root);
        let dir = root.join(format!(
            "{DIR_PREFIX}{}-{:016x}",
            std::process::id(),
            nonce()
        ));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(Error::io(format!(
                "cannot create store directory {}",
                dir.display()
            )))?;
        let path = dir.join("segment");
        let result = map_segment(&path, config.capacity, config.prefault);
        match result {
            Ok((file, mmap)) => Ok(Self {
                dir,
                path,
                mmap,
                _file: file,
            }),
            Err(err) => {
                let _ = fs::remove_dir_all(&dir);
                Err(err)
            }
        }
    }

    /// Path of the segment file, for descriptors handed to other processes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Start of the mapping.
    pub fn base(&self) -> *mut u8 {
        self.mmap.as_mut_ptr()
    }

    /// Faults in `[offset, offset+len)` ahead of a write; see [`populate_range`].
    pub fn populate(&self, offset: u64, len: u64) -> std::io::Result<()> {
        debug_assert!(offset + len <= self.len());
        // SAFETY: the range is inside the mapping (checked by the caller).
        populate_range(unsafe { self.base().add(offset as usize) }, len as usize)
    }

    /// Length of the mapping.
    pub fn len(&self) -> u64 {
        self.mmap.len() as u64
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            warn!(dir = %self.dir.display(), %err, "could not remove object store directory");
        }
    }
}

fn map_segment(path: &Path, capacity: u64, prefault: bool) -> Result<(File, MmapRaw)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(format!(
            "cannot create segment {}",
            path.display()
        )))?;
    lock_exclusive(&file).map_err(Error::io(format!("cannot lock segment {}", path.display())))?;
    file.set_len(capacity).map_err(Error::io(format!(
        "cannot size segment {} to {capacity} bytes",
        path.display()
    )))?;
    let mmap = MmapOptions::new()
        .len(capacity as usize)
        .map_raw(&file)
        .map_err(Error::io(format!("cannot map segment {}", path.display())))?;
    if prefault {
        populate(&mmap).map_err(Error::io(format!(
            "cannot prefault segment {}",
            path.display()
        )))?;
    }
    Ok((file, mmap))
}

/// Faults in every page for writing (see [`populate_range`]).
fn populate(mmap: &MmapRaw) -> std::io::Result<()> {
    populate_range(mmap.as_mut_ptr(), mmap.len())
}

/// Faults in the pages of `[start, start+len)` for writing in one kernel call
/// (`MADV_POPULATE_WRITE`) instead of one trap per 4 KiB page on first write.
/// Page contents do not change.
fn populate_range(start: *mut u8, len: usize) -> std::io::Result<()> {
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    // SAFETY: the caller passes a range inside a live mapping; populating pages
    // does not change their contents.
    let rc = unsafe { libc::madvise(start.cast(), len, MADV_POPULATE_WRITE) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINVAL) {
        // Kernels before 5.14 lack MADV_POPULATE_WRITE: pages fault in on first write instead.
        return Ok(());
    }
    Err(err)
}

fn lock_exclusive(file: &File) -> std::io::Result<()> {
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `shm_root` if it exists and has room for the whole capacity (writing to a
/// mapped tmpfs page when tmpfs is full kills the process with SIGBUS, so the
/// room is checked up front), else `fallback_root` under the same rule.
fn choose_root(config: &StoreConfig) -> Result<PathBuf> {
    let mut reasons = Vec::new();
    for root in [&config.shm_root, &config.fallback_root] {
        match available_bytes(root) {
            Ok(available) if available >= config.capacity => {
                if root != &config.shm_root {
                    warn!(
                        shm_root = %config.shm_root.display(), fallback = %root.display(),
                        "shared memory root unusable, object store falls back to disk: {}",
                        reasons.join("; ")
                    );
                }
                return Ok(root.clone());
            }
            Ok(available) => reasons.push(format!(
                "{} has {available} bytes free, less than the capacity of {} bytes",
                root.display(),
                config.capacity
            )),
            Err(err) => reasons.push(format!("{} is unusable: {err}", root.display())),
        }
    }
    Err(Error::Config(format!(
        "no place for the object store segment: {}; lower the capacity or free space",
        reasons.join("; ")
    )))
}

fn available_bytes(root: &Path) -> std::io::Result<u64> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c_path = CString::new(root.as_os_str().as_bytes()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has a NUL byte")
    })?;
    // SAFETY: statvfs writes into the zeroed struct we pass; the path is NUL-terminated.
    let (rc, stat) = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c_path.as_ptr(), &mut stat), stat)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: access(2) only reads the path.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The field types differ between platforms; on x86_64 they are already u64.
    #[allow(clippy::unnecessary_cast)]
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Removes store directories of dead sessions: their segment lock is free and
/// their owning process is gone (or the directory is older than a minute,
/// covering a recycled pid).
fn remove_stale_stores(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let pid: Option<i32> = rest.split('-').next().and_then(|p| p.parse().ok());
        let dir = entry.path();
        if is_stale(&dir, pid) {
            match fs::remove_dir_all(&dir) {
                Ok(()) => {
                    info!(dir = %dir.display(), "removed stale object store of a dead session")
                }
                Err(err) => {
                    warn!(dir = %dir.display(), %err, "could not remove stale object store")
                }
            }
        }
    }
}

fn is_stale(dir: &Path, pid: Option<i32>) -> bool {
    let lock_free = match File::open(dir.join("segment")) {
        Ok(file) => lock_exclusive(&file).is_ok(),
        Err(_) => true,
    };
    if !lock_free {
        return false;
    }
    let owner_alive = pid.is_some_and(|pid| {
        // SAFETY: signal 0 only checks that the process exists.
        let rc = unsafe { libc::kill(pid, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    });
    let old = fs::metadata(dir)
        .and_then(|meta| meta.modified())
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
        .is_some_and(|age| age > STALE_GRACE);
    !owner_alive || old
}

/// A value unlikely to repeat within a process or across processes.
pub(crate) fn nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let time = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    time ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(48)
        ^ u64::from(std::process::id()) << 32
}
