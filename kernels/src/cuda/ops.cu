// CUDA implementations of Switchyard's decoder ops (f32). Each kernel has a CPU twin in Rust with the same
// arguments (kernels/src/{attention,norm,rotary}.rs); tests compare the two on random inputs.
//
// Built to PTX by kernels/build.rs (nvcc --ptx, -arch=sm_$CUDA_COMPUTE_CAP) when the `cuda` feature is on,
// loaded once per device through Candle's module cache and launched on Candle's stream.

#include <stdint.h>

#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// Sum over the block; every thread gets the result. blockDim.x must be a multiple of 32, <= 1024.
__device__ float block_sum(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // `partial` may still be read from a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    v = lane < warps ? partial[lane] : 0.f;
    return warp_sum(v);
}

// RMSNorm of each `cols`-wide row, one block per row:
//   s = x (+ residual);  sum_out = s (if given);  out = s / sqrt(mean(s^2) + eps) * w
// `residual` and `sum_out` may be null (plain RMSNorm); `sum_out` may alias `x`, and `out` may alias `x`
// when there is no residual.
extern "C" __global__ void rms_norm_f32(const float* x, const float* residual,
                                        const float* __restrict__ w, float* sum_out, float* out,
                                        int cols, float eps) {
    const size_t row = blockIdx.x;
    const float* xr = x + row * cols;
    const float* rr = residual ? residual + row * cols : nullptr;
    float acc = 0.f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float s = xr[i];
        if (rr) s += rr[i];
        if (sum_out) sum_out[row * cols + i] = s;
        acc += s * s;
    }
    acc = block_sum(acc);
    const float inv = 1.0f / sqrtf(acc / (float)cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        // Each thread reads back only what it wrote, so `sum_out` may alias `x` (x += residual in place).
        float s;
        if (sum_out) {
            s = sum_out[row * cols + i];
        } else {
            s = xr[i];
            if (rr) s += rr[i];
        }
        out[row * cols + i] = s * inv * w[i];
    }
}

// Rotary embedding in place on x = [rows, heads, head_dim] (row stride heads * head_dim), with per-row
// tables cos/sin = [rows, head_dim / 2]. interleaved = 0: halves (x[i], x[i + half]); 1: pairs (x[2i], x[2i+1]).
extern "C" __global__ void rotary_f32(float* x, const float* __restrict__ cos_t,
                                      const float* __restrict__ sin_t, int rows, int heads,
                                      int head_dim, int interleaved) {
    const int half = head_dim / 2;
    const size_t total = (size_t)rows * heads * half;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        const int i = t % half;
        const size_t rh = t / half;  // row * heads + head
        const size_t row = rh / heads;
        float* h = x + rh * head_dim;
        const float c = cos_t[row * half + i], s = sin_t[row * half + i];
        const int a = interleaved ? 2 * i : i;
        const int b = interleaved ? 2 * i + 1 : i + half;
        const float x0 = h[a], x1 = h[b];
        h[a] = x0 * c - x1 * s;
        h[b] = x1 * c + x0 * s;
    }
}

// cache[slots[r] * width + j] = src[r * width + j]: one layer's new keys (or values) into their cache slots
// (slot = block * block_size + offset in block).
// Rows whose slot is at or past `capacity` (cache rows) are skipped: the host checks the largest slot
// it was told of, this keeps a wrong one from writing past the cache.
extern "C" __global__ void write_kv_f32(const float* __restrict__ src, float* cache,
                                        const uint32_t* __restrict__ slots, int rows, int width,
                                        unsigned long long capacity) {
    const size_t total = (size_t)rows * width;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        const size_t r = t / width, j = t % width;
        if ((unsigned long long)slots[r] < capacity) {
            cache[(size_t)slots[r] * width + j] = src[t];
        }
    }
}

// Causal attention for a ragged batch over a paged cache: one block per (head, query row), 4 warps that
// each run an online softmax over every 4th position, merged at the end.
//   q, out: [rows, heads * head_dim];  k_cache, v_cache: [num_blocks, block_size, kv_heads, head_dim]
//   row_pos[r]: absolute position of row r (it attends to positions 0..=row_pos[r])
//   row_table[r]: offset in `tables` of the block table of row r's sequence
// head_dim <= 256 (8 values per lane).
#define ATTN_WARPS 4
#define ATTN_MAX_PER_LANE 8
extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32)
    paged_attention_f32(const float* __restrict__ q, const float* __restrict__ k_cache,
                        const float* __restrict__ v_cache, float* __restrict__ out,
                        const uint32_t* __restrict__ row_pos, const uint32_t* __restrict__ row_table,
                        const uint32_t* __restrict__ tables, int heads, int kv_heads, int head_dim,
                        int block_size, float scale) {
    const int head = blockIdx.x;
    const size_t row = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int kvh = head / (heads / kv_heads);
    const uint32_t pos = row_pos[row];
    const uint32_t* table = tables + row_table[row];
    const float* qh = q + (row * heads + head) * head_dim;

    float qr[ATTN_MAX_PER_LANE], acc[ATTN_MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < ATTN_MAX_PER_LANE; ++j) {
        const int d = lane + 32 * j;
        qr[j] = d < head_dim ? qh[d] * scale : 0.f;
        acc[j] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    for (uint32_t p = warp; p <= pos; p += ATTN_WARPS) {
        const size_t slot = (size_t)table[p / block_size] * block_size + p % block_size;
        const size_t base = (slot * kv_heads + kvh) * head_dim;
        float s = 0.f;
#pragma unroll
        for (int j = 0; j < ATTN_MAX_PER_LANE; ++j) {
            const int d = lane + 32 * j;
            if (d < head_dim) s += qr[j] * k_cache[base + d];
        }
        s = warp_sum(s);
        const float m_new = fmaxf(m, s);
        const float corr = __expf(m - m_new);
        const float e = __expf(s - m_new);
        l = l * corr + e;
#pragma unroll
        for (int j = 0; j < ATTN_MAX_PER_LANE; ++j) {
            const int d = lane + 32 * j;
            if (d < head_dim) acc[j] = acc[j] * corr + e * v_cache[base + d];
        }
        m = m_new;
    }

    __shared__ float sm_m[ATTN_WARPS], sm_l[ATTN_WARPS];
    __shared__ float sm_acc[ATTN_WARPS][32 * ATTN_MAX_PER_LANE];
    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
#pragma unroll
    for (int j = 0; j < ATTN_MAX_PER_LANE; ++j) sm_acc[warp][lane + 32 * j] = acc[j];
    __syncthreads();
    float big = -INFINITY;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; ++w) big = fmaxf(big, sm_m[w]);
    float f[ATTN_WARPS], total = 0.f;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; ++w) {
        f[w] = sm_m[w] == -INFINITY ? 0.f : __expf(sm_m[w] - big);
        total += sm_l[w] * f[w];
    }
    const float inv = 1.f / total;
    float* oh = out + (row * heads + head) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.f;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; ++w) o += sm_acc[w][d] * f[w];
        oh[d] = o * inv;
    }
}
