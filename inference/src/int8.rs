//! int8 products for the CPU engine (`--precision int8`).
//!
//! Weights are quantized once at load, per output channel, symmetric
//! (`-127..=127`, `w ≈ sw·qw`); activations per token (row) as each product
//! runs, asymmetric (`0..=255` with a zero point, `x ≈ sx·(qx − zx)`): the
//! operand types of VNNI's `vpdpbusd`, and what ONNX Runtime's dynamic
//! quantization does. Asymmetric rows matter: GELU's outputs are almost all
//! ≥ 0, and a symmetric scale would spend half the codes on values that never
//! occur. So `x·w ≈ sx·sw·(Σ qx·qw − zx·Σ qw)`: the products accumulate
//! exactly in i32, the zero point is taken off with the weight's column sums,
//! and the result is dequantized to f32 as each tile is stored, where the
//! following fused pass (bias + GELU, or bias + residual + layer norm) takes
//! over in fp32.
//!
//! The kernel uses AVX2's `vpmaddwd`: it multiplies sixteen pairs of i16 and
//! adds each two neighbours into eight i32, so one instruction does sixteen
//! multiply-adds where an fp32 FMA does eight. The int8 values are held
//! widened to i16 (in the packed weights and the quantized rows), which keeps
//! the sums exact; `vpmaddubsw` (u8 × i8) would do as many per instruction
//! but saturates at i16 unless one side is cut to 7 bits. CPUs with
//! AVX512-VNNI or AMX would run `vpdpbusd` or tile products; those kernels are
//! not written (no such CPU to test them on), and [`kernel`] names the path
//! that runs.
//!
//! Why hand-written: the `gemm` crate (what the fp32 path and candle use) has
//! no integer products, and candle's quantized matmul is ggml's block format
//! built for one-token decoding (a dot product per output).

use std::sync::OnceLock;

/// Rows of a tile: the kernel keeps `ROWS × 2` accumulators of eight i32 in
/// twelve of the sixteen AVX2 registers.
const ROWS: usize = 6;
/// Columns of a tile and of a packed weight panel: two registers of eight.
const COLS: usize = 16;
/// Rows of quantized activations kept hot while every weight panel passes
/// over them (sized to stay in L2 beside one panel).
const ROW_BLOCK_BYTES: usize = 96 << 10;

/// The int8 kernel this CPU runs, or why it has none.
pub fn kernel() -> Result<&'static str, String> {
    static KERNEL: OnceLock<Result<&'static str, String>> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                return Ok("avx2 vpmaddwd");
            }
            Err(format!(
                "int8 needs a CPU with AVX2 (x86-64), which {} lacks; use --precision fp32",
                crate::gpu::host_name()
            ))
        })
        .clone()
}

/// A dense layer's weight `[inputs, outputs]` quantized per output column
/// and packed for the kernel.
pub struct Int8Weight {
    /// Panels of `COLS` columns; in each, for every pair of inputs `(2p,
    /// 2p+1)`, the `COLS` columns' two weights side by side (`vpmaddwd`'s
    /// operand order). Columns past `outputs` and an odd last input are 0.
    packed: Vec<i16>,
    /// Per output column: the weight that 1 stands for.
    scales: Vec<f32>,
    /// Per output column: the sum of its quantized weights (for the
    /// activations' zero points).
    column_sums: Vec<i32>,
    inputs: usize,
    outputs: usize,
}

impl Int8Weight {
    /// Quantizes a row-major `[inputs, outputs]` weight.
    pub fn quantize(weight: &[f32], inputs: usize, outputs: usize) -> Self {
        assert_eq!(weight.len(), inputs * outputs);
        let scales: Vec<f32> = (0..outputs)
            .map(|j| {
                let max = (0..inputs)
                    .map(|i| weight[i * outputs + j].abs())
                    .fold(0.0f32, f32::max);
                if max > 0.0 { max / 127.0 } else { 1.0 }
            })
            .collect();
        let pairs = inputs.div_ceil(2);
        let panels = outputs.div_ceil(COLS);
        let mut packed = vec![0i16; panels * pairs * COLS * 2];
        for panel in 0..panels {
            for pair in 0..pairs {
                let base = (panel * pairs + pair) * COLS * 2;
                for c in 0..COLS {
                    let j = panel * COLS + c;
                    for half in 0..2 {
                        let i = 2 * pair + half;
                        if j < outputs && i < inputs {
                            let q = (weight[i * outputs + j] / scales[j]).round_ties_even();
                            packed[base + 2 * c + half] = q.clamp(-127.0, 127.0) as i16;
                        }
                    }
                }
            }
        }
        let column_sums = (0..outputs)
            .map(|j| {
                let panel = &packed[(j / COLS) * pairs * COLS * 2..][..pairs * COLS * 2];
                let c = j % COLS;
                panel
                    .chunks_exact(COLS * 2)
                    .map(|step| i32::from(step[2 * c]) + i32::from(step[2 * c + 1]))
                    .sum()
            })
            .collect();
        Self {
            packed,
            scales,
            column_sums,
            inputs,
            outputs,
        }
    }

    /// `out[m × outputs] = x · W (+ bias)` in f32, `x` quantized by
    /// [`QuantizedRows::quantize`].
    pub fn product(&self, out: &mut [f32], x: &QuantizedRows, bias: Option<&[f32]>) {
        assert_eq!(x.cols, self.inputs, "quantized rows have the wrong width");
        assert!(out.len() >= x.rows * self.outputs);
        if let Some(bias) = bias {
            assert_eq!(bias.len(), self.outputs);
        }
        if x.rows == 0 {
            return;
        }
        kernel().expect("the int8 path is chosen only where its kernel runs");
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `kernel()` succeeded, so the CPU has AVX2; the asserts above
        // and `QuantizedRows`' padding bound every access (see `avx2`).
        #[allow(unsafe_code)]
        unsafe {
            avx2::product(out, x, self, bias)
        };
    }
}

/// Activations quantized per row, padded for the kernel: rows to a multiple
/// of the tile's, columns to an even count.
#[derive(Default)]
pub struct QuantizedRows {
    values: Vec<i16>,
    scales: Vec<f32>,
    zero_points: Vec<i32>,
    rows: usize,
    cols: usize,
}

impl QuantizedRows {
    /// Quantizes the `rows × cols` row-major `x`, reusing this buffer.
    pub fn quantize(&mut self, x: &[f32], rows: usize, cols: usize) {
        assert!(x.len() >= rows * cols);
        let width = cols.next_multiple_of(2);
        let padded = rows.next_multiple_of(ROWS);
        // No clearing: the padding may hold anything. Padded rows are computed
        // but never stored, and an odd last column meets zero weights.
        self.values.resize(padded * width, 0);
        self.scales.resize(padded, 0.0);
        self.zero_points.resize(padded, 0);
        self.rows = rows;
        self.cols = cols;
        let x = &x[..rows * cols];
        kernel().expect("the int8 path is chosen only where its kernel runs");
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `kernel()` succeeded: the CPU has AVX2.
        #[allow(unsafe_code)]
        unsafe {
            avx2::quantize_rows(x, cols, self, width)
        };
    }

    fn width(&self) -> usize {
        self.cols.next_multiple_of(2)
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{COLS, Int8Weight, QuantizedRows, ROW_BLOCK_BYTES, ROWS};

    /// # Safety
    /// The CPU must have AVX2; `x` must come from `QuantizedRows::quantize`
    /// with `w.inputs` columns, `out` hold `x.rows × w.outputs` values and
    /// `bias`, if any, `w.outputs`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn product(
        out: &mut [f32],
        x: &QuantizedRows,
        w: &Int8Weight,
        bias: Option<&[f32]>,
    ) {
        let width = x.width();
        let pairs = width / 2;
        let panel_len = pairs * COLS * 2;
        let block_rows = (ROW_BLOCK_BYTES / (width * 2))
            .max(1)
            .next_multiple_of(ROWS);
        let mut block = 0;
        while block < x.rows {
            let block_end = (block + block_rows).min(x.rows);
            for (panel, weights) in w.packed.chunks_exact(panel_len).enumerate() {
                let mut row = block;
                while row < block_end {
                    // SAFETY: rows `row..row + ROWS` exist in `x.values` (padded
                    // to a multiple of ROWS), each `width` long; the panel
                    // holds `pairs` steps of COLS pairs.
                    let acc = unsafe { tile(&x.values[row * width..], width, weights, pairs) };
                    let rows = (block_end - row).min(ROWS);
                    let rows = row..row + rows;
                    let quantization = (&x.scales[rows.clone()], &x.zero_points[rows]);
                    store(out, w, bias, row, panel * COLS, &acc, quantization);
                    row += ROWS;
                }
            }
            block = block_end;
        }
    }

    /// One `ROWS × COLS` tile of i32 sums over every input.
    ///
    /// # Safety
    /// `a` must hold `ROWS` rows of `width = 2·pairs` values; `b` a panel of
    /// `pairs × COLS × 2`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn tile(a: &[i16], width: usize, b: &[i16], pairs: usize) -> [[__m256i; 2]; ROWS] {
        debug_assert!(a.len() >= (ROWS - 1) * width + 2 * pairs && b.len() >= pairs * COLS * 2);
        let mut acc = [[_mm256_setzero_si256(); 2]; ROWS];
        let (a, b) = (a.as_ptr(), b.as_ptr());
        for pair in 0..pairs {
            // SAFETY: in bounds by the contract above.
            unsafe {
                let b0 = _mm256_loadu_si256(b.add(pair * COLS * 2).cast());
                let b1 = _mm256_loadu_si256(b.add(pair * COLS * 2 + 16).cast());
                for (r, acc) in acc.iter_mut().enumerate() {
                    let two = a.add(r * width + 2 * pair).cast::<i32>().read_unaligned();
                    let x = _mm256_set1_epi32(two);
                    acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(x, b0));
                    acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(x, b1));
                }
            }
        }
        acc
    }

    /// Dequantizes a tile (`(acc − zero point · column sum) · row scale ·
    /// column scale + bias`) into `out`: its first `rows.0.len()` rows, and
    /// the columns below `w.outputs`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn store(
        out: &mut [f32],
        w: &Int8Weight,
        bias: Option<&[f32]>,
        row: usize,
        col: usize,
        acc: &[[__m256i; 2]; ROWS],
        (row_scales, zero_points): (&[f32], &[i32]),
    ) {
        let n = w.outputs;
        let cols = (n - col).min(COLS);
        let mut column_scales = [0.0f32; COLS];
        column_scales[..cols].copy_from_slice(&w.scales[col..col + cols]);
        let mut sums = [0i32; COLS];
        sums[..cols].copy_from_slice(&w.column_sums[col..col + cols]);
        let mut biases = [0.0f32; COLS];
        if let Some(bias) = bias {
            biases[..cols].copy_from_slice(&bias[col..col + cols]);
        }
        // SAFETY: the arrays hold COLS = 16 values, read in two halves of 8.
        let (scale, sum, bias) = unsafe {
            (
                [0, 8].map(|at| _mm256_loadu_ps(column_scales.as_ptr().add(at))),
                [0, 8].map(|at| _mm256_loadu_si256(sums.as_ptr().add(at).cast())),
                [0, 8].map(|at| _mm256_loadu_ps(biases.as_ptr().add(at))),
            )
        };
        let rows = acc.iter().zip(row_scales).zip(zero_points);
        for (r, ((acc, &row_scale), &zero_point)) in rows.enumerate() {
            let (row_scale, zero_point) =
                (_mm256_set1_ps(row_scale), _mm256_set1_epi32(zero_point));
            let values = [0, 1].map(|half| {
                let exact = _mm256_sub_epi32(acc[half], _mm256_mullo_epi32(zero_point, sum[half]));
                let scale = _mm256_mul_ps(row_scale, scale[half]);
                _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(exact), scale), bias[half])
            });
            let dst = &mut out[(row + r) * n + col..][..cols];
            if cols == COLS {
                // SAFETY: `dst` holds COLS = 16 values.
                unsafe {
                    _mm256_storeu_ps(dst.as_mut_ptr(), values[0]);
                    _mm256_storeu_ps(dst.as_mut_ptr().add(8), values[1]);
                }
            } else {
                let mut partial = [0.0f32; COLS];
                // SAFETY: `partial` holds COLS = 16 values.
                unsafe {
                    _mm256_storeu_ps(partial.as_mut_ptr(), values[0]);
                    _mm256_storeu_ps(partial.as_mut_ptr().add(8), values[1]);
                }
                dst.copy_from_slice(&partial[..cols]);
            }
        }
    }

    /// Quantizes each `cols`-wide row of `x` into a `width`-wide row of
    /// `into.values`: `0..=255` around a zero point, the row's range (with 0
    /// in it, so 0 stays exact) cut in 255 steps; rounding to nearest even
    /// (`vcvtps2dq`).
    ///
    /// # Safety
    /// The CPU must have AVX2; `into` must be sized for `x`'s rows.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_rows(
        x: &[f32],
        cols: usize,
        into: &mut QuantizedRows,
        width: usize,
    ) {
        let rows = x
            .chunks_exact(cols)
            .zip(into.values.chunks_exact_mut(width));
        let params = into.scales.iter_mut().zip(into.zero_points.iter_mut());
        for ((row, quantized), (scale, zero_point)) in rows.zip(params) {
            let sixteens = row.chunks_exact(16);
            let tail = sixteens.remainder();
            let (mut low, mut high) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for chunk in sixteens.clone() {
                for at in [0, 8] {
                    // SAFETY: `chunk` holds 16 values.
                    let v = unsafe { _mm256_loadu_ps(chunk.as_ptr().add(at)) };
                    low = _mm256_min_ps(low, v);
                    high = _mm256_max_ps(high, v);
                }
            }
            let (mut lows, mut highs) = ([0.0f32; 8], [0.0f32; 8]);
            // SAFETY: both arrays hold 8 values.
            unsafe {
                _mm256_storeu_ps(lows.as_mut_ptr(), low);
                _mm256_storeu_ps(highs.as_mut_ptr(), high);
            }
            let min = tail.iter().chain(&lows).fold(0.0f32, |a, v| a.min(*v));
            let max = tail.iter().chain(&highs).fold(0.0f32, |a, v| a.max(*v));
            let range = max - min;
            let (unit, inverse) = if range > 0.0 {
                (range / 255.0, 255.0 / range)
            } else {
                (1.0, 0.0)
            };
            let zero = (-min * inverse).round_ties_even().clamp(0.0, 255.0) as i32;
            (*scale, *zero_point) = (unit, zero);
            let (inverse_lanes, zero_lanes) = (_mm256_set1_ps(inverse), _mm256_set1_epi32(zero));
            let (floor, ceiling) = (_mm256_setzero_si256(), _mm256_set1_epi16(255));
            for (chunk, out) in sixteens.zip(quantized.chunks_exact_mut(16)) {
                let [a, b] = [0, 8].map(|at| {
                    // SAFETY: `chunk` holds 16 values.
                    let v = unsafe { _mm256_loadu_ps(chunk.as_ptr().add(at)) };
                    _mm256_add_epi32(
                        _mm256_cvtps_epi32(_mm256_mul_ps(v, inverse_lanes)),
                        zero_lanes,
                    )
                });
                // `packs` interleaves 128-bit halves; the permute restores order.
                let packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0b11_01_10_00);
                let clamped = _mm256_min_epi16(_mm256_max_epi16(packed, floor), ceiling);
                // SAFETY: `out` holds 16 values.
                unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), clamped) };
            }
            let done = row.len() - tail.len();
            for (q, v) in quantized[done..].iter_mut().zip(tail) {
                *q = ((v * inverse).round_ties_even() as i32 + zero).clamp(0, 255) as i16;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The kernel's sums are exact: compare with the same quantization done
    /// naively, for shapes with partial tiles, odd inputs and partial panels.
    #[test]
    fn product_matches_naive_quantized_product() {
        // One buffer for every shape, largest first, as the engine reuses it:
        // what earlier shapes left in the padding must not matter.
        let mut rows = QuantizedRows::default();
        for &(m, k, n) in &[
            (40, 383, 33),
            (7, 5, 17),
            (1, 1, 1),
            (13, 64, 48),
            (6, 384, 1152),
        ] {
            let x = pseudo_random(m * k, 1 + m as u32);
            let w = pseudo_random(k * n, 7 + n as u32);
            let bias = pseudo_random(n, 3);
            let weight = Int8Weight::quantize(&w, k, n);
            rows.quantize(&x, m, k);
            let mut out = vec![f32::NAN; m * n];
            weight.product(&mut out, &rows, Some(&bias));
            for i in 0..m {
                let row = &x[i * k..][..k];
                let min = row.iter().fold(0.0f32, |a, v| a.min(*v));
                let max = row.iter().fold(0.0f32, |a, v| a.max(*v));
                let (sx, inv) = ((max - min) / 255.0, 255.0 / (max - min));
                let zero = (-min * inv).round_ties_even() as i32;
                for j in 0..n {
                    let sw = weight.scales[j];
                    let sum: i32 = (0..k)
                        .map(|kk| {
                            let qx =
                                ((row[kk] * inv).round_ties_even() as i32 + zero).clamp(0, 255);
                            let qw = (w[kk * n + j] / sw).round_ties_even() as i32;
                            (qx - zero) * qw
                        })
                        .sum();
                    let expected = sum as f32 * (sx * sw) + bias[j];
                    let got = out[i * n + j];
                    assert!(
                        (got - expected).abs() <= 1e-5 * expected.abs().max(1.0),
                        "({m},{k},{n}) [{i},{j}]: {got} vs {expected}"
                    );
                }
            }
        }
    }

    /// And it approximates the fp32 product within what 8 bits allow.
    #[test]
    fn product_approximates_fp32() {
        let (m, k, n) = (20, 384, 64);
        let x = pseudo_random(m * k, 11);
        let w = pseudo_random(k * n, 12);
        let weight = Int8Weight::quantize(&w, k, n);
        let mut rows = QuantizedRows::default();
        rows.quantize(&x, m, k);
        let mut out = vec![0.0; m * n];
        weight.product(&mut out, &rows, None);
        let mut exact = vec![0.0; m * n];
        crate::kernels::linear(&mut exact, &x, &w, None, (m, k, n));
        let (dot, norm) = out
            .iter()
            .zip(&exact)
            .fold((0.0f64, 0.0f64), |(d, e), (a, b)| {
                (d + (*a as f64) * (*b as f64), e + (*b as f64).powi(2))
            });
        let norm_out: f64 = out.iter().map(|v| (*v as f64).powi(2)).sum();
        let cosine = dot / (norm.sqrt() * norm_out.sqrt());
        assert!(cosine > 0.999, "cosine {cosine}");
    }

    #[test]
    fn all_zero_rows_give_zero_not_nan() {
        let weight = Int8Weight::quantize(&[1.0, -2.0, 0.5, 0.25], 2, 2);
        let mut rows = QuantizedRows::default();
        rows.quantize(&[0.0, 0.0, 1.0, 1.0], 2, 2);
        let mut out = vec![f32::NAN; 4];
        weight.product(&mut out, &rows, None);
        assert_eq!(&out[..2], &[0.0, 0.0]);
        assert!((out[2] - 1.5).abs() < 0.02 && (out[3] + 1.75).abs() < 0.02);
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// Not a test: the products' speed, int8 against fp32 on the model's
    /// shapes (`cargo test --release -p photon-inference --lib int8_vs --
    /// --ignored --nocapture`).
    #[test]
    #[ignore]
    fn int8_vs_fp32_products() {
        let m = 512;
        for &(k, n) in &[(384, 1152), (384, 384), (384, 1536), (1536, 384)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            // Eight different weights in turn, as a model's layers come: a
            // weight is not in cache when its product starts.
            let ws: Vec<Vec<f32>> = (0..8)
                .map(|c| {
                    (0..k * n)
                        .map(|i| (((i + c) * 104729) % 1000) as f32 / 500.0 - 1.0)
                        .collect()
                })
                .collect();
            let weights: Vec<Int8Weight> =
                ws.iter().map(|w| Int8Weight::quantize(w, k, n)).collect();
            let mut rows = QuantizedRows::default();
            let mut out = vec![0.0; m * n];
            // Best of 15 rounds of 8: the least disturbed by other work.
            let best = |f: &mut dyn FnMut(usize)| {
                (0..15)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        (0..8).for_each(&mut *f);
                        t.elapsed().as_secs_f64() / 8.0
                    })
                    .fold(f64::MAX, f64::min)
            };
            let fp32 = best(&mut |c| crate::kernels::linear(&mut out, &x, &ws[c], None, (m, k, n)));
            let quant = best(&mut |_| rows.quantize(&x, m, k));
            let int8 = best(&mut |c| weights[c].product(&mut out, &rows, None));
            let macs = (m * k * n) as f64;
            println!(
                "k={k} n={n}: fp32 {:.1} GMAC/s, int8 {:.1} GMAC/s (+quantize {:.1}%), ratio {:.2}",
                macs / fp32 / 1e9,
                macs / int8 / 1e9,
                100.0 * quant / int8,
                fp32 / (int8 + quant)
            );
        }
    }
}
