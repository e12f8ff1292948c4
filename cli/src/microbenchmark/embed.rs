//! `photon microbenchmark embed`: the in-process sentence embedder on a
//! generated corpus, against candle-transformers' BERT as-is (padded batches
//! of 64 in input order, what a straightforward candle program does) and
//! sorted, measured in the same run.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use photon_inference::{
    Backend, EmbedderOptions, Embeddings, Precision, SentenceEmbedder, model_cache,
};

use super::Report;
use crate::embed::corpus::sample_sentences;

/// What to measure.
pub struct EmbedBench {
    /// Sentences in the generated corpus.
    pub rows: usize,
    /// Sentences the (slow) candle references embed.
    pub candle_rows: usize,
    /// Model directory; default: the cached all-MiniLM-L6-v2.
    pub model: Option<PathBuf>,
}

/// Runs the benchmark, printing figures as they come.
pub fn run(report: &mut Report, bench: &EmbedBench) -> Result<()> {
    let dir = match &bench.model {
        Some(dir) => dir.clone(),
        None => model_cache::ensure_default_model(|line| eprintln!("{line}"))?,
    };
    let texts = sample_sentences(bench.rows, 1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let options = |backend, threads, sort| EmbedderOptions {
        backend,
        threads,
        sort_by_length: sort,
        ..EmbedderOptions::default()
    };
    let with_precision = |precision| EmbedderOptions {
        precision: Some(precision),
        ..options(Backend::FastCpu, cores, true)
    };
    let loading = Instant::now();
    let fast = SentenceEmbedder::load(&dir, options(Backend::FastCpu, cores, true))?;
    report.figure("embed_model_load_ms", ms(loading), "ms");
    let first = Instant::now();
    fast.embed(&texts[..64.min(texts.len())])?;
    report.figure("embed_first_batch_of_64_ms", ms(first), "ms");

    let (full, rate) = timed(&fast, &texts)?;
    report.figure("embed_corpus_rows", texts.len() as f64, "rows");
    let tokens_per_row = full.stats.tokens as f64 / texts.len() as f64;
    report.figure("embed_tokens_per_row", tokens_per_row, "tokens");
    report.figure(
        &format!("embed_in_process_rows_per_s_{cores}t"),
        rate,
        "rows/s",
    );
    report.figure("embed_padded_share", full.stats.padded_share(), "ratio");
    precisions(
        report,
        &dir,
        &texts,
        (&full, rate),
        with_precision(Precision::Int8),
    )?;
    let one = SentenceEmbedder::load(&dir, options(Backend::FastCpu, 1, true))?;
    let (_, rate_1t) = timed(&one, &texts)?;
    report.figure("embed_in_process_rows_per_s_1t", rate_1t, "rows/s");
    report.figure(
        &format!("embed_scaling_{cores}t_vs_1t"),
        rate / rate_1t,
        "x",
    );
    let peak = photon_raylet::procfs::peak_resident_bytes(std::process::id()).unwrap_or(0);
    report.figure("embed_peak_rss_mib", peak as f64 / (1 << 20) as f64, "MiB");

    // The references embed a prefix of the corpus: candle is slow.
    let subset = &texts[..bench.candle_rows.min(texts.len())];
    let (fast_subset, fast_subset_rate) = timed(&fast, subset)?;
    report.figure("embed_subset_rows", subset.len() as f64, "rows");
    report.figure(
        &format!("embed_subset_rows_per_s_{cores}t"),
        fast_subset_rate,
        "rows/s",
    );
    for (name, sort) in [("as_is", false), ("sorted", true)] {
        let candle = SentenceEmbedder::load(&dir, options(Backend::Candle, cores, sort))?;
        let (vectors, candle_rate) = timed(&candle, subset)?;
        report.figure(
            &format!("embed_candle_{name}_rows_per_s_{cores}t"),
            candle_rate,
            "rows/s",
        );
        report.figure(
            &format!("embed_candle_{name}_padded_share"),
            vectors.stats.padded_share(),
            "ratio",
        );
        report.figure(
            &format!("embed_speedup_vs_candle_{name}"),
            fast_subset_rate / candle_rate,
            "x",
        );
        if sort {
            report.figure(
                "embed_min_cosine_fast_vs_candle",
                min_cosine(&fast_subset, &vectors),
                "cosine",
            );
        }
    }
    Ok(())
}

/// The other CPU precisions on the same corpus: rows/s, the ratio to fp32
/// measured just before, and the cosine of each vector to fp32's (min and
/// mean). A precision this CPU cannot run is reported and skipped.
fn precisions(
    report: &mut Report,
    dir: &std::path::Path,
    texts: &[String],
    (fp32, fp32_rate): (&Embeddings, f64),
    options: EmbedderOptions,
) -> Result<()> {
    let name = options.precision.map_or("fp32", Precision::name);
    let embedder = match SentenceEmbedder::load(dir, options) {
        Ok(embedder) => embedder,
        Err(e) => {
            eprintln!("SKIPPED: {name}: {e}");
            return Ok(());
        }
    };
    eprintln!("{name}: {}", embedder.engine_info());
    let cores = embedder.threads();
    let (vectors, rate) = timed(&embedder, texts)?;
    report.figure(&format!("embed_{name}_rows_per_s_{cores}t"), rate, "rows/s");
    report.figure(&format!("embed_{name}_vs_fp32"), rate / fp32_rate, "x");
    let cosines = cosines(&vectors, fp32);
    let mean = cosines.iter().sum::<f64>() / cosines.len().max(1) as f64;
    let min = cosines.iter().copied().fold(1.0, f64::min);
    report.figure(&format!("embed_{name}_min_cosine_vs_fp32"), min, "cosine");
    report.figure(&format!("embed_{name}_mean_cosine_vs_fp32"), mean, "cosine");
    Ok(())
}

fn timed(embedder: &SentenceEmbedder, texts: &[String]) -> Result<(Embeddings, f64)> {
    let started = Instant::now();
    let vectors = embedder.embed(texts)?;
    Ok((
        vectors,
        texts.len() as f64 / started.elapsed().as_secs_f64(),
    ))
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// The lowest cosine similarity between matching rows of two runs.
fn min_cosine(a: &Embeddings, b: &Embeddings) -> f64 {
    cosines(a, b).into_iter().fold(1.0, f64::min)
}

/// The cosine similarity of each pair of matching rows of two runs.
fn cosines(a: &Embeddings, b: &Embeddings) -> Vec<f64> {
    (0..a.len())
        .map(|i| {
            let (x, y) = (a.row(i), b.row(i));
            let dot: f64 = x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum();
            let norm = |v: &[f32]| v.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
            dot / (norm(x) * norm(y))
        })
        .collect()
}
