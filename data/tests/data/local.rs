//! The same pipelines on photon-data's local runner: no cluster, the same
//! plan, functions, errors and sink.

use std::collections::BTreeSet;

use libtest_mimic::Failed;
use photon_data::{Error, Local, MapOptions, ProgressMode};

use super::udfs::*;
use arrow::array::Array;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{
    check, embedded, expect_invalid, left_nothing, read_output, write_input,
    written_refused_and_overwritten,
};

/// Parquet in, an actor stage, Parquet out: every id once, the function's
/// column, refusal of a second write and overwrite, as on a cluster; and
/// the rows equal a cluster run's.
pub fn parquet_in_parquet_out_as_on_a_cluster() -> Result<(), Failed> {
    let local = Local::new()?;
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in");
    write_input(&input, 3, 5_000, 1_000);
    let url = input.to_str().unwrap().to_string();
    written_refused_and_overwritten((&local).into(), &url, &dir.path().join("out"))?;
    let ctx = embedded(None);
    let write = |on: photon_data::Runner, name: &str| {
        let out = dir.path().join(name);
        photon_data::read_parquet(on, [url.clone()])
            .select_columns(&["id", "text"])
            .map_batches::<TextLength>((), MapOptions::new().actors(1..=2).batch_size(512))
            .progress(ProgressMode::Off)
            .write_parquet(out.to_str().unwrap(), false)
            .map(|_| out)
    };
    let (here, there) = (
        write((&local).into(), "local")?,
        write((&ctx).into(), "cluster")?,
    );
    let rows = id_lengths(&here);
    check(
        rows.len() == 15_000 && rows == id_lengths(&there),
        "the local run's rows differ from the cluster's",
    )
}

/// An actor stage runs in this process and constructs its function once;
/// task stages and the read run here too.
pub fn an_actor_stage_is_constructed_once_in_this_process() -> Result<(), Failed> {
    let local = Local::new()?.parallel_reads(3);
    let batches = photon_data::range(&local, 20_000)
        .repartition(8)
        .map_batches::<WorkerPid>(0, MapOptions::new())
        .map_batches::<Construction>((), MapOptions::new().actors(1..=4))
        .progress(ProgressMode::Off)
        .iter_batches()
        .collect::<photon_data::Result<Vec<_>>>()?;
    let mut ids = Vec::new();
    let mut constructions = BTreeSet::new();
    let mut pids = BTreeSet::new();
    for batch in &batches {
        ids.extend(column(batch, "id").iter().flatten());
        constructions.extend(column(batch, "construction").iter().flatten());
        pids.extend(column(batch, "pid").iter().flatten());
    }
    check(
        ids == (0..20_000).collect::<Vec<i64>>(),
        format!("{} ids, in order", ids.len()),
    )?;
    check(
        constructions.len() == 1 && batches.len() == 8,
        format!(
            "{} blocks from constructions {constructions:?}",
            batches.len()
        ),
    )?;
    check(
        pids == BTreeSet::from([i64::from(std::process::id())]),
        format!("functions ran in {pids:?}"),
    )
}

/// The `(id, length)` rows of every part under `dir`.
fn id_lengths(dir: &std::path::Path) -> BTreeSet<(i64, u64)> {
    let mut rows = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("part-")
        {
            continue;
        }
        let file = std::fs::File::open(&path).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let lengths = batch
                .column_by_name("length")
                .and_then(|c| c.as_any().downcast_ref::<arrow::array::UInt64Array>())
                .expect("a UInt64 column length");
            rows.extend(
                column(&batch, "id")
                    .values()
                    .iter()
                    .copied()
                    .zip(lengths.values().iter().copied()),
            );
        }
    }
    rows
}

fn column<'a>(batch: &'a arrow::array::RecordBatch, name: &str) -> &'a arrow::array::Int64Array {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref())
        .unwrap_or_else(|| panic!("an Int64 column {name}"))
}

/// Bad input is refused before anything runs, a function's error fails the
/// run naming the block's rows and leaves nothing, or the block is skipped
/// when allowed: as on a cluster.
pub fn errors_and_skips_as_on_a_cluster() -> Result<(), Failed> {
    let local = Local::new()?;
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good");
    write_input(&good, 2, 100, 50);
    let out = dir.path().join("out");
    let out_url = out.to_str().unwrap();
    expect_invalid(
        photon_data::read_parquet(&local, [good.to_str().unwrap()])
            .select_columns(&["id", "txt"])
            .write_parquet(out_url, false),
        &["txt", "input-000.parquet"],
    )?;
    left_nothing(&out)?;
    let failing = photon_data::range(&local, 10_000)
        .repartition(4)
        .map_batches::<FailOn>(7_777, MapOptions::new())
        .progress(ProgressMode::Off)
        .write_parquet(out_url, false);
    match failing {
        Err(Error::Udf(message)) => check(
            message.contains("id 7777 is cursed") && message.contains("range rows"),
            message,
        )?,
        other => return Err(format!("expected a function error, got {other:?}").into()),
    }
    left_nothing(&out)?;
    let summary = photon_data::range(&local, 10_000)
        .repartition(4)
        .map_batches::<FailOn>(7_777, MapOptions::new().max_errored_blocks(1))
        .progress(ProgressMode::Off)
        .write_parquet(out_url, false)?;
    let (ids, manifest, _) = read_output(&out);
    check(
        summary.rows == 7_500 && ids.len() == 7_500 && !ids.contains(&7_777),
        format!("{} rows", summary.rows),
    )?;
    check(
        manifest["skipped_blocks"]
            .as_array()
            .is_some_and(|s| s.len() == 1),
        format!("{manifest}"),
    )
}
