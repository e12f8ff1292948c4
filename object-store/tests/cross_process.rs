//! Another process maps and reads a sealed object without copying it.

mod common;

use std::process::Command;

use common::{checksum, oid, pattern, store};
use photon_object_store::{MappedObject, ObjectDescriptor};

const CHILD_ENV: &str = "PHOTON_TEST_CHILD_DESCRIPTOR";
const SIZE: usize = 64 << 20;

/// Memory counters of this process from /proc/self/status, in bytes.
fn rss(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn child_process_reads_a_64_mib_object_zero_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(256 << 20, &dir);
    let data = pattern(9, SIZE);
    store.put(oid(9), &data).unwrap();
    let view = store.get(oid(9)).unwrap(); // the pin the raylet holds while a worker reads
    let descriptor = serde_json::to_string(&view.descriptor()).unwrap();

    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_reader",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &descriptor)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = stdout
        .lines()
        .find_map(|l| l.split_once("CHILD ").map(|(_, report)| report))
        .unwrap_or_else(|| panic!("no report in: {stdout}"));
    let fields: std::collections::HashMap<&str, u64> = report
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k, v.parse().unwrap())
        })
        .collect();
    assert_eq!(
        fields["checksum"],
        checksum(&data),
        "child read the right bytes"
    );
    assert_eq!(
        fields["mapped_from_segment"], 1,
        "the bytes came from a mapping of the segment"
    );
    assert!(
        fields["shmem_delta"] >= (SIZE as u64) * 9 / 10,
        "child's shared-memory RSS grew by the object: {report}"
    );
    assert!(
        fields["anon_delta"] < (SIZE as u64) / 8,
        "child's private memory did not grow by a copy: {report}"
    );
}

/// Runs only as the child of the test above.
#[test]
#[ignore = "run as a child process by child_process_reads_a_64_mib_object_zero_copy"]
fn child_reader() {
    let descriptor: ObjectDescriptor =
        serde_json::from_str(&std::env::var(CHILD_ENV).unwrap()).unwrap();
    let (anon_before, shmem_before) = (rss("RssAnon:"), rss("RssShmem:"));
    let object = MappedObject::open(&descriptor).unwrap();
    let sum = checksum(&object);
    let (anon_after, shmem_after) = (rss("RssAnon:"), rss("RssShmem:"));
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let address = object.as_ptr() as usize;
    let segment = descriptor.segment_path.to_str().unwrap();
    let mapped_from_segment = maps.lines().any(|line| {
        let range = line.split_whitespace().next().unwrap();
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (
            usize::from_str_radix(start, 16).unwrap(),
            usize::from_str_radix(end, 16).unwrap(),
        );
        line.ends_with(segment) && start <= address && address < end
    });
    println!(
        "CHILD checksum={sum} mapped_from_segment={} shmem_delta={} anon_delta={}",
        u8::from(mapped_from_segment),
        shmem_after.saturating_sub(shmem_before),
        anon_after.saturating_sub(anon_before),
    );
}
