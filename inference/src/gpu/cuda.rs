//! [`Gpu`] on an NVIDIA GPU through cudarc: the driver (loaded at run time),
//! the kernels compiled by NVRTC, cuBLAS for the products, one stream.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{CudaBlas, result as blas, sys as blas_sys};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::compile::{self, KERNELS, KernelOptions};
use super::device::{DeviceBuffer, Gemm, Gpu, KernelArg, Launch};
use super::{GpuDevice, Precision, libraries};

/// The first visible GPU, with the kernels loaded for one precision and
/// head width.
pub struct CudaGpu {
    device: GpuDevice,
    functions: HashMap<&'static str, CudaFunction>,
    blas: CudaBlas,
    stream: Arc<CudaStream>,
    context: Arc<CudaContext>,
}

impl CudaGpu {
    /// Opens GPU 0 of `CUDA_VISIBLE_DEVICES`, compiles (or reads from
    /// `kernel_cache`) and loads the kernels, and creates a cuBLAS handle.
    pub fn open(
        precision: Precision,
        head_dim: usize,
        kernel_cache: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        libraries::load_cublas()?;
        let context = CudaContext::new(0).map_err(|e| format!("opening GPU 0: {e}"))?;
        // One stream orders every operation, so cudarc's per-buffer events
        // (for work spread over several streams) are not needed.
        // SAFETY: nothing of this context is used from another stream.
        #[allow(unsafe_code)]
        unsafe {
            context.disable_event_tracking();
        }
        // Waiting threads sleep instead of spinning: actors sharing a GPU
        // share the node's cores with their tokenizers.
        if let Err(e) = context.set_blocking_synchronize() {
            tracing::warn!("the GPU context keeps spin-waiting: {e}");
        }
        let stream = context.default_stream();
        let device = GpuDevice {
            visible_id: std::env::var("CUDA_VISIBLE_DEVICES")
                .ok()
                .and_then(|ids| ids.split(',').next().map(|s| s.trim().to_string()))
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| "0".into()),
            name: context
                .name()
                .map_err(|e| format!("reading the GPU's name: {e}"))?,
            compute_capability: context
                .compute_capability()
                .map_err(|e| format!("reading the GPU's compute capability: {e}"))?,
        };
        let options = KernelOptions {
            compute_capability: device.compute_capability,
            precision_code: precision.code(),
            head_dim,
        };
        let cubin = compile::cubin(&options, kernel_cache)?;
        let module = context
            .load_module(Ptx::from_binary(cubin))
            .map_err(|e| format!("loading the compiled kernels on {}: {e}", device.name))?;
        let functions = KERNELS
            .iter()
            .map(|&name| {
                module
                    .load_function(name)
                    .map(|f| (name, f))
                    .map_err(|e| format!("finding kernel {name}: {e}"))
            })
            .collect::<Result<_, String>>()?;
        let blas =
            CudaBlas::new(stream.clone()).map_err(|e| format!("creating a cuBLAS handle: {e}"))?;
        Ok(Self {
            device,
            functions,
            blas,
            stream,
            context,
        })
    }
}

impl Gpu for CudaGpu {
    fn describe(&self) -> GpuDevice {
        self.device.clone()
    }

    fn make_current(&self) -> Result<(), String> {
        self.context
            .bind_to_thread()
            .map_err(|e| format!("binding the GPU context: {e}"))
    }

    fn alloc(&self, bytes: usize) -> Result<DeviceBuffer, String> {
        let slice = self
            .stream
            .alloc_zeros::<u8>(bytes.max(1))
            .map_err(|e| format!("allocating {bytes} bytes on the GPU: {e}"))?;
        // Event tracking is off (one stream), so the guard records nothing.
        let address = slice.device_ptr(&self.stream).0;
        Ok(DeviceBuffer {
            address,
            bytes,
            owner: Box::new(slice),
        })
    }

    fn upload(&self, bytes: &[u8], to: &DeviceBuffer) -> Result<(), String> {
        assert!(bytes.len() <= to.bytes, "upload past the buffer's end");
        self.make_current()?;
        // SAFETY: `to` is a live allocation at least `bytes.len()` long;
        // from pageable memory the driver has copied `bytes` when this returns.
        #[allow(unsafe_code)]
        unsafe {
            cudarc::driver::result::memcpy_htod_async(to.address, bytes, self.stream.cu_stream())
        }
        .map_err(|e| format!("copying {} bytes to the GPU: {e}", bytes.len()))
    }

    fn download(&self, from: &DeviceBuffer, bytes: &mut [u8]) -> Result<(), String> {
        assert!(bytes.len() <= from.bytes, "download past the buffer's end");
        self.make_current()?;
        // SAFETY: `from` is a live allocation at least `bytes.len()` long; the
        // stream is synchronised before `bytes` is read.
        #[allow(unsafe_code)]
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(bytes, from.address, self.stream.cu_stream())
        }
        .map_err(|e| format!("copying {} bytes from the GPU: {e}", bytes.len()))?;
        self.stream
            .synchronize()
            .map_err(|e| format!("running the batch on the GPU: {e}"))
    }

    fn launch(&self, kernel: &str, shape: Launch, args: &[KernelArg]) -> Result<(), String> {
        self.make_current()?;
        let function = self
            .functions
            .get(kernel)
            .ok_or_else(|| format!("no kernel {kernel}"))?;
        let mut builder = self.stream.launch_builder(function);
        for arg in args {
            match arg {
                KernelArg::Address(value) => builder.arg(value),
                KernelArg::Int(value) => builder.arg(value),
                KernelArg::Long(value) => builder.arg(value),
                KernelArg::Float(value) => builder.arg(value),
            };
        }
        let config = LaunchConfig {
            grid_dim: (shape.grid.0, shape.grid.1, 1),
            block_dim: (shape.threads, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the engine passes arguments matching the kernel's
        // parameters in kernels.cu, in order (addresses as 64-bit values),
        // and grids that index only rows and sequences its buffers hold.
        #[allow(unsafe_code)]
        unsafe { builder.launch(config) }
            .map(|_| ())
            .map_err(|e| format!("launching {kernel}: {e}"))
    }

    fn gemm(&self, g: &Gemm) -> Result<(), String> {
        self.make_current()?;
        let operation = |transpose| {
            if transpose {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let input = match g.input {
            Precision::Fp32 => blas_sys::cudaDataType::CUDA_R_32F,
            Precision::Fp16 => blas_sys::cudaDataType::CUDA_R_16F,
            Precision::Bf16 => blas_sys::cudaDataType::CUDA_R_16BF,
            Precision::Int8 => unreachable!("{}", super::INT8_ON_GPU),
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the addresses are live device buffers of the engine, sized
        // for the shapes it passes; the handle runs on this GPU's stream.
        #[allow(unsafe_code)]
        unsafe {
            blas::gemm_ex(
                *self.blas.handle(),
                operation(g.transpose_a),
                operation(g.transpose_b),
                g.m as i32,
                g.n as i32,
                g.k as i32,
                (&alpha as *const f32).cast(),
                g.a as *const c_void,
                input,
                g.lda as i32,
                g.b as *const c_void,
                input,
                g.ldb as i32,
                (&beta as *const f32).cast(),
                g.c as *mut c_void,
                blas_sys::cudaDataType::CUDA_R_32F,
                g.ldc as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| format!("cuBLAS gemmEx {g:?}: {e:?}"))
    }
}
