/* A CPU emulation of the CUDA the GPU engine uses, so that its kernels
 * (inference/src/gpu/kernels.cu, included below with `extern "C"` removed)
 * and its products run in tests on machines without a GPU.
 *
 * Blocks run one after another; a block's CUDA threads are coroutines
 * (ucontext) on the calling thread, run round-robin, each until its next
 * barrier: __syncthreads yields to the next thread, so every thread of the
 * block reaches a barrier before any goes past it. __shfl_xor_sync is an
 * exchange through memory between two such barriers (the kernels call it
 * with the whole block, so a block-wide barrier is a correct warp barrier).
 * __shared__ variables are statics: one copy, shared by the running block.
 * The products follow cuBLAS's gemmEx: column-major, op(A) = A or Aᵀ.
 *
 * Built by the test with: cc -O1 -shared -fPIC -DPRECISION=p -DHEAD_DIM=d
 * -DKERNELS_FILE="..." cuda_emulation.c -lm */
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

typedef struct { unsigned x, y, z; } dim3_t;
static dim3_t threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__ static
#define __forceinline__ inline
#define __shared__ static
#define __expf expf

#define MAX_THREADS 1024
#define STACK_BYTES (64 * 1024)

static ucontext_t scheduler;
static ucontext_t threads_context[MAX_THREADS];
static bool finished[MAX_THREADS];
static char *stacks;
static float exchanged[MAX_THREADS];

static void __syncthreads(void) {
    swapcontext(&threads_context[threadIdx.x], &scheduler);
}

static float __shfl_xor_sync(unsigned mask, float v, int offset) {
    (void)mask;
    unsigned t = threadIdx.x;
    exchanged[t] = v;
    __syncthreads();
    float other = exchanged[(t & ~31u) | ((t & 31u) ^ (unsigned)offset)];
    __syncthreads();
    return other;
}

static unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static int min(int a, int b) { return a < b ? a : b; }
static int max(int a, int b) { return a > b ? a : b; }

#include KERNELS_FILE

/* ---- launches ---- */

typedef void (*kernel_body)(void **args);

static kernel_body running_body;
static void **running_args;

static void thread_entry(void) {
    running_body(running_args);
    finished[threadIdx.x] = true;
    /* Returning resumes `scheduler` (uc_link). */
}

static int run_grid(kernel_body body, unsigned gx, unsigned gy, unsigned threads, void **args) {
    if (threads == 0 || threads > MAX_THREADS || threads % 32 != 0) return -1;
    if (!stacks && !(stacks = malloc((size_t)MAX_THREADS * STACK_BYTES))) return -2;
    gridDim = (dim3_t){gx, gy, 1};
    blockDim = (dim3_t){threads, 1, 1};
    running_body = body;
    running_args = args;
    for (unsigned y = 0; y < gy; y++) {
        for (unsigned x = 0; x < gx; x++) {
            blockIdx = (dim3_t){x, y, 0};
            for (unsigned t = 0; t < threads; t++) {
                getcontext(&threads_context[t]);
                threads_context[t].uc_stack.ss_sp = stacks + (size_t)t * STACK_BYTES;
                threads_context[t].uc_stack.ss_size = STACK_BYTES;
                threads_context[t].uc_link = &scheduler;
                makecontext(&threads_context[t], thread_entry, 0);
                finished[t] = false;
            }
            unsigned done = 0;
            while (done < threads) {
                done = 0;
                for (unsigned t = 0; t < threads; t++) {
                    if (finished[t]) {
                        done++;
                        continue;
                    }
                    threadIdx = (dim3_t){t, 0, 0};
                    swapcontext(&scheduler, &threads_context[t]);
                }
            }
        }
    }
    return 0;
}

/* Unpacks CUDA-style parameters (pointers to each argument's value). */
#define ARG(i, type) (*(type *)args[i])

static void body_embed_layer_norm(void **args) {
    embed_layer_norm(ARG(0, const unsigned *), ARG(1, const unsigned *), ARG(2, const float *),
                     ARG(3, const float *), ARG(4, const float *), ARG(5, const float *),
                     ARG(6, const float *), ARG(7, float), ARG(8, int), ARG(9, float *),
                     ARG(10, act_t *));
}

static void body_bias_residual_layer_norm(void **args) {
    bias_residual_layer_norm(ARG(0, const float *), ARG(1, const float *), ARG(2, const float *),
                             ARG(3, const float *), ARG(4, float), ARG(5, int), ARG(6, float *),
                             ARG(7, act_t *));
}

static void body_bias_activation(void **args) {
    bias_activation(ARG(0, const float *), ARG(1, const float *), ARG(2, int), ARG(3, long long),
                    ARG(4, int), ARG(5, act_t *));
}

static void body_attention(void **args) {
    attention(ARG(0, const float *), ARG(1, const float *), ARG(2, const int *), ARG(3, int),
              ARG(4, float), ARG(5, act_t *));
}

static void body_pool(void **args) {
    pool(ARG(0, const float *), ARG(1, const int *), ARG(2, int), ARG(3, int), ARG(4, int),
         ARG(5, float *));
}

/* Runs kernel `name` over a gx × gy grid of `threads`-thread blocks; 0 on
 * success, -3 for an unknown kernel. */
int photon_emulated_launch(const char *name, unsigned gx, unsigned gy, unsigned threads,
                           void **args) {
    static const struct { const char *name; kernel_body body; } kernels[] = {
        {"embed_layer_norm", body_embed_layer_norm},
        {"bias_residual_layer_norm", body_bias_residual_layer_norm},
        {"bias_activation", body_bias_activation},
        {"attention", body_attention},
        {"pool", body_pool},
    };
    for (size_t i = 0; i < sizeof kernels / sizeof kernels[0]; i++)
        if (strcmp(kernels[i].name, name) == 0) return run_grid(kernels[i].body, gx, gy, threads, args);
    return -3;
}

/* ---- products ---- */

/* fp32 or bf16 inputs (fp16 kernels convert with PTX, which only a GPU runs). */
static float load_input(const void *base, size_t index, int precision) {
    if (precision == 0) return ((const float *)base)[index];
    return __uint_as_float((unsigned)((const uint16_t *)base)[index] << 16);
}

/* cuBLAS gemmEx with alpha 1, beta 0, fp32 C. */
void photon_emulated_gemm(int transpose_a, int transpose_b, int m, int n, int k, const void *a,
                          int lda, const void *b, int ldb, float *c, int ldc, int precision) {
    for (int j = 0; j < n; j++) {
        for (int i = 0; i < m; i++) {
            double sum = 0.0;
            for (int p = 0; p < k; p++) {
                size_t ai = transpose_a ? (size_t)p + (size_t)i * lda : (size_t)i + (size_t)p * lda;
                size_t bi = transpose_b ? (size_t)j + (size_t)p * ldb : (size_t)p + (size_t)j * ldb;
                sum += (double)load_input(a, ai, precision) * load_input(b, bi, precision);
            }
            c[(size_t)i + (size_t)j * ldc] = (float)sum;
        }
    }
}
