//! Compiling the engine's CUDA C kernels (`kernels.cu`) with NVRTC into a
//! CUBIN for one GPU architecture, cached on disk.
//!
//! A CUBIN, not PTX: the driver loads it as is, so a newer NVRTC than the
//! driver (a pip wheel beside an older driver) still works, where PTX of a
//! newer ISA would be refused. The cache key covers the source, the options
//! and NVRTC's version, so a second actor (or run) on the node skips the
//! compile.

use std::ffi::{CStr, CString, c_char, c_int};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::sys;

use super::libraries;

/// The kernels' CUDA C source.
pub const SOURCE: &str = include_str!("kernels.cu");

/// The kernel functions the source defines.
pub const KERNELS: [&str; 5] = [
    "embed_layer_norm",
    "bias_residual_layer_norm",
    "bias_activation",
    "attention",
    "pool",
];

/// What a compile is specialised for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelOptions {
    /// `(major, minor)` compute capability, e.g. `(9, 0)` for an H100.
    pub compute_capability: (i32, i32),
    /// 0 = fp32, 1 = fp16, 2 = bf16: the activations fed to cuBLAS.
    pub precision_code: u32,
    /// Width of one attention head.
    pub head_dim: usize,
}

impl KernelOptions {
    fn nvrtc_options(&self) -> Vec<String> {
        let (major, minor) = self.compute_capability;
        vec![
            format!("--gpu-architecture=sm_{major}{minor}"),
            format!("-DPRECISION={}", self.precision_code),
            format!("-DHEAD_DIM={}", self.head_dim),
            "--std=c++17".into(),
        ]
    }
}

/// NVRTC's version, `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32), String> {
    libraries::load_nvrtc()?;
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: NVRTC is loaded; both pointers are valid for writes.
    #[allow(unsafe_code)]
    let status = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    check(status, "nvrtcVersion")?;
    Ok((major, minor))
}

/// The CUBIN for `options`: read from `cache_dir` when an earlier compile left
/// it there, else compiled and stored (a failed store only loses the cache).
pub fn cubin(options: &KernelOptions, cache_dir: Option<&Path>) -> Result<Vec<u8>, String> {
    let version = nvrtc_version()?;
    let cached = cache_dir.map(|dir| cache_file(dir, options, version));
    if let Some(bytes) = cached.as_ref().and_then(|file| std::fs::read(file).ok()) {
        return Ok(bytes);
    }
    let bytes = compile(options)?;
    if let Some(file) = cached {
        let stored = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                // Written aside and renamed, so a concurrent actor never
                // reads half a file.
                let partial = file.with_extension(format!("partial-{}", std::process::id()));
                std::fs::write(&partial, &bytes)?;
                std::fs::rename(&partial, &file)
            });
        if let Err(e) = stored {
            tracing::warn!(file = %file.display(), "cannot cache the compiled kernels: {e}");
        }
    }
    Ok(bytes)
}

fn cache_file(dir: &Path, options: &KernelOptions, nvrtc: (i32, i32)) -> PathBuf {
    let key = format!("{SOURCE}\n{:?}\nnvrtc {nvrtc:?}", options.nvrtc_options());
    let hash = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
    let (major, minor) = options.compute_capability;
    dir.join(format!("sm_{major}{minor}-{hash:016x}.cubin"))
}

/// Compiles the kernels for `options`; the error carries NVRTC's log.
pub fn compile(options: &KernelOptions) -> Result<Vec<u8>, String> {
    compile_source(SOURCE, options)
}

/// Compiles CUDA C `source` for `options` into a CUBIN; the error carries
/// NVRTC's log.
pub fn compile_source(source: &str, options: &KernelOptions) -> Result<Vec<u8>, String> {
    libraries::load_nvrtc()?;
    let source = CString::new(source).map_err(|_| "the source has a NUL byte".to_string())?;
    let name = c"kernels.cu";
    let args: Vec<CString> = options
        .nvrtc_options()
        .into_iter()
        .map(|o| CString::new(o).expect("options have no NUL"))
        .collect();
    let arg_ptrs: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
    let mut program: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: NVRTC is loaded; every pointer passed lives across the calls,
    // and the program is destroyed on every path after it was created.
    #[allow(unsafe_code)]
    unsafe {
        check(
            sys::nvrtcCreateProgram(
                &mut program,
                source.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            ),
            "nvrtcCreateProgram",
        )?;
        let result = (|| {
            let status =
                sys::nvrtcCompileProgram(program, arg_ptrs.len() as c_int, arg_ptrs.as_ptr());
            if status != sys::nvrtcResult::NVRTC_SUCCESS {
                let mut size = 0usize;
                sys::nvrtcGetProgramLogSize(program, &mut size);
                let mut log = vec![0 as c_char; size.max(1)];
                sys::nvrtcGetProgramLog(program, log.as_mut_ptr());
                let log = CStr::from_ptr(log.as_ptr()).to_string_lossy().into_owned();
                return Err(format!(
                    "the kernels do not compile ({status:?}) with {:?}:\n{log}",
                    options.nvrtc_options()
                ));
            }
            let mut size = 0usize;
            check(
                sys::nvrtcGetCUBINSize(program, &mut size),
                "nvrtcGetCUBINSize",
            )?;
            let mut bytes = vec![0u8; size];
            check(
                sys::nvrtcGetCUBIN(program, bytes.as_mut_ptr().cast()),
                "nvrtcGetCUBIN",
            )?;
            Ok(bytes)
        })();
        sys::nvrtcDestroyProgram(&mut program);
        result
    }
}

fn check(status: sys::nvrtcResult, call: &str) -> Result<(), String> {
    if status == sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(format!("{call} failed: {status:?}"))
    }
}
