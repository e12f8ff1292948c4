//! A tiny random BERT sentence-transformers directory, for tests that need a
//! real model directory without downloading one (here and in the CLI's tests).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::split_mix::SplitMix64;

/// Hidden size of the tiny model.
pub const TINY_HIDDEN: usize = 32;
/// Maximum sequence length written to its `sentence_bert_config.json`.
pub const TINY_MAX_SEQ_LENGTH: usize = 24;

const WORDS: &str = "the a an of and to in is was for on that with as by at from it this \
    be are or his her they we you he she not but have had has one all were when there can \
    an which their said if do will each about how up out them then many some so these \
    would other into more time two way could people my than first water been called who \
    find long down day did get come made may part man woman food eating eat piece bread \
    cat dog house tree river city car road music book school friend family world night";

/// Writes `config.json`, `model.safetensors`, `tokenizer.json`,
/// `sentence_bert_config.json`, `modules.json` and `1_Pooling/config.json`
/// for a 2-layer, 32-wide BERT with weights drawn from `seed`.
pub fn write_tiny_bert(dir: &Path, seed: u64) -> BoxResult {
    write_tiny_bert_with_layers(dir, seed, 2)
}

/// [`write_tiny_bert`] with `layers` encoder layers (0 leaves embeddings,
/// layer norm and pooling: a check can then tell which step differs).
pub fn write_tiny_bert_with_layers(dir: &Path, seed: u64, layers: usize) -> BoxResult {
    std::fs::create_dir_all(dir.join("1_Pooling"))?;
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    vocab.extend(WORDS.split_whitespace().map(String::from));
    for c in 'a'..='z' {
        vocab.push(c.to_string());
        vocab.push(format!("##{c}"));
    }
    vocab.extend(('0'..='9').map(String::from));
    vocab.extend([".", ",", "!", "?", "'", "-"].map(String::from));
    let vocab_size = vocab.len();
    write_tokenizer(dir, &vocab)?;

    let (h, i, positions) = (TINY_HIDDEN, 64, 64);
    let config = serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": vocab_size, "hidden_size": h, "num_hidden_layers": layers,
        "num_attention_heads": 4, "intermediate_size": i, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": positions, "type_vocab_size": 2,
        "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "position_embedding_type": "absolute"
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    std::fs::write(
        dir.join("sentence_bert_config.json"),
        format!(r#"{{"max_seq_length": {TINY_MAX_SEQ_LENGTH}, "do_lower_case": false}}"#),
    )?;
    std::fs::write(
        dir.join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
{"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
{"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
    )?;
    std::fs::write(
        dir.join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 32, "pooling_mode_cls_token": false,
"pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": false,
"pooling_mode_mean_sqrt_len_tokens": false}"#,
    )?;

    let mut rng = SplitMix64(seed);
    let mut tensors = HashMap::new();
    let mut add = |name: String, shape: &[usize], scale: f32, offset: f32| {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| offset + scale * rng.symmetric()).collect();
        let tensor = Tensor::from_vec(values, shape, &Device::Cpu).expect("shape matches");
        tensors.insert(name, tensor);
    };
    add(
        "embeddings.word_embeddings.weight".into(),
        &[vocab_size, h],
        1.0,
        0.0,
    );
    add(
        "embeddings.position_embeddings.weight".into(),
        &[positions, h],
        0.5,
        0.0,
    );
    add(
        "embeddings.token_type_embeddings.weight".into(),
        &[2, h],
        0.5,
        0.0,
    );
    add("embeddings.LayerNorm.weight".into(), &[h], 0.2, 1.0);
    add("embeddings.LayerNorm.bias".into(), &[h], 0.2, 0.0);
    for l in 0..layers {
        let p = format!("encoder.layer.{l}");
        let mut linear = |name: &str, inputs: usize, outputs: usize| {
            let scale = 1.5 / (inputs as f32).sqrt();
            add(format!("{p}.{name}.weight"), &[outputs, inputs], scale, 0.0);
            add(format!("{p}.{name}.bias"), &[outputs], 0.1, 0.0);
        };
        linear("attention.self.query", h, h);
        linear("attention.self.key", h, h);
        linear("attention.self.value", h, h);
        linear("attention.output.dense", h, h);
        linear("intermediate.dense", h, i);
        linear("output.dense", i, h);
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            add(format!("{p}.{norm}.weight"), &[h], 0.2, 1.0);
            add(format!("{p}.{norm}.bias"), &[h], 0.2, 0.0);
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    Ok(())
}

fn write_tokenizer(dir: &Path, vocab: &[String]) -> BoxResult {
    // WordPiece reads its vocabulary from vocab.txt, one token per line.
    let vocab_file = dir.join("vocab.txt");
    std::fs::write(&vocab_file, vocab.join("\n") + "\n")?;
    let wordpiece = WordPiece::from_file(&vocab_file.to_string_lossy())
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| format!("wordpiece: {e}"))?;
    let mut tokenizer = Tokenizer::new(wordpiece);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
        .map_err(|e| format!("normalizer: {e}"))?;
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), 3),
        ("[CLS]".into(), 2),
    )));
    let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| format!("special tokens: {e}"))?;
    tokenizer
        .save(dir.join("tokenizer.json"), true)
        .map_err(|e| format!("saving tokenizer: {e}"))?;
    Ok(())
}

/// Errors of this test-support module, boxed.
type BoxResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
