//! `SentenceEmbedder`: texts in, sentence-transformers vectors out.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::Device;
use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

use crate::candle_bert::CandleBert;
use crate::error::{InferenceError, Result};
use crate::fast_bert::{FastBert, Workspace};
use crate::gpu::device::Gpu;
use crate::gpu::{self, GpuBert, Precision};
use crate::model_dir::ModelDir;

/// Which CPU implementation runs the model (the GPU has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The GPU engine where [`DeviceChoice`] picks the GPU, else the fast CPU path.
    #[default]
    Auto,
    /// The fused, packed CPU path ([`crate::fast_bert`]).
    FastCpu,
    /// candle-transformers' `BertModel` on padded batches on the CPU: the
    /// reference the fast paths are checked against.
    Candle,
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The GPU engine when a GPU is visible (and the backend is `Auto`),
    /// else the CPU.
    #[default]
    Auto,
    /// The CPU engines.
    Cpu,
    /// The GPU engine ([`crate::gpu`]) on the first visible GPU; an error,
    /// before the model loads, where none is visible.
    Gpu,
}

/// How an embedder runs.
#[derive(Debug, Clone)]
pub struct EmbedderOptions {
    /// The CPU implementation.
    pub backend: Backend,
    /// CPU or GPU.
    pub device: DeviceChoice,
    /// The products' precision; `None` for the engine's default (fp32 on the
    /// CPU, fp16 on the GPU).
    pub precision: Option<Precision>,
    /// CPU threads; 0 means one per available core. The fast path runs one
    /// batch per thread; candle parallelises inside each operation; the GPU
    /// engine tokenizes with them.
    pub threads: usize,
    /// Most texts per batch; `None` for the engine's default (256 on the
    /// fast path, 64 for candle, 1024 on the GPU).
    pub max_batch_rows: Option<usize>,
    /// Most tokens per batch, counting padding where the engine pads; `None`
    /// for the engine's default: 512 on the fast path (its activations then
    /// stay in cache: measured 512 ≈ 384 > 1024 > 2048 ≈ 4096 ≈ 8192 tokens,
    /// 93 vs 69–74 rows/s on one thread) and 16384 for candle and the GPU.
    pub max_batch_tokens: Option<usize>,
    /// Sort texts by token length before cutting batches (on by default;
    /// off only to measure what sorting saves).
    pub sort_by_length: bool,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Auto,
            device: DeviceChoice::Auto,
            precision: None,
            threads: 0,
            max_batch_rows: None,
            max_batch_tokens: None,
            sort_by_length: true,
        }
    }
}

/// Batch limits after engine defaults: (rows, tokens).
fn batch_limits(options: &EmbedderOptions, engine: EngineKind) -> (usize, usize) {
    let (rows, tokens) = match engine {
        EngineKind::Fast => (256, 512),
        EngineKind::Candle => (64, 16_384),
        EngineKind::Gpu => (1024, 16_384),
    };
    (
        options.max_batch_rows.unwrap_or(rows).max(1),
        options.max_batch_tokens.unwrap_or(tokens).max(1),
    )
}

/// What one `embed` call computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbedStats {
    /// Texts embedded.
    pub rows: usize,
    /// Real tokens, special tokens included, after truncation.
    pub tokens: usize,
    /// Token positions the model computed: `tokens` plus padding.
    pub computed_tokens: usize,
    /// Batches run.
    pub batches: usize,
    /// Texts cut at the model's maximum sequence length.
    pub truncated: usize,
}

impl EmbedStats {
    /// Share of computed positions that were padding (0 for the packed path).
    pub fn padded_share(&self) -> f64 {
        if self.computed_tokens == 0 {
            0.0
        } else {
            (self.computed_tokens - self.tokens) as f64 / self.computed_tokens as f64
        }
    }

    /// Adds another call's figures.
    pub fn add(&mut self, other: &EmbedStats) {
        self.rows += other.rows;
        self.tokens += other.tokens;
        self.computed_tokens += other.computed_tokens;
        self.batches += other.batches;
        self.truncated += other.truncated;
    }
}

/// Sentence vectors, one `dim`-wide row per input text, in input order.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// Width of each vector.
    pub dim: usize,
    /// `rows × dim` values, row-major.
    pub values: Vec<f32>,
    /// What the call computed.
    pub stats: EmbedStats,
}

impl Embeddings {
    /// The vector of text `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..][..self.dim]
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.values.len() / self.dim
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

enum Engine {
    Fast(FastBert),
    Candle(CandleBert),
    Gpu(Box<GpuBert>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EngineKind {
    Fast,
    Candle,
    Gpu,
}

impl Engine {
    fn kind(&self) -> EngineKind {
        match self {
            Engine::Fast(_) => EngineKind::Fast,
            Engine::Candle(_) => EngineKind::Candle,
            Engine::Gpu(_) => EngineKind::Gpu,
        }
    }
}

/// Texts tokenized at a time by the GPU engine's tokenizing thread, which
/// works on the next chunk while the GPU embeds this one.
const GPU_TOKENIZE_CHUNK: usize = 4096;

/// A loaded sentence-transformers BERT model with its tokenizer.
pub struct SentenceEmbedder {
    model: ModelDir,
    tokenizer: Tokenizer,
    engine: Engine,
    options: EmbedderOptions,
    threads: usize,
    workspaces: Mutex<Vec<Workspace>>,
    /// `threads` threads: candle computes on them, the GPU engine tokenizes.
    pool: Option<rayon::ThreadPool>,
}

impl SentenceEmbedder {
    /// Loads the model in `dir` (see [`ModelDir::open`] for what it needs).
    /// The device and precision are checked first, so a GPU asked for where
    /// none is visible fails before any model loads.
    pub fn load(dir: &Path, options: EmbedderOptions) -> Result<Self> {
        let kind = choose_engine(&options)?;
        Self::load_engine(dir, options, kind, None)
    }

    /// Loads the model onto `gpu` (the GPU engine on a given device: the
    /// tests' emulator), whatever `options.device` says.
    pub fn load_on_gpu(dir: &Path, options: EmbedderOptions, gpu: Box<dyn Gpu>) -> Result<Self> {
        Self::load_engine(dir, options, EngineKind::Gpu, Some(gpu))
    }

    fn load_engine(
        dir: &Path,
        options: EmbedderOptions,
        kind: EngineKind,
        gpu: Option<Box<dyn Gpu>>,
    ) -> Result<Self> {
        let model = ModelDir::open(dir)?;
        let tokenizer = load_tokenizer(&model)?;
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let engine = match kind {
            EngineKind::Gpu => {
                let (rows, tokens) = batch_limits(&options, kind);
                let precision = options.precision.unwrap_or(Precision::Fp16);
                Engine::Gpu(Box::new(match gpu {
                    Some(gpu) => GpuBert::load_on(gpu, &model, precision, tokens, rows)?,
                    None => GpuBert::load(&model, precision, tokens, rows)?,
                }))
            }
            EngineKind::Candle => Engine::Candle(CandleBert::load(&model, &Device::Cpu)?),
            EngineKind::Fast => Engine::Fast(FastBert::load(
                &model,
                options.precision.unwrap_or(Precision::Fp32),
            )?),
        };
        let pool = match engine {
            Engine::Candle(_) | Engine::Gpu(_) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .map_err(|e| candle_core::Error::Msg(format!("thread pool: {e}")))?,
            ),
            Engine::Fast(_) => None,
        };
        Ok(Self {
            model,
            tokenizer,
            engine,
            options,
            threads,
            workspaces: Mutex::new(Vec::new()),
            pool,
        })
    }

    /// Width of the sentence vectors.
    pub fn dim(&self) -> usize {
        self.model.config.hidden_size
    }

    /// The model directory as parsed.
    pub fn model(&self) -> &ModelDir {
        &self.model
    }

    /// Threads this embedder computes with.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Which implementation runs the model: `fast-cpu`, `candle-cpu` or `gpu`.
    pub fn backend_name(&self) -> &'static str {
        match &self.engine {
            Engine::Fast(_) => "fast-cpu",
            Engine::Candle(_) => "candle-cpu",
            Engine::Gpu(_) => "gpu",
        }
    }

    /// What computes this embedder's vectors, for summaries and stats.
    pub fn engine_info(&self) -> EngineInfo {
        let (device, precision, gpu_memory_bytes) = match &self.engine {
            Engine::Gpu(gpu) => (
                format!("gpu:{} ({})", gpu.device().visible_id, gpu.device().name),
                gpu.precision().name().to_string(),
                gpu.device_bytes(),
            ),
            Engine::Fast(bert) => ("cpu".to_string(), bert.precision_name(), 0),
            Engine::Candle(_) => ("cpu".to_string(), Precision::Fp32.name().to_string(), 0),
        };
        EngineInfo {
            engine: self.backend_name().to_string(),
            device,
            precision,
            threads: self.threads,
            gpu_memory_bytes,
        }
    }

    /// Tokenizes texts (special tokens added, truncated at the model's maximum
    /// sequence length). Returns the token ids and how many were truncated.
    pub fn tokenize<S: AsRef<str>>(&self, texts: &[S]) -> Result<(Vec<Vec<u32>>, usize)> {
        let inputs: Vec<&str> = texts.iter().map(|t| t.as_ref()).collect();
        let encodings = self
            .tokenizer
            .encode_batch_fast(inputs, true)
            .map_err(|e| InferenceError::Tokenize {
                texts: texts.len(),
                message: e.to_string(),
            })?;
        let truncated = encodings
            .iter()
            .filter(|e| !e.get_overflowing().is_empty())
            .count();
        Ok((
            encodings
                .into_iter()
                .map(|e| e.get_ids().to_vec())
                .collect(),
            truncated,
        ))
    }

    /// Embeds texts; row `i` of the result is text `i`'s vector.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Embeddings> {
        self.embed_reporting(texts, &|_| {})
    }

    /// [`embed`](Self::embed), calling `rows_done` with each batch's row
    /// count as the batch finishes (from the computing threads), so a
    /// caller can show progress inside a long call.
    pub fn embed_reporting<S: AsRef<str>>(
        &self,
        texts: &[S],
        rows_done: &(dyn Fn(usize) + Sync),
    ) -> Result<Embeddings> {
        if matches!(self.engine, Engine::Gpu(_)) {
            return self.embed_gpu_pipelined(texts, rows_done);
        }
        let (sequences, truncated) = self.tokenize(texts)?;
        let mut embeddings = self.embed_tokens_reporting(&sequences, rows_done)?;
        embeddings.stats.truncated = truncated;
        Ok(embeddings)
    }

    /// The GPU engine's `embed`: a thread tokenizes chunk `n + 1` (on the
    /// tokenizer's CPU threads) while the GPU embeds chunk `n`, so the GPU
    /// waits on tokenization only when the CPUs cannot keep up.
    fn embed_gpu_pipelined<S: AsRef<str>>(
        &self,
        texts: &[S],
        rows_done: &(dyn Fn(usize) + Sync),
    ) -> Result<Embeddings> {
        let dim = self.dim();
        let mut values = vec![0.0f32; texts.len() * dim];
        let mut stats = EmbedStats::default();
        let texts: Vec<&str> = texts.iter().map(|t| t.as_ref()).collect();
        std::thread::scope(|scope| -> Result<()> {
            let (sender, chunks) = std::sync::mpsc::sync_channel(1);
            let pool = self.pool.as_ref().expect("the GPU engine has a pool");
            scope.spawn(move || {
                for chunk in texts.chunks(GPU_TOKENIZE_CHUNK) {
                    // On `threads` threads, so actors sharing a node share its cores.
                    let tokenized = pool.install(|| self.tokenize(chunk));
                    // A send fails only when the GPU side stopped on an error.
                    if sender.send(tokenized).is_err() {
                        break;
                    }
                }
            });
            let mut first_row = 0;
            for tokenized in chunks {
                let (sequences, truncated) = tokenized?;
                let mut chunk = self.embed_tokens_reporting(&sequences, rows_done)?;
                values[first_row * dim..][..chunk.values.len()].copy_from_slice(&chunk.values);
                first_row += sequences.len();
                chunk.stats.truncated = truncated;
                stats.add(&chunk.stats);
            }
            Ok(())
        })?;
        Ok(Embeddings { dim, values, stats })
    }

    /// Embeds already tokenized sequences (each at most the model's maximum
    /// sequence length).
    pub fn embed_tokens(&self, sequences: &[Vec<u32>]) -> Result<Embeddings> {
        self.embed_tokens_reporting(sequences, &|_| {})
    }

    fn embed_tokens_reporting(
        &self,
        sequences: &[Vec<u32>],
        rows_done: &(dyn Fn(usize) + Sync),
    ) -> Result<Embeddings> {
        let dim = self.dim();
        let batches = cut_batches(sequences, &self.options, self.engine.kind());
        let mut stats = EmbedStats {
            rows: sequences.len(),
            tokens: sequences.iter().map(Vec::len).sum(),
            batches: batches.len(),
            ..EmbedStats::default()
        };
        stats.computed_tokens = batches.iter().map(|b| b.computed_tokens).sum();

        let results = match &self.engine {
            Engine::Fast(bert) => self.run_fast(bert, sequences, &batches, rows_done),
            Engine::Candle(bert) => self.run_candle(bert, sequences, &batches, rows_done)?,
            Engine::Gpu(bert) => self.run_gpu(bert, sequences, &batches, rows_done)?,
        };
        let mut values = vec![0.0f32; sequences.len() * dim];
        for (batch, pooled) in batches.iter().zip(results) {
            for (&row, vector) in batch.rows.iter().zip(pooled.chunks_exact(dim)) {
                values[row * dim..][..dim].copy_from_slice(vector);
            }
        }
        // The GPU engine normalises in its pooling kernel.
        if self.model.normalize && !matches!(self.engine, Engine::Gpu(_)) {
            for row in values.chunks_exact_mut(dim) {
                l2_normalize(row);
            }
        }
        Ok(Embeddings { dim, values, stats })
    }

    /// One batch per thread, batches taken from a shared counter so a thread
    /// that drew short texts takes more.
    fn run_fast(
        &self,
        bert: &FastBert,
        sequences: &[Vec<u32>],
        batches: &[Batch],
        rows_done: &(dyn Fn(usize) + Sync),
    ) -> Vec<Vec<f32>> {
        let next = AtomicUsize::new(0);
        let dim = self.dim();
        let pooling = self.model.pooling;
        let mut results: Vec<Vec<f32>> = vec![Vec::new(); batches.len()];
        let workers = self.threads.min(batches.len()).max(1);
        let finished: Vec<Vec<(usize, Vec<f32>)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut workspace =
                            self.workspaces.lock().unwrap().pop().unwrap_or_default();
                        let mut done = Vec::new();
                        let mut tokens = Vec::new();
                        let mut lengths = Vec::new();
                        loop {
                            let index = next.fetch_add(1, Ordering::Relaxed);
                            let Some(batch) = batches.get(index) else {
                                break;
                            };
                            tokens.clear();
                            lengths.clear();
                            for &row in &batch.rows {
                                tokens.extend_from_slice(&sequences[row]);
                                lengths.push(sequences[row].len());
                            }
                            let mut pooled = vec![0.0; batch.rows.len() * dim];
                            bert.forward_packed(
                                &mut workspace,
                                &tokens,
                                &lengths,
                                pooling,
                                &mut pooled,
                            );
                            done.push((index, pooled));
                            rows_done(batch.rows.len());
                        }
                        self.workspaces.lock().unwrap().push(workspace);
                        done
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("embedding thread panicked"))
                .collect()
        });
        for (index, pooled) in finished.into_iter().flatten() {
            results[index] = pooled;
        }
        results
    }

    /// Batches one after another on the GPU (each fills it).
    fn run_gpu(
        &self,
        bert: &GpuBert,
        sequences: &[Vec<u32>],
        batches: &[Batch],
        rows_done: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<Vec<f32>>> {
        let mut tokens = Vec::new();
        let mut lengths = Vec::new();
        batches
            .iter()
            .map(|batch| {
                tokens.clear();
                lengths.clear();
                for &row in &batch.rows {
                    tokens.extend_from_slice(&sequences[row]);
                    lengths.push(sequences[row].len());
                }
                let pooled = bert.forward_packed(
                    &tokens,
                    &lengths,
                    self.model.pooling,
                    self.model.normalize,
                )?;
                rows_done(batch.rows.len());
                Ok(pooled)
            })
            .collect()
    }

    fn run_candle(
        &self,
        bert: &CandleBert,
        sequences: &[Vec<u32>],
        batches: &[Batch],
        rows_done: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<Vec<f32>>> {
        let pool = self.pool.as_ref().expect("candle engine has a pool");
        pool.install(|| {
            batches
                .iter()
                .map(|batch| {
                    let rows: Vec<&[u32]> = batch.rows.iter().map(|&r| &sequences[r][..]).collect();
                    let pooled = bert.forward_padded(&rows, self.model.pooling);
                    rows_done(batch.rows.len());
                    pooled
                })
                .collect()
        })
    }
}

/// A batch: which input rows, and how many token positions it computes.
struct Batch {
    rows: Vec<usize>,
    computed_tokens: usize,
}

/// Sorts rows by token length (longest first, so the big batches start
/// early and the tail is short) and cuts batches of similar lengths, so
/// padding stays small where the backend pads at all.
fn cut_batches(
    sequences: &[Vec<u32>],
    options: &EmbedderOptions,
    engine: EngineKind,
) -> Vec<Batch> {
    let (max_rows, max_tokens) = batch_limits(options, engine);
    let pads = engine == EngineKind::Candle;
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    if options.sort_by_length {
        order.sort_by_key(|&i| std::cmp::Reverse(sequences[i].len()));
    }
    let cost = |rows: usize, longest: usize, sum: usize| if pads { rows * longest } else { sum };
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let (mut longest, mut sum) = (0, 0);
    for row in order {
        let len = sequences[row].len();
        let (new_longest, new_sum) = (longest.max(len), sum + len);
        let too_big =
            current.len() >= max_rows || cost(current.len() + 1, new_longest, new_sum) > max_tokens;
        if !current.is_empty() && too_big {
            batches.push(Batch {
                computed_tokens: cost(current.len(), longest, sum),
                rows: std::mem::take(&mut current),
            });
            (longest, sum) = (len, len);
        } else {
            (longest, sum) = (new_longest, new_sum);
        }
        current.push(row);
    }
    if !current.is_empty() {
        batches.push(Batch {
            computed_tokens: cost(current.len(), longest, sum),
            rows: current,
        });
    }
    batches
}

fn l2_normalize(row: &mut [f32]) {
    let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    row.iter_mut().for_each(|v| *v /= norm);
}

/// The tokenizer with truncation at the model's maximum length and no
/// padding (all-MiniLM-L6-v2's `tokenizer.json` pads every text to 128).
fn load_tokenizer(model: &ModelDir) -> Result<Tokenizer> {
    let error = |message: String| InferenceError::Config {
        file: model.tokenizer.clone(),
        message,
    };
    let mut tokenizer = Tokenizer::from_file(&model.tokenizer)
        .map_err(|e| error(format!("not a valid tokenizer: {e}")))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: model.max_seq_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            ..TruncationParams::default()
        }))
        .map_err(|e| error(format!("cannot set truncation: {e}")))?;
    Ok(tokenizer)
}

/// Which engine `options` ask for, checked before anything loads: a GPU
/// asked for where none is visible, or a precision the engine does not run,
/// is an error that names this host.
fn choose_engine(options: &EmbedderOptions) -> Result<EngineKind> {
    let host = gpu::host_name();
    let cpu_engine = || match options.backend {
        Backend::Candle => EngineKind::Candle,
        Backend::Auto | Backend::FastCpu => EngineKind::Fast,
    };
    let kind = match options.device {
        DeviceChoice::Cpu => cpu_engine(),
        DeviceChoice::Gpu => {
            if options.backend != Backend::Auto {
                return Err(InferenceError::Gpu(format!(
                    "the {:?} backend runs on the CPU; with the GPU leave the backend at auto",
                    options.backend
                )));
            }
            match gpu::visible_gpus() {
                Ok(0) => {
                    return Err(InferenceError::Gpu(no_gpu_message(
                        &host,
                        "no CUDA GPU is visible",
                    )));
                }
                Ok(_) => EngineKind::Gpu,
                Err(e) => return Err(InferenceError::Gpu(no_gpu_message(&host, &e))),
            }
        }
        DeviceChoice::Auto if options.backend != Backend::Auto => cpu_engine(),
        DeviceChoice::Auto => match gpu::visible_gpus() {
            Ok(0) => cpu_engine(),
            Ok(_) => EngineKind::Gpu,
            Err(e) => {
                tracing::warn!(host, "device auto: running on the CPU: {e}");
                cpu_engine()
            }
        },
    };
    let Some(precision) = options.precision else {
        return Ok(kind);
    };
    match (kind, precision) {
        (_, Precision::Fp32) => Ok(kind),
        (EngineKind::Gpu, p) => gpu::check_precision(p)
            .map(|()| kind)
            .map_err(InferenceError::Gpu),
        (EngineKind::Fast, Precision::Int8) => crate::int8::kernel()
            .map(|_| kind)
            .map_err(InferenceError::Precision),
        (EngineKind::Candle, p) => Err(InferenceError::Precision(format!(
            "the candle backend computes in fp32 only, not {}; leave the backend at auto \
             for int8 on the CPU",
            p.name()
        ))),
        (EngineKind::Fast, Precision::Bf16) => {
            Err(InferenceError::Precision(cpu_bf16_message(&host)))
        }
        (EngineKind::Fast, p) => Err(InferenceError::Precision(format!(
            "{} needs the GPU engine (--device gpu); on {host} this model runs on the CPU, \
             which computes in fp32 or int8 (--precision fp32|int8)",
            p.name()
        ))),
    }
}

/// Why bf16 does not run on the CPU engine, naming what this CPU has: bf16
/// is only worth running where the CPU multiplies bf16 itself.
fn cpu_bf16_message(host: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|line| line.starts_with("flags"))
        .map(|line| line.split_whitespace().collect())
        .unwrap_or_default();
    let units: Vec<&str> = ["avx512_bf16", "amx_bf16"]
        .into_iter()
        .filter(|unit| flags.contains(unit))
        .collect();
    let why = if units.is_empty() {
        format!("it needs AVX512_BF16 or AMX-BF16, which the CPU of {host} lacks")
    } else {
        format!(
            "{host} has {}, but the CPU engine has no bf16 kernel yet",
            units.join(" and ")
        )
    };
    format!(
        "bf16 does not run on the CPU engine: {why}; use --precision int8 (or fp32) on the \
         CPU, or --device gpu"
    )
}

fn no_gpu_message(host: &str, why: &str) -> String {
    let visible = std::env::var("CUDA_VISIBLE_DEVICES")
        .map(|v| format!("CUDA_VISIBLE_DEVICES={v:?}"))
        .unwrap_or_else(|_| "CUDA_VISIBLE_DEVICES unset".into());
    format!(
        "the GPU was asked for, but on {host} {why} ({visible}); run where a GPU is, \
         or choose the CPU (--device cpu)"
    )
}

/// Which engine computes an embedder's vectors, where, and in what precision:
/// shown as `engine=gpu device=gpu:0 (NVIDIA H100 80GB HBM3) precision=fp16
/// threads=16 gpu_memory=310MiB`, and read back from that form (it travels
/// from actors to the driver as text, and the progress line shows it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EngineInfo {
    /// `fast-cpu`, `candle-cpu` or `gpu`.
    pub engine: String,
    /// `cpu`, or the GPU: `gpu:ID (NAME)`.
    pub device: String,
    /// `fp32`, `fp16` or `bf16`.
    pub precision: String,
    /// Threads computing on the CPU (on the GPU engine, tokenizing).
    pub threads: usize,
    /// Device memory the GPU engine allocated (weights and activation
    /// buffers), to the MiB; 0 on the CPU.
    pub gpu_memory_bytes: u64,
}

impl std::fmt::Display for EngineInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "engine={} device={} precision={} threads={}",
            self.engine, self.device, self.precision, self.threads
        )?;
        if self.gpu_memory_bytes > 0 {
            write!(
                f,
                " gpu_memory={}MiB",
                self.gpu_memory_bytes.div_ceil(1 << 20)
            )?;
        }
        Ok(())
    }
}

impl std::str::FromStr for EngineInfo {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        // A value runs to the next key: the device's name has spaces.
        const KEYS: [&str; 5] = [
            "engine=",
            "device=",
            "precision=",
            "threads=",
            "gpu_memory=",
        ];
        let field = |key: &str| -> Option<&str> {
            let start = text.find(key)? + key.len();
            let rest = &text[start..];
            let end = KEYS
                .iter()
                .filter_map(|k| rest.find(&format!(" {k}")))
                .min()
                .unwrap_or(rest.len());
            Some(rest[..end].trim())
        };
        let required = |key: &str| {
            field(key)
                .map(str::to_string)
                .ok_or_else(|| format!("no {key} in the engine description {text:?}"))
        };
        let number = |key: &str, value: &str| {
            value
                .parse::<u64>()
                .map_err(|e| format!("{key} in {text:?}: {e}"))
        };
        let gpu_memory_bytes = match field("gpu_memory=") {
            Some(mib) => number("gpu_memory", mib.trim_end_matches("MiB"))? << 20,
            None => 0,
        };
        Ok(Self {
            engine: required("engine=")?,
            device: required("device=")?,
            precision: required("precision=")?,
            threads: number("threads", &required("threads=")?)? as usize,
            gpu_memory_bytes,
        })
    }
}

#[cfg(test)]
mod engine_info_tests {
    use super::EngineInfo;

    #[test]
    fn reads_back_what_it_shows() {
        let cpu = EngineInfo {
            engine: "fast-cpu".into(),
            device: "cpu".into(),
            precision: "fp32".into(),
            threads: 2,
            gpu_memory_bytes: 0,
        };
        let text = cpu.to_string();
        assert_eq!(text, "engine=fast-cpu device=cpu precision=fp32 threads=2");
        assert_eq!(text.parse::<EngineInfo>().unwrap(), cpu);
        let gpu = EngineInfo {
            engine: "gpu".into(),
            device: "gpu:3 (NVIDIA H100 80GB HBM3)".into(),
            precision: "fp16".into(),
            threads: 16,
            gpu_memory_bytes: 310 << 20,
        };
        let text = gpu.to_string();
        assert_eq!(
            text,
            "engine=gpu device=gpu:3 (NVIDIA H100 80GB HBM3) precision=fp16 threads=16 gpu_memory=310MiB"
        );
        assert_eq!(text.parse::<EngineInfo>().unwrap(), gpu);
        assert!(
            "engine=x"
                .parse::<EngineInfo>()
                .unwrap_err()
                .contains("device")
        );
    }
}
