//! BERT on one GPU: cuBLAS for the products, the crate's own kernels
//! (`kernels.cu`) for everything between them, on packed sequences.
//!
//! The same computation as [`crate::fast_bert`], step for step:
//! embeddings + layer norm; per layer the fused QKV product, attention per
//! sequence and head (Q, K, V biases added as they are read), the output
//! product, bias + residual + layer norm, the intermediate product, bias +
//! GELU, the output product, bias + residual + layer norm; then pooling and
//! L2 normalisation. Products take fp16 or bf16 inputs (or fp32 for checking)
//! and accumulate and write fp32; the residual stream and every non-linear
//! step stay fp32.
//!
//! Weights are uploaded once. Activations live in buffers sized for the
//! largest batch at load and reused by every batch.

use std::sync::Mutex;

use candle_transformers::models::bert::HiddenAct;

use super::cuda::CudaGpu;
use super::device::{DeviceBuffer, Gemm, Gpu, KernelArg, Launch};
use super::{GpuDevice, Precision};
use crate::error::{InferenceError, Result};
use crate::fast_bert::Weights;
use crate::model_dir::{ModelDir, Pooling};

/// Threads per block of the row kernels (`LN_THREADS` in `kernels.cu`), and
/// the widest row they take (`LN_THREADS * LN_PER_THREAD`).
const ROW_THREADS: u32 = 128;
const MAX_WIDTH: usize = 1024;
/// The attention kernel holds a head in registers: at most this wide.
const MAX_HEAD_DIM: usize = 128;

/// A dense layer on the device: the weight as PyTorch stores it, `[out, in]`
/// row-major, in the product precision; the bias in fp32.
struct DeviceLinear {
    weight: DeviceBuffer,
    bias: DeviceBuffer,
    inputs: usize,
    outputs: usize,
}

struct DeviceNorm {
    gamma: DeviceBuffer,
    beta: DeviceBuffer,
}

struct DeviceLayer {
    qkv: DeviceLinear,
    attention_out: DeviceLinear,
    attention_norm: DeviceNorm,
    intermediate: DeviceLinear,
    output: DeviceLinear,
    output_norm: DeviceNorm,
}

/// Activation buffers, sized for `tokens` tokens and `rows` sequences.
struct Buffers {
    tokens: usize,
    rows: usize,
    ids: DeviceBuffer,
    positions: DeviceBuffer,
    starts: DeviceBuffer,
    /// The residual stream, fp32 `[tokens, hidden]`.
    hidden: DeviceBuffer,
    /// Its copy in the product precision: the next product's input.
    hidden_act: DeviceBuffer,
    /// Every product's fp32 output: `[tokens, max(3·hidden, intermediate)]`.
    product: DeviceBuffer,
    /// Attention's context, then the activation's output (product precision).
    scratch_act: DeviceBuffer,
    /// fp32 `[rows, hidden]`.
    pooled: DeviceBuffer,
}

/// The model on one GPU.
pub struct GpuBert {
    precision: Precision,
    hidden: usize,
    heads: usize,
    intermediate: usize,
    eps: f32,
    activation: i32,
    max_positions: usize,
    word_embeddings: DeviceBuffer,
    position_embeddings: DeviceBuffer,
    token_type_embedding: DeviceBuffer,
    embedding_norm: DeviceNorm,
    layers: Vec<DeviceLayer>,
    buffers: Mutex<Buffers>,
    device_bytes: u64,
    device: GpuDevice,
    // Last: the buffers above are freed before the device they live on.
    gpu: Box<dyn Gpu>,
}

impl GpuBert {
    /// Loads the model onto the first visible GPU, with activation buffers
    /// for batches of up to `max_tokens` tokens and `max_rows` sequences.
    /// Kernels are compiled once per GPU architecture and cached in the model
    /// cache.
    pub fn load(
        model: &ModelDir,
        precision: Precision,
        max_tokens: usize,
        max_rows: usize,
    ) -> Result<Self> {
        super::check_precision(precision).map_err(InferenceError::Gpu)?;
        let head_dim = check_shape(model)?;
        let cache = crate::model_cache::cache_dir().join("gpu-kernels");
        let gpu = CudaGpu::open(precision, head_dim, Some(&cache)).map_err(InferenceError::Gpu)?;
        Self::load_on(Box::new(gpu), model, precision, max_tokens, max_rows)
    }

    /// [`load`](Self::load) on a given device (whose kernels were compiled
    /// for `precision` and the model's head width).
    pub fn load_on(
        gpu: Box<dyn Gpu>,
        model: &ModelDir,
        precision: Precision,
        max_tokens: usize,
        max_rows: usize,
    ) -> Result<Self> {
        super::check_precision(precision).map_err(InferenceError::Gpu)?;
        check_shape(model)?;
        let config = &model.config;
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let tensors = candle_core::safetensors::load(&model.weights, &candle_core::Device::Cpu)?;
        let weights = Weights::new(&model.weights, tensors);
        let allocated = std::cell::Cell::new(0usize);
        let alloc = |bytes: usize| {
            allocated.set(allocated.get() + bytes);
            gpu.alloc(bytes).map_err(InferenceError::Gpu)
        };
        let upload = |bytes: &[u8]| -> Result<DeviceBuffer> {
            let buffer = alloc(bytes.len())?;
            gpu.upload(bytes, &buffer).map_err(InferenceError::Gpu)?;
            Ok(buffer)
        };
        let upload_f32 = |values: &[f32]| upload(&f32_bytes(values));
        let linear = |names: &[String], inputs: usize, outputs: usize| -> Result<DeviceLinear> {
            let mut weight = Vec::with_capacity(names.len() * outputs * inputs);
            let mut bias = Vec::with_capacity(names.len() * outputs);
            for name in names {
                weight.extend(weights.get(&format!("{name}.weight"), &[outputs, inputs])?);
                bias.extend(weights.get(&format!("{name}.bias"), &[outputs])?);
            }
            Ok(DeviceLinear {
                weight: upload(&to_precision(&weight, precision))?,
                bias: upload_f32(&bias)?,
                inputs,
                outputs: names.len() * outputs,
            })
        };
        let norm = |name: &str| -> Result<DeviceNorm> {
            Ok(DeviceNorm {
                gamma: upload_f32(&weights.get(&format!("{name}.weight"), &[h])?)?,
                beta: upload_f32(&weights.get(&format!("{name}.bias"), &[h])?)?,
            })
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let qkv = ["query", "key", "value"].map(|n| format!("{p}.attention.self.{n}"));
            layers.push(DeviceLayer {
                qkv: linear(&qkv, h, h)?,
                attention_out: linear(&[format!("{p}.attention.output.dense")], h, h)?,
                attention_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                intermediate: linear(&[format!("{p}.intermediate.dense")], h, i)?,
                output: linear(&[format!("{p}.output.dense")], i, h)?,
                output_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let max_positions = config.max_position_embeddings;
        let token_types = weights.get(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        )?;
        let word_embeddings = upload_f32(
            &weights.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
        )?;
        let position_embeddings = upload_f32(
            &weights.get("embeddings.position_embeddings.weight", &[max_positions, h])?,
        )?;
        // Single-sentence inputs: every token has type 0.
        let token_type_embedding = upload_f32(&token_types[..h])?;
        let embedding_norm = norm("embeddings.LayerNorm")?;

        // A sequence longer than the token budget is a batch of its own.
        let tokens = max_tokens.max(max_positions);
        let rows = max_rows.max(1);
        let element = precision.element_bytes();
        let buffers = Buffers {
            tokens,
            rows,
            ids: alloc(4 * tokens)?,
            positions: alloc(4 * tokens)?,
            starts: alloc(4 * (rows + 1))?,
            hidden: alloc(4 * tokens * h)?,
            hidden_act: alloc(element * tokens * h)?,
            product: alloc(4 * tokens * (3 * h).max(i))?,
            scratch_act: alloc(element * tokens * i)?,
            pooled: alloc(4 * rows * h)?,
        };
        Ok(Self {
            precision,
            hidden: h,
            heads: config.num_attention_heads,
            intermediate: i,
            eps: config.layer_norm_eps as f32,
            activation: match config.hidden_act {
                HiddenAct::Gelu => 0,
                HiddenAct::GeluApproximate => 1,
                HiddenAct::Relu => 2,
            },
            max_positions,
            word_embeddings,
            position_embeddings,
            token_type_embedding,
            embedding_norm,
            layers,
            buffers: Mutex::new(buffers),
            device_bytes: allocated.get() as u64,
            device: gpu.describe(),
            gpu,
        })
    }

    /// The GPU it runs on.
    pub fn device(&self) -> &GpuDevice {
        &self.device
    }

    /// The products' input precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Device memory this engine allocated: weights and activation buffers
    /// (cuBLAS's workspace and the CUDA context come on top).
    pub fn device_bytes(&self) -> u64 {
        self.device_bytes
    }

    /// Runs the encoder over sequences packed end to end (`lengths[s]` tokens
    /// each) and returns one pooled `hidden`-wide row per sequence,
    /// L2-normalised when `normalize` is set.
    pub fn forward_packed(
        &self,
        tokens: &[u32],
        lengths: &[usize],
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Vec<f32>> {
        let total = tokens.len();
        let rows = lengths.len();
        assert_eq!(
            lengths.iter().sum::<usize>(),
            total,
            "lengths must add up to the tokens"
        );
        if total == 0 {
            // Only empty sequences (a grid of no blocks is an error in CUDA):
            // their pooled vectors are zeros, as the CPU engine's are.
            return Ok(vec![0.0; rows * self.hidden]);
        }
        let buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        let b = &*buffers;
        assert!(
            total <= b.tokens && rows <= b.rows,
            "a batch of {total} tokens in {rows} rows exceeds the buffers ({} tokens, {} rows)",
            b.tokens,
            b.rows
        );
        let mut positions = Vec::with_capacity(total);
        let mut starts = Vec::with_capacity(rows + 1);
        starts.push(0u32);
        for &len in lengths {
            assert!(
                len <= self.max_positions,
                "sequence longer than the position table"
            );
            positions.extend(0..len as u32);
            starts.push(starts.last().copied().unwrap_or(0) + len as u32);
        }
        let longest = lengths.iter().copied().max().unwrap_or(0);
        self.upload(&u32_bytes(tokens), &b.ids)?;
        self.upload(&u32_bytes(&positions), &b.positions)?;
        self.upload(&u32_bytes(&starts), &b.starts)?;

        use KernelArg::{Address, Float, Int, Long};
        let width = Int(self.hidden as i32);
        let eps = Float(self.eps);
        let (hidden, hidden_act) = (Address(b.hidden.address), Address(b.hidden_act.address));
        let (product, scratch) = (Address(b.product.address), Address(b.scratch_act.address));
        let starts = Address(b.starts.address);
        let per_token = Launch {
            grid: (total as u32, 1),
            threads: ROW_THREADS,
        };
        let norm = &self.embedding_norm;
        self.launch(
            "embed_layer_norm",
            per_token,
            &[
                Address(b.ids.address),
                Address(b.positions.address),
                Address(self.word_embeddings.address),
                Address(self.position_embeddings.address),
                Address(self.token_type_embedding.address),
                Address(norm.gamma.address),
                Address(norm.beta.address),
                eps,
                width,
                hidden,
                hidden_act,
            ],
        )?;

        let head_dim = self.hidden / self.heads;
        let scale = Float(1.0 / (head_dim as f32).sqrt());
        // One thread per query: a block no wider than the longest sequence.
        let attention = Launch {
            grid: (rows as u32, self.heads as u32),
            threads: (longest.div_ceil(32) * 32).clamp(32, 128) as u32,
        };
        let activation_count = total * self.intermediate;
        let activation = Launch {
            grid: (activation_count.div_ceil(256).min(1 << 20) as u32, 1),
            threads: 256,
        };
        for layer in &self.layers {
            self.product(b.hidden_act.address, &layer.qkv, b.product.address, total)?;
            self.launch(
                "attention",
                attention,
                &[
                    product,
                    Address(layer.qkv.bias.address),
                    starts,
                    width,
                    scale,
                    scratch,
                ],
            )?;
            self.product(
                b.scratch_act.address,
                &layer.attention_out,
                b.product.address,
                total,
            )?;
            let add_and_norm = |linear: &DeviceLinear, norm: &DeviceNorm| {
                self.launch(
                    "bias_residual_layer_norm",
                    per_token,
                    &[
                        product,
                        Address(linear.bias.address),
                        Address(norm.gamma.address),
                        Address(norm.beta.address),
                        eps,
                        width,
                        hidden,
                        hidden_act,
                    ],
                )
            };
            add_and_norm(&layer.attention_out, &layer.attention_norm)?;
            self.product(
                b.hidden_act.address,
                &layer.intermediate,
                b.product.address,
                total,
            )?;
            self.launch(
                "bias_activation",
                activation,
                &[
                    product,
                    Address(layer.intermediate.bias.address),
                    Int(self.intermediate as i32),
                    Long(activation_count as i64),
                    Int(self.activation),
                    scratch,
                ],
            )?;
            self.product(
                b.scratch_act.address,
                &layer.output,
                b.product.address,
                total,
            )?;
            add_and_norm(&layer.output, &layer.output_norm)?;
        }

        let mode = match pooling {
            Pooling::Mean => 0,
            Pooling::Cls => 1,
            Pooling::Max => 2,
        };
        self.launch(
            "pool",
            Launch {
                grid: (rows as u32, 1),
                threads: ROW_THREADS,
            },
            &[
                hidden,
                starts,
                width,
                Int(mode),
                Int(normalize as i32),
                Address(b.pooled.address),
            ],
        )?;
        let mut bytes = vec![0u8; 4 * rows * self.hidden];
        self.gpu
            .download(&b.pooled, &mut bytes)
            .map_err(InferenceError::Gpu)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// `out[rows, outputs] = x[rows, inputs] · Wᵀ` (no bias), fp32 out.
    ///
    /// cuBLAS is column-major: row-major `x` is `xᵀ` to it, row-major
    /// `[out, in]` W is `Wᵀ`, and row-major `out` is `outᵀ`. So it computes
    /// `outᵀ = W · xᵀ`: op(A) = Aᵀ on the weight, B = x as is ("TN").
    fn product(&self, x: u64, linear: &DeviceLinear, out: u64, rows: usize) -> Result<()> {
        let gemm = Gemm {
            transpose_a: true,
            transpose_b: false,
            m: linear.outputs,
            n: rows,
            k: linear.inputs,
            a: linear.weight.address,
            lda: linear.inputs,
            b: x,
            ldb: linear.inputs,
            c: out,
            ldc: linear.outputs,
            input: self.precision,
        };
        self.gpu.gemm(&gemm).map_err(InferenceError::Gpu)
    }

    fn launch(&self, kernel: &str, shape: Launch, args: &[KernelArg]) -> Result<()> {
        self.gpu
            .launch(kernel, shape, args)
            .map_err(InferenceError::Gpu)
    }

    fn upload(&self, bytes: &[u8], to: &DeviceBuffer) -> Result<()> {
        self.gpu.upload(bytes, to).map_err(InferenceError::Gpu)
    }
}

impl Drop for GpuBert {
    fn drop(&mut self) {
        // The buffers are freed as the fields drop, on whatever thread drops
        // the engine: the device's context must be current there.
        if let Err(e) = self.gpu.make_current() {
            tracing::warn!("freeing the GPU engine's memory: {e}");
        }
    }
}

/// The model's head width, after checking the kernels can run its shapes.
fn check_shape(model: &ModelDir) -> Result<usize> {
    let config = &model.config;
    let (h, i, heads) = (
        config.hidden_size,
        config.intermediate_size,
        config.num_attention_heads,
    );
    if h > MAX_WIDTH || i < h || heads == 0 || h % heads != 0 || h / heads > MAX_HEAD_DIM {
        return Err(InferenceError::Config {
            file: model.root.join("config.json"),
            message: format!(
                "the GPU engine runs hidden sizes up to {MAX_WIDTH} in heads of at most \
                 {MAX_HEAD_DIM}, with intermediate ≥ hidden; this model has hidden {h}, \
                 {heads} heads, intermediate {i}"
            ),
        });
    }
    Ok(h / heads)
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn u32_bytes(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A product's weight in the product precision, as bytes.
fn to_precision(values: &[f32], precision: Precision) -> Vec<u8> {
    match precision {
        Precision::Fp32 => f32_bytes(values),
        Precision::Fp16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        Precision::Bf16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        Precision::Int8 => unreachable!("{}", super::INT8_ON_GPU),
    }
}
