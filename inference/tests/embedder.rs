//! The embedder on a tiny random BERT (fast path against candle-transformers'
//! model), its errors, and the real all-MiniLM-L6-v2 against vectors computed
//! with sentence-transformers.

use std::path::{Path, PathBuf};

use photon_inference::sample_text::sample_sentences;
use photon_inference::tiny_model::{TINY_HIDDEN, TINY_MAX_SEQ_LENGTH, write_tiny_bert};
use photon_inference::{
    Backend, EmbedderOptions, InferenceError, Precision, SentenceEmbedder, model_cache,
};

fn texts() -> Vec<String> {
    let mut texts: Vec<String> = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "",
        "dog",
        "The cat and the dog were eating bread by the river at night, then they called a friend.",
        "Zürich — déjà vu? 42 cats!",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Longer than the tiny model's 24-token limit: must be truncated.
    texts.push("the house of the family by the road ".repeat(6));
    for n in 1..20 {
        texts.push(format!("{} people find water", "many ".repeat(n)));
    }
    texts
}

fn embedder(dir: &Path, backend: Backend, threads: usize, max_rows: usize) -> SentenceEmbedder {
    let options = EmbedderOptions {
        backend,
        threads,
        max_batch_rows: Some(max_rows),
        ..EmbedderOptions::default()
    };
    SentenceEmbedder::load(dir, options).expect("tiny model loads")
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn fast_path_matches_candle_transformers_bert() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 7).unwrap();
    let texts = texts();
    let fast = embedder(dir.path(), Backend::FastCpu, 2, 5)
        .embed(&texts)
        .unwrap();
    let reference = embedder(dir.path(), Backend::Candle, 1, 5)
        .embed(&texts)
        .unwrap();
    assert_eq!(fast.dim, TINY_HIDDEN);
    assert_eq!(fast.len(), texts.len());
    for (i, text) in texts.iter().enumerate() {
        let (a, b) = (fast.row(i), reference.row(i));
        let max_diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(max_diff < 1e-4, "text {i} {text:?}: max |diff| {max_diff}");
        assert!(cosine(a, b) > 0.99999, "text {i}: cosine {}", cosine(a, b));
        let norm = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "text {i} not normalised: {norm}");
    }
    // Packed sequences compute no padding; the padded reference does.
    assert_eq!(fast.stats.computed_tokens, fast.stats.tokens);
    assert!(reference.stats.computed_tokens > reference.stats.tokens);
    assert_eq!(fast.stats.truncated, 1);
    assert_eq!(fast.stats.rows, texts.len());
    assert_eq!(fast.stats.batches, texts.len().div_ceil(5));
}

#[test]
fn results_do_not_depend_on_batching_threads_or_order() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 11).unwrap();
    let texts = texts();
    let one_batch = embedder(dir.path(), Backend::FastCpu, 1, 1000)
        .embed(&texts)
        .unwrap();
    let small_batches = embedder(dir.path(), Backend::FastCpu, 2, 3)
        .embed(&texts)
        .unwrap();
    let mut reversed = texts.clone();
    reversed.reverse();
    let reversed = embedder(dir.path(), Backend::FastCpu, 2, 4)
        .embed(&reversed)
        .unwrap();
    for i in 0..texts.len() {
        let j = texts.len() - 1 - i;
        for other in [small_batches.row(i), reversed.row(j)] {
            let max_diff = one_batch
                .row(i)
                .iter()
                .zip(other)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(max_diff < 1e-6, "text {i}: {max_diff}");
        }
    }
    // Distinct texts get distinct vectors.
    assert!(cosine(one_batch.row(0), one_batch.row(3)) < 0.999);
}

#[test]
fn tokenizer_truncates_at_max_seq_length_without_padding() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 1).unwrap();
    let embedder = embedder(dir.path(), Backend::FastCpu, 1, 8);
    let (ids, truncated) = embedder
        .tokenize(&["dog", "", &"cat ".repeat(100)])
        .unwrap();
    assert_eq!(ids[0].len(), 3, "[CLS] dog [SEP]");
    assert_eq!(ids[1].len(), 2, "[CLS] [SEP]");
    assert_eq!(ids[2].len(), TINY_MAX_SEQ_LENGTH);
    assert_eq!(truncated, 1);
    assert_eq!(embedder.model().max_seq_length, TINY_MAX_SEQ_LENGTH);
}

#[test]
fn bad_model_directories_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 3).unwrap();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let err = SentenceEmbedder::load(dir.path(), EmbedderOptions::default())
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(matches!(err, InferenceError::MissingFile { .. }), "{text}");
    assert!(text.contains("tokenizer.json") && text.contains(&dir.path().display().to_string()));
    assert!(text.contains("--model"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 3).unwrap();
    std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 4").unwrap();
    let text = SentenceEmbedder::load(dir.path(), EmbedderOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        text.contains("config.json") && text.contains("not a valid config"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 3).unwrap();
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"bert\"", "\"t5\""),
    )
    .unwrap();
    let text = SentenceEmbedder::load(dir.path(), EmbedderOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(text.contains("\"t5\" is not supported"), "{text}");

    // A weights file missing a tensor names the tensor.
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 3).unwrap();
    let other = tempfile::tempdir().unwrap();
    write_tiny_bert(other.path(), 3).unwrap();
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let deeper = config.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3");
    std::fs::write(dir.path().join("config.json"), deeper).unwrap();
    let options = EmbedderOptions {
        backend: Backend::FastCpu,
        ..EmbedderOptions::default()
    };
    let text = SentenceEmbedder::load(dir.path(), options)
        .err()
        .unwrap()
        .to_string();
    assert!(
        text.contains("encoder.layer.2.attention.self.query.weight: missing"),
        "{text}"
    );
}

/// Reference vectors computed once with sentence-transformers
/// (`scripts/reference-embeddings.py`).
#[derive(serde::Deserialize)]
struct Reference {
    sentences: Vec<String>,
    embeddings: Vec<Vec<f32>>,
}

/// The real model: `PHOTON_TEST_MODEL_DIR`, else the cache, fetched first when
/// `PHOTON_FETCH_MODEL=1` (CI sets it). Skipped, saying so, otherwise.
fn real_model() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PHOTON_TEST_MODEL_DIR") {
        return Some(PathBuf::from(dir));
    }
    if std::env::var("PHOTON_FETCH_MODEL").as_deref() == Ok("1") {
        return Some(model_cache::ensure_default_model(|l| eprintln!("{l}")).expect("fetch"));
    }
    let dir = model_cache::default_model_dir();
    dir.join("model.safetensors").is_file().then_some(dir)
}

#[test]
fn real_minilm_matches_sentence_transformers() {
    let Some(dir) = real_model() else {
        eprintln!("SKIPPED: all-MiniLM-L6-v2 not cached; set PHOTON_FETCH_MODEL=1 to fetch it");
        return;
    };
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/all-minilm-l6-v2-reference.json"
    );
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    for backend in [Backend::FastCpu, Backend::Candle] {
        let options = EmbedderOptions {
            backend,
            threads: 2,
            ..EmbedderOptions::default()
        };
        let embedder = SentenceEmbedder::load(&dir, options).unwrap();
        assert_eq!(embedder.dim(), 384);
        assert_eq!(embedder.model().max_seq_length, 256);
        let ours = embedder.embed(&reference.sentences).unwrap();
        for (i, expected) in reference.embeddings.iter().enumerate() {
            let cos = cosine(ours.row(i), expected);
            assert!(
                cos >= 0.999,
                "{backend:?} sentence {i} {:?}: cosine {cos}",
                reference.sentences[i]
            );
            let max_diff = ours
                .row(i)
                .iter()
                .zip(expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                max_diff < 1e-4,
                "{backend:?} sentence {i}: max |diff| {max_diff}"
            );
        }
        let similar = cosine(ours.row(0), ours.row(1));
        assert!(
            (similar - 0.755_337).abs() < 1e-4,
            "cos(food, bread) = {similar}"
        );
        assert_eq!(
            ours.stats.truncated, 1,
            "the long text is cut at 256 tokens"
        );
    }
}

fn with_precision(dir: &Path, precision: Precision, backend: Backend) -> SentenceEmbedder {
    let options = EmbedderOptions {
        backend,
        threads: 2,
        precision: Some(precision),
        ..EmbedderOptions::default()
    };
    SentenceEmbedder::load(dir, options).expect("model loads")
}

#[test]
fn int8_names_its_kernel_and_stays_close_to_fp32_on_the_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 5).unwrap();
    let texts = texts();
    let fp32 = with_precision(dir.path(), Precision::Fp32, Backend::FastCpu);
    let int8 = with_precision(dir.path(), Precision::Int8, Backend::FastCpu);
    let kernel = photon_inference::int8::kernel().expect("CI runs on x86-64 with AVX2");
    assert_eq!(int8.engine_info().precision, format!("int8 ({kernel})"));
    assert_eq!(fp32.engine_info().precision, "fp32");
    let (exact, quantized) = (fp32.embed(&texts).unwrap(), int8.embed(&texts).unwrap());
    let mut differs = 0;
    for (i, text) in texts.iter().enumerate() {
        let cos = cosine(exact.row(i), quantized.row(i));
        assert!(cos >= 0.99, "text {i} {text:?}: cosine {cos}");
        differs += usize::from(exact.row(i) != quantized.row(i));
    }
    assert_eq!(differs, texts.len(), "int8 computed every vector itself");
    assert_eq!(quantized.stats.tokens, exact.stats.tokens);
}

#[test]
fn int8_and_cpu_bf16_are_refused_where_they_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 5).unwrap();
    let load = |precision, backend| {
        let options = EmbedderOptions {
            backend,
            device: photon_inference::DeviceChoice::Cpu,
            precision: Some(precision),
            ..EmbedderOptions::default()
        };
        SentenceEmbedder::load(dir.path(), options)
            .err()
            .expect("refused")
            .to_string()
    };
    let candle = load(Precision::Int8, Backend::Candle);
    assert!(
        candle.contains("the candle backend computes in fp32 only, not int8"),
        "{candle}"
    );
    let bf16 = load(Precision::Bf16, Backend::Auto);
    assert!(
        bf16.contains("bf16 does not run on the CPU engine")
            && (bf16.contains("needs AVX512_BF16 or AMX-BF16") || bf16.contains("no bf16 kernel")),
        "{bf16}"
    );
    assert!(bf16.contains("--precision int8"), "{bf16}");
    let fp16 = load(Precision::Fp16, Backend::Auto);
    assert!(fp16.contains("fp16 needs the GPU engine"), "{fp16}");
    assert!(fp16.contains("--precision fp32|int8"), "{fp16}");
}

/// The floors on the real model: per-sentence cosine to the fp32
/// engine on 2,000 sentences and to sentence-transformers' vectors, and
/// retrieval kept (top-10 neighbours of 200 queries).
#[test]
fn real_minilm_int8_keeps_cosine_and_neighbours() {
    let Some(dir) = real_model() else {
        eprintln!("SKIPPED: all-MiniLM-L6-v2 not cached; set PHOTON_FETCH_MODEL=1 to fetch it");
        return;
    };
    let texts = sample_sentences(2_200, 27);
    let (corpus, queries) = texts.split_at(2_000);
    let fp32 = with_precision(&dir, Precision::Fp32, Backend::Auto);
    let int8 = with_precision(&dir, Precision::Int8, Backend::Auto);
    let (exact, quantized) = (fp32.embed(&texts).unwrap(), int8.embed(&texts).unwrap());
    let cosines: Vec<f64> = (0..texts.len())
        .map(|i| cosine(exact.row(i), quantized.row(i)))
        .collect();
    let (worst, at) = cosines
        .iter()
        .enumerate()
        .map(|(i, c)| (*c, i))
        .fold((f64::MAX, 0), |a, b| if b.0 < a.0 { b } else { a });
    let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
    eprintln!("int8 vs fp32 cosine: min {worst:.5}, mean {mean:.5}");
    assert!(
        worst >= 0.99,
        "sentence {at} {:?}: cosine {worst}",
        texts[at]
    );

    let top10 = |vectors: &photon_inference::Embeddings, query: usize| -> Vec<usize> {
        // The vectors are L2-normalised: a dot product is their cosine.
        let q = vectors.row(corpus.len() + query);
        let mut scored: Vec<(f32, usize)> = (0..corpus.len())
            .map(|c| (q.iter().zip(vectors.row(c)).map(|(a, b)| a * b).sum(), c))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.iter().take(10).map(|(_, c)| *c).collect()
    };
    let overlap: f64 = (0..queries.len())
        .map(|q| {
            let (a, b) = (top10(&exact, q), top10(&quantized, q));
            a.iter().filter(|c| b.contains(c)).count() as f64 / 10.0
        })
        .sum::<f64>()
        / queries.len() as f64;
    eprintln!(
        "int8 top-10 overlap with fp32 over {} queries: {overlap:.3}",
        queries.len()
    );
    assert!(overlap >= 0.9, "top-10 overlap {overlap}");

    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/all-minilm-l6-v2-reference.json"
    );
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let ours = int8.embed(&reference.sentences).unwrap();
    for (i, expected) in reference.embeddings.iter().enumerate() {
        let cos = cosine(ours.row(i), expected);
        assert!(cos >= 0.99, "fixture sentence {i}: cosine {cos}");
    }
}
