//! BERT on the CPU with fused kernels and **packed sequences**.
//!
//! The same model as candle-transformers' `BertModel` (same weights, same
//! operations in the same order), computed differently where it saves work:
//!
//! * Sequences are packed end to end with no padding. Every operation except
//!   attention is per token, and attention runs per sequence over its own
//!   length, so padded positions (which a masked softmax gives weight 0) are
//!   simply never computed.
//! * Q, K and V are one product with a fused `[H, 3H]` weight; heads are read
//!   in place from it with strides (no transposes or copies).
//! * A product's bias is added in the pass after it: bias + GELU, or bias +
//!   residual add + layer norm, each one vectorised pass (see
//!   [`crate::kernels`]); softmax is one pass too.
//! * Buffers live in a [`Workspace`] reused across batches.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::{HiddenAct, PositionEmbeddingType};

use crate::error::{InferenceError, Result};
use crate::int8::{Int8Weight, QuantizedRows};
use crate::kernels;
use crate::model_dir::{ModelDir, Pooling};
use crate::precision::Precision;

/// A dense layer, its weight stored transposed (`[in, out]`, see
/// [`kernels::linear`]).
struct Linear {
    weight: Weight,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

/// A dense layer's weight in its product precision.
enum Weight {
    Fp32(Vec<f32>),
    Int8(Int8Weight),
}

impl Linear {
    /// `out = x · W` without the bias, which the next fused pass adds.
    fn product(&self, out: &mut Vec<f32>, x: &[f32], rows: usize, scratch: &mut QuantizedRows) {
        self.compute(out, x, rows, None, scratch);
    }

    /// `out = x · W + b`.
    fn forward(&self, out: &mut Vec<f32>, x: &[f32], rows: usize, scratch: &mut QuantizedRows) {
        self.compute(out, x, rows, Some(&self.bias), scratch);
    }

    fn compute(
        &self,
        out: &mut Vec<f32>,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
        scratch: &mut QuantizedRows,
    ) {
        resize(out, rows * self.outputs);
        match &self.weight {
            Weight::Fp32(w) => kernels::linear(out, x, w, bias, (rows, self.inputs, self.outputs)),
            Weight::Int8(w) => {
                scratch.quantize(x, rows, self.inputs);
                w.product(out, scratch, bias);
            }
        }
    }

    /// The fp32 weight, before any conversion.
    fn fp32(&self) -> &[f32] {
        match &self.weight {
            Weight::Fp32(w) => w,
            Weight::Int8(_) => unreachable!("layers are converted once, after loading"),
        }
    }

    /// Converts the weight to `precision` (fp32 or int8; [`FastBert::load`]
    /// refuses the others).
    fn convert(&mut self, precision: Precision) {
        if precision == Precision::Int8 {
            let int8 = Int8Weight::quantize(self.fp32(), self.inputs, self.outputs);
            self.weight = Weight::Int8(int8);
        }
    }
}

struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// Per-thread scratch buffers, grown to the largest batch seen and reused.
#[derive(Default)]
pub struct Workspace {
    hidden: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    projected: Vec<f32>,
    intermediate: Vec<f32>,
    scores: Vec<f32>,
    /// A product's input quantized per token (int8 only).
    quantized: QuantizedRows,
}

/// The BERT encoder and pooling, weights held as plain `f32` rows.
pub struct FastBert {
    hidden: usize,
    heads: usize,
    eps: f32,
    activation: kernels::Activation,
    max_positions: usize,
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    token_type_embedding: Vec<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    precision: Precision,
}

impl FastBert {
    /// Loads the weights named as in candle-transformers' `BertModel` (with an
    /// optional `bert.` prefix), the dense layers' converted to `precision`:
    /// fp32, or int8 where [`crate::int8::kernel`] says this CPU can.
    pub fn load(model: &ModelDir, precision: Precision) -> Result<Self> {
        match precision {
            Precision::Fp32 => {}
            Precision::Int8 => {
                crate::int8::kernel().map_err(InferenceError::Precision)?;
            }
            other => {
                return Err(InferenceError::Precision(format!(
                    "the fast CPU engine computes in fp32 or int8, not {}",
                    other.name()
                )));
            }
        }
        let config = &model.config;
        if config.position_embedding_type != PositionEmbeddingType::Absolute {
            return Err(InferenceError::Config {
                file: model.root.join("config.json"),
                message: "only absolute position embeddings are supported".into(),
            });
        }
        let tensors = candle_core::safetensors::load(&model.weights, &Device::Cpu)?;
        let weights = Weights::new(&model.weights, tensors);
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let linear = |name: &str, inputs: usize, outputs: usize| -> Result<Linear> {
            Ok(Linear {
                weight: Weight::Fp32(transpose(
                    &weights.get(&format!("{name}.weight"), &[outputs, inputs])?,
                    outputs,
                )),
                bias: weights.get(&format!("{name}.bias"), &[outputs])?,
                inputs,
                outputs,
            })
        };
        let norm = |name: &str| -> Result<LayerNorm> {
            Ok(LayerNorm {
                gamma: weights.get(&format!("{name}.weight"), &[h])?,
                beta: weights.get(&format!("{name}.bias"), &[h])?,
            })
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let (q, k, v) = (
                linear(&format!("{p}.attention.self.query"), h, h)?,
                linear(&format!("{p}.attention.self.key"), h, h)?,
                linear(&format!("{p}.attention.self.value"), h, h)?,
            );
            let mut layer = Layer {
                qkv: Linear {
                    weight: Weight::Fp32(side_by_side(&[q.fp32(), k.fp32(), v.fp32()], h)),
                    bias: [q.bias, k.bias, v.bias].concat(),
                    inputs: h,
                    outputs: 3 * h,
                },
                attention_out: linear(&format!("{p}.attention.output.dense"), h, h)?,
                attention_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                intermediate: linear(&format!("{p}.intermediate.dense"), h, i)?,
                output: linear(&format!("{p}.output.dense"), i, h)?,
                output_norm: norm(&format!("{p}.output.LayerNorm"))?,
            };
            for linear in [
                &mut layer.qkv,
                &mut layer.attention_out,
                &mut layer.intermediate,
                &mut layer.output,
            ] {
                linear.convert(precision);
            }
            layers.push(layer);
        }
        let type_vocab = config.type_vocab_size;
        let token_types =
            weights.get("embeddings.token_type_embeddings.weight", &[type_vocab, h])?;
        Ok(Self {
            hidden: h,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps as f32,
            activation: match config.hidden_act {
                HiddenAct::Gelu => kernels::Activation::GeluErf,
                HiddenAct::GeluApproximate => kernels::Activation::GeluTanh,
                HiddenAct::Relu => kernels::Activation::Relu,
            },
            max_positions: config.max_position_embeddings,
            word_embeddings: weights
                .get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            position_embeddings: weights.get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?,
            // Single-sentence inputs: every token has type 0.
            token_type_embedding: token_types[..h].to_vec(),
            embedding_norm: norm("embeddings.LayerNorm")?,
            layers,
            precision,
        })
    }

    /// The products' precision and, for int8, the kernel that runs them:
    /// `fp32`, or e.g. `int8 (avx2 vpmaddwd)`.
    pub fn precision_name(&self) -> String {
        match self.precision {
            Precision::Int8 => {
                let kernel = crate::int8::kernel().expect("checked at load");
                format!("int8 ({kernel})")
            }
            other => other.name().to_string(),
        }
    }

    /// Width of the sentence vectors.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Runs the encoder over sequences packed end to end (`lengths[s]` tokens
    /// each, all real) and writes one pooled `hidden`-wide row per sequence to
    /// `pooled`.
    pub fn forward_packed(
        &self,
        workspace: &mut Workspace,
        tokens: &[u32],
        lengths: &[usize],
        pooling: Pooling,
        pooled: &mut [f32],
    ) {
        let h = self.hidden;
        let total: usize = lengths.iter().sum();
        assert_eq!(
            total,
            tokens.len(),
            "lengths must add up to the packed tokens"
        );
        assert_eq!(pooled.len(), lengths.len() * h);
        let ws = workspace;

        self.embed(&mut ws.hidden, tokens, lengths);
        for layer in &self.layers {
            layer
                .qkv
                .forward(&mut ws.qkv, &ws.hidden, total, &mut ws.quantized);
            self.attention(&mut ws.context, &mut ws.scores, &ws.qkv, lengths);
            layer
                .attention_out
                .product(&mut ws.projected, &ws.context, total, &mut ws.quantized);
            self.add_and_norm(
                &mut ws.projected,
                &mut ws.hidden,
                layer.attention_out.bias.as_slice(),
                &layer.attention_norm,
            );
            layer
                .intermediate
                .product(&mut ws.intermediate, &ws.hidden, total, &mut ws.quantized);
            kernels::bias_activation_in_place(
                &mut ws.intermediate,
                &layer.intermediate.bias,
                self.activation,
            );
            layer.output.product(
                &mut ws.projected,
                &ws.intermediate,
                total,
                &mut ws.quantized,
            );
            self.add_and_norm(
                &mut ws.projected,
                &mut ws.hidden,
                layer.output.bias.as_slice(),
                &layer.output_norm,
            );
        }
        pool(&ws.hidden, h, lengths, pooling, pooled);
    }

    /// `hidden = LayerNorm(product + bias + hidden)`.
    fn add_and_norm(
        &self,
        product: &mut [f32],
        hidden: &mut [f32],
        bias: &[f32],
        norm: &LayerNorm,
    ) {
        kernels::bias_residual_layer_norm(product, hidden, bias, &norm.gamma, &norm.beta, self.eps);
    }

    /// Word + position + token-type embeddings, then layer norm.
    fn embed(&self, hidden: &mut Vec<f32>, tokens: &[u32], lengths: &[usize]) {
        let h = self.hidden;
        resize(hidden, tokens.len() * h);
        let mut rows = hidden.chunks_exact_mut(h);
        let mut ids = tokens.iter();
        for &len in lengths {
            assert!(
                len <= self.max_positions,
                "sequence longer than the position table"
            );
            for position in 0..len {
                let (row, &id) = (rows.next().unwrap(), ids.next().unwrap());
                let word = &self.word_embeddings[id as usize * h..][..h];
                let pos = &self.position_embeddings[position * h..][..h];
                for (((out, w), p), t) in row
                    .iter_mut()
                    .zip(word)
                    .zip(pos)
                    .zip(&self.token_type_embedding)
                {
                    *out = w + t + p;
                }
            }
        }
        let norm = &self.embedding_norm;
        kernels::layer_norm_in_place(hidden, &norm.gamma, &norm.beta, self.eps);
    }

    /// Multi-head self-attention of each sequence over itself, reading Q, K
    /// and V in place from the fused `[tokens, 3H]` matrix.
    fn attention(
        &self,
        context: &mut Vec<f32>,
        scores: &mut Vec<f32>,
        qkv: &[f32],
        lengths: &[usize],
    ) {
        let longest = lengths.iter().copied().max().unwrap_or(0);
        resize(scores, longest * longest);
        let h = self.hidden;
        let head = h / self.heads;
        let scale = 1.0 / (head as f32).sqrt();
        let total: usize = lengths.iter().sum();
        resize(context, total * h);
        let mut start = 0;
        for &len in lengths {
            let rows = &qkv[start * 3 * h..(start + len) * 3 * h];
            let out = &mut context[start * h..(start + len) * h];
            let scores = &mut scores[..len * len];
            for hd in 0..self.heads {
                let (q, k, v) = (hd * head, h + hd * head, 2 * h + hd * head);
                // scores = scale · Q Kᵀ  (len × len)
                kernels::matmul_strided(
                    (&mut scores[..], len, 1),
                    (&rows[q..], 3 * h, 1),
                    (&rows[k..], 1, 3 * h),
                    (len, head, len),
                    scale,
                );
                kernels::softmax_rows_in_place(scores, len);
                // context[:, head] = P V  (len × head)
                kernels::matmul_strided(
                    (&mut out[hd * head..], h, 1),
                    (&scores[..], len, 1),
                    (&rows[v..], 3 * h, 1),
                    (len, len, head),
                    1.0,
                );
            }
            start += len;
        }
    }
}

fn pool(hidden: &[f32], h: usize, lengths: &[usize], pooling: Pooling, pooled: &mut [f32]) {
    let mut start = 0;
    for (&len, out) in lengths.iter().zip(pooled.chunks_exact_mut(h)) {
        let rows = hidden[start * h..(start + len) * h].chunks_exact(h);
        match pooling {
            Pooling::Cls => out.copy_from_slice(&hidden[start * h..][..h]),
            Pooling::Mean => {
                out.fill(0.0);
                for row in rows {
                    out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
                }
                let inv = 1.0 / len.max(1) as f32;
                out.iter_mut().for_each(|o| *o *= inv);
            }
            Pooling::Max => {
                out.fill(f32::NEG_INFINITY);
                for row in rows {
                    out.iter_mut().zip(row).for_each(|(o, v)| *o = o.max(*v));
                }
            }
        }
        start += len;
    }
}

/// Sets a buffer's length; callers overwrite all of it.
fn resize(buffer: &mut Vec<f32>, len: usize) {
    // Only growth is zero-filled: a batch no larger than the biggest so far
    // costs nothing.
    buffer.resize(len, 0.0);
}

/// The safetensors file's tensors, looked up by name with shape checks.
pub(crate) struct Weights<'a> {
    file: &'a Path,
    tensors: HashMap<String, Tensor>,
    prefix: &'static str,
}

impl<'a> Weights<'a> {
    pub(crate) fn new(file: &'a Path, tensors: HashMap<String, Tensor>) -> Self {
        let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        Self {
            file,
            tensors,
            prefix,
        }
    }

    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let error = |message: String| InferenceError::Weights {
            file: self.file.to_path_buf(),
            tensor: format!("{}{name}", self.prefix),
            message,
        };
        let tensor = self
            .tensors
            .get(&format!("{}{name}", self.prefix))
            .ok_or_else(|| error("missing (is this a BERT model?)".into()))?;
        if tensor.dims() != shape {
            return Err(error(format!(
                "shape {:?}, expected {shape:?}",
                tensor.dims()
            )));
        }
        Ok(tensor
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }
}

/// The transpose of a row-major `rows × (len/rows)` matrix.
fn transpose(w: &[f32], rows: usize) -> Vec<f32> {
    let cols = w.len() / rows;
    let mut t = vec![0.0; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

/// Row-major `k × n` matrices joined side by side into one `k × (parts·n)`.
fn side_by_side(parts: &[&[f32]], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(parts.len() * parts[0].len());
    for r in 0..parts[0].len() / n {
        for part in parts {
            out.extend_from_slice(&part[r * n..(r + 1) * n]);
        }
    }
    out
}
