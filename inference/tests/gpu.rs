//! The GPU engine where no GPU is: its kernels compile with NVRTC (a CPU-only
//! program; CI installs it from PyPI), and asking for a GPU where none is
//! visible fails before any model loads, naming the host. What needs a GPU
//! runs in `scripts/gpu-check` (`photon microbenchmark gpu-embed`).

use photon_inference::gpu::compile::{self, KERNELS, KernelOptions};
use photon_inference::gpu::{self, libraries};
use photon_inference::{DeviceChoice, EmbedderOptions, Precision, SentenceEmbedder};

/// NVRTC is loaded, or the test is skipped with a message; CI sets
/// `PHOTON_REQUIRE_NVRTC=1` so that there a missing NVRTC fails instead.
fn nvrtc_or_skip() -> bool {
    match libraries::load_nvrtc() {
        Ok(()) => true,
        Err(e) if std::env::var_os("PHOTON_REQUIRE_NVRTC").is_some() => {
            panic!("PHOTON_REQUIRE_NVRTC is set and NVRTC does not load: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            false
        }
    }
}

#[test]
fn every_kernel_compiles_for_every_precision_and_architecture() {
    if !nvrtc_or_skip() {
        return;
    }
    // Ampere and Hopper; the head widths of the tiny test model (8), MiniLM
    // (32) and the widest the kernels take (128).
    for compute_capability in [(8, 0), (9, 0)] {
        for precision in [Precision::Fp32, Precision::Fp16, Precision::Bf16] {
            for head_dim in [8, 32, 128] {
                let options = KernelOptions {
                    compute_capability,
                    precision_code: precision.code(),
                    head_dim,
                };
                let cubin =
                    compile::compile(&options).unwrap_or_else(|e| panic!("{options:?}: {e}"));
                assert_eq!(&cubin[..4], b"\x7fELF", "{options:?}: not a CUBIN");
                for kernel in KERNELS {
                    assert!(
                        cubin.windows(kernel.len()).any(|w| w == kernel.as_bytes()),
                        "{options:?}: the CUBIN lacks {kernel}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_kernel_that_does_not_compile_is_an_error_with_nvrtcs_log() {
    if !nvrtc_or_skip() {
        return;
    }
    let options = KernelOptions {
        compute_capability: (9, 0),
        precision_code: 1,
        head_dim: 32,
    };
    let broken = "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }";
    let err = compile::compile_source(broken, &options).unwrap_err();
    assert!(err.contains("undefined_name"), "{err}");
    assert!(err.contains("sm_90"), "the error names the options: {err}");
}

#[test]
fn compiled_kernels_are_cached_per_options() {
    if !nvrtc_or_skip() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let options = KernelOptions {
        compute_capability: (9, 0),
        precision_code: 2,
        head_dim: 32,
    };
    let first = compile::cubin(&options, Some(cache.path())).unwrap();
    let files: Vec<_> = std::fs::read_dir(cache.path()).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "one cached CUBIN");
    assert!(files[0].file_name().to_string_lossy().starts_with("sm_90-"));
    // The cached file is what a second load reads: change it and see.
    std::fs::write(files[0].path(), b"cached").unwrap();
    assert_eq!(
        compile::cubin(&options, Some(cache.path())).unwrap(),
        b"cached"
    );
    let other = KernelOptions {
        precision_code: 1,
        ..options
    };
    assert_eq!(
        compile::cubin(&other, Some(cache.path())).unwrap()[..4],
        first[..4]
    );
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 2);
}

fn no_gpu_here() -> bool {
    match gpu::visible_gpus() {
        Ok(0) => true,
        _ => {
            eprintln!("SKIPPED: a GPU is visible; scripts/gpu-check covers this machine");
            false
        }
    }
}

#[test]
fn the_gpu_asked_for_where_none_is_visible_fails_before_the_model_loads() {
    if !no_gpu_here() {
        return;
    }
    let options = EmbedderOptions {
        device: DeviceChoice::Gpu,
        ..EmbedderOptions::default()
    };
    // No model here: the error must be the GPU's, found first.
    let missing = std::path::Path::new("/nonexistent/model");
    let err = SentenceEmbedder::load(missing, options)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no CUDA GPU is visible"), "{err}");
    assert!(err.contains(&gpu::host_name()), "names the host: {err}");
    assert!(err.contains("--device cpu"), "says what to do: {err}");
}

#[test]
fn a_gpu_precision_on_the_cpu_is_an_error_not_a_silent_fp32_run() {
    let dir = tempfile::tempdir().unwrap();
    photon_inference::tiny_model::write_tiny_bert(dir.path(), 1).unwrap();
    // bf16's own message on the CPU is checked in embedder.rs.
    let options = EmbedderOptions {
        device: DeviceChoice::Cpu,
        precision: Some(Precision::Fp16),
        ..EmbedderOptions::default()
    };
    let err = SentenceEmbedder::load(dir.path(), options)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("fp16 needs the GPU engine"), "{err}");
    let fp32 = EmbedderOptions {
        device: DeviceChoice::Cpu,
        precision: Some(Precision::Fp32),
        ..EmbedderOptions::default()
    };
    let embedder = SentenceEmbedder::load(dir.path(), fp32).unwrap();
    assert_eq!(embedder.engine_info().precision, "fp32");
    assert_eq!(embedder.engine_info().device, "cpu");
}

#[test]
fn a_missing_cuda_library_is_reported_with_where_it_was_looked_for() {
    // cuBLAS is not installed on the CPU machines CI runs on.
    match libraries::load_cublas() {
        Ok(()) => eprintln!("SKIPPED: cuBLAS loads here; scripts/gpu-check covers it"),
        Err(e) => {
            assert!(e.contains("cannot load cuBLASLt"), "{e}");
            assert!(e.contains("libcublasLt.so.13 or libcublasLt.so.12"), "{e}");
            assert!(
                e.contains("/usr/local/cuda/lib64"),
                "lists the directories: {e}"
            );
            assert!(
                e.contains(libraries::LIBRARY_PATH_ENV),
                "says what to do: {e}"
            );
        }
    }
}
