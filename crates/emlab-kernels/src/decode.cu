// Decode-step attention over a batched KV cache (emlab_model::decode). Both kernels read the
// column being written and each row's first column from `meta` in device memory, never from
// kernel arguments: the launches of one decode step are then the same at every step, so a CUDA
// graph captured once replays the whole step (emlab_model::decode_graph).
//
// Shapes (row-major, contiguous):
//   meta [B + 1] u32: meta[b] = first real column of row b (left padding before it),
//                     meta[B] = the column this step writes (the cache's length).
//   kv   [2, B, G, cap, D]: keys (index 0) then values (index 1), post-RoPE keys.
//   k, v [B, G, D]; q [B, H, D]; out [B, H, D]; cos, sin [P, D/2] (half-rotation RoPE).
// Row b's new token sits at position col - first (0 when first > col, as BatchCache does), and
// attends to columns first..=col (only to itself when first > col).
#include "common.cuh"

__device__ __forceinline__ float round_to(float x, float*) { return x; }
__device__ __forceinline__ float round_to(float x, __nv_bfloat16*) { return __bfloat162float(__float2bfloat16(x)); }

// One block per (row, kv head): rotates the new key, writes key and value at column meta[B].
template <typename T>
__device__ void kv_write(const T* k, const T* v, T* kv, const uint32_t* meta, const T* cos, const T* sin, int B, int G,
                         int cap, int D, int P) {
    const int bg = blockIdx.x, b = bg / G, g = bg % G;
    const uint32_t col = meta[B], first = meta[b];
    const uint32_t pos = col >= first ? col - first : 0;
    if (col >= (uint32_t)cap || pos >= (uint32_t)P) return;  // the host checked both; never write out of bounds
    const int half = D / 2;
    const T* kr = k + (size_t)bg * D;
    const T* vr = v + (size_t)bg * D;
    T* kd = kv + (((size_t)b * G + g) * cap + col) * D;
    T* vd = kv + ((((size_t)B + b) * G + g) * cap + col) * D;
    const T* c = cos + (size_t)pos * half;
    const T* s = sin + (size_t)pos * half;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float x1 = to_f(kr[i]), x2 = to_f(kr[i + half]), ci = to_f(c[i]), si = to_f(s[i]);
        kd[i] = from_f<T>(x1 * ci - x2 * si);
        kd[i + half] = from_f<T>(x2 * ci + x1 * si);
    }
    for (int i = threadIdx.x; i < D; i += blockDim.x) vd[i] = vr[i];
}

constexpr int MAX_DIMS_PER_LANE = 8;  // head_dim <= 256

// One block per (row, query head), a multiple of 32 threads. The query is rotated into shared
// memory (rounded to T, as the composed path stores it); each warp walks every nw-th key with an
// online softmax (running max, sum and weighted values; lane l owns dims l, l+32, ...), then the
// warps' partial results are merged. No [n]-sized buffer: any context length fits.
template <typename T>
__device__ void decode_attn(const T* q, const T* kv, const uint32_t* meta, const T* cos, const T* sin, T* out, int B,
                            int H, int G, int cap, int D, int P, float scale) {
    extern __shared__ float sh[];  // q [D], then per warp: max, sum, acc [D]
    const int bh = blockIdx.x, b = bh / H, h = bh % H, g = h / (H / G);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const uint32_t col = meta[B], first = meta[b];
    const uint32_t pos = col >= first ? col - first : 0;
    const uint32_t lo = first <= col ? first : col;
    const int half = D / 2;
    float* qs = sh;
    float* wm = sh + D;
    float* wl = wm + nw;
    float* wacc = wl + nw;
    if (col >= (uint32_t)cap || pos >= (uint32_t)P) {
        for (int d = threadIdx.x; d < D; d += blockDim.x) out[(size_t)bh * D + d] = from_f<T>(NAN);
        return;
    }
    const T* qr = q + (size_t)bh * D;
    const T* c = cos + (size_t)pos * half;
    const T* s = sin + (size_t)pos * half;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float x1 = to_f(qr[i]), x2 = to_f(qr[i + half]), ci = to_f(c[i]), si = to_f(s[i]);
        qs[i] = round_to(x1 * ci - x2 * si, (T*)nullptr);
        qs[i + half] = round_to(x2 * ci + x1 * si, (T*)nullptr);
    }
    __syncthreads();
    const T* K = kv + (((size_t)b * G + g) * cap) * D;
    const T* V = kv + ((((size_t)B + b) * G + g) * cap) * D;
    const int nd = (D + 31) / 32;
    float acc[MAX_DIMS_PER_LANE];
#pragma unroll
    for (int t = 0; t < MAX_DIMS_PER_LANE; t++) acc[t] = 0.f;
    float m = -INFINITY, l = 0.f;
    for (uint32_t j = lo + warp; j <= col; j += nw) {
        const T* kj = K + (size_t)j * D;
        float dot = 0.f;
#pragma unroll
        for (int t = 0; t < MAX_DIMS_PER_LANE; t++) {
            const int d = lane + 32 * t;
            if (t < nd && d < D) dot += qs[d] * to_f(kj[d]);
        }
        for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        const float sc = dot * scale;
        const float mn = fmaxf(m, sc);
        const float corr = expf(m - mn);  // 0 on the first key (m = -inf)
        const float p = expf(sc - mn);
        l = l * corr + p;
        const T* vj = V + (size_t)j * D;
#pragma unroll
        for (int t = 0; t < MAX_DIMS_PER_LANE; t++) {
            const int d = lane + 32 * t;
            if (t < nd && d < D) acc[t] = acc[t] * corr + p * to_f(vj[d]);
        }
        m = mn;
    }
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
#pragma unroll
    for (int t = 0; t < MAX_DIMS_PER_LANE; t++) {
        const int d = lane + 32 * t;
        if (t < nd && d < D) wacc[warp * D + d] = acc[t];
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int w = 0; w < nw; w++) mx = fmaxf(mx, wm[w]);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float sum = 0.f, a = 0.f;
        for (int w = 0; w < nw; w++) {
            if (wm[w] == -INFINITY) continue;  // a warp that saw no key
            const float f = expf(wm[w] - mx);
            sum += wl[w] * f;
            a += wacc[w * D + d] * f;
        }
        out[(size_t)bh * D + d] = from_f<T>(a / sum);
    }
}

#define DECODE_OPS(T, SUF)                                                                                      \
    extern "C" __global__ void __launch_bounds__(1024) kv_write_##SUF(const T* k, const T* v, T* kv,             \
                                                                      const uint32_t* meta, const T* cos,       \
                                                                      const T* sin, int B, int G, int cap, int D, \
                                                                      int P) {                                  \
        kv_write<T>(k, v, kv, meta, cos, sin, B, G, cap, D, P);                                                 \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(1024)                                                          \
        decode_attn_##SUF(const T* q, const T* kv, const uint32_t* meta, const T* cos, const T* sin, T* out,      \
                          int B, int H, int G, int cap, int D, int P, float scale) {                            \
        decode_attn<T>(q, kv, meta, cos, sin, out, B, H, G, cap, D, P, scale);                                  \
    }

DECODE_OPS(float, f32)
DECODE_OPS(__nv_bfloat16, bf16)
