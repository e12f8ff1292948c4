//! How a store is set up.

use std::path::PathBuf;

/// Share of physical memory a store takes when no capacity is given.
pub const DEFAULT_CAPACITY_FRACTION: f64 = 0.30;

/// Configuration of one node's object store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Bytes of shared memory for objects. Default: 30% of physical memory.
    pub capacity: u64,
    /// Where the segment lives when it fits: tmpfs, so objects are in RAM.
    pub shm_root: PathBuf,
    /// Where the segment lives when `shm_root` is missing or too small.
    pub fallback_root: PathBuf,
    /// Where spilled objects go: a local path, `file://`, `memory://` or (with the
    /// `s3` feature) `s3://`. `None`: a fresh directory under `fallback_root`,
    /// removed with the store.
    pub spill_url: Option<String>,
    /// Fault in every page of the segment at start (Linux `MADV_POPULATE_WRITE`),
    /// so even the first put runs at memcpy speed. Costs the whole capacity in
    /// RAM up front.
    pub prefault: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            capacity: default_capacity(),
            shm_root: PathBuf::from("/dev/shm"),
            fallback_root: std::env::temp_dir(),
            spill_url: None,
            prefault: false,
        }
    }
}

impl StoreConfig {
    /// The default configuration with the given capacity.
    pub fn with_capacity(capacity: u64) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }
}

/// Physical memory of this machine in bytes.
pub fn physical_memory() -> u64 {
    // SAFETY: sysconf only reads system configuration.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page_size <= 0 {
        // sysconf cannot fail for these on Linux; 8 GiB keeps a store usable if it does.
        return 8 << 30;
    }
    pages as u64 * page_size as u64
}

/// 30% of physical memory.
pub fn default_capacity() -> u64 {
    (physical_memory() as f64 * DEFAULT_CAPACITY_FRACTION) as u64
}
