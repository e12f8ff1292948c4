//! `photon microbenchmark gpu-embed`: the GPU engine checked and timed
//! against the CPU engine in the same run, on the GPU machine (which has no
//! Rust toolchain, so the check ships inside the binary).
//!
//! In order, so that one run says where a fault is:
//! 1. tiny random BERTs with 0, 1 and 2 layers, GPU fp32 against the CPU:
//!    embeddings + layer norm + pooling alone, then one layer, then two;
//! 2. the real model per precision: cosine to the CPU engine on a corpus and
//!    to sentence-transformers' vectors (the committed fixture);
//! 3. in-process rows/s per precision against the CPU engine, first-batch
//!    time, device memory; tokenization alone per core (the ceiling an
//!    end-to-end run must not fall under).
//!
//! A cosine under its floor fails the command (exit code 1) after every
//! figure is printed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use photon_inference::{
    Backend, DeviceChoice, EmbedderOptions, Embeddings, Precision, SentenceEmbedder, model_cache,
};

use super::Report;
use crate::embed::corpus::sample_sentences;

/// What to check and measure.
pub struct GpuEmbedBench {
    /// Corpus rows checked against the CPU engine.
    pub check_rows: usize,
    /// Corpus rows timed per precision.
    pub rows: usize,
    /// Model directory; default: the cached all-MiniLM-L6-v2.
    pub model: Option<PathBuf>,
    /// sentence-transformers' vectors for the model (the committed
    /// `all-minilm-l6-v2-reference.json`), if at hand.
    pub fixture: Option<PathBuf>,
}

/// The per-sentence cosine floor of issue 23's correctness check.
const COSINE_FLOOR: f32 = 0.999;

/// Runs the check, printing figures as they come.
pub fn run(report: &mut Report, bench: &GpuEmbedBench) -> Result<()> {
    let mut failures = Vec::new();
    let texts = sample_sentences(bench.check_rows.max(1), 7);

    // 1. Tiny models: which step differs, if any.
    let scratch = tempfile::tempdir()?;
    for layers in [0, 1, 2] {
        let dir = scratch.path().join(format!("tiny-{layers}"));
        photon_inference::tiny_model::write_tiny_bert_with_layers(&dir, 11, layers)
            .map_err(|e| anyhow::anyhow!("writing a tiny model: {e}"))?;
        let cpu = load(&dir, DeviceChoice::Cpu, None)?.embed(&texts)?;
        let gpu = load(&dir, DeviceChoice::Gpu, Some(Precision::Fp32))?.embed(&texts)?;
        let (min, _) = cosines(&gpu, &cpu);
        at_floor(
            report,
            &mut failures,
            &format!("tiny_{layers}_layers_fp32_cosine_vs_cpu_min"),
            min,
        );
    }

    // 2. The real model, per precision.
    let dir = match &bench.model {
        Some(dir) => dir.clone(),
        None => model_cache::ensure_default_model(|line| eprintln!("{line}"))?,
    };
    let fixture = bench.fixture.as_deref().map(read_fixture).transpose()?;
    let cpu = load(&dir, DeviceChoice::Cpu, None)?;
    let cpu_vectors = cpu.embed(&texts)?;
    if let Some((sentences, expected)) = &fixture {
        // The CPU engine against the fixture, as a check of the fixture.
        let min = min_cosine_to(&cpu.embed(sentences)?, expected);
        report.figure("cpu_fast_cosine_vs_fixture_min", min as f64, "cosine");
    }
    let timed_texts = sample_sentences(bench.rows.max(1), 3);
    let cpu_rate = rows_per_s(&cpu, &timed_texts)?;
    report.figure("cpu_fast_rows_per_s", cpu_rate, "rows/s");
    drop(cpu);

    for precision in [Precision::Fp32, Precision::Fp16, Precision::Bf16] {
        let name = precision.name();
        let loading = Instant::now();
        let gpu = load(&dir, DeviceChoice::Gpu, Some(precision))?;
        report.figure(&format!("gpu_{name}_load_ms"), ms(loading), "ms");
        let first = Instant::now();
        gpu.embed(&texts[..texts.len().min(256)])?;
        report.figure(
            &format!("gpu_{name}_first_batch_of_256_ms"),
            ms(first),
            "ms",
        );
        report.figure(
            &format!("gpu_{name}_device_memory_mib"),
            gpu.engine_info().gpu_memory_bytes as f64 / (1 << 20) as f64,
            "MiB",
        );
        let (min, mean) = cosines(&gpu.embed(&texts)?, &cpu_vectors);
        at_floor(
            report,
            &mut failures,
            &format!("gpu_{name}_cosine_vs_cpu_min"),
            min,
        );
        report.figure(
            &format!("gpu_{name}_cosine_vs_cpu_mean"),
            mean as f64,
            "cosine",
        );
        if let Some((sentences, expected)) = &fixture {
            let min = min_cosine_to(&gpu.embed(sentences)?, expected);
            at_floor(
                report,
                &mut failures,
                &format!("gpu_{name}_cosine_vs_fixture_min"),
                min,
            );
        }
        let rate = rows_per_s(&gpu, &timed_texts)?;
        report.figure(&format!("gpu_{name}_rows_per_s"), rate, "rows/s");
        report.figure(&format!("gpu_{name}_vs_cpu_fast"), rate / cpu_rate, "ratio");
    }
    // 3. Tokenization alone on one core.
    let tokenizer = load(&dir, DeviceChoice::Cpu, None)?;
    let one_core = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let sample = &timed_texts[..timed_texts.len().min(20_000)];
    let started = Instant::now();
    one_core.install(|| tokenizer.tokenize(sample))?;
    report.figure(
        "tokenize_rows_per_s_per_core",
        sample.len() as f64 / started.elapsed().as_secs_f64(),
        "rows/s",
    );

    if !failures.is_empty() {
        bail!(
            "the GPU engine's vectors are off:\n  {}",
            failures.join("\n  ")
        );
    }
    Ok(())
}

fn load(
    dir: &Path,
    device: DeviceChoice,
    precision: Option<Precision>,
) -> Result<SentenceEmbedder> {
    let options = EmbedderOptions {
        backend: Backend::Auto,
        device,
        precision,
        ..EmbedderOptions::default()
    };
    SentenceEmbedder::load(dir, options)
        .with_context(|| format!("loading {} on {device:?}", dir.display()))
}

fn rows_per_s(embedder: &SentenceEmbedder, texts: &[String]) -> Result<f64> {
    let started = Instant::now();
    embedder.embed(texts)?;
    Ok(texts.len() as f64 / started.elapsed().as_secs_f64())
}

/// Per-row cosine of two sets of vectors: (min, mean).
fn cosines(a: &Embeddings, b: &Embeddings) -> (f32, f32) {
    let values: Vec<f32> = (0..a.len()).map(|i| cosine(a.row(i), b.row(i))).collect();
    let min = values.iter().copied().fold(f32::INFINITY, f32::min);
    (min, values.iter().sum::<f32>() / values.len().max(1) as f32)
}

/// The smallest cosine of `ours`' rows to `expected`'s.
fn min_cosine_to(ours: &Embeddings, expected: &[Vec<f32>]) -> f32 {
    (0..expected.len())
        .map(|i| cosine(ours.row(i), &expected[i]))
        .fold(f32::INFINITY, f32::min)
}

/// Reports a minimum cosine as `figure`, and a failure when it is under
/// [`COSINE_FLOOR`].
fn at_floor(report: &mut Report, failures: &mut Vec<String>, figure: &str, min: f32) {
    report.figure(figure, min as f64, "cosine");
    if min < COSINE_FLOOR {
        failures.push(format!("{figure} = {min}, under {COSINE_FLOOR}"));
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b)).max(1e-12)
}

/// The fixture's sentences and vectors.
fn read_fixture(path: &Path) -> Result<(Vec<String>, Vec<Vec<f32>>)> {
    #[derive(serde::Deserialize)]
    struct Fixture {
        sentences: Vec<String>,
        embeddings: Vec<Vec<f32>>,
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the fixture {}", path.display()))?;
    let fixture: Fixture = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a sentence-transformers fixture", path.display()))?;
    Ok((fixture.sentences, fixture.embeddings))
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}
