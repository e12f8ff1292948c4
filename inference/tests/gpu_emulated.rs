//! The GPU engine run on a CPU emulation of its device (`emulator/`): the
//! engine's own kernels (`kernels.cu`, compiled here by the C compiler with
//! CUDA's thread model emulated) and a reference of cuBLAS's product, behind
//! the same `Gpu` interface the CUDA device implements. What this checks
//! without a GPU: buffer sizes and offsets, kernel arguments and launch
//! shapes, the products' layouts, the packed attention over several key
//! tiles, pooling modes, normalisation and the embedder's GPU pipeline,
//! against the CPU engine. What it cannot check (fp16's PTX conversion, real
//! cuBLAS, the device's limits) is `scripts/gpu-check`'s.
#![allow(unsafe_code)]

use std::ffi::{CString, c_char, c_int, c_uint, c_void};
use std::path::{Path, PathBuf};
use std::process::Command;

use photon_inference::gpu::GpuDevice;
use photon_inference::gpu::compile::SOURCE;
use photon_inference::gpu::device::{DeviceBuffer, Gemm, Gpu, KernelArg, Launch};
use photon_inference::{DeviceChoice, EmbedderOptions, Embeddings, Precision, SentenceEmbedder};

type LaunchFn =
    unsafe extern "C" fn(*const c_char, c_uint, c_uint, c_uint, *mut *mut c_void) -> c_int;
type GemmFn = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *const c_void,
    c_int,
    *const c_void,
    c_int,
    *mut f32,
    c_int,
    c_int,
);

/// The kernels compiled for the CPU, loaded.
struct Emulator {
    launch: LaunchFn,
    gemm: GemmFn,
    _library: libloading::Library,
}

impl Emulator {
    /// Compiles `kernels.cu` with the emulation in `dir`; `key_tile` forces
    /// the attention's key tile (small, to run many tiles).
    fn build(dir: &Path, precision: Precision, head_dim: usize, key_tile: Option<usize>) -> Self {
        // The one C++ construct in the kernels.
        let kernels = dir.join("kernels_c.h");
        std::fs::write(&kernels, SOURCE.replace("extern \"C\" ", "")).unwrap();
        let emulation =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/emulator/cuda_emulation.c");
        let library = dir.join(format!("emulated-{}.so", precision.name()));
        let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
        cc.args(["-O1", "-shared", "-fPIC", "-std=gnu11"])
            .arg(format!("-DPRECISION={}", precision.code()))
            .arg(format!("-DHEAD_DIM={head_dim}"))
            .arg(format!("-DKERNELS_FILE=\"{}\"", kernels.display()))
            .arg(&emulation)
            .arg("-o")
            .arg(&library)
            .arg("-lm");
        if let Some(tile) = key_tile {
            cc.arg(format!("-DKEY_TILE={tile}"));
        }
        let output = cc
            .output()
            .expect("a C compiler (cc) to build the emulator");
        assert!(
            output.status.success(),
            "the kernels do not compile for the emulator:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // SAFETY: the library was just built from the emulator's source; its
        // symbols have the signatures declared above.
        unsafe {
            let library = libloading::Library::new(&library).unwrap();
            let launch = *library.get::<LaunchFn>(b"photon_emulated_launch").unwrap();
            let gemm = *library.get::<GemmFn>(b"photon_emulated_gemm").unwrap();
            Self {
                launch,
                gemm,
                _library: library,
            }
        }
    }
}

impl Gpu for Emulator {
    fn describe(&self) -> GpuDevice {
        GpuDevice {
            visible_id: "emulated".into(),
            name: "CPU emulation".into(),
            compute_capability: (0, 0),
        }
    }

    fn alloc(&self, bytes: usize) -> Result<DeviceBuffer, String> {
        // u64 words: aligned for every type the kernels read.
        let memory = vec![0u64; bytes.div_ceil(8).max(1)];
        Ok(DeviceBuffer {
            address: memory.as_ptr() as u64,
            bytes,
            owner: Box::new(memory),
        })
    }

    fn upload(&self, bytes: &[u8], to: &DeviceBuffer) -> Result<(), String> {
        assert!(bytes.len() <= to.bytes);
        // SAFETY: `to` owns at least `to.bytes` bytes at its address.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), to.address as *mut u8, bytes.len())
        };
        Ok(())
    }

    fn download(&self, from: &DeviceBuffer, bytes: &mut [u8]) -> Result<(), String> {
        assert!(bytes.len() <= from.bytes);
        // SAFETY: `from` owns at least `from.bytes` bytes at its address.
        unsafe {
            std::ptr::copy_nonoverlapping(
                from.address as *const u8,
                bytes.as_mut_ptr(),
                bytes.len(),
            )
        };
        Ok(())
    }

    fn launch(&self, kernel: &str, shape: Launch, args: &[KernelArg]) -> Result<(), String> {
        // CUDA's convention: an array of pointers to each argument's value.
        let mut pointers: Vec<*mut c_void> = args
            .iter()
            .map(|arg| match arg {
                KernelArg::Address(v) => v as *const u64 as *mut c_void,
                KernelArg::Int(v) => v as *const i32 as *mut c_void,
                KernelArg::Long(v) => v as *const i64 as *mut c_void,
                KernelArg::Float(v) => v as *const f32 as *mut c_void,
            })
            .collect();
        let name = CString::new(kernel).unwrap();
        // SAFETY: the emulator reads each argument as the kernel declares it.
        let status = unsafe {
            (self.launch)(
                name.as_ptr(),
                shape.grid.0,
                shape.grid.1,
                shape.threads,
                pointers.as_mut_ptr(),
            )
        };
        match status {
            0 => Ok(()),
            code => Err(format!(
                "emulated launch of {kernel} {shape:?} failed: {code}"
            )),
        }
    }

    fn gemm(&self, g: &Gemm) -> Result<(), String> {
        // SAFETY: the engine's addresses point into live buffers it sized.
        unsafe {
            (self.gemm)(
                g.transpose_a as c_int,
                g.transpose_b as c_int,
                g.m as c_int,
                g.n as c_int,
                g.k as c_int,
                g.a as *const c_void,
                g.lda as c_int,
                g.b as *const c_void,
                g.ldb as c_int,
                g.c as *mut f32,
                g.ldc as c_int,
                g.input.code() as c_int,
            )
        };
        Ok(())
    }
}

fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    photon_inference::tiny_model::write_tiny_bert(&model, 5).unwrap();
    model
}

/// Sentences of many lengths, some cut at the tiny model's 24 tokens.
fn texts() -> Vec<String> {
    let words = "the man is eating food and a dog runs to the river while music plays in \
                 the city near the school where my friend reads a book every night";
    let words: Vec<&str> = words.split_whitespace().collect();
    (0..30)
        .map(|i| {
            let n = 1 + (i * 7) % 29;
            (0..n)
                .map(|w| words[(i + w * 3) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn options(precision: Precision) -> EmbedderOptions {
    EmbedderOptions {
        precision: Some(precision),
        // Several batches per call.
        max_batch_rows: Some(7),
        ..EmbedderOptions::default()
    }
}

fn cpu_vectors(model: &Path, texts: &[String]) -> Embeddings {
    let cpu = EmbedderOptions {
        device: DeviceChoice::Cpu,
        ..EmbedderOptions::default()
    };
    SentenceEmbedder::load(model, cpu)
        .unwrap()
        .embed(texts)
        .unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b)).max(1e-12)
}

/// (min cosine, max |difference|) over the rows.
fn compare(gpu: &Embeddings, cpu: &Embeddings) -> (f32, f32) {
    assert_eq!(gpu.len(), cpu.len());
    let mut min_cosine = f32::INFINITY;
    let mut max_diff = 0.0f32;
    for i in 0..gpu.len() {
        min_cosine = min_cosine.min(cosine(gpu.row(i), cpu.row(i)));
        for (a, b) in gpu.row(i).iter().zip(cpu.row(i)) {
            max_diff = max_diff.max((a - b).abs());
        }
    }
    (min_cosine, max_diff)
}

#[test]
fn the_gpu_engine_in_fp32_matches_the_cpu_engine() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let texts = texts();
    let cpu = cpu_vectors(&model, &texts);
    // The key tile of 4 makes the attention's online softmax span up to
    // six tiles per sequence.
    for key_tile in [None, Some(4)] {
        let emulator = Emulator::build(dir.path(), Precision::Fp32, 8, key_tile);
        let embedder =
            SentenceEmbedder::load_on_gpu(&model, options(Precision::Fp32), Box::new(emulator))
                .unwrap();
        let info = embedder.engine_info();
        assert_eq!(
            (info.engine.as_str(), info.precision.as_str()),
            ("gpu", "fp32")
        );
        assert_eq!(info.device, "gpu:emulated (CPU emulation)");
        assert!(info.gpu_memory_bytes > 0);
        let gpu = embedder.embed(&texts).unwrap();
        assert_eq!(gpu.stats.rows, texts.len());
        assert_eq!(gpu.stats.tokens, cpu.stats.tokens);
        assert!(gpu.stats.batches >= 5, "{:?}", gpu.stats);
        assert_eq!(gpu.stats.truncated, cpu.stats.truncated);
        assert!(gpu.stats.truncated > 0, "some texts are cut at 24 tokens");
        let (min_cosine, max_diff) = compare(&gpu, &cpu);
        assert!(
            min_cosine > 0.99999 && max_diff < 1e-4,
            "key tile {key_tile:?}: cosine {min_cosine}, max |diff| {max_diff}"
        );
        for i in 0..gpu.len() {
            let norm: f32 = gpu.row(i).iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "row {i} is normalised: {norm}");
        }
    }
}

#[test]
fn the_gpu_engine_in_bf16_stays_close_to_the_cpu_engine() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let texts = texts();
    let cpu = cpu_vectors(&model, &texts);
    let emulator = Emulator::build(dir.path(), Precision::Bf16, 8, None);
    let embedder =
        SentenceEmbedder::load_on_gpu(&model, options(Precision::Bf16), Box::new(emulator))
            .unwrap();
    assert_eq!(embedder.engine_info().precision, "bf16");
    let gpu = embedder.embed(&texts).unwrap();
    let (min_cosine, _) = compare(&gpu, &cpu);
    // bf16 keeps 8 bits of mantissa: close, not equal.
    assert!(min_cosine > 0.999, "cosine {min_cosine}");
    let fp32 = Emulator::build(dir.path(), Precision::Fp32, 8, None);
    let exact = SentenceEmbedder::load_on_gpu(&model, options(Precision::Fp32), Box::new(fp32))
        .unwrap()
        .embed(&texts)
        .unwrap();
    let (_, bf16_diff) = compare(&gpu, &cpu);
    let (_, fp32_diff) = compare(&exact, &cpu);
    assert!(
        bf16_diff > fp32_diff,
        "bf16 really rounds: {bf16_diff} vs {fp32_diff}"
    );
}

#[test]
fn cls_and_max_pooling_and_unnormalised_models_match_the_cpu_engine() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let texts = texts();
    // Without the Normalize module the vectors keep their length.
    std::fs::write(
        model.join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
{"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#,
    )
    .unwrap();
    for (cls, max) in [(true, false), (false, true)] {
        std::fs::write(
            model.join("1_Pooling/config.json"),
            format!(
                r#"{{"word_embedding_dimension": 32, "pooling_mode_cls_token": {cls},
"pooling_mode_mean_tokens": false, "pooling_mode_max_tokens": {max},
"pooling_mode_mean_sqrt_len_tokens": false}}"#
            ),
        )
        .unwrap();
        let cpu = cpu_vectors(&model, &texts);
        let emulator = Emulator::build(dir.path(), Precision::Fp32, 8, None);
        let gpu =
            SentenceEmbedder::load_on_gpu(&model, options(Precision::Fp32), Box::new(emulator))
                .unwrap()
                .embed(&texts)
                .unwrap();
        let (min_cosine, max_diff) = compare(&gpu, &cpu);
        assert!(
            min_cosine > 0.99999 && max_diff < 1e-4,
            "cls {cls} max {max}: cosine {min_cosine}, max |diff| {max_diff}"
        );
        let norm: f32 = gpu.row(0).iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() > 1e-3, "not normalised: {norm}");
    }
}
