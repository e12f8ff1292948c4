//! The GPU engine: BERT on one NVIDIA GPU through the workspace's cudarc,
//! loaded at run time, so the one `photon` binary builds without CUDA and
//! runs on CPU-only hosts and GPU hosts alike.
//!
//! * [`libraries`] finds the CUDA 13 or 12 libraries (the driver, NVRTC,
//!   cuBLAS) and says where it looked when one is missing;
//! * [`compile`] compiles the kernels (`kernels.cu`) with NVRTC for the
//!   device's architecture, cached on disk;
//! * [`engine`] holds the weights on the device and runs batches, through
//!   the [`device::Gpu`] interface that [`cuda::CudaGpu`] implements.

pub mod compile;
pub mod cuda;
pub mod device;
pub mod engine;
pub mod libraries;

pub use engine::GpuBert;

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

pub use crate::precision::Precision;

impl Precision {
    /// `PRECISION` in `kernels.cu`.
    pub fn code(self) -> u32 {
        match self {
            Self::Fp32 => 0,
            Self::Fp16 => 1,
            Self::Bf16 => 2,
            Self::Int8 => unreachable!("{INT8_ON_GPU}"),
        }
    }

    pub(crate) fn element_bytes(self) -> usize {
        match self {
            Self::Fp32 => 4,
            Self::Fp16 | Self::Bf16 => 2,
            Self::Int8 => unreachable!("{INT8_ON_GPU}"),
        }
    }
}

/// Why int8 never reaches the GPU engine's code: both of its loaders refuse it.
pub(crate) const INT8_ON_GPU: &str = "int8 runs on the CPU engine only (--device cpu); the GPU engine's precisions are fp16, bf16 and fp32";

/// The GPU engine's check of a requested precision.
pub(crate) fn check_precision(precision: Precision) -> Result<(), String> {
    match precision {
        Precision::Int8 => Err(INT8_ON_GPU.to_string()),
        _ => Ok(()),
    }
}

/// How many GPUs this process sees (after `CUDA_VISIBLE_DEVICES`): 0 without
/// a CUDA driver; an error when the driver is there but cannot start.
pub fn visible_gpus() -> Result<usize, String> {
    // SAFETY: only tries to dlopen the driver library by its usual names.
    #[allow(unsafe_code)]
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    if !present {
        return Ok(0);
    }
    match cudarc::driver::result::init() {
        Ok(()) => {}
        // What the driver says when CUDA_VISIBLE_DEVICES hides every GPU (the
        // raylet's setting for workers granted none) or the host has none.
        Err(e) if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_NO_DEVICE => return Ok(0),
        Err(e) => {
            return Err(format!(
                "the CUDA driver is present but failed to initialise: {e}"
            ));
        }
    }
    cudarc::driver::result::device::get_count()
        .map(|n| n.max(0) as usize)
        .map_err(|e| format!("cannot count CUDA devices: {e}"))
}

/// This machine's host name, for errors that must name the node.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "this host".into())
}
