//! Spilling under memory pressure and transparent restore.

mod common;

use common::{checksum, oid, pattern, store};
use photon_object_store::{ObjectStore, StoreConfig};

const MIB: u64 = 1 << 20;

fn fill_three_times_and_read_back(store: &ObjectStore, object_size: usize) {
    let count = (3 * store.capacity() / object_size as u64) as u32;
    for n in 0..count {
        store.put(oid(n), &pattern(n, object_size)).unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.objects, u64::from(count));
    assert!(stats.used <= stats.capacity, "{stats:?}");
    assert!(
        stats.spilled_objects as f64 >= f64::from(count) * 0.6,
        "most objects spilled: {stats:?}"
    );
    assert_eq!(
        stats.spilled_bytes,
        stats.spilled_objects * object_size as u64
    );
    for n in 0..count {
        let view = store.get(oid(n)).unwrap();
        assert_eq!(
            checksum(&view),
            checksum(&pattern(n, object_size)),
            "object {n} intact"
        );
    }
    assert!(store.stats().restores_total >= stats.spilled_objects);
    for n in 0..count {
        store.delete(oid(n)).unwrap();
    }
    let end = store.stats();
    assert_eq!(
        (end.used, end.objects, end.spilled_objects),
        (0, 0, 0),
        "{end:?}"
    );
}

#[test]
fn three_times_capacity_spills_and_reads_back_intact() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(8 * MIB, &dir);
    fill_three_times_and_read_back(&store, MIB as usize);
}

#[test]
fn spill_files_are_fused_and_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let spill_dir = dir.path().join("spill");
    let store = ObjectStore::open(StoreConfig {
        capacity: 32 * MIB,
        fallback_root: dir.path().to_path_buf(),
        spill_url: Some(spill_dir.display().to_string()),
        ..StoreConfig::default()
    })
    .unwrap();
    for n in 0..200 {
        store.put(oid(n), &pattern(n, 256 * 1024)).unwrap();
    }
    let spilled = store.stats().spilled_objects;
    let files = count_files(&spill_dir);
    assert!(spilled >= 64, "spilled {spilled}");
    assert!(
        files * 16 <= spilled as usize,
        "{files} files for {spilled} objects: spills are fused"
    );
    for n in 0..200 {
        assert_eq!(store.get(oid(n)).unwrap()[..], pattern(n, 256 * 1024)[..]);
        store.delete(oid(n)).unwrap();
    }
    drop(store);
    assert_eq!(count_files(&spill_dir), 0, "every spill file deleted");
}

fn count_files(dir: &std::path::Path) -> usize {
    walk(dir).len()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                vec![e.path()]
            }
        })
        .collect()
}

#[test]
fn spills_to_an_object_store_url() {
    let dir = tempfile::tempdir().unwrap();
    let store = ObjectStore::open(StoreConfig {
        capacity: 4 * MIB,
        fallback_root: dir.path().to_path_buf(),
        spill_url: Some("memory://".into()),
        ..StoreConfig::default()
    })
    .unwrap();
    assert_eq!(store.spill_location(), "memory://");
    fill_three_times_and_read_back(&store, 512 * 1024);
}

#[test]
fn pinned_objects_are_never_spilled() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(4 * MIB, &dir);
    store.put(oid(0), &pattern(0, MIB as usize)).unwrap();
    let pinned = store.get(oid(0)).unwrap();
    let address = pinned.as_ptr();
    for n in 1..20 {
        store.put(oid(n), &pattern(n, MIB as usize)).unwrap();
    }
    assert_eq!(pinned.as_ptr(), address);
    assert_eq!(&pinned[..], &pattern(0, MIB as usize)[..]);
    assert!(store.stats().spills_total >= 16);
}

#[test]
fn default_spill_directory_exists_only_from_the_first_spill_until_the_store_drops() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(2 * MIB, &dir);
    let spill_dir = std::path::PathBuf::from(store.spill_location());
    store.put(oid(100), &pattern(100, 1024)).unwrap();
    assert!(
        !spill_dir.exists(),
        "a store that has not spilled leaves nothing behind if it is killed"
    );
    for n in 0..6 {
        store.put(oid(n), &pattern(n, MIB as usize)).unwrap();
    }
    assert!(store.stats().spilled_objects > 0);
    assert!(spill_dir.starts_with(dir.path()) && spill_dir.exists());
    drop(store);
    assert!(!spill_dir.exists());
}

#[test]
fn concurrent_writers_and_readers_under_pressure() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(8 * MIB, &dir);
    std::thread::scope(|scope| {
        for t in 0..4u32 {
            let store = store.clone();
            scope.spawn(move || {
                for i in 0..40 {
                    let n = t * 1000 + i;
                    store.put(oid(n), &pattern(n, 300_000)).unwrap();
                    let back = t * 1000 + i / 2;
                    assert_eq!(
                        checksum(&store.get(oid(back)).unwrap()),
                        checksum(&pattern(back, 300_000))
                    );
                }
            });
        }
    });
    assert_eq!(store.stats().objects, 160);
    for t in 0..4u32 {
        for i in 0..40 {
            let n = t * 1000 + i;
            assert_eq!(
                checksum(&store.get(oid(n)).unwrap()),
                checksum(&pattern(n, 300_000))
            );
        }
    }
}
