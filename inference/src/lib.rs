//! Photon's candle models: a sentence-transformers BERT embedder.
//!
//! [`SentenceEmbedder`] loads a sentence-transformers directory, tokenizes
//! (truncating at the model's maximum length), sorts texts by token length,
//! runs BERT, pools (mean by default, with the attention mask) and
//! L2-normalises, matching sentence-transformers' vectors.
//!
//! Three engines run the same model:
//! * [`fast_bert`] — the CPU default: packed (padding-free) sequences, fused
//!   vectorised kernels, one batch per thread;
//! * [`gpu`] — packed sequences on an NVIDIA GPU: cuBLAS products in fp16,
//!   bf16 or fp32 and the crate's own CUDA kernels, compiled at run time, so
//!   the same build runs with or without CUDA;
//! * [`candle_bert`] — candle-transformers' `BertModel` on padded batches on
//!   the CPU: the reference the others are checked against.
//!
//! ```no_run
//! use photon_inference::{EmbedderOptions, SentenceEmbedder, model_cache};
//! let dir = model_cache::ensure_default_model(|line| eprintln!("{line}"))?;
//! let embedder = SentenceEmbedder::load(&dir, EmbedderOptions::default())?;
//! let vectors = embedder.embed(&["A man is eating food."])?;
//! assert_eq!(vectors.row(0).len(), 384);
//! # Ok::<(), photon_inference::InferenceError>(())
//! ```

pub mod candle_bert;
pub mod embedder;
pub mod error;
pub mod fast_bert;
pub mod gpu;
pub mod int8;
pub mod kernels;
pub mod model_cache;
pub mod model_dir;
pub mod precision;
pub mod sample_text;
mod split_mix;
pub mod tiny_model;

pub use embedder::{
    Backend, DeviceChoice, EmbedStats, EmbedderOptions, Embeddings, EngineInfo, SentenceEmbedder,
};
pub use error::InferenceError;
pub use model_dir::{ModelDir, Pooling};
pub use precision::Precision;
