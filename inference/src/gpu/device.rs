//! What the GPU engine needs of a device: memory, copies, launches of the
//! kernels in `kernels.cu`, and cuBLAS's product. [`super::cuda::CudaGpu`]
//! is the real one. The tests run the same engine on an emulator of this
//! interface (the kernels compiled for the CPU, a reference product), so the
//! engine's buffers, offsets, launch shapes and product layouts are checked
//! on machines without a GPU.

use std::any::Any;

use super::Precision;

/// A device allocation: its address (what kernels and products take) and the
/// allocation itself, freed when this drops.
pub struct DeviceBuffer {
    /// Device address of the first byte.
    pub address: u64,
    /// Size in bytes.
    pub bytes: usize,
    /// Keeps the allocation alive.
    pub owner: Box<dyn Any + Send + Sync>,
}

/// One kernel argument, in the order of the kernel's parameters.
#[derive(Debug, Clone, Copy)]
pub enum KernelArg {
    /// A device address (a pointer parameter).
    Address(u64),
    /// `int`.
    Int(i32),
    /// `long long`.
    Long(i64),
    /// `float`.
    Float(f32),
}

/// A kernel launch's shape: `grid` blocks of `threads` threads.
#[derive(Debug, Clone, Copy)]
pub struct Launch {
    /// Blocks in x and y.
    pub grid: (u32, u32),
    /// Threads per block (a multiple of 32).
    pub threads: u32,
}

/// cuBLAS's `gemmEx` with α = 1, β = 0 and fp32 output, column-major as
/// cuBLAS is: `C[m × n] = op(A) · op(B)`, where `op` transposes when asked,
/// element `(i, j)` of a matrix with leading dimension `ld` is at `i + j·ld`,
/// and A and B hold `input` values.
#[derive(Debug, Clone, Copy)]
pub struct Gemm {
    /// op(A) = Aᵀ.
    pub transpose_a: bool,
    /// op(B) = Bᵀ.
    pub transpose_b: bool,
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// The shared dimension.
    pub k: usize,
    /// A's address.
    pub a: u64,
    /// A's leading dimension.
    pub lda: usize,
    /// B's address.
    pub b: u64,
    /// B's leading dimension.
    pub ldb: usize,
    /// C's address (fp32).
    pub c: u64,
    /// C's leading dimension.
    pub ldc: usize,
    /// The type of A and B.
    pub input: Precision,
}

/// A device the engine runs on. Every operation is ordered after the ones
/// before it (one stream); `download` waits for all of them.
pub trait Gpu: Send + Sync {
    /// Which device this is.
    fn describe(&self) -> super::GpuDevice;
    /// Makes the device usable from the calling thread (before buffers drop).
    fn make_current(&self) -> Result<(), String> {
        Ok(())
    }
    /// Allocates `bytes` zeroed bytes.
    fn alloc(&self, bytes: usize) -> Result<DeviceBuffer, String>;
    /// Copies `bytes` to the start of `to`.
    fn upload(&self, bytes: &[u8], to: &DeviceBuffer) -> Result<(), String>;
    /// Waits for the work queued so far, then copies the start of `from`.
    fn download(&self, from: &DeviceBuffer, bytes: &mut [u8]) -> Result<(), String>;
    /// Queues `kernel` (one of [`super::compile::KERNELS`]).
    fn launch(&self, kernel: &str, shape: Launch, args: &[KernelArg]) -> Result<(), String>;
    /// Queues a product.
    fn gemm(&self, gemm: &Gemm) -> Result<(), String>;
}
