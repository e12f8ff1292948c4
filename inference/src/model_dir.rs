//! A sentence-transformers model directory: which files it has and what its
//! small JSON configs say about truncation, pooling and normalisation.

use std::path::{Path, PathBuf};

use candle_transformers::models::bert::Config as BertConfig;
use serde::Deserialize;

use crate::error::{InferenceError, Result};

/// How token vectors become one sentence vector (sentence-transformers'
/// `Pooling` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Average of the sequence's token vectors (attention-masked).
    Mean,
    /// The `[CLS]` token's vector.
    Cls,
    /// Element-wise maximum over the sequence's tokens.
    Max,
}

/// A model directory, checked and parsed.
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// The directory.
    pub root: PathBuf,
    /// `config.json`, as candle-transformers' BERT reads it.
    pub config: BertConfig,
    /// Path of `model.safetensors`.
    pub weights: PathBuf,
    /// Path of `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// Tokens per text, special tokens included; longer texts are truncated.
    pub max_seq_length: usize,
    /// The pooling mode.
    pub pooling: Pooling,
    /// Whether sentence vectors are L2-normalised (a `Normalize` module).
    pub normalize: bool,
}

const FETCH_HINT: &str = "pass --model with a sentence-transformers BERT directory \
    (config.json, model.safetensors, tokenizer.json), or run `photon model fetch` for \
    the default all-MiniLM-L6-v2";

impl ModelDir {
    /// Checks that `dir` holds a usable BERT sentence-transformers model.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(InferenceError::MissingDir {
                dir: dir.to_path_buf(),
                hint: FETCH_HINT.into(),
            });
        }
        let require = |file: &str| -> Result<PathBuf> {
            let path = dir.join(file);
            if path.is_file() {
                Ok(path)
            } else {
                Err(InferenceError::MissingFile {
                    dir: dir.to_path_buf(),
                    file: file.into(),
                    hint: FETCH_HINT.into(),
                })
            }
        };
        let config_path = require("config.json")?;
        let weights = require("model.safetensors")?;
        let tokenizer = require("tokenizer.json")?;

        let config: BertConfig = read_json(&config_path)?;
        if let Some(kind) = config.model_type.as_deref()
            && !matches!(kind, "bert")
        {
            return Err(InferenceError::Config {
                file: config_path,
                message: format!(
                    "model_type {kind:?} is not supported; photon-inference runs BERT \
                     models (model_type \"bert\", e.g. all-MiniLM-L6-v2, bge, e5)"
                ),
            });
        }

        let max_seq_length = read_max_seq_length(dir)?
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);
        let (pooling, normalize) = read_modules(dir)?;
        Ok(Self {
            root: dir.to_path_buf(),
            config,
            weights,
            tokenizer,
            max_seq_length,
            pooling,
            normalize,
        })
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| InferenceError::Config {
        file: path.to_path_buf(),
        message: format!("cannot read: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| InferenceError::Config {
        file: path.to_path_buf(),
        message: format!("not a valid config: {e}"),
    })
}

fn read_max_seq_length(dir: &Path) -> Result<Option<usize>> {
    #[derive(Deserialize)]
    struct SentenceBertConfig {
        max_seq_length: Option<usize>,
    }
    let path = dir.join("sentence_bert_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    Ok(read_json::<SentenceBertConfig>(&path)?.max_seq_length)
}

/// Reads `modules.json` (which modules, where the pooling config lives) and the
/// pooling config. Without `modules.json`: mean pooling and normalisation,
/// what sentence-transformers' BERT embedders use.
fn read_modules(dir: &Path) -> Result<(Pooling, bool)> {
    #[derive(Deserialize)]
    struct Module {
        path: String,
        #[serde(rename = "type")]
        kind: String,
    }
    let modules_path = dir.join("modules.json");
    let (pooling_dir, normalize) = if modules_path.is_file() {
        let modules: Vec<Module> = read_json(&modules_path)?;
        let pooling = modules.iter().find(|m| m.kind.ends_with(".Pooling"));
        let normalize = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
        (pooling.map(|m| dir.join(&m.path)), normalize)
    } else {
        (Some(dir.join("1_Pooling")), true)
    };
    let pooling = match pooling_dir.map(|d| d.join("config.json")) {
        Some(path) if path.is_file() => read_pooling(&path)?,
        _ => Pooling::Mean,
    };
    Ok((pooling, normalize))
}

fn read_pooling(path: &Path) -> Result<Pooling> {
    #[derive(Deserialize)]
    struct PoolingConfig {
        #[serde(default)]
        pooling_mode_cls_token: bool,
        #[serde(default)]
        pooling_mode_mean_tokens: bool,
        #[serde(default)]
        pooling_mode_max_tokens: bool,
        #[serde(default)]
        pooling_mode_mean_sqrt_len_tokens: bool,
    }
    let c: PoolingConfig = read_json(path)?;
    match (
        c.pooling_mode_mean_tokens,
        c.pooling_mode_cls_token,
        c.pooling_mode_max_tokens,
        c.pooling_mode_mean_sqrt_len_tokens,
    ) {
        (true, false, false, false) => Ok(Pooling::Mean),
        (false, true, false, false) => Ok(Pooling::Cls),
        (false, false, true, false) => Ok(Pooling::Max),
        _ => Err(InferenceError::Config {
            file: path.to_path_buf(),
            message: "exactly one of pooling_mode_mean_tokens, pooling_mode_cls_token and \
                      pooling_mode_max_tokens must be true (combined and mean-sqrt-len \
                      pooling are not supported)"
                .into(),
        }),
    }
}
