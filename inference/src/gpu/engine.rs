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
//! Weights are uploaded once. Activations live in four buffers sized for the
//! largest batch at load and reused by every batch; one stream orders it all.

use std::sync::{Arc, Mutex};

use candle_transformers::models::bert::HiddenAct;
use cudarc::cublas::{CudaBlas, result as blas, sys as blas_sys};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::compile::{self, KernelOptions};
use super::{Precision, libraries};
use crate::error::{InferenceError, Result};
use crate::fast_bert::Weights;
use crate::model_dir::{ModelDir, Pooling};

/// Threads per block of the row kernels (`LN_THREADS` in `kernels.cu`), and
/// the widest row they take (`LN_THREADS * LN_PER_THREAD`).
const ROW_THREADS: u32 = 128;
const MAX_WIDTH: usize = 1024;

/// The kernels of one compiled module.
struct Kernels {
    embed_layer_norm: CudaFunction,
    bias_residual_layer_norm: CudaFunction,
    bias_activation: CudaFunction,
    attention: CudaFunction,
    pool: CudaFunction,
}

/// A dense layer on the device: the weight as PyTorch stores it, `[out, in]`
/// row-major, in the product precision; the bias in fp32.
struct DeviceLinear {
    weight: CudaSlice<u8>,
    bias: CudaSlice<f32>,
    inputs: usize,
    outputs: usize,
}

struct DeviceNorm {
    gamma: CudaSlice<f32>,
    beta: CudaSlice<f32>,
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
    ids: CudaSlice<u32>,
    positions: CudaSlice<u32>,
    starts: CudaSlice<i32>,
    /// The residual stream, fp32 `[tokens, hidden]`.
    hidden: CudaSlice<f32>,
    /// Its copy in the product precision: the next product's input.
    hidden_act: CudaSlice<u8>,
    /// Every product's fp32 output: `[tokens, max(3·hidden, intermediate)]`.
    product: CudaSlice<f32>,
    /// Attention's context, then the activation's output (product precision).
    scratch_act: CudaSlice<u8>,
    pooled: CudaSlice<f32>,
}

/// Which GPU an engine runs on, for summaries.
#[derive(Debug, Clone)]
pub struct GpuDevice {
    /// `CUDA_VISIBLE_DEVICES`' id of the GPU (the raylet's instance id).
    pub visible_id: String,
    /// The device's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// `(major, minor)` compute capability.
    pub compute_capability: (i32, i32),
}

/// The model on one GPU.
pub struct GpuBert {
    device: GpuDevice,
    precision: Precision,
    hidden: usize,
    heads: usize,
    intermediate: usize,
    eps: f32,
    activation: i32,
    max_positions: usize,
    word_embeddings: CudaSlice<f32>,
    position_embeddings: CudaSlice<f32>,
    token_type_embedding: CudaSlice<f32>,
    embedding_norm: DeviceNorm,
    layers: Vec<DeviceLayer>,
    kernels: Kernels,
    buffers: Mutex<Buffers>,
    blas: CudaBlas,
    stream: Arc<CudaStream>,
    context: Arc<CudaContext>,
    device_bytes: u64,
}

impl GpuBert {
    /// Loads the model onto the first visible GPU, with activation buffers
    /// for batches of up to `max_tokens` tokens and `max_rows` sequences.
    pub fn load(
        model: &ModelDir,
        precision: Precision,
        max_tokens: usize,
        max_rows: usize,
    ) -> Result<Self> {
        let config = &model.config;
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let heads = config.num_attention_heads;
        if h > MAX_WIDTH || i < h || h % heads != 0 {
            return Err(InferenceError::Config {
                file: model.root.join("config.json"),
                message: format!(
                    "the GPU engine runs hidden sizes up to {MAX_WIDTH} divisible by the head \
                     count, with intermediate ≥ hidden; this model has hidden {h}, {heads} \
                     heads, intermediate {i}"
                ),
            });
        }
        libraries::load_cublas().map_err(InferenceError::Gpu)?;
        let context = CudaContext::new(0).map_err(gpu_error("opening GPU 0"))?;
        // One stream orders every operation, so cudarc's per-buffer events
        // (for work spread over several streams) are not needed.
        // SAFETY: nothing of this context is used from another stream.
        #[allow(unsafe_code)]
        unsafe {
            context.disable_event_tracking();
        }
        let stream = context.default_stream();
        let device = GpuDevice {
            visible_id: std::env::var("CUDA_VISIBLE_DEVICES")
                .ok()
                .and_then(|ids| ids.split(',').next().map(|s| s.trim().to_string()))
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| "0".into()),
            name: context.name().map_err(gpu_error("reading the GPU's name"))?,
            compute_capability: context
                .compute_capability()
                .map_err(gpu_error("reading the GPU's compute capability"))?,
        };
        let options = KernelOptions {
            compute_capability: device.compute_capability,
            precision_code: precision.code(),
            head_dim: h / heads,
        };
        let cache = crate::model_cache::cache_dir().join("gpu-kernels");
        let cubin = compile::cubin(&options, Some(&cache)).map_err(InferenceError::Gpu)?;
        let module = context
            .load_module(Ptx::from_binary(cubin))
            .map_err(gpu_error("loading the compiled kernels"))?;
        let function = |name: &str| {
            module
                .load_function(name)
                .map_err(gpu_error(&format!("finding kernel {name}")))
        };
        let kernels = Kernels {
            embed_layer_norm: function("embed_layer_norm")?,
            bias_residual_layer_norm: function("bias_residual_layer_norm")?,
            bias_activation: function("bias_activation")?,
            attention: function("attention")?,
            pool: function("pool")?,
        };
        let blas = CudaBlas::new(stream.clone()).map_err(gpu_error("creating a cuBLAS handle"))?;

        let tensors = candle_core::safetensors::load(&model.weights, &candle_core::Device::Cpu)?;
        let weights = Weights::new(&model.weights, tensors);
        let upload = Uploader {
            stream: &stream,
            precision,
        };
        let linear = |names: &[String], inputs: usize, outputs: usize| -> Result<DeviceLinear> {
            let mut weight = Vec::with_capacity(names.len() * outputs * inputs);
            let mut bias = Vec::with_capacity(names.len() * outputs);
            for name in names {
                weight.extend(weights.get(&format!("{name}.weight"), &[outputs, inputs])?);
                bias.extend(weights.get(&format!("{name}.bias"), &[outputs])?);
            }
            Ok(DeviceLinear {
                weight: upload.matrix(&weight)?,
                bias: upload.f32(&bias)?,
                inputs,
                outputs: names.len() * outputs,
            })
        };
        let norm = |name: &str| -> Result<DeviceNorm> {
            Ok(DeviceNorm {
                gamma: upload.f32(&weights.get(&format!("{name}.weight"), &[h])?)?,
                beta: upload.f32(&weights.get(&format!("{name}.bias"), &[h])?)?,
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
        let token_types = weights.get(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        )?;
        let max_positions = config.max_position_embeddings;
        let word_embeddings = upload.f32(
            &weights.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
        )?;
        let position_embeddings = upload.f32(
            &weights.get("embeddings.position_embeddings.weight", &[max_positions, h])?,
        )?;
        // Single-sentence inputs: every token has type 0.
        let token_type_embedding = upload.f32(&token_types[..h])?;
        let embedding_norm = norm("embeddings.LayerNorm")?;

        // A sequence longer than the token budget is a batch of its own.
        let tokens = max_tokens.max(max_positions);
        let rows = max_rows.max(1);
        let element = precision.element_bytes();
        let alloc = |what: &str, bytes: usize| {
            stream
                .alloc_zeros::<u8>(bytes.max(1))
                .map_err(gpu_error(&format!("allocating {bytes} bytes for {what}")))
        };
        let alloc_f32 = |what: &str, len: usize| {
            stream
                .alloc_zeros::<f32>(len.max(1))
                .map_err(gpu_error(&format!("allocating {len} floats for {what}")))
        };
        let buffers = Buffers {
            tokens,
            rows,
            ids: stream.alloc_zeros::<u32>(tokens).map_err(gpu_error("allocating ids"))?,
            positions: stream
                .alloc_zeros::<u32>(tokens)
                .map_err(gpu_error("allocating positions"))?,
            starts: stream
                .alloc_zeros::<i32>(rows + 1)
                .map_err(gpu_error("allocating sequence starts"))?,
            hidden: alloc_f32("the hidden states", tokens * h)?,
            hidden_act: alloc("the hidden states' copy", tokens * h * element)?,
            product: alloc_f32("product outputs", tokens * (3 * h).max(i))?,
            scratch_act: alloc("attention and activation outputs", tokens * i * element)?,
            pooled: alloc_f32("pooled vectors", rows * h)?,
        };
        let weight_bytes: usize = layers
            .iter()
            .flat_map(|l| [&l.qkv, &l.attention_out, &l.intermediate, &l.output])
            .map(|linear| linear.weight.len() + linear.bias.len() * 4)
            .sum::<usize>()
            + 4 * (word_embeddings.len() + position_embeddings.len());
        let buffer_bytes = 4 * tokens * (h + (3 * h).max(i))
            + element * tokens * (h + i)
            + 4 * (2 * tokens + rows + 1 + rows * h);
        stream
            .synchronize()
            .map_err(gpu_error("uploading the weights"))?;
        Ok(Self {
            device,
            precision,
            hidden: h,
            heads,
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
            kernels,
            buffers: Mutex::new(buffers),
            blas,
            stream,
            context,
            device_bytes: (weight_bytes + buffer_bytes) as u64,
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
        assert_eq!(lengths.iter().sum::<usize>(), total, "lengths must add up to the tokens");
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            total <= buffers.tokens && rows <= buffers.rows,
            "a batch of {total} tokens in {rows} rows exceeds the buffers ({} tokens, {} rows)",
            buffers.tokens,
            buffers.rows
        );
        let mut positions = Vec::with_capacity(total);
        let mut starts = Vec::with_capacity(rows + 1);
        let mut longest = 0;
        starts.push(0i32);
        for &len in lengths {
            assert!(len <= self.max_positions, "sequence longer than the position table");
            positions.extend(0..len as u32);
            starts.push(starts.last().copied().unwrap_or(0) + len as i32);
            longest = longest.max(len);
        }
        if rows == 0 {
            return Ok(Vec::new());
        }
        self.context
            .bind_to_thread()
            .map_err(gpu_error("binding the GPU context"))?;
        let b = &mut *buffers;
        let copy = |what: &str, e: cudarc::driver::DriverError| gpu_error(&format!("copying {what} to the GPU"))(e);
        self.stream
            .memcpy_htod(tokens, &mut b.ids.slice_mut(..total))
            .map_err(|e| copy("token ids", e))?;
        self.stream
            .memcpy_htod(&positions, &mut b.positions.slice_mut(..total))
            .map_err(|e| copy("positions", e))?;
        self.stream
            .memcpy_htod(&starts, &mut b.starts.slice_mut(..rows + 1))
            .map_err(|e| copy("sequence starts", e))?;

        let s = &self.stream;
        let h = self.hidden as i32;
        let (hidden, hidden_act) = (ptr(&b.hidden, s), ptr(&b.hidden_act, s));
        let (product, scratch) = (ptr(&b.product, s), ptr(&b.scratch_act, s));
        let starts_ptr = ptr(&b.starts, s);
        let row_blocks = LaunchConfig {
            grid_dim: (total as u32, 1, 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };

        let norm = &self.embedding_norm;
        let (ids, pos) = (ptr(&b.ids, s), ptr(&b.positions, s));
        let (word, position) = (
            ptr(&self.word_embeddings, s),
            ptr(&self.position_embeddings, s),
        );
        let token_type = ptr(&self.token_type_embedding, s);
        let (gamma, beta) = (ptr(&norm.gamma, s), ptr(&norm.beta, s));
        let mut launch = s.launch_builder(&self.kernels.embed_layer_norm);
        launch
            .arg(&ids)
            .arg(&pos)
            .arg(&word)
            .arg(&position)
            .arg(&token_type)
            .arg(&gamma)
            .arg(&beta)
            .arg(&self.eps)
            .arg(&h)
            .arg(&hidden)
            .arg(&hidden_act);
        run(launch, row_blocks, "embed_layer_norm")?;

        let head_dim = self.hidden / self.heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        // One thread per query: a block no wider than the longest sequence.
        let attention_threads = (longest.div_ceil(32) * 32).clamp(32, 128) as u32;
        for layer in &self.layers {
            self.product(hidden_act, &layer.qkv, product, total)?;
            let qkv_bias = ptr(&layer.qkv.bias, s);
            let mut launch = s.launch_builder(&self.kernels.attention);
            launch
                .arg(&product)
                .arg(&qkv_bias)
                .arg(&starts_ptr)
                .arg(&h)
                .arg(&scale)
                .arg(&scratch);
            let blocks = LaunchConfig {
                grid_dim: (rows as u32, self.heads as u32, 1),
                block_dim: (attention_threads, 1, 1),
                shared_mem_bytes: 0,
            };
            run(launch, blocks, "attention")?;

            self.product(scratch, &layer.attention_out, product, total)?;
            self.bias_residual_norm(
                product,
                &layer.attention_out,
                &layer.attention_norm,
                (hidden, hidden_act),
                row_blocks,
            )?;

            self.product(hidden_act, &layer.intermediate, product, total)?;
            let width = self.intermediate as i32;
            let count = (total * self.intermediate) as i64;
            let bias = ptr(&layer.intermediate.bias, s);
            let mut launch = s.launch_builder(&self.kernels.bias_activation);
            launch
                .arg(&product)
                .arg(&bias)
                .arg(&width)
                .arg(&count)
                .arg(&self.activation)
                .arg(&scratch);
            let threads = 256u32;
            let blocks = (count as u64).div_ceil(threads as u64).min(1 << 20) as u32;
            let config = LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (threads, 1, 1),
                shared_mem_bytes: 0,
            };
            run(launch, config, "bias_activation")?;

            self.product(scratch, &layer.output, product, total)?;
            self.bias_residual_norm(
                product,
                &layer.output,
                &layer.output_norm,
                (hidden, hidden_act),
                row_blocks,
            )?;
        }

        let mode: i32 = match pooling {
            Pooling::Mean => 0,
            Pooling::Cls => 1,
            Pooling::Max => 2,
        };
        let normalize = normalize as i32;
        let pooled = ptr(&b.pooled, s);
        let mut launch = s.launch_builder(&self.kernels.pool);
        launch
            .arg(&hidden)
            .arg(&starts_ptr)
            .arg(&h)
            .arg(&mode)
            .arg(&normalize)
            .arg(&pooled);
        let config = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        run(launch, config, "pool")?;
        let mut out = vec![0.0f32; rows * self.hidden];
        self.stream
            .memcpy_dtoh(&b.pooled.slice(..rows * self.hidden), &mut out)
            .map_err(gpu_error("copying the vectors back"))?;
        Ok(out)
    }

    /// `out[rows, outputs] = x[rows, inputs] · Wᵀ` (no bias), fp32 out.
    ///
    /// cuBLAS is column-major: row-major `x` is `xᵀ` to it and row-major
    /// `[out, in]` W is `Wᵀ`, so it computes `outᵀ = W · xᵀ` as op(A) = Aᵀ on
    /// the weight ("TN"), which writes row-major `out` directly.
    fn product(&self, x: u64, linear: &DeviceLinear, out: u64, rows: usize) -> Result<()> {
        let data_type = self.precision.cublas_type();
        let (alpha, beta) = (1.0f32, 0.0f32);
        let weight = ptr(&linear.weight, &self.stream);
        // SAFETY: the pointers are this engine's live device buffers, sized
        // for `rows` (checked against the buffers' capacity by the caller),
        // and the handle's stream is the one everything runs on.
        #[allow(unsafe_code)]
        unsafe {
            blas::gemm_ex(
                *self.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                linear.outputs as i32,
                rows as i32,
                linear.inputs as i32,
                (&alpha as *const f32).cast(),
                weight as *const std::ffi::c_void,
                data_type,
                linear.inputs as i32,
                x as *const std::ffi::c_void,
                data_type,
                linear.inputs as i32,
                (&beta as *const f32).cast(),
                out as *mut std::ffi::c_void,
                blas_sys::cudaDataType::CUDA_R_32F,
                linear.outputs as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| {
            InferenceError::Gpu(format!(
                "cuBLAS product [{rows} × {}] · [{} × {}]ᵀ: {e:?}",
                linear.inputs, linear.outputs, linear.inputs
            ))
        })
    }

    /// `hidden = LayerNorm(product + bias + hidden)`, and its product copy.
    fn bias_residual_norm(
        &self,
        product: u64,
        linear: &DeviceLinear,
        norm: &DeviceNorm,
        (hidden, hidden_act): (u64, u64),
        config: LaunchConfig,
    ) -> Result<()> {
        let s = &self.stream;
        let bias = ptr(&linear.bias, s);
        let (gamma, beta) = (ptr(&norm.gamma, s), ptr(&norm.beta, s));
        let width = self.hidden as i32;
        let mut launch = s.launch_builder(&self.kernels.bias_residual_layer_norm);
        launch
            .arg(&product)
            .arg(&bias)
            .arg(&gamma)
            .arg(&beta)
            .arg(&self.eps)
            .arg(&width)
            .arg(&hidden)
            .arg(&hidden_act);
        run(launch, config, "bias_residual_layer_norm")
    }
}

/// Puts weights on the device.
struct Uploader<'a> {
    stream: &'a Arc<CudaStream>,
    precision: Precision,
}

impl Uploader<'_> {
    fn f32(&self, values: &[f32]) -> Result<CudaSlice<f32>> {
        self.stream
            .clone_htod(values)
            .map_err(gpu_error("uploading weights"))
    }

    /// A product's weight, converted to the product precision, as bytes.
    fn matrix(&self, values: &[f32]) -> Result<CudaSlice<u8>> {
        let bytes: Vec<u8> = match self.precision {
            Precision::Fp32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Precision::Fp16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            Precision::Bf16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        };
        self.stream
            .clone_htod(&bytes)
            .map_err(gpu_error("uploading weights"))
    }
}

/// A buffer's device address, for kernels and cuBLAS.
fn ptr<T>(slice: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    // Event tracking is off (one stream), so the guard has nothing to record.
    let (address, _guard) = slice.device_ptr(stream);
    address
}

fn run(mut launch: cudarc::driver::LaunchArgs<'_>, config: LaunchConfig, kernel: &str) -> Result<()> {
    // SAFETY: every argument matches the kernel's signature in kernels.cu
    // (device addresses as 64-bit values, then ints and floats in order), and
    // the grids only index rows and sequences the buffers hold.
    #[allow(unsafe_code)]
    unsafe { launch.launch(config) }
        .map(|_| ())
        .map_err(gpu_error(&format!("launching {kernel}")))
}

fn gpu_error<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> InferenceError + '_ {
    move |e| InferenceError::Gpu(format!("{what}: {e}"))
}
