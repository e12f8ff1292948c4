//! Fused CPU kernels for the fast BERT path.
//!
//! Why hand-written: candle's CPU ops each make a new tensor and a memory pass
//! (bias add, GELU, residual add, layer norm, mask add, softmax are six passes
//! and six allocations per layer), its GELU calls scalar `libm::erf` and its
//! softmax scalar `expf`. Here the matrix products stay with the `gemm` crate
//! (the one candle uses), a product's bias is added in the pass that follows
//! it, and the element-wise work is one pass each: plain loops that LLVM
//! vectorises, compiled for AVX2+FMA and picked at run time when the CPU has
//! them (`multiversion!`; no `target-cpu=native` baked into the binary).

/// `out[m×n] = x[m×k] · w[k×n] (+ bias[n])`, all row-major, single-threaded
/// (callers run one batch per thread). `w` is the transpose of PyTorch's
/// `[out, in]` weight, made once at load: gemm packs a row-major right-hand
/// side faster (measured: +5% rows/s end to end). Without `bias` the caller
/// adds it in the pass that follows (activation or layer norm).
#[allow(unsafe_code)]
pub fn linear(
    out: &mut [f32],
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    (m, k, n): (usize, usize, usize),
) {
    assert!(out.len() >= m * n && x.len() >= m * k && w.len() == n * k);
    if let Some(bias) = bias {
        assert_eq!(bias.len(), n);
        for row in out[..m * n].chunks_exact_mut(n) {
            row.copy_from_slice(bias);
        }
    }
    let dst = Strided {
        ptr: out.as_mut_ptr(),
        row_stride: n,
        col_stride: 1,
    };
    let lhs = StridedRef {
        ptr: x.as_ptr(),
        row_stride: k,
        col_stride: 1,
    };
    let rhs = StridedRef {
        ptr: w.as_ptr(),
        row_stride: n,
        col_stride: 1,
    };
    // SAFETY: the asserts above bound every index gemm touches: dst rows < m,
    // cols < n; lhs m×k; rhs k×n over w's n*k elements.
    unsafe { gemm_raw(m, n, k, dst, bias.is_some(), lhs, rhs, 1.0) };
}

/// `dst[m×n] = scale · a[m×k] · b[k×n]` over strided views into larger
/// buffers (the attention heads inside the fused QKV matrix).
///
/// Each view is `(slice, row_stride, col_stride)`; the slices must cover the
/// highest element addressed, which is checked.
#[allow(unsafe_code)]
pub fn matmul_strided(
    dst: (&mut [f32], usize, usize),
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
    (m, k, n): (usize, usize, usize),
    scale: f32,
) {
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(m > 0 && k > 0 && n > 0);
    assert!(dst.0.len() > last(m, n, dst.1, dst.2));
    assert!(a.0.len() > last(m, k, a.1, a.2));
    assert!(b.0.len() > last(k, n, b.1, b.2));
    let d = Strided {
        ptr: dst.0.as_mut_ptr(),
        row_stride: dst.1,
        col_stride: dst.2,
    };
    let a = StridedRef {
        ptr: a.0.as_ptr(),
        row_stride: a.1,
        col_stride: a.2,
    };
    let b = StridedRef {
        ptr: b.0.as_ptr(),
        row_stride: b.1,
        col_stride: b.2,
    };
    // SAFETY: the asserts check that the last element of every view lies inside
    // its slice; strides are positive, so every element does.
    unsafe { gemm_raw(m, n, k, d, false, a, b, scale) };
}

struct Strided {
    ptr: *mut f32,
    row_stride: usize,
    col_stride: usize,
}

struct StridedRef {
    ptr: *const f32,
    row_stride: usize,
    col_stride: usize,
}

/// `dst = (read_dst ? dst : 0) + scale · lhs · rhs`.
///
/// # Safety
/// Every view must be valid for its shape and strides, and `dst` must not
/// overlap `lhs` or `rhs`.
#[allow(unsafe_code, clippy::too_many_arguments)]
unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    dst: Strided,
    read_dst: bool,
    lhs: StridedRef,
    rhs: StridedRef,
    scale: f32,
) {
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.col_stride as isize,
            dst.row_stride as isize,
            read_dst,
            lhs.ptr,
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.ptr,
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Defines a kernel twice: for the baseline target and for AVX2+FMA, and
/// picks the second at run time when the CPU has them (no `target-cpu=native`
/// baked into release binaries). The body is `#[inline(always)]` into the
/// `#[target_feature]` copy, so everything it calls that is also
/// `#[inline(always)]` is compiled with AVX2+FMA. (A closure handed to
/// `pulp::Arch::dispatch` gets that only if LLVM chooses to inline it: a
/// hand-written attention kernel's was not, its `mul_add`s became `fmaf`
/// library calls, and the model ran 3× slower.)
macro_rules! multiversion {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2_fma($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA, checked just above.
                    #[allow(unsafe_code)]
                    return unsafe { avx2_fma($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// The feed-forward activation (`hidden_act` in `config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU: `x · ½ · (1 + erf(x/√2))`.
    GeluErf,
    /// tanh-approximated GELU.
    GeluTanh,
    /// `max(x, 0)`.
    Relu,
}

/// `values[r] = act(values[r] + bias)` for each row of `bias.len()` values:
/// the bias add of the preceding product and the activation in one pass.
pub fn bias_activation_in_place(values: &mut [f32], bias: &[f32], activation: Activation) {
    assert!(values.len().is_multiple_of(bias.len()));
    match activation {
        Activation::GeluErf => bias_gelu_erf(values, bias),
        Activation::GeluTanh => bias_gelu_tanh(values, bias),
        Activation::Relu => bias_relu(values, bias),
    }
}

#[inline(always)]
fn map_rows_with_bias(values: &mut [f32], bias: &[f32], f: impl Fn(f32) -> f32) {
    for row in values.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v = f(*v + b);
        }
    }
}

multiversion! {
    /// Exact GELU of `values + bias`, in place.
    pub fn bias_gelu_erf(values: &mut [f32], bias: &[f32]) {
        map_rows_with_bias(values, bias, |x| {
            0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
        })
    }
}

multiversion! {
    /// tanh-approximated GELU of `values + bias`, in place.
    pub fn bias_gelu_tanh(values: &mut [f32], bias: &[f32]) {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        map_rows_with_bias(values, bias, |x| {
            0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)))
        })
    }
}

multiversion! {
    /// ReLU of `values + bias`, in place.
    pub fn bias_relu(values: &mut [f32], bias: &[f32]) {
        map_rows_with_bias(values, bias, |x| x.max(0.0))
    }
}

multiversion! {
    /// Row-wise softmax in place over rows of `cols` values.
    pub fn softmax_rows_in_place(values: &mut [f32], cols: usize) {
        for row in values.chunks_exact_mut(cols) {
            softmax_row(row);
        }
    }
}

#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let max = lanes(row, f32::NEG_INFINITY, f32::max);
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / lanes(row, 0.0, |a, b| a + b);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

multiversion! {
    /// `x = LayerNorm(x + residual + bias) · gamma + beta` per row of
    /// `gamma.len()` values, where `x` holds the previous product without its
    /// bias: bias add, residual add and the norm in one pass over each row.
    /// The result replaces `residual` (the hidden state); `x` is scratch.
    pub fn bias_residual_layer_norm(
        x: &mut [f32],
        residual: &mut [f32],
        bias: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
    ) {
        let cols = gamma.len();
        assert!(x.len() == residual.len() && beta.len() == cols && bias.len() == cols);
        assert!(x.len().is_multiple_of(cols));
        for (row, res) in x.chunks_exact_mut(cols).zip(residual.chunks_exact_mut(cols)) {
            for ((v, r), b) in row.iter_mut().zip(res.iter()).zip(bias) {
                *v += r + b;
            }
            normalize_row(row, gamma, beta, eps);
            res.copy_from_slice(row);
        }
    }
}

multiversion! {
    /// `x = LayerNorm(x) · gamma + beta` per row.
    pub fn layer_norm_in_place(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let cols = gamma.len();
        assert!(beta.len() == cols && x.len().is_multiple_of(cols));
        for row in x.chunks_exact_mut(cols) {
            normalize_row(row, gamma, beta, eps);
        }
    }
}

#[inline(always)]
fn normalize_row(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = lanes(row, 0.0, |a, b| a + b) / n;
    for v in row.iter_mut() {
        *v -= mean;
    }
    let var = lanes_map(row, |v| v * v) / n;
    let inv_std = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = *v * inv_std * g + b;
    }
}

/// Width of the partial results below: one AVX2 register of f32.
const LANES: usize = 8;

/// Folds `values` with `op` in `LANES` independent partial results, then
/// folds those. Strict IEEE order forbids LLVM from vectorising a plain
/// `iter().sum()` (it may not reassociate), so the reassociation is written
/// out; each lane is then one SIMD lane.
#[inline(always)]
fn lanes(values: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, v) in acc.iter_mut().zip(chunk) {
            *a = op(*a, *v);
        }
    }
    let folded = acc.iter().fold(init, |a, &b| op(a, b));
    tail.iter().fold(folded, |a, &b| op(a, b))
}

/// `Σ f(v)` over `values`, in `LANES` partial sums.
#[inline(always)]
fn lanes_map(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, v) in acc.iter_mut().zip(chunk) {
            *a += f(*v);
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|v| f(*v)).sum::<f32>()
}

/// `erf` for f32 as a rational polynomial (the one Eigen and XLA use), with
/// no branches or library calls so the loops above vectorise. Max error
/// against `f64` erf is checked in the tests.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2.mul_add(-2.726_142_3e-10, 2.770_681_4e-8);
    p = x2.mul_add(p, -2.101_024e-6);
    p = x2.mul_add(p, -5.692_506_4e-5);
    p = x2.mul_add(p, -7.349_906_3e-4);
    p = x2.mul_add(p, -2.954_6e-3);
    p = x2.mul_add(p, -1.609_603_3e-2);
    p *= x;
    let mut q = x2.mul_add(-1.456_607_2e-5, -2.133_740_6e-4);
    q = x2.mul_add(q, -1.682_827e-3);
    q = x2.mul_add(q, -7.373_329e-3);
    q = x2.mul_add(q, -1.426_474e-2);
    p / q
}

/// `exp` for f32 (Cephes' polynomial), branch-free so it vectorises; inputs
/// below about -87 give 0, as softmax wants.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so `x - n·ln2` stays exact for |n| < 128.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to the nearest integer without a `round` call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = x.mul_add(LOG2E, ROUND) - ROUND;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = r.mul_add(1.987_569_1e-4, 1.398_2e-3);
    p = r.mul_add(p, 8.333_452e-3);
    p = r.mul_add(p, 4.166_579_6e-2);
    p = r.mul_add(p, 0.166_666_65);
    p = r.mul_add(p, 0.5);
    let y = (r * r).mul_add(p, r) + 1.0;
    // 2ⁿ built from its exponent bits; n ∈ [-126, 127] after the clamp.
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    y * two_n
}

/// `tanh` via `exp`, branch-free.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    let e = exp(2.0 * x.clamp(-9.0, 9.0));
    (e - 1.0) / (e + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf_f64(x: f64) -> f64 {
        // Abramowitz–Stegun 7.1.28-free reference: a high-precision series /
        // continued fraction is overkill; integrate with Simpson's rule on a
        // fine grid, accurate to ~1e-12 over [-5, 5].
        let steps = 20_000;
        let h = x / steps as f64;
        let f = |t: f64| (-t * t).exp();
        let mut sum = f(0.0) + f(x);
        for i in 1..steps {
            let weight = if i % 2 == 1 { 4.0 } else { 2.0 };
            sum += weight * f(i as f64 * h);
        }
        sum * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_matches_reference_closely() {
        let mut worst: f64 = 0.0;
        for i in -600..=600 {
            let x = i as f32 / 100.0;
            let err = (erf(x) as f64 - erf_f64(x as f64)).abs();
            worst = worst.max(err);
        }
        // A few f32 ulps near ±1 (an ulp there is 6e-8..1.2e-7).
        assert!(worst < 4e-7, "max erf error {worst}");
    }

    #[test]
    fn exp_matches_std_within_a_few_ulps() {
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let (ours, std) = (exp(x), x.exp());
            let rel = ((ours - std) / std).abs();
            assert!(rel < 3e-7, "exp({x}) = {ours}, std {std}, rel {rel}");
        }
        assert!(exp(-1000.0) < 1e-37);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_match_naive() {
        let mut values = vec![1.0, 2.0, 3.0, -1e30, 0.5, 0.5, 0.5, 0.5];
        softmax_rows_in_place(&mut values, 4);
        let naive: Vec<f32> = {
            let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|v| (v - 3.0).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| (v / s) as f32).collect()
        };
        for (a, b) in values[..3].iter().zip(&naive) {
            assert!((a - b).abs() < 1e-6);
        }
        assert!(values[3] < 1e-30);
        assert!(values[4..].iter().all(|v| (v - 0.25).abs() < 1e-7));
    }

    #[test]
    fn linear_matches_naive_product() {
        let (m, k, n) = (5, 7, 3);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let bias = vec![0.5, -1.0, 2.0];
        let mut out = vec![0.0; m * n];
        linear(&mut out, &x, &w, Some(&bias), (m, k, n));
        for i in 0..m {
            for j in 0..n {
                let expected: f32 =
                    bias[j] + (0..k).map(|kk| x[i * k + kk] * w[kk * n + j]).sum::<f32>();
                assert!((out[i * n + j] - expected).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn add_layer_norm_normalises_each_row() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 14.0];
        let mut residual = vec![0.0; 8];
        bias_residual_layer_norm(
            &mut x,
            &mut residual,
            &[0.0; 4],
            &[1.0; 4],
            &[0.0; 4],
            1e-12,
        );
        for row in residual.chunks(4) {
            let mean: f32 = row.iter().sum::<f32>() / 4.0;
            let var: f32 = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 4.0;
            assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
        }
    }
}
