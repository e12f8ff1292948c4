//! Lifecycle and every error case of the object store.

mod common;

use common::{oid, pattern, store};
use photon_object_store::{
    CopyKind, Error, MappedObject, MappedObjectMut, ObjectStore, StoreConfig,
};

#[test]
fn create_write_seal_get_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(1 << 20, &dir);
    let data = pattern(1, 1000);
    let mut writer = store.create(oid(1), 1000).unwrap();
    writer.copy_from_slice(&data);
    writer.seal().unwrap();
    let view = store.get(oid(1)).unwrap();
    assert_eq!(&view[..], &data[..]);
    let stats = store.stats();
    assert_eq!((stats.objects, stats.used, stats.pinned), (1, 1024, 1024));
    drop(view);
    assert_eq!(store.stats().pinned, 0);
    let unsealed = store.create(oid(2), 10).unwrap();
    assert_eq!(
        store.sealed_ids(),
        vec![oid(1)],
        "only sealed objects are listed"
    );
    assert!(store.object_size(oid(2)).is_err());
    assert_eq!(store.object_size(oid(1)).unwrap(), 1000);
    drop(unsealed);
    store.delete(oid(1)).unwrap();
    assert_eq!(store.stats().used, 0);
    assert!(!store.contains(oid(1)));
}

#[test]
fn two_gets_share_the_same_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(1 << 20, &dir);
    store.put(oid(1), &pattern(1, 4096)).unwrap();
    let a = store.get(oid(1)).unwrap();
    let b = store.get(oid(1)).unwrap();
    assert_eq!(a.as_ptr(), b.as_ptr(), "get is zero-copy");
}

#[test]
fn dropped_writer_aborts_and_reclaims_space() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(1 << 20, &dir);
    let writer = store.create(oid(1), 500_000).unwrap();
    assert_eq!(store.stats().used, 500_032);
    drop(writer);
    assert_eq!(store.stats().used, 0);
    assert!(matches!(store.get(oid(1)), Err(Error::NotFound { .. })));
    store
        .put(oid(1), &[7; 10])
        .expect("the id can be created again");
}

#[test]
fn delete_of_a_pinned_object_waits_for_the_last_view() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(1 << 20, &dir);
    store.put(oid(1), &pattern(1, 2000)).unwrap();
    let view = store.get(oid(1)).unwrap();
    store.delete(oid(1)).unwrap();
    assert!(matches!(store.get(oid(1)), Err(Error::NotFound { .. })));
    assert_eq!(
        &view[..],
        &pattern(1, 2000)[..],
        "the holder still reads it"
    );
    assert_eq!(store.stats().used, 2048);
    drop(view);
    assert_eq!(store.stats().used, 0);
}

#[test]
fn errors_name_the_object_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(1 << 20, &dir);
    let id = oid(42);
    let text = id.to_string();

    let err = store.create(id, 0).unwrap_err();
    assert!(matches!(err, Error::ZeroSize { .. }));
    assert!(
        err.to_string().contains(&text) && err.to_string().contains("size 0"),
        "{err}"
    );

    let err = store.create(id, 5 << 20).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains(&text) && msg.contains("5242880") && msg.contains("1048576"),
        "{msg}"
    );

    let err = store.get(id).unwrap_err();
    assert!(
        matches!(err, Error::NotFound { .. }) && err.to_string().contains(&text),
        "{err}"
    );
    let err = store.seal(id).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    let err = store.delete(id).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");

    let writer = store.create(id, 300).unwrap();
    let err = store.create(id, 300).unwrap_err();
    assert!(
        matches!(err, Error::AlreadyExists { size: 300, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&text) && err.to_string().contains("300 bytes"),
        "{err}"
    );
    let err = store.get(id).unwrap_err();
    assert!(
        matches!(err, Error::NotSealed { .. }) && err.to_string().contains("seal it"),
        "{err}"
    );
    let err = store.seal(id).unwrap_err();
    assert!(err.to_string().contains("ObjectWriter::seal"), "{err}");
    let err = store.delete(id).unwrap_err();
    assert!(err.to_string().contains("drop its writer"), "{err}");

    writer.seal().unwrap();
    let err = store.seal(id).unwrap_err();
    assert!(
        matches!(err, Error::AlreadySealed { size: 300, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&text) && err.to_string().contains("already sealed"),
        "{err}"
    );
    let err = store.create(id, 10).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
}

#[test]
fn full_store_of_pinned_objects_says_how_much_is_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(1 << 20, &dir);
    store.put(oid(1), &pattern(1, 600_000)).unwrap();
    let _pin = store.get(oid(1)).unwrap();
    let err = store.create(oid(2), 600_000).unwrap_err();
    let Error::OutOfMemory {
        pinned,
        used,
        capacity,
        ..
    } = err
    else {
        panic!("expected OutOfMemory, got {err}");
    };
    assert_eq!((pinned, used, capacity), (600_000, 600_000, 1 << 20));
    let msg = err_text(&store, 2);
    assert!(
        msg.contains(&oid(2).to_string()) && msg.contains("600000 of them pinned"),
        "{msg}"
    );
}

fn err_text(store: &ObjectStore, n: u32) -> String {
    store.create(oid(n), 600_000).unwrap_err().to_string()
}

#[test]
fn secondary_copies_are_evicted_before_primaries_spill() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(1 << 20, &dir);
    for n in 0..4 {
        let mut writer = store
            .create_copy(oid(n), 250_000, CopyKind::Secondary)
            .unwrap();
        writer.copy_from_slice(&pattern(n, 250_000));
        writer.seal().unwrap();
    }
    store.put(oid(10), &pattern(10, 300_000)).unwrap();
    let stats = store.stats();
    assert!(stats.evictions >= 1, "{stats:?}");
    assert_eq!(stats.spills_total, 0, "no primary was spilled: {stats:?}");
    assert!(
        !store.contains(oid(0)),
        "the least recently used secondary went first"
    );
    assert_eq!(&store.get(oid(10)).unwrap()[..], &pattern(10, 300_000)[..]);
}

#[test]
fn a_writer_in_another_process_fills_the_object_through_its_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(1 << 20, &dir);
    let descriptor = store.create(oid(5), 4096).unwrap().into_descriptor();
    assert!(descriptor.writable);
    let mut remote = MappedObjectMut::open(&descriptor).unwrap();
    remote.copy_from_slice(&pattern(5, 4096));
    drop(remote);
    store.seal(oid(5)).unwrap();
    assert_eq!(&store.get(oid(5)).unwrap()[..], &pattern(5, 4096)[..]);

    let view = store.get(oid(5)).unwrap();
    let err = MappedObjectMut::open(&view.descriptor()).unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    let mapped = MappedObject::open(&view.descriptor()).unwrap();
    assert_eq!(&mapped[..], &view[..]);

    let aborted = store.create(oid(6), 100).unwrap().into_descriptor();
    store.abort(aborted.object_id).unwrap();
    assert!(!store.contains(oid(6)));
}

#[test]
fn descriptors_round_trip_through_protobuf_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(1 << 20, &dir);
    store.put(oid(1), &[1; 100]).unwrap();
    let view = store.get(oid(1)).unwrap();
    let descriptor = view.descriptor();
    let message = photon_proto::v1::ObjectDescriptor::from(&descriptor);
    assert_eq!(
        photon_object_store::ObjectDescriptor::try_from(message.clone()).unwrap(),
        descriptor
    );

    let bad = photon_proto::v1::ObjectDescriptor {
        object_id: vec![1, 2],
        ..message.clone()
    };
    let err = photon_object_store::ObjectDescriptor::try_from(bad).unwrap_err();
    assert!(err.to_string().contains("got 2 bytes"), "{err}");

    let mut outside = descriptor.clone();
    outside.offset = store.capacity();
    let err = MappedObject::open(&outside).unwrap_err();
    assert!(err.to_string().contains("do not fit segment"), "{err}");
}

#[test]
fn segment_files_are_private_and_removed_on_drop() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = store(1 << 20, &dir);
    let segment = store.segment_path().to_path_buf();
    let mode = std::fs::metadata(&segment).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(segment.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    let view = store
        .put(oid(1), &[1; 10])
        .and_then(|()| store.get(oid(1)))
        .unwrap();
    drop(store);
    assert!(segment.exists(), "a live view keeps the segment");
    drop(view);
    assert!(
        !segment.parent().unwrap().exists(),
        "the store directory is removed"
    );
}

#[test]
fn stale_stores_of_dead_sessions_are_removed_and_live_ones_kept() {
    let root = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        capacity: 1 << 20,
        shm_root: root.path().to_path_buf(),
        fallback_root: root.path().to_path_buf(),
        ..StoreConfig::default()
    };
    // A dead session: pid 999999999 does not exist, its segment is unlocked.
    let stale = root.path().join("photon-store-999999999-0000000000000001");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("segment"), b"old").unwrap();
    let live = ObjectStore::open(config.clone()).unwrap();
    assert!(!stale.exists(), "stale store removed");
    let second = ObjectStore::open(config).unwrap();
    assert!(
        live.segment_path().exists(),
        "a live store is never removed"
    );
    assert_ne!(live.segment_path(), second.segment_path());
}

#[test]
fn falls_back_to_disk_when_shared_memory_is_missing() {
    let root = tempfile::tempdir().unwrap();
    let store = ObjectStore::open(StoreConfig {
        capacity: 1 << 20,
        shm_root: "/nonexistent/photon-shm".into(),
        fallback_root: root.path().to_path_buf(),
        ..StoreConfig::default()
    })
    .unwrap();
    assert!(store.segment_path().starts_with(root.path()));
    store.put(oid(1), &[3; 5000]).unwrap();
    assert_eq!(store.get(oid(1)).unwrap()[4999], 3);
}

#[test]
fn a_capacity_no_filesystem_can_hold_is_refused_up_front() {
    let root = tempfile::tempdir().unwrap();
    let err = ObjectStore::open(StoreConfig {
        capacity: 1 << 60,
        shm_root: root.path().to_path_buf(),
        fallback_root: root.path().to_path_buf(),
        ..StoreConfig::default()
    })
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("less than the capacity") && msg.contains("lower the capacity"),
        "{msg}"
    );
}
