//! Property test: random operation sequences against a simple model of the store.

mod common;

use std::collections::HashMap;

use common::{oid, pattern};
use photon_object_store::{Error, ObjectStore, ObjectView, ObjectWriter, StoreConfig};
use proptest::prelude::*;

const CAPACITY: u64 = 64 * 1024;
const IDS: u32 = 12;

#[derive(Debug, Clone)]
enum Op {
    Create(u32, u64),
    Seal(usize),
    Abort(usize),
    Get(u32),
    Release(usize),
    Delete(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..IDS, prop_oneof![Just(0u64), 1u64..20_000, Just(CAPACITY + 1)]).prop_map(|(i, s)| Op::Create(i, s)),
        2 => any::<usize>().prop_map(Op::Seal),
        1 => any::<usize>().prop_map(Op::Abort),
        3 => (0..IDS).prop_map(Op::Get),
        2 => any::<usize>().prop_map(Op::Release),
        1 => (0..IDS).prop_map(Op::Delete),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Model {
    Writing(u64),
    Sealed(u64),
    /// Deleted while pinned: create still says it exists, get says not found.
    DeletePending,
}

fn aligned(size: u64) -> u64 {
    size.div_ceil(64) * 64
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(StoreConfig {
            capacity: CAPACITY,
            fallback_root: dir.path().to_path_buf(),
            spill_url: Some("memory://".into()),
            ..StoreConfig::default()
        }).unwrap();
        let mut model: HashMap<u32, Model> = HashMap::new();
        let mut writers: Vec<(u32, ObjectWriter)> = Vec::new();
        let mut views: Vec<(u32, ObjectView)> = Vec::new();

        for op in ops {
            match op {
                Op::Create(i, size) => {
                    let result = store.create(oid(i), size);
                    match (model.get(&i), result) {
                        (_, Err(Error::ZeroSize { .. })) => prop_assert_eq!(size, 0),
                        (_, Err(Error::TooLarge { .. })) => prop_assert!(size > CAPACITY),
                        (Some(_), Err(Error::AlreadyExists { .. })) => prop_assert!(size > 0 && size <= CAPACITY),
                        (None, Err(Error::OutOfMemory { pinned, .. })) => {
                            prop_assert!(pinned > 0, "out of memory with nothing pinned");
                        }
                        (None, Ok(mut writer)) => {
                            prop_assert!(size > 0 && size <= CAPACITY);
                            writer.copy_from_slice(&pattern(i, size as usize));
                            model.insert(i, Model::Writing(size));
                            writers.push((i, writer));
                        }
                        (state, result) => prop_assert!(false, "create {} in {:?} gave {:?}", i, state, result.map(|_| ())),
                    }
                }
                Op::Seal(k) if !writers.is_empty() => {
                    let (i, writer) = writers.remove(k % writers.len());
                    writer.seal().unwrap();
                    let Some(Model::Writing(size)) = model.get(&i).copied() else { unreachable!() };
                    model.insert(i, Model::Sealed(size));
                }
                Op::Abort(k) if !writers.is_empty() => {
                    let (i, writer) = writers.remove(k % writers.len());
                    drop(writer);
                    model.remove(&i);
                }
                Op::Get(i) => match (model.get(&i).copied(), store.get(oid(i))) {
                    (Some(Model::Sealed(size)), Ok(view)) => {
                        prop_assert_eq!(&view[..], &pattern(i, size as usize)[..]);
                        views.push((i, view));
                    }
                    (Some(Model::Sealed(_)), Err(Error::OutOfMemory { pinned, .. })) => {
                        prop_assert!(pinned > 0, "restore failed with nothing pinned");
                    }
                    (Some(Model::Writing(_)), Err(Error::NotSealed { .. })) => {}
                    (None | Some(Model::DeletePending), Err(Error::NotFound { .. })) => {}
                    (state, result) => prop_assert!(false, "get {} in {:?} gave {:?}", i, state, result.map(|_| ())),
                },
                Op::Release(k) if !views.is_empty() => {
                    let (i, view) = views.remove(k % views.len());
                    drop(view);
                    if model.get(&i) == Some(&Model::DeletePending) && !views.iter().any(|(j, _)| *j == i) {
                        model.remove(&i);
                    }
                }
                Op::Delete(i) => match (model.get(&i).copied(), store.delete(oid(i))) {
                    (Some(Model::Sealed(_)), Ok(())) => {
                        if views.iter().any(|(j, _)| *j == i) {
                            model.insert(i, Model::DeletePending);
                        } else {
                            model.remove(&i);
                        }
                    }
                    (Some(Model::Writing(_)), Err(Error::NotSealed { .. })) => {}
                    (None | Some(Model::DeletePending), Err(Error::NotFound { .. })) => {}
                    (state, result) => prop_assert!(false, "delete {} in {:?} gave {:?}", i, state, result),
                },
                _ => {}
            }
            let stats = store.stats();
            prop_assert!(stats.used <= stats.capacity, "{:?}", stats);
            prop_assert!(stats.pinned <= stats.used, "{:?}", stats);
            let live = model.values().filter(|m| **m != Model::DeletePending).count() as u64;
            prop_assert_eq!(stats.objects, live);
            let mut pinned_ids: Vec<u32> = views.iter().map(|(i, _)| *i).collect();
            pinned_ids.sort_unstable();
            pinned_ids.dedup();
            let writing: u64 = model.values().filter_map(|m| match m { Model::Writing(s) => Some(aligned(*s)), _ => None }).sum();
            let expected_pinned: u64 = writing + pinned_ids.iter().map(|i| match model[i] {
                Model::Sealed(s) => aligned(s),
                _ => views.iter().find(|(j, _)| j == i).map_or(0, |(_, v)| aligned(v.len() as u64)),
            }).sum::<u64>();
            prop_assert_eq!(stats.pinned, expected_pinned);
        }

        drop(views);
        drop(writers);
        for (i, state) in model.clone() {
            if let Model::Sealed(size) = state {
                prop_assert_eq!(&store.get(oid(i)).unwrap()[..], &pattern(i, size as usize)[..]);
                store.delete(oid(i)).unwrap();
            }
        }
        let end = store.stats();
        prop_assert_eq!((end.used, end.objects, end.spilled_objects), (0, 0, 0));
    }
}
