//! photon-data end to end: pipelines on an embedded cluster, on a
//! loopback cluster of raylet processes (one killed mid-run) and in this
//! process (the local runner). Workers are
//! this test binary in worker mode, so `main` routes first (libtest-mimic
//! lists and runs the tests, which nextest understands).

mod local;
#[cfg(feature = "s3")]
mod s3;
mod udfs;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use libtest_mimic::{Arguments, Failed, Trial};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;
use photon::testing::LoopbackCluster;
use photon::{Config, Context};
use photon_data::{Error, MapOptions, ProgressMode, col};

use udfs::*;

fn embedded(store_bytes: Option<u64>) -> Context {
    photon::init(Config {
        num_cpus: Some(2.0),
        object_store_memory: store_bytes,
        ..Config::default()
    })
    .expect("embedded cluster starts")
}

fn check(condition: bool, message: impl Into<String>) -> Result<(), Failed> {
    if condition {
        Ok(())
    } else {
        Err(message.into().into())
    }
}

/// Writes `files` Parquet files of `rows` rows each (ids continue across
/// files), in row groups of `group_rows`.
fn write_input(dir: &Path, files: usize, rows: usize, group_rows: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    for file in 0..files {
        let first = (file * rows) as i64;
        let ids = Int64Array::from_iter_values(first..first + rows as i64);
        let texts = StringArray::from_iter_values(
            (0..rows).map(|i| format!("row {} text", first + i as i64)),
        );
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(texts)]).unwrap();
        let out = std::fs::File::create(dir.join(format!("input-{file:03}.parquet"))).unwrap();
        let properties = WriterProperties::builder()
            .set_max_row_group_size(group_rows)
            .build();
        let mut writer = ArrowWriter::try_new(out, schema.clone(), Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }
}

/// The ids of every part under `dir`, the manifest, and whether any
/// temporary is left.
fn read_output(dir: &Path) -> (Vec<i64>, serde_json::Value, Vec<String>) {
    let ids = read_parts(dir, "id").into_iter().flatten().collect();
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let manifest = std::fs::read(dir.join("_SUCCESS"))
        .map(|bytes| serde_json::from_slice(&bytes).unwrap())
        .unwrap_or(serde_json::Value::Null);
    let temporaries = names
        .into_iter()
        .filter(|n| n.starts_with("_temporary"))
        .collect();
    (ids, manifest, temporaries)
}

/// A failed run left no parts, no manifest and no staging directory in `dir`.
fn left_nothing(dir: &Path) -> Result<(), Failed> {
    // A write removes the directory it made when it fails.
    if !dir.exists() {
        return Ok(());
    }
    let (ids, manifest, temporaries) = read_output(dir);
    check(
        ids.is_empty() && manifest.is_null() && temporaries.is_empty(),
        format!(
            "a failed run leaves nothing, but left {} ids, manifest {manifest}, {temporaries:?}",
            ids.len()
        ),
    )
}

/// The Int64 `column` of each part under `dir`, in part order.
fn read_parts(dir: &Path, column: &str) -> Vec<Vec<i64>> {
    let mut parts = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names.iter().filter(|n| n.starts_with("part-")) {
        let file = std::fs::File::open(dir.join(name)).unwrap();
        let mut values = Vec::new();
        for batch in ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
        {
            let batch = batch.unwrap();
            let array = batch.column_by_name(column).unwrap();
            values.extend(
                array
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .iter(),
            );
        }
        parts.push(values);
    }
    parts
}

fn range_through_an_actor_pool() -> Result<(), Failed> {
    let ctx = embedded(None);
    let out = tempfile::tempdir()?;
    let dataset = photon_data::range(&ctx, 20_000)
        .map_batches::<Square>(0, MapOptions::new().actors(1..=2).batch_size(1_000))
        .progress(ProgressMode::Lines);
    let summary = dataset.write_parquet(out.path().to_str().unwrap(), false)?;
    let (ids, manifest, temporaries) = read_output(out.path());
    check(
        summary.rows == 20_000,
        format!("summary rows {}", summary.rows),
    )?;
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    check(
        ids.len() == 20_000 && unique == (0..20_000).collect(),
        format!("{} ids, {} unique", ids.len(), unique.len()),
    )?;
    check(manifest["rows"] == 20_000, format!("manifest {manifest}"))?;
    check(
        manifest["parts"]
            .as_array()
            .is_some_and(|p| p.len() == summary.parts.len()),
        "manifest parts",
    )?;
    check(
        manifest["schema"][1]["name"] == "square",
        format!("schema {}", manifest["schema"]),
    )?;
    check(
        temporaries.is_empty(),
        format!("left behind: {temporaries:?}"),
    )?;
    // Small input split so both actors get work.
    check(
        summary.parts.len() >= 4,
        format!("{} parts", summary.parts.len()),
    )?;
    let stats = dataset.stats().expect("stats after a run");
    check(stats.stages.len() == 2, format!("{stats}"))?;
    check(stats.stages[1].rows == 20_000, format!("{stats}"))?;
    // The squares are right.
    let batches = photon_data::range(&ctx, 100)
        .map_batches::<Square>(0, MapOptions::new())
        .progress(ProgressMode::Off)
        .take(10)?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    check(rows == 10, format!("take(10) gave {rows} rows"))?;
    let squares = batches[0].column_by_name("square").unwrap();
    let squares = squares.as_any().downcast_ref::<Int64Array>().unwrap();
    check(squares.value(3) == 9, "3² = 9")?;
    Ok(())
}

/// A pool that grows sends blocks to the actor it added once that actor is
/// constructed (it used to wait for a call to come back first, which none
/// sent it while the first actor was ready: the second idled all run).
fn a_grown_pool_gives_its_new_actor_blocks() -> Result<(), Failed> {
    let ctx = embedded(None);
    let out = tempfile::tempdir()?;
    let summary = photon_data::range(&ctx, 16_000)
        .repartition(16)
        .map_batches::<WorkerPid>(
            200,
            MapOptions::new()
                .actors(1..=2)
                .num_cpus(0.5)
                .batch_size(1_000),
        )
        .progress(ProgressMode::Lines)
        .write_parquet(out.path().to_str().unwrap(), false)?;
    check(summary.rows == 16_000, format!("{} rows", summary.rows))?;
    let parts = read_parts(out.path(), "pid");
    check(parts.len() == 16, format!("{} parts", parts.len()))?;
    let mut blocks_per_actor = std::collections::BTreeMap::<i64, usize>::new();
    for pids in &parts {
        let first = pids[0];
        check(
            pids.iter().all(|&p| p == first),
            "one actor runs a whole block",
        )?;
        *blocks_per_actor.entry(first).or_default() += 1;
    }
    // 16 blocks of 200 ms: the second actor starts in well under a second,
    // and takes its share from then on.
    check(
        blocks_per_actor.len() == 2 && blocks_per_actor.values().all(|&n| n >= 3),
        format!("blocks per actor process: {blocks_per_actor:?}"),
    )?;
    Ok(())
}

fn parquet_in_parquet_out() -> Result<(), Failed> {
    let ctx = embedded(None);
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in");
    write_input(&input, 3, 5_000, 1_000);
    let url = input.to_str().unwrap().to_string();
    let dataset =
        photon_data::read_parquet(&ctx, [format!("{url}/*.parquet")]).progress(ProgressMode::Off);
    check(dataset.count()? == 15_000, "count from the footers")?;
    let schema = dataset.schema()?;
    check(schema.fields().len() == 2, format!("{schema:?}"))?;
    written_refused_and_overwritten((&ctx).into(), &url, &dir.path().join("out"))
}

/// Through an actor stage: 15,000 rows of the input at `url` (3 files of
/// [`write_input`]) into `out`, every id once with the function's column;
/// a second write refused and the output unchanged; an overwrite (a limit
/// keeps 100 rows) replacing it and leaving no staging.
fn written_refused_and_overwritten(
    on: photon_data::Runner,
    url: &str,
    out: &Path,
) -> Result<(), Failed> {
    let summary = photon_data::read_parquet(on.clone(), [url])
        .select_columns(&["id", "text"])
        .map_batches::<TextLength>((), MapOptions::new().actors(1..=2).batch_size(512))
        .progress(ProgressMode::Off)
        .write_parquet(out.to_str().unwrap(), false)?;
    let (ids, manifest, _) = read_output(out);
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    check(
        summary.rows == 15_000 && unique.len() == 15_000 && ids.len() == 15_000,
        format!("{} ids, {} unique", ids.len(), unique.len()),
    )?;
    check(
        manifest["schema"][1]["name"] == "length",
        format!("{manifest}"),
    )?;
    // Again into the same place: refused, and the output is unchanged.
    let again = photon_data::read_parquet(on.clone(), [url])
        .progress(ProgressMode::Off)
        .write_parquet(out.to_str().unwrap(), false);
    match again {
        Err(Error::Invalid(message)) => check(
            message.contains("is not empty") && message.contains("overwrite"),
            message,
        )?,
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }
    check(read_output(out).0.len() == 15_000, "output unchanged")?;
    let summary = photon_data::read_parquet(on, [url])
        .limit(100)
        .progress(ProgressMode::Off)
        .write_parquet(out.to_str().unwrap(), true)?;
    let (ids, manifest, temporaries) = read_output(out);
    check(
        summary.rows == 100 && ids == (0..100).collect::<Vec<i64>>(),
        format!("{} ids after overwrite", ids.len()),
    )?;
    check(
        manifest["rows"] == 100 && temporaries.is_empty(),
        format!("{manifest}"),
    )
}

/// filter, repartition and select on memory:// input and output, with the
/// filter's columns checked before anything runs.
/// A fused read → filter → map → write stage streams batch by batch, and
/// its function still gets what it would get from the whole block: calls
/// of exactly `batch_size` rows from the block's start, the last shorter.
fn streamed_stages_call_functions_as_whole_blocks_would() -> Result<(), Failed> {
    let ctx = embedded(None);
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in");
    write_input(&input, 2, 5_000, 700);
    let out = dir.path().join("out");
    let summary = photon_data::read_parquet(&ctx, [input.to_str().unwrap()])
        .filter(col("id").gt_eq(123))
        .map_batches::<CallRows>((), MapOptions::new().batch_size(1_000))
        .progress(ProgressMode::Off)
        .write_parquet(out.to_str().unwrap(), false)?;
    let (ids, manifest, temporaries) = read_output(&out);
    check(
        ids == (123..10_000).collect::<Vec<i64>>() && summary.rows == 9_877,
        format!("{} ids", ids.len()),
    )?;
    check(
        manifest["rows"] == 9_877 && temporaries.is_empty(),
        format!("{manifest}"),
    )?;
    for (part, calls) in read_parts(&out, "call_rows").iter().enumerate() {
        // Rows arrive in call order: 1000-row calls, then one shorter call.
        let mut expected = Vec::new();
        let mut left = calls.len();
        while left > 0 {
            let call = left.min(1_000);
            expected.extend(std::iter::repeat_n(call as i64, call));
            left -= call;
        }
        check(
            *calls == expected,
            format!("part {part}: calls of {:?} rows", {
                let mut sizes = calls.clone();
                sizes.dedup();
                sizes
            }),
        )?;
    }
    // A failing call names its rows within the block.
    let failing = photon_data::read_parquet(&ctx, [input.to_str().unwrap()])
        .map_batches::<FailOn>(4_321, MapOptions::new().batch_size(1_000))
        .progress(ProgressMode::Off)
        .write_parquet(dir.path().join("failing").to_str().unwrap(), false);
    match failing {
        Err(Error::Udf(message)) => check(
            message.contains("id 4321 is cursed") && message.contains("of the block"),
            message,
        )?,
        other => return Err(format!("expected a function error, got {other:?}").into()),
    }
    left_nothing(&dir.path().join("failing"))?;
    Ok(())
}

fn filter_and_repartition_in_memory() -> Result<(), Failed> {
    let ctx = embedded(None);
    let name = format!("photon-data-test-{}", std::process::id());
    let input_url = format!("memory://{name}/in");
    let input = photon_data::location::resolve(&input_url)?
        .local
        .expect("memory:// is a local directory");
    write_input(&input, 3, 2_000, 500);
    let output_url = format!("memory://{name}/out");
    let output = photon_data::location::resolve(&output_url)?
        .local
        .expect("local");
    let dataset = photon_data::read_parquet(&ctx, [input_url.clone()])
        .filter(col("id").gt_eq(50).and(col("id").lt(5_500)))
        .repartition(4)
        .map_batches::<TextLength>((), MapOptions::new().actors(1..=2))
        .filter(col("length").lt(13).or(col("id").eq(5_000)))
        .select_columns(&["id"])
        .progress(ProgressMode::Off);
    let summary = dataset.write_parquet(&output_url, false)?;
    let (ids, manifest, temporaries) = read_output(&output);
    // "row 999 text" is 12 long, "row 1000 text" 13.
    let expected: Vec<i64> = (50..1_000).chain([5_000]).collect();
    check(
        ids == expected,
        format!("{} ids, first {:?}", ids.len(), ids.first()),
    )?;
    // 4 parts although 3 files: blocks of 1,500 input rows span files.
    check(
        summary.parts.len() == 4 && temporaries.is_empty() && manifest["rows"] == 951,
        format!("{} parts, {manifest}", summary.parts.len()),
    )?;
    let stats = dataset.stats().expect("stats");
    check(
        stats.stages.iter().all(|s| s.cpu > Duration::ZERO),
        format!("no CPU time recorded: {stats}"),
    )?;
    // Counting runs the filter.
    let kept = photon_data::range(&ctx, 1_000)
        .filter(col("id").lt(10).or(col("id").gt_eq(995)))
        .repartition(3)
        .progress(ProgressMode::Off);
    check(kept.count()? == 15, "range filter count")?;
    // A filter on the row-number column; a small first block.
    let numbered = photon_data::read_parquet(&ctx, [input_url.clone()])
        .with_row_numbers("n")
        .first_block_rows(7)
        .filter(col("n").lt(100))
        .select_columns(&["n"])
        .progress(ProgressMode::Off);
    let batches = numbered.take(1_000)?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    check(rows == 100, format!("{rows} numbered rows"))?;
    check(
        batches.iter().any(|b| b.num_rows() == 7),
        "the first block holds 7 rows",
    )?;
    // Bad filters fail before anything runs, naming the input and column.
    for (predicate, needles) in [
        (
            col("nope").eq(1),
            vec!["has no column \"nope\"", &input_url, "id, text"],
        ),
        (
            col("text").gt(3.5),
            vec!["column \"text\" has type Utf8", "Float(3.5)"],
        ),
    ] {
        expect_invalid(
            photon_data::read_parquet(&ctx, [input_url.clone()])
                .filter(predicate)
                .progress(ProgressMode::Off)
                .write_parquet(&format!("memory://{name}/bad"), false),
            &needles,
        )?;
    }
    expect_invalid(
        photon_data::read_parquet(&ctx, [input_url.clone()])
            .select_columns(&["text"])
            .filter(col("id").eq(1))
            .progress(ProgressMode::Off)
            .write_parquet(&format!("memory://{name}/bad"), false),
        &["has no column \"id\"", "its columns are: text"],
    )?;
    check(
        !output.with_file_name("bad").exists(),
        "a refused pipeline wrote nothing",
    )?;
    std::fs::remove_dir_all(input.parent().expect("the test's directory"))?;
    Ok(())
}

fn expect_invalid(
    result: photon_data::Result<photon_data::WriteSummary>,
    needles: &[&str],
) -> Result<(), Failed> {
    match result {
        Err(Error::Invalid(message)) => {
            for needle in needles {
                check(
                    message.contains(needle),
                    format!("{message:?} lacks {needle:?}"),
                )?;
            }
            Ok(())
        }
        other => Err(format!("expected an input error, got {other:?}").into()),
    }
}

fn bad_inputs_fail_before_anything_runs() -> Result<(), Failed> {
    let ctx = embedded(None);
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good");
    write_input(&good, 2, 100, 50);
    let out = dir.path().join("out");
    let out_url = out.to_str().unwrap();
    let good_url = good.to_str().unwrap();
    // A missing file.
    let missing = dir.path().join("nope.parquet");
    expect_invalid(
        photon_data::read_parquet(&ctx, [missing.to_str().unwrap()]).write_parquet(out_url, false),
        &["nope.parquet", "does not exist"],
    )?;
    // A missing column.
    expect_invalid(
        photon_data::read_parquet(&ctx, [good_url])
            .select_columns(&["id", "txt"])
            .write_parquet(out_url, false),
        &["input-000.parquet", "no column \"txt\"", "id, text"],
    )?;
    // A column of the wrong type for the function.
    let wrong = dir.path().join("wrong");
    std::fs::create_dir_all(&wrong)?;
    {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("text", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(Int64Array::from(vec![3, 4])),
            ],
        )?;
        let mut writer = ArrowWriter::try_new(
            std::fs::File::create(wrong.join("w.parquet"))?,
            schema,
            None,
        )?;
        writer.write(&batch)?;
        writer.close()?;
    }
    expect_invalid(
        photon_data::read_parquet(&ctx, [wrong.to_str().unwrap()])
            .map_batches::<TextLength>((), MapOptions::new())
            .write_parquet(out_url, false),
        &["w.parquet", "column \"text\" has type Int64", "Utf8"],
    )?;
    // Inputs whose schemas differ.
    let mixed = dir.path().join("mixed");
    write_input(&mixed, 1, 10, 10);
    std::fs::copy(wrong.join("w.parquet"), mixed.join("input-001.parquet"))?;
    expect_invalid(
        photon_data::read_parquet(&ctx, [mixed.to_str().unwrap()]).write_parquet(out_url, false),
        &["input-001.parquet", "\"text\"", "one schema"],
    )?;
    // A corrupt file.
    let corrupt = dir.path().join("corrupt");
    write_input(&corrupt, 1, 10, 10);
    std::fs::write(
        corrupt.join("input-001.parquet"),
        b"PAR1 this is not parquet",
    )?;
    expect_invalid(
        photon_data::read_parquet(&ctx, [corrupt.to_str().unwrap()]).write_parquet(out_url, false),
        &["input-001.parquet", "not a readable Parquet file"],
    )?;
    // An empty input (a file with no rows), and a directory with no files.
    let empty = dir.path().join("empty");
    write_input(&empty, 1, 0, 10);
    expect_invalid(
        photon_data::read_parquet(&ctx, [empty.to_str().unwrap()]).write_parquet(out_url, false),
        &["has no rows"],
    )?;
    let nothing = dir.path().join("nothing");
    std::fs::create_dir_all(&nothing)?;
    expect_invalid(
        photon_data::read_parquet(&ctx, [nothing.to_str().unwrap()]).write_parquet(out_url, false),
        &["has no *.parquet files"],
    )?;
    // An unregistered function... is a compile-time fact here; an empty pool range is not.
    expect_invalid(
        photon_data::read_parquet(&ctx, [good_url])
            .map_batches::<Square>(0, MapOptions::new().actors(0..=0))
            .write_parquet(out_url, false),
        &["actors(0..=0) is empty"],
    )?;
    // Nothing was written by any of them; the cluster still works.
    check(
        !out.exists() || std::fs::read_dir(&out)?.next().is_none(),
        "no output",
    )?;
    check(
        photon_data::read_parquet(&ctx, [good_url]).count()? == 200,
        "cluster up",
    )?;
    Ok(())
}

fn function_errors_name_the_block_or_skip_it() -> Result<(), Failed> {
    let ctx = embedded(None);
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let failing = photon_data::range(&ctx, 10_000)
        .map_batches::<FailOn>(7_777, MapOptions::new())
        .progress(ProgressMode::Off)
        .write_parquet(out.to_str().unwrap(), false);
    match failing {
        Err(Error::Udf(message)) => {
            check(message.contains("id 7777 is cursed"), message.clone())?;
            check(message.contains("range rows"), message.clone())?;
        }
        other => return Err(format!("expected a function error, got {other:?}").into()),
    }
    left_nothing(&out)?;
    // Allowed to skip one block: the rest is written, the skip reported.
    let summary = photon_data::range(&ctx, 10_000)
        .map_batches::<FailOn>(7_777, MapOptions::new().max_errored_blocks(1))
        .progress(ProgressMode::Off)
        .write_parquet(out.to_str().unwrap(), false)?;
    let (ids, manifest, _) = read_output(&out);
    check(
        !ids.contains(&7_777) && (ids.len() as u64) == summary.rows && summary.rows < 10_000,
        format!("{} rows", summary.rows),
    )?;
    let skipped = manifest["skipped_blocks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    check(
        skipped.len() == 1 && skipped[0].as_str().is_some_and(|s| s.contains("cursed")),
        format!("{manifest}"),
    )?;
    Ok(())
}

fn four_times_the_store_streams() -> Result<(), Failed> {
    let store: u64 = 48 << 20;
    let ctx = embedded(Some(store));
    let rows: u64 = 4 * store / 8; // 8 bytes per id: 4× the store
    let dataset = photon_data::range(&ctx, rows)
        .map_batches::<Identity>((), MapOptions::new().actors(1..=1))
        .progress(ProgressMode::Lines);
    let mut seen = 0u64;
    let mut sum = 0i128;
    for batch in dataset.iter_batches() {
        let batch = batch?;
        seen += batch.num_rows() as u64;
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        sum += ids.values().iter().map(|&v| v as i128).sum::<i128>();
    }
    check(seen == rows, format!("{seen} rows"))?;
    check(
        sum == (rows as i128) * (rows as i128 - 1) / 2,
        "every id once",
    )?;
    let stats = dataset.stats().expect("stats");
    check(
        stats.peak_object_store_bytes < store,
        format!("peak {} of {store}: {stats}", stats.peak_object_store_bytes),
    )?;
    Ok(())
}

fn three_raylets_survive_a_killed_node() -> Result<(), Failed> {
    let cluster = LoopbackCluster::start();
    // Pool actors need `pool`, which only the second and third nodes have.
    let first = cluster.raylet(serde_json::json!({}));
    let mut second = cluster.raylet(serde_json::json!({"pool": 1}));
    let third = cluster.raylet(serde_json::json!({"pool": 1}));
    let ctx = cluster.driver(&first);
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in");
    write_input(&input, 8, 25_000, 5_000);
    let input_url = input.to_str().unwrap().to_string();
    let pipeline = |pause_ms: u64| {
        photon_data::read_parquet(&ctx, [input_url.clone()])
            .select_columns(&["id"])
            .map_batches::<Square>(
                pause_ms,
                MapOptions::new()
                    .actors(1..=3)
                    .resource("pool", 1.0)
                    .batch_size(5_000),
            )
            .progress(ProgressMode::Lines)
    };
    // Undisturbed.
    let out = dir.path().join("calm");
    let summary = pipeline(0).write_parquet(out.to_str().unwrap(), false)?;
    let (ids, manifest, _) = read_output(&out);
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    check(
        summary.rows == 200_000 && ids.len() == 200_000 && unique == (0..200_000).collect(),
        format!("{} ids", ids.len()),
    )?;
    check(manifest["rows"] == 200_000, format!("{manifest}"))?;
    // Again, killing a node running an actor with SIGKILL mid-run.
    let out = dir.path().join("killed");
    let dataset = pipeline(250);
    let run = {
        let dataset = dataset.clone();
        let out = out.clone();
        std::thread::spawn(move || dataset.write_parquet(out.to_str().unwrap(), false))
    };
    // Once parts are being written, both actors hold calls: kill one's node.
    let staged = |dir: &Path| -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("_temporary"))
            .filter_map(|e| std::fs::read_dir(e.path()).ok())
            .map(|parts| parts.count())
            .sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while staged(&out) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    second.kill9();
    let summary = run.join().expect("the run thread")?;
    let (ids, manifest, temporaries) = read_output(&out);
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    check(
        ids.len() == 200_000 && unique == (0..200_000).collect(),
        format!("{} ids, {} unique", ids.len(), unique.len()),
    )?;
    check(
        summary.rows == 200_000 && manifest["rows"] == 200_000 && temporaries.is_empty(),
        format!("{manifest}"),
    )?;
    let stats = dataset.stats().expect("stats");
    eprintln!("{stats}");
    check(
        stats.reconstructions >= 1,
        format!("no reconstruction recorded: {stats}"),
    )?;
    drop(third);
    Ok(())
}

fn main() {
    photon::worker_entry();
    photon::testing::raylet_entry();
    #[cfg(feature = "s3")]
    s3::writer_entry();
    let args = Arguments::from_args();
    let tests = vec![
        Trial::test(
            "embedded::range_through_an_actor_pool",
            range_through_an_actor_pool,
        ),
        Trial::test(
            "embedded::a_grown_pool_gives_its_new_actor_blocks",
            a_grown_pool_gives_its_new_actor_blocks,
        ),
        Trial::test("embedded::parquet_in_parquet_out", parquet_in_parquet_out),
        Trial::test(
            "embedded::streamed_stages_call_functions_as_whole_blocks_would",
            streamed_stages_call_functions_as_whole_blocks_would,
        ),
        Trial::test(
            "embedded::bad_inputs_fail_before_anything_runs",
            bad_inputs_fail_before_anything_runs,
        ),
        Trial::test(
            "embedded::function_errors_name_the_block_or_skip_it",
            function_errors_name_the_block_or_skip_it,
        ),
        Trial::test(
            "embedded::filter_and_repartition_in_memory",
            filter_and_repartition_in_memory,
        ),
        Trial::test(
            "embedded::four_times_the_store_streams",
            four_times_the_store_streams,
        ),
        Trial::test(
            "local::parquet_in_parquet_out_as_on_a_cluster",
            local::parquet_in_parquet_out_as_on_a_cluster,
        ),
        Trial::test(
            "local::an_actor_stage_is_constructed_once_in_this_process",
            local::an_actor_stage_is_constructed_once_in_this_process,
        ),
        Trial::test(
            "local::errors_and_skips_as_on_a_cluster",
            local::errors_and_skips_as_on_a_cluster,
        ),
        Trial::test(
            "cluster::three_raylets_survive_a_killed_node",
            three_raylets_survive_a_killed_node,
        ),
    ];
    #[cfg(feature = "s3")]
    let tests = {
        let mut tests = tests;
        tests.push(Trial::test(
            "s3::read_and_write_against_a_local_server",
            s3::read_and_write_against_a_local_server,
        ));
        tests.push(Trial::test(
            "s3::an_overwrite_killed_at_any_moment_on_s3_leaves_one_complete_output",
            s3::an_overwrite_killed_at_any_moment_on_s3_leaves_one_complete_output,
        ));
        tests
    };
    libtest_mimic::run(&args, tests).exit();
}
