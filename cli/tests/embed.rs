//! `photon embed` end to end as a real process, on a tiny random BERT: the
//! output's rows, ids and vectors, and bad input that must fail cleanly.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arrow::array::{Array, AsArray, Float32Array};
use arrow::datatypes::{DataType, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use photon_inference::tiny_model::{TINY_HIDDEN, write_tiny_bert};
use photon_inference::{Backend, EmbedderOptions, SentenceEmbedder};

const PHOTON: &str = env!("CARGO_BIN_EXE_photon");

fn photon(args: &[&str]) -> Output {
    Command::new(PHOTON)
        .args(args)
        .output()
        .expect("photon runs")
}

/// `photon embed --input corpus --output out --model model`, to add to.
fn embed_command(corpus: &Path, out: &Path, model: &Path) -> Command {
    let mut command = Command::new(PHOTON);
    command
        .args(["embed", "--input"])
        .arg(corpus)
        .arg("--output")
        .arg(out)
        .arg("--model")
        .arg(model);
    command
}

/// `photon embed --input corpus --output out --model model` plus `extra`.
fn embed(corpus: &Path, out: &Path, model: &Path, extra: &[&str]) -> Output {
    let paths = [corpus, out, model].map(|p| p.to_str().unwrap().to_string());
    let mut args = vec![
        "embed", "--input", &paths[0], "--output", &paths[1], "--model", &paths[2],
    ];
    args.extend_from_slice(extra);
    photon(&args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Reads every part of an output directory: (ids, embedding rows).
fn read_output(dir: &Path) -> (Vec<i64>, Vec<Vec<f32>>) {
    let mut parts: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    parts.sort();
    let (mut ids, mut vectors) = (Vec::new(), Vec::new());
    for part in parts {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&part).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            ids.extend(
                batch
                    .column(0)
                    .as_primitive::<Int64Type>()
                    .values()
                    .iter()
                    .copied(),
            );
            let list = batch.column(1).as_fixed_size_list();
            assert_eq!(list.value_length() as usize, TINY_HIDDEN);
            assert!(matches!(list.value_type(), DataType::Float32));
            for i in 0..list.len() {
                let row = list.value(i);
                let row = row.as_any().downcast_ref::<Float32Array>().unwrap();
                vectors.push(row.values().to_vec());
            }
        }
    }
    (ids, vectors)
}

#[test]
fn embeds_a_corpus_and_writes_every_id_once() {
    let (dir, model, corpus, out) = tiny_model_and_corpus(5, 300);

    let run = embed(
        &corpus,
        &out,
        &model,
        &[
            "--column",
            "text",
            "--id-column",
            "id",
            "--threads",
            "2",
            "--json",
        ],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(summary["rows"], 300);
    assert_eq!(summary["duplicate_ids"], 0);
    assert!(summary["peak_memory_bytes"].as_u64().unwrap() > 0);
    // This process (its embedded raylet in it) and at least the actor's worker.
    assert!(
        summary["peak_memory_processes"].as_u64().unwrap() >= 2,
        "{summary}"
    );
    assert!(summary["parts"].as_u64().unwrap() >= 2, "{summary}");

    let (ids, vectors) = read_output(&out);
    assert_eq!(
        ids,
        (0..300).collect::<Vec<i64>>(),
        "every id once, in input order"
    );
    // The vectors are the embedder's own for the same texts.
    let texts = photon_sample_texts(&corpus);
    let options = EmbedderOptions {
        backend: Backend::FastCpu,
        ..EmbedderOptions::default()
    };
    let expected = SentenceEmbedder::load(&model, options)
        .unwrap()
        .embed(&texts)
        .unwrap();
    for (i, row) in vectors.iter().enumerate() {
        let max_diff = row
            .iter()
            .zip(expected.row(i))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(max_diff < 1e-5, "row {i}: {max_diff}");
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("_SUCCESS")).unwrap()).unwrap();
    assert_eq!(manifest["rows"], 300);
    assert_eq!(manifest["metadata"]["column"], "text");

    // The in-process reference writes the same vectors.
    let reference = dir.path().join("reference");
    let run = embed(
        &corpus,
        &reference,
        &model,
        &[
            "--id-column",
            "id",
            "--threads",
            "2",
            "--json",
            "--in-process",
        ],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(summary["rows"], 300);
    assert_eq!(summary["dim"], TINY_HIDDEN);
    assert_eq!(summary["engine"], "fast-cpu");
    assert_eq!(summary["actors"], "in-process");
    let (reference_ids, reference_vectors) = read_output(&reference);
    assert_eq!(reference_ids, ids);
    for (i, (a, b)) in vectors.iter().zip(&reference_vectors).enumerate() {
        let max_diff = a
            .iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(max_diff < 1e-5, "row {i}: {max_diff}");
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reference.join("_SUCCESS")).unwrap()).unwrap();
    // The same writer: photon-data's manifest, with the run under `metadata`.
    assert_eq!(manifest["rows"], 300);
    assert_eq!(manifest["metadata"]["column"], "text");
    assert_eq!(manifest["metadata"]["actors"], "in-process");

    // A second run must not replace the output silently...
    let again = embed(&corpus, &out, &model, &[]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("--overwrite"),
        "{}",
        text(&again.stderr)
    );
    // ...but does with --overwrite (row numbers as ids without --id-column).
    let overwrite = embed(&corpus, &out, &model, &["--overwrite"]);
    assert!(overwrite.status.success(), "{}", text(&overwrite.stderr));
    assert_eq!(read_output(&out).0, (0..300).collect::<Vec<i64>>());
}

fn photon_sample_texts(corpus: &Path) -> Vec<String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(corpus).unwrap())
        .unwrap()
        .build()
        .unwrap();
    reader
        .flat_map(|b| {
            let b = b.unwrap();
            let texts = b.column_by_name("text").unwrap().as_string::<i32>().clone();
            (0..texts.len())
                .map(move |i| texts.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn bad_input_fails_before_the_model_loads_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, out) = (dir.path().join("corpus.parquet"), dir.path().join("out"));
    let made = photon(&[
        "sample-corpus",
        "--rows",
        "10",
        "--output",
        corpus.to_str().unwrap(),
    ]);
    assert!(made.status.success());
    // Both paths run the same checks, through photon-data.
    for path in [&[][..], &["--in-process"][..]] {
        // The model does not exist either: the column error must come first.
        let missing_model = Path::new("/nonexistent/model");
        let run = embed(
            &corpus,
            &out,
            missing_model,
            &[&["--column", "txt"][..], path].concat(),
        );
        assert!(!run.status.success());
        let stderr = text(&run.stderr);
        assert!(
            stderr.contains("no column \"txt\"") && stderr.contains("corpus.parquet"),
            "{path:?}: {stderr}"
        );
        assert!(!out.exists(), "nothing written");

        // A bad model directory names the missing file and what to do.
        let model = dir.path().join("model");
        write_tiny_bert(&model, 1).unwrap();
        std::fs::remove_file(model.join("model.safetensors")).unwrap();
        let run = embed(&corpus, &out, &model, path);
        assert!(!run.status.success());
        let stderr = text(&run.stderr);
        assert!(
            stderr.contains("has no model.safetensors") && stderr.contains("--model"),
            "{path:?}: {stderr}"
        );
    }
    assert!(!out.exists(), "nothing written");
}

#[test]
fn a_gpu_asked_for_where_none_is_visible_fails_and_writes_nothing() {
    if photon_inference::gpu::visible_gpus() != Ok(0) {
        eprintln!("SKIPPED: a GPU is visible here; scripts/gpu-check covers this machine");
        return;
    }
    let (_dir, model, corpus, out) = tiny_model_and_corpus(3, 40);
    let host = photon_inference::gpu::host_name();
    for (extra, expected) in [
        // On a cluster an actor sees only the GPUs it is given.
        (
            &["--device", "gpu"][..],
            "--device gpu on a cluster needs --num-gpus",
        ),
        (
            &["--device", "gpu", "--in-process"][..],
            "no CUDA GPU is visible",
        ),
        // A GPU precision on the CPU is refused, not run in fp32.
        (
            &["--device", "cpu", "--precision", "fp16", "--in-process"][..],
            "fp16 needs the GPU engine",
        ),
    ] {
        let run = embed(&corpus, &out, &model, extra);
        let stderr = text(&run.stderr);
        assert!(!run.status.success(), "{extra:?}: {stderr}");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
        if extra.contains(&"--in-process") {
            assert!(stderr.contains(&host), "names the host: {stderr}");
        }
        assert!(!out.exists(), "{extra:?}: nothing written");
    }
}

/// The pids of `parent`'s child processes that are actors' workers.
fn actor_workers(parent: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // The parent pid is the 4th field of /proc/PID/stat, after "(comm)".
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after_comm.split_whitespace().nth(1) == Some(&parent.to_string())
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|&b| b == 0)
                    .any(|kv| kv.starts_with(b"PHOTON_ACTOR_ID="))
            })
        })
        .collect()
}

/// Parts staged (not yet published) under an output directory.
fn staged_parts(out: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(out) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("_temporary"))
        .filter_map(|e| std::fs::read_dir(e.path()).ok())
        .map(|parts| parts.count())
        .sum()
}

#[test]
fn a_worker_killed_mid_job_loses_no_row_and_repeats_none() {
    const ROWS: i64 = 20_000;
    let (_dir, model, corpus, out) = tiny_model_and_corpus(7, ROWS as usize);

    let paths = [&corpus, &out, &model].map(|p| p.to_str().unwrap().to_string());
    let job = Command::new(PHOTON)
        .args(["embed", "--input", &paths[0], "--output", &paths[1]])
        .args(["--model", &paths[2], "--id-column", "id"])
        .args(["--actors", "2", "--threads", "1", "--batch-size", "4"])
        .arg("--json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("photon embed starts");
    // Once parts are being staged the actors are busy: SIGKILL one of them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let victim = loop {
        let workers = actor_workers(job.id());
        if staged_parts(&out) >= 1 && !workers.is_empty() {
            break workers[0];
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no part staged within 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // ESRCH: the job finished first; the checks below still hold.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    );

    let run = job.wait_with_output().unwrap();
    assert!(run.status.success(), "{}", text(&run.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(summary["rows"], ROWS, "{summary}");
    // The victim may have been between blocks, so a retry is likely, not certain.
    eprintln!("reconstructions: {}", summary["reconstructions"]);
    let (ids, _) = read_output(&out);
    assert_eq!(ids.len() as i64, ROWS);
    let unique: std::collections::BTreeSet<i64> = ids.into_iter().collect();
    assert_eq!(unique, (0..ROWS).collect(), "every id once");
    assert_eq!(staged_parts(&out), 0, "no staged part left behind");
}

/// A temp dir with a tiny model (`seed`), a sample corpus of `rows` rows,
/// and the output path: (dir, model, corpus, out).
fn tiny_model_and_corpus(seed: u64, rows: usize) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (model, corpus, out) = (
        dir.path().join("model"),
        dir.path().join("corpus.parquet"),
        dir.path().join("out"),
    );
    write_tiny_bert(&model, seed).unwrap();
    let made = photon(&[
        "sample-corpus",
        "--rows",
        &rows.to_string(),
        "--output",
        corpus.to_str().unwrap(),
    ]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    (dir, model, corpus, out)
}

/// The summary fields both paths print with `--json`.
const SUMMARY_FIELDS: [&str; 21] = [
    "rows",
    "dim",
    "wall_seconds",
    "rows_per_s",
    "first_output_seconds",
    "engine",
    "device",
    "precision",
    "threads",
    "gpu_memory_per_actor_bytes",
    "actors",
    "peak_memory_bytes",
    "peak_memory_processes",
    "reconstructions",
    "duplicate_ids",
    "output",
    "manifest",
    "parts",
    "output_bytes",
    "model",
    "logs",
];

/// A progress line: rows done, rows in all, the rate shown, and blocks the
/// last stage finished.
#[derive(Debug)]
struct ProgressLine {
    done: u64,
    total: u64,
    rate: f64,
    last_stage_blocks: u64,
}

/// Parses `photon-data: 123/2000 rows (6.2%), 180 rows/s, eta 10 s | read… 1/4
/// blocks (…) | map_batches… 0/4 blocks (…) | in flight …`.
fn progress_lines(stderr: &str) -> Vec<ProgressLine> {
    stderr
        .lines()
        .filter_map(|line| line.strip_prefix("photon-data: "))
        .filter(|line| !line.contains("done in"))
        .map(|line| {
            let (rows, rest) = line.split_once(" rows (").unwrap();
            let (done, total) = rows.split_once('/').unwrap();
            let rate = rest.split(", ").nth(1).unwrap();
            let rate = rate.strip_suffix(" rows/s").unwrap();
            let last_stage = line
                .split(" | ")
                .filter(|part| part.contains(" blocks ("))
                .last()
                .unwrap();
            let blocks = last_stage.split(" blocks (").next().unwrap();
            let blocks = blocks
                .rsplit(' ')
                .next()
                .unwrap()
                .split('/')
                .next()
                .unwrap();
            ProgressLine {
                done: done.parse().unwrap(),
                total: total.parse().unwrap(),
                rate: rate.parse().unwrap(),
                last_stage_blocks: blocks.parse().unwrap(),
            }
        })
        .collect()
}

/// `--precision int8` reaches the actors on the embedded cluster, and the
/// summary names the kernel they ran.
#[test]
fn int8_reaches_the_actors_and_the_summary_names_its_kernel() {
    let (dir, model, corpus, out) = tiny_model_and_corpus(3, 300);
    let run = embed_command(&corpus, &out, &model)
        .args(["--precision", "int8", "--json"])
        .env("PHOTON_HOME", dir.path().join("home"))
        .output()
        .unwrap();
    let stderr = text(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let kernel = photon_inference::int8::kernel().expect("CI runs on x86-64 with AVX2");
    assert_eq!(
        summary["precision"],
        format!("int8 ({kernel})"),
        "{summary}"
    );
    assert_eq!(summary["engine"], "fast-cpu", "{summary}");
    assert_eq!(summary["rows"], 300);
}

#[test]
fn progress_counts_rows_inside_blocks_at_the_pace_of_the_run() {
    let (dir, model, corpus, out) = tiny_model_and_corpus(3, 2000);
    // Batches of 8 rows that each take 40 ms more: blocks of a few seconds.
    let run = embed_command(&corpus, &out, &model)
        .args(["--id-column", "id", "--threads", "1", "--batch-size", "8"])
        .args(["--slow-batches-ms", "40", "--json"])
        .env("PHOTON_PROGRESS_INTERVAL_MS", "250")
        .env("PHOTON_HOME", dir.path().join("home"))
        .output()
        .unwrap();
    let stderr = text(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    eprintln!("{stderr}{}", text(&run.stdout));
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    for field in SUMMARY_FIELDS {
        assert!(!summary[field].is_null(), "no {field} in {summary}");
    }
    assert_eq!(summary["rows"], 2000);
    assert_eq!(summary["engine"], "fast-cpu", "{summary}");
    assert_eq!(summary["device"], "cpu");
    assert_eq!(summary["precision"], "fp32");
    assert_eq!(summary["threads"], 1);
    let manifest = summary["manifest"].as_str().unwrap();
    assert!(Path::new(manifest).is_file(), "{manifest}");

    let lines = progress_lines(&stderr);
    assert!(lines.iter().all(|l| l.total == 2000), "{stderr}");
    // The first block is the small one (64 rows): rows past it while it is
    // the only block out were counted inside a running block.
    assert!(
        lines
            .iter()
            .any(|l| l.last_stage_blocks <= 1 && l.done > 64),
        "no rows counted before a big block finished:\n{stderr}"
    );
    // Once the first block is out, the rate shown is the run's pace (within
    // 2x of the final end-to-end rate), not rows of finished blocks over time.
    let final_rate = summary["rows_per_s"].as_f64().unwrap();
    let shown: Vec<f64> = lines
        .iter()
        .filter(|l| l.last_stage_blocks >= 1 && l.done < l.total)
        .map(|l| l.rate)
        .collect();
    assert!(shown.len() >= 3, "too few lines to judge:\n{stderr}");
    for rate in &shown {
        assert!(
            (final_rate / 2.0..=final_rate * 2.0).contains(rate),
            "shown {rate:.0} rows/s vs final {final_rate:.0}:\n{stderr}"
        );
    }
}

#[test]
fn an_embedded_cluster_keeps_info_logs_in_the_session_log_not_the_terminal() {
    let (dir, model, corpus, out) = tiny_model_and_corpus(4, 200);
    let home = dir.path().join("home");
    let run = embed_command(&corpus, &out, &model)
        .args(["--id-column", "id"])
        .env("PHOTON_HOME", &home)
        .env_remove("PHOTON_LOG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert!(run.status.success(), "{stderr}");
    eprintln!("{stderr}{stdout}");
    assert!(
        !stderr.contains(" INFO ") && !stdout.contains(" INFO "),
        "INFO lines on the terminal:\n{stderr}"
    );
    // One summary block naming the log directory, where the INFO lines are.
    assert_eq!(stdout.matches("embedded 200 rows").count(), 1, "{stdout}");
    let logs = stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("logs"))
        .map(|l| PathBuf::from(l.trim()))
        .unwrap_or_else(|| panic!("no logs line in {stdout}"));
    assert!(logs.starts_with(&home), "{}", logs.display());
    assert!(
        stderr.contains(&logs.display().to_string()),
        "the log directory is named at the start:\n{stderr}"
    );
    let log = std::fs::read_to_string(logs.join("photon.log")).unwrap();
    assert!(
        log.contains(" INFO ") && log.contains("registered with the head"),
        "{log}"
    );
    assert!(logs.join("logs").is_dir(), "workers' logs beside it");

    // -v brings the INFO lines back to the terminal.
    let verbose = embed_command(&corpus, &dir.path().join("out-verbose"), &model)
        .args(["--id-column", "id", "-v"])
        .env("PHOTON_HOME", &home)
        .env_remove("PHOTON_LOG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(verbose.status.success(), "{}", text(&verbose.stderr));
    assert!(
        text(&verbose.stderr).contains("registered with the head"),
        "{}",
        text(&verbose.stderr)
    );
}

/// The ids of the output its `_SUCCESS` manifest names (every listed part
/// must exist), sorted.
fn manifest_ids(out: &Path) -> Vec<i64> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("_SUCCESS")).unwrap()).unwrap();
    let mut ids = Vec::new();
    for part in manifest["parts"].as_array().unwrap() {
        let path = out.join(part["name"].as_str().unwrap());
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            ids.extend(batch.column(0).as_primitive::<Int64Type>().values().iter());
        }
    }
    ids.sort_unstable();
    ids
}

#[test]
fn an_overwrite_killed_at_any_moment_leaves_one_complete_output() {
    const ROWS: i64 = 1_000;
    let (dir, model, corpus, out) = tiny_model_and_corpus(5, ROWS as usize);
    let home = dir.path().join("home");
    let run = || {
        let mut command = embed_command(&corpus, &out, &model);
        command
            .args(["--id-column", "id", "--overwrite", "--threads", "1"])
            .env("PHOTON_HOME", &home)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        command
    };
    let started = std::time::Instant::now();
    let first = run().output().unwrap();
    assert!(first.status.success(), "{}", text(&first.stderr));
    let whole_run = started.elapsed();
    assert_eq!(manifest_ids(&out), (0..ROWS).collect::<Vec<_>>());

    // SIGKILL runs at moments spread over a whole run's length, the commit
    // included; after each, the manifest names one complete output.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    const KILLS: u64 = 20;
    for attempt in 0..KILLS {
        let spread = (seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(attempt.wrapping_mul(1442695040888963407))
            >> 33)
            % 1000;
        let delay = whole_run.mul_f64((attempt as f64 + spread as f64 / 1000.0) / KILLS as f64);
        let mut child = run().spawn().unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            manifest_ids(&out),
            (0..ROWS).collect::<Vec<_>>(),
            "killed after {delay:?} (seed {seed})"
        );
    }
    // The next run takes over from the dead writer and finishes; what the
    // killed runs left is gone.
    let last = run().output().unwrap();
    assert!(last.status.success(), "{}", text(&last.stderr));
    assert_eq!(manifest_ids(&out), (0..ROWS).collect::<Vec<_>>());
    let (ids, _) = read_output(&out);
    assert_eq!(ids.len() as i64, ROWS, "no part beside the manifest's");
    assert_eq!(staged_parts(&out), 0);
}

#[test]
fn a_second_writer_to_one_destination_is_refused_naming_the_first() {
    let (dir, model, corpus, out) = tiny_model_and_corpus(6, 400);
    let home = dir.path().join("home");
    let first = embed_command(&corpus, &out, &model)
        .args([
            "--id-column",
            "id",
            "--batch-size",
            "8",
            "--slow-batches-ms",
            "20",
        ])
        .env("PHOTON_HOME", &home)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lock = out.join(photon_data::WRITER_LOCK);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !lock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first writer took no lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = embed_command(&corpus, &out, &model)
        .args(["--id-column", "id", "--overwrite"])
        .env("PHOTON_HOME", &home)
        .output()
        .unwrap();
    let stderr = text(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains("is being written by") && stderr.contains(&format!("pid {}", first.id())),
        "{stderr}"
    );
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(manifest_ids(&out), (0..400).collect::<Vec<_>>());
    assert!(!lock.exists(), "the lock goes with its writer");
}

#[test]
fn repeated_input_ids_are_counted_and_warned_about_on_both_paths() {
    let (dir, model, corpus, out) = tiny_model_and_corpus(11, 120);
    // The same 120 ids twice: 120 rows repeat an earlier row's id.
    let copy = dir.path().join("copy.parquet");
    std::fs::copy(&corpus, &copy).unwrap();
    for (run, extra) in [("cluster", None), ("in-process", Some("--in-process"))] {
        let out = out.with_extension(run);
        let mut command = embed_command(&corpus, &out, &model);
        command.arg("--input").arg(&copy);
        command.args(["--id-column", "id", "--threads", "1", "--json"]);
        command.args(extra);
        let output = command.output().unwrap();
        let stderr = text(&output.stderr);
        assert!(output.status.success(), "{run}: {stderr}");
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(
            (&summary["rows"], &summary["duplicate_ids"]),
            (&240.into(), &120.into()),
            "{run}: {summary}"
        );
        assert!(
            stderr.contains("warning: 120 row(s) of the input repeat an id (column \"id\")"),
            "{run}: {stderr}"
        );
    }
}
