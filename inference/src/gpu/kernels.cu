// Photon's BERT kernels for the GPU engine (`gpu/engine.rs`), compiled at
// first use by NVRTC for the device's architecture. No headers: fp16 and
// bf16 values are handled as raw 16-bit patterns, so the source compiles with
// NVRTC alone (no CUDA toolkit include directory).
//
// The compiler options define:
//   PRECISION  0 = fp32, 1 = fp16, 2 = bf16: the type of the activations
//              that feed cuBLAS (`act_t`). Everything else is fp32.
//   HEAD_DIM   width of one attention head.
//
// Layout: sequences packed end to end, no padding; `starts[s]` is the first
// token of sequence `s` and `starts[sequences]` the total.

#if PRECISION == 0
typedef float act_t;
__device__ __forceinline__ act_t from_float(float v) { return v; }
#elif PRECISION == 1
typedef unsigned short act_t;
__device__ __forceinline__ act_t from_float(float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}
#elif PRECISION == 2
typedef unsigned short act_t;
__device__ __forceinline__ act_t from_float(float v) {
    // Round to nearest even; activations here are finite.
    unsigned int u = __float_as_uint(v);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
#else
#error "PRECISION must be 0 (fp32), 1 (fp16) or 2 (bf16)"
#endif

// Rows up to LN_THREADS * LN_PER_THREAD wide (1024: BERT-large) are held in
// registers by the row kernels, which run LN_THREADS threads per row.
#define LN_THREADS 128
#define LN_PER_THREAD 8

#define NEG_INFINITY (-__int_as_float(0x7f800000))

// Keys and values of one attention head staged in shared memory per tile
// (the tests' CPU emulation sets a small one to run many tiles).
#ifndef KEY_TILE
#define KEY_TILE (HEAD_DIM <= 64 ? 64 : 32)
#endif

// The sum of `v` over the block, returned to every thread. `shared` holds
// 32 floats; the leading barrier lets a caller reduce twice in a row.
__device__ float block_sum(float v, float* shared) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int warps = (blockDim.x + 31) >> 5;
    v = lane < warps ? shared[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Layer norm of one row held as x[i] = column threadIdx.x + i * blockDim.x;
// writes the fp32 row (the residual stream) and its act_t copy (the next
// product's input).
__device__ void layer_norm_row(const float* x, float sum, int width, const float* gamma,
                               const float* beta, float eps, float* out, act_t* out_act,
                               float* shared) {
    float mean = block_sum(sum, shared) / width;
    float squares = 0.0f;
    for (int i = 0; i < LN_PER_THREAD; i++) {
        int c = threadIdx.x + i * blockDim.x;
        if (c < width) squares += (x[i] - mean) * (x[i] - mean);
    }
    float inv = rsqrtf(block_sum(squares, shared) / width + eps);
    for (int i = 0; i < LN_PER_THREAD; i++) {
        int c = threadIdx.x + i * blockDim.x;
        if (c < width) {
            float y = (x[i] - mean) * inv * gamma[c] + beta[c];
            out[c] = y;
            out_act[c] = from_float(y);
        }
    }
}

// One block per token: word + token type + position embeddings, layer norm.
extern "C" __global__ void embed_layer_norm(const unsigned int* ids, const unsigned int* positions,
                                            const float* word, const float* position,
                                            const float* token_type, const float* gamma,
                                            const float* beta, float eps, int width, float* out,
                                            act_t* out_act) {
    __shared__ float shared[32];
    size_t row = blockIdx.x;
    const float* w = word + (size_t)ids[row] * width;
    const float* p = position + (size_t)positions[row] * width;
    float x[LN_PER_THREAD];
    float sum = 0.0f;
    for (int i = 0; i < LN_PER_THREAD; i++) {
        int c = threadIdx.x + i * blockDim.x;
        x[i] = c < width ? w[c] + token_type[c] + p[c] : 0.0f;
        sum += x[i];
    }
    layer_norm_row(x, sum, width, gamma, beta, eps, out + row * width, out_act + row * width,
                   shared);
}

// One block per token: hidden = LayerNorm(product + bias + hidden).
extern "C" __global__ void bias_residual_layer_norm(const float* product, const float* bias,
                                                    const float* gamma, const float* beta,
                                                    float eps, int width, float* hidden,
                                                    act_t* hidden_act) {
    __shared__ float shared[32];
    size_t row = blockIdx.x;
    const float* in = product + row * width;
    float* residual = hidden + row * width;
    float x[LN_PER_THREAD];
    float sum = 0.0f;
    for (int i = 0; i < LN_PER_THREAD; i++) {
        int c = threadIdx.x + i * blockDim.x;
        x[i] = c < width ? in[c] + bias[c] + residual[c] : 0.0f;
        sum += x[i];
    }
    layer_norm_row(x, sum, width, gamma, beta, eps, residual, hidden_act + row * width, shared);
}

// out = activation(product + bias) over `rows × width`, grid-stride.
// activation: 0 = GELU (erf), 1 = GELU (tanh approximation), 2 = ReLU.
extern "C" __global__ void bias_activation(const float* product, const float* bias, int width,
                                           long long total, int activation, act_t* out) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        float x = product[i] + bias[i % width];
        float y;
        if (activation == 0) {
            y = 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
        } else if (activation == 1) {
            y = 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
        } else {
            y = fmaxf(x, 0.0f);
        }
        out[i] = from_float(y);
    }
}

// Self-attention of each sequence over itself, one block per (sequence,
// head), one thread per query; keys and values pass through shared memory a
// tile at a time with an online softmax, so any length runs in fixed memory.
// Reads Q, K and V (without their bias, added here) from the fused
// `[tokens, 3 * width]` product; writes the head's slice of `context`.
extern "C" __global__ void attention(const float* qkv, const float* qkv_bias, const int* starts,
                                     int width, float scale, act_t* context) {
    __shared__ float keys[KEY_TILE][HEAD_DIM];
    __shared__ float values[KEY_TILE][HEAD_DIM];
    int sequence = blockIdx.x, head = blockIdx.y;
    int start = starts[sequence], len = starts[sequence + 1] - start;
    size_t stride = 3 * (size_t)width;
    const float* rows = qkv + (size_t)start * stride;
    int q_col = head * HEAD_DIM, k_col = width + q_col, v_col = 2 * width + q_col;

    for (int first = 0; first < len; first += blockDim.x) {
        int query = first + threadIdx.x;
        bool active = query < len;
        float q[HEAD_DIM], acc[HEAD_DIM];
#pragma unroll
        for (int d = 0; d < HEAD_DIM; d++) {
            q[d] = active ? (rows[query * stride + q_col + d] + qkv_bias[q_col + d]) * scale : 0.0f;
            acc[d] = 0.0f;
        }
        float running_max = NEG_INFINITY, total = 0.0f;
        for (int tile = 0; tile < len; tile += KEY_TILE) {
            int tile_len = min(KEY_TILE, len - tile);
            __syncthreads();
            for (int i = threadIdx.x; i < tile_len * HEAD_DIM; i += blockDim.x) {
                int j = i / HEAD_DIM, d = i % HEAD_DIM;
                const float* row = rows + (tile + j) * stride;
                keys[j][d] = row[k_col + d] + qkv_bias[k_col + d];
                values[j][d] = row[v_col + d] + qkv_bias[v_col + d];
            }
            __syncthreads();
            if (active) {
                for (int j = 0; j < tile_len; j++) {
                    float score = 0.0f;
#pragma unroll
                    for (int d = 0; d < HEAD_DIM; d++) score += q[d] * keys[j][d];
                    float new_max = fmaxf(running_max, score);
                    float correction = __expf(running_max - new_max);
                    float weight = __expf(score - new_max);
                    total = total * correction + weight;
#pragma unroll
                    for (int d = 0; d < HEAD_DIM; d++)
                        acc[d] = acc[d] * correction + weight * values[j][d];
                    running_max = new_max;
                }
            }
        }
        if (active) {
            act_t* out = context + (size_t)(start + query) * width + q_col;
            float inv = 1.0f / total;
#pragma unroll
            for (int d = 0; d < HEAD_DIM; d++) out[d] = from_float(acc[d] * inv);
        }
    }
}

// One block per sequence: pooling over its tokens (0 = mean, 1 = CLS, i.e.
// the first token, 2 = max), then L2 normalisation when `normalize` is set.
extern "C" __global__ void pool(const float* hidden, const int* starts, int width, int mode,
                                int normalize, float* out) {
    __shared__ float shared[32];
    int sequence = blockIdx.x;
    int start = starts[sequence], len = starts[sequence + 1] - start;
    float x[LN_PER_THREAD];
    float squares = 0.0f;
    for (int i = 0; i < LN_PER_THREAD; i++) {
        int c = threadIdx.x + i * blockDim.x;
        x[i] = 0.0f;
        if (c >= width) continue;
        const float* column = hidden + (size_t)start * width + c;
        if (mode == 1) {
            x[i] = column[0];
        } else if (mode == 2) {
            float m = NEG_INFINITY;
            for (int t = 0; t < len; t++) m = fmaxf(m, column[(size_t)t * width]);
            x[i] = m;
        } else {
            float s = 0.0f;
            for (int t = 0; t < len; t++) s += column[(size_t)t * width];
            x[i] = s / (float)max(len, 1);
        }
        squares += x[i] * x[i];
    }
    float scale = normalize ? 1.0f / fmaxf(sqrtf(block_sum(squares, shared)), 1e-12f) : 1.0f;
    for (int i = 0; i < LN_PER_THREAD; i++) {
        int c = threadIdx.x + i * blockDim.x;
        if (c < width) out[(size_t)sequence * width + c] = x[i] * scale;
    }
}
