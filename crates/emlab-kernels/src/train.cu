// Fused training ops (emlab_model::cuda_ops launches them). One block per row for the row-wise
// ops (blockDim a multiple of 32), one thread per element pair for RoPE and SiLU * up.
// Inputs are f32 or bf16 (suffix _f32 / _bf16); all arithmetic is f32. Row strides are the row
// length: callers pass contiguous tensors.
#include "common.cuh"

// y = T(T(x * r) * w), r = 1 / sqrt(mean(x^2) + eps): HF's order (normalise, cast, scale).
template <typename T>
__device__ void rmsnorm_fwd(const T* x, const T* w, T* y, int d, float eps) {
    __shared__ float sh[32];
    const T* xr = x + (size_t)blockIdx.x * d;
    T* yr = y + (size_t)blockIdx.x * d;
    float ss = 0.f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) { float v = to_f(xr[i]); ss += v * v; }
    ss = block_sum(ss, sh);
    const float r = 1.f / sqrtf(ss / d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const T n = from_f<T>(to_f(xr[i]) * r);
        yr[i] = from_f<T>(to_f(n) * to_f(w[i]));
    }
}

// dx = r (dy w) - x r^3 <dy w, x> / d
template <typename T>
__device__ void rmsnorm_bwd(const T* x, const T* w, const T* dy, T* dx, int d, float eps) {
    __shared__ float sh[32];
    const size_t off = (size_t)blockIdx.x * d;
    float ss = 0.f, dot = 0.f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float v = to_f(x[off + i]);
        ss += v * v;
        dot += v * to_f(dy[off + i]) * to_f(w[i]);
    }
    ss = block_sum(ss, sh);
    dot = block_sum(dot, sh);
    const float r = 1.f / sqrtf(ss / d + eps);
    const float c = r * r * r * dot / d;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        dx[off + i] = from_f<T>(r * to_f(dy[off + i]) * to_f(w[i]) - to_f(x[off + i]) * c);
}

// Rows of n scores of square [.., n, n] blocks (row q of each block sees columns 0..=q):
// y = softmax(scale * x) over the visible columns, 0 elsewhere.
template <typename T>
__device__ void causal_softmax_fwd(const T* x, T* y, int n, float scale) {
    __shared__ float sh[32];
    const size_t off = (size_t)blockIdx.x * n;
    const int q = blockIdx.x % n;
    float m = -INFINITY;
    for (int j = threadIdx.x; j <= q; j += blockDim.x) m = fmaxf(m, scale * to_f(x[off + j]));
    m = block_max(m, sh);
    float s = 0.f;
    for (int j = threadIdx.x; j <= q; j += blockDim.x) s += expf(scale * to_f(x[off + j]) - m);
    s = block_sum(s, sh);
    const float inv = 1.f / s;
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        y[off + j] = from_f<T>(j <= q ? expf(scale * to_f(x[off + j]) - m) * inv : 0.f);
}

// dx = scale * y * (dy - <dy, y>)
template <typename T>
__device__ void softmax_bwd(const T* y, const T* dy, T* dx, int n, float scale) {
    __shared__ float sh[32];
    const size_t off = (size_t)blockIdx.x * n;
    float dot = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) dot += to_f(y[off + j]) * to_f(dy[off + j]);
    dot = block_sum(dot, sh);
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        dx[off + j] = from_f<T>(scale * to_f(y[off + j]) * (to_f(dy[off + j]) - dot));
}

// x [B, T, H, D]; tables [tb, T, D/2] (tb = 1: shared by all rows, else B).
// [x1, x2] -> [x1 c - x2 s', x2 c + x1 s'], s' = sign * s (the backward uses sign = -1).
template <typename T>
__device__ void rope(const T* x, const T* cs, const T* sn, T* y, int b, int t, int h, int d, int tb, float sign) {
    const int half = d / 2;
    const size_t total = (size_t)b * t * h * half;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        const int i = idx % half;
        const size_t rest = idx / half;          // (bi * t + ti) * h + hi
        const size_t bt = rest / h;              // bi * t + ti
        const int ti = bt % t, bi = bt / t;
        const size_t row = ((size_t)(tb == 1 ? 0 : bi) * t + ti) * half + i;
        const float c = to_f(cs[row]), s = sign * to_f(sn[row]);
        const size_t o = rest * d + i;
        const float x1 = to_f(x[o]), x2 = to_f(x[o + half]);
        y[o] = from_f<T>(x1 * c - x2 * s);
        y[o + half] = from_f<T>(x2 * c + x1 * s);
    }
}

// y = silu(g) * u, silu(g) = g / (1 + exp(-g)).
template <typename T>
__device__ void silu_mul_fwd(const T* g, const T* u, T* y, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float gv = to_f(g[i]);
        y[i] = from_f<T>(gv / (1.f + expf(-gv)) * to_f(u[i]));
    }
}

// out[0..n) = dL/dg = dy u sig (1 + g (1 - sig)); out[n..2n) = dL/du = dy silu(g).
template <typename T>
__device__ void silu_mul_bwd(const T* g, const T* u, const T* dy, T* out, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float gv = to_f(g[i]), d = to_f(dy[i]);
        const float sg = 1.f / (1.f + expf(-gv));
        out[i] = from_f<T>(d * to_f(u[i]) * sg * (1.f + gv * (1.f - sg)));
        out[n + i] = from_f<T>(d * gv * sg);
    }
}

// loss[r] = logsumexp(x[r]) - x[r, tg[r]] (f32 out).
// The row's maximum m and sum of exp(x - m), in every thread of the block.
template <typename T>
__device__ __forceinline__ void row_max_sumexp(const T* xr, int v, float* sh, float& m, float& s) {
    m = -INFINITY;
    for (int j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, to_f(xr[j]));
    m = block_max(m, sh);
    s = 0.f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) s += expf(to_f(xr[j]) - m);
    s = block_sum(s, sh);
}

template <typename T>
__device__ void ce_fwd(const T* x, const uint32_t* tg, float* loss, int v) {
    __shared__ float sh[32];
    const size_t off = (size_t)blockIdx.x * v;
    float m, s;
    row_max_sumexp(x + off, v, sh, m, s);
    const uint32_t t = tg[blockIdx.x];
    // A target outside the vocabulary: NaN (the CPU op refuses it), never a read out of the row.
    if (threadIdx.x == 0) loss[blockIdx.x] = t < (uint32_t)v ? m + logf(s) - to_f(x[off + t]) : NAN;
}

// dx[r] = g[r] (softmax(x[r]) - onehot(tg[r])); rows with g = 0 are written as zeros.
template <typename T>
__device__ void ce_bwd(const T* x, const uint32_t* tg, const float* gr, T* dx, int v) {
    __shared__ float sh[32];
    const size_t off = (size_t)blockIdx.x * v;
    const float g = gr[blockIdx.x];
    if (g == 0.f || tg[blockIdx.x] >= (uint32_t)v) {
        for (int j = threadIdx.x; j < v; j += blockDim.x) dx[off + j] = from_f<T>(0.f);
        return;
    }
    float m, s;
    row_max_sumexp(x + off, v, sh, m, s);
    const float k = g / s;
    const uint32_t t = tg[blockIdx.x];
    for (int j = threadIdx.x; j < v; j += blockDim.x)
        dx[off + j] = from_f<T>(expf(to_f(x[off + j]) - m) * k - (j == (int)t ? g : 0.f));
}

// The argument lists name T, which each instantiation defines before use: spelled out per dtype.
extern "C" __global__ void __launch_bounds__(1024) rmsnorm_fwd_f32(const float* x, const float* w, float* y, int d, float eps) { rmsnorm_fwd(x, w, y, d, eps); }
extern "C" __global__ void __launch_bounds__(1024) rmsnorm_fwd_bf16(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y, int d, float eps) { rmsnorm_fwd(x, w, y, d, eps); }
extern "C" __global__ void __launch_bounds__(1024) rmsnorm_bwd_f32(const float* x, const float* w, const float* dy, float* dx, int d, float eps) { rmsnorm_bwd(x, w, dy, dx, d, eps); }
extern "C" __global__ void __launch_bounds__(1024) rmsnorm_bwd_bf16(const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* dy, __nv_bfloat16* dx, int d, float eps) { rmsnorm_bwd(x, w, dy, dx, d, eps); }
extern "C" __global__ void causal_softmax_fwd_f32(const float* x, float* y, int n, float scale) { causal_softmax_fwd(x, y, n, scale); }
extern "C" __global__ void causal_softmax_fwd_bf16(const __nv_bfloat16* x, __nv_bfloat16* y, int n, float scale) { causal_softmax_fwd(x, y, n, scale); }
extern "C" __global__ void softmax_bwd_f32(const float* y, const float* dy, float* dx, int n, float scale) { softmax_bwd(y, dy, dx, n, scale); }
extern "C" __global__ void softmax_bwd_bf16(const __nv_bfloat16* y, const __nv_bfloat16* dy, __nv_bfloat16* dx, int n, float scale) { softmax_bwd(y, dy, dx, n, scale); }
extern "C" __global__ void rope_f32(const float* x, const float* c, const float* s, float* y, int b, int t, int h, int d, int tb, float sign) { rope(x, c, s, y, b, t, h, d, tb, sign); }
extern "C" __global__ void rope_bf16(const __nv_bfloat16* x, const __nv_bfloat16* c, const __nv_bfloat16* s, __nv_bfloat16* y, int b, int t, int h, int d, int tb, float sign) { rope(x, c, s, y, b, t, h, d, tb, sign); }
extern "C" __global__ void silu_mul_fwd_f32(const float* g, const float* u, float* y, size_t n) { silu_mul_fwd(g, u, y, n); }
extern "C" __global__ void silu_mul_fwd_bf16(const __nv_bfloat16* g, const __nv_bfloat16* u, __nv_bfloat16* y, size_t n) { silu_mul_fwd(g, u, y, n); }
extern "C" __global__ void silu_mul_bwd_f32(const float* g, const float* u, const float* dy, float* out, size_t n) { silu_mul_bwd(g, u, dy, out, n); }
extern "C" __global__ void silu_mul_bwd_bf16(const __nv_bfloat16* g, const __nv_bfloat16* u, const __nv_bfloat16* dy, __nv_bfloat16* out, size_t n) { silu_mul_bwd(g, u, dy, out, n); }
extern "C" __global__ void __launch_bounds__(1024) ce_fwd_f32(const float* x, const uint32_t* tg, float* loss, int v) { ce_fwd(x, tg, loss, v); }
extern "C" __global__ void __launch_bounds__(1024) ce_fwd_bf16(const __nv_bfloat16* x, const uint32_t* tg, float* loss, int v) { ce_fwd(x, tg, loss, v); }
extern "C" __global__ void __launch_bounds__(1024) ce_bwd_f32(const float* x, const uint32_t* tg, const float* g, float* dx, int v) { ce_bwd(x, tg, g, dx, v); }
extern "C" __global__ void __launch_bounds__(1024) ce_bwd_bf16(const __nv_bfloat16* x, const uint32_t* tg, const float* g, __nv_bfloat16* dx, int v) { ce_bwd(x, tg, g, dx, v); }

// ---------------------------------------------------------------------------------------------
// Multi-tensor AdamW over the adapter tensors (emlab_train::cuda_optim launches these): segment
// s is f32 tensor s, `len[s]` values at `ptr[s]` (its gradient at `gptr[s]`), its moments at
// `m + off[s]`, `v + off[s]`. Grid (x blocks per segment, segments); block 256 threads.

// out[s] += sum of squares of segment s (f64 atomics; out zeroed by the caller).
extern "C" __global__ void multi_sumsq_f32(const uint64_t* gptr, const int64_t* len, double* out) {
    __shared__ float sh[32];
    const int s = blockIdx.y;
    const float* g = (const float*)gptr[s];
    const int64_t n = len[s];
    float acc = 0.f;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float x = g[i];
        acc += x * x;
    }
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0) atomicAdd(out + s, (double)acc);
}

// torch.optim.AdamW's update in place (decoupled decay, bias-corrected), gradients scaled by
// `gscale` (clipping); psumsq[s] += sum of squares of the new parameters (the logged norms).
extern "C" __global__ void multi_adamw_f32(const uint64_t* pptr, const uint64_t* gptr, const int64_t* off, const int64_t* len,
                                           float* m, float* v, float gscale, float b1, float b2, float step_size,
                                           float bc2_sqrt, float eps, float decay, double* psumsq) {
    __shared__ float sh[32];
    const int s = blockIdx.y;
    float* p = (float*)pptr[s];
    const float* g = (const float*)gptr[s];
    const int64_t o = off[s], n = len[s];
    float acc = 0.f;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float gi = g[i] * gscale;
        const float mi = b1 * m[o + i] + (1.f - b1) * gi;
        const float vi = b2 * v[o + i] + (1.f - b2) * gi * gi;
        m[o + i] = mi;
        v[o + i] = vi;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;
        const float pi = p[i] * decay - step_size * mi / denom;
        p[i] = pi;
        acc += pi * pi;
    }
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0) atomicAdd(psumsq + s, (double)acc);
}
