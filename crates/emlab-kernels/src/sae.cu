// Sparse accumulation for the TopK SAE step (emlab_sae::device launches it):
//   out[ids[p], :] += coef[p] * src[p / k, :]   for every pair p < n * k,
// out [m, d] f32, zeroed by the caller; one block per pair, atomic adds (pairs that pick the same
// latent add into the same row). Entries with coef == 0 are skipped.
#include "common.cuh"

extern "C" __global__ void sparse_rows_acc_f32(const uint32_t* ids, const float* coef, const float* src, float* out,
                                               int npairs, int k, int d, int m) {
    for (int p = blockIdx.x; p < npairs; p += gridDim.x) {
        const float c = coef[p];
        const uint32_t row = ids[p];
        if (c == 0.f || row >= (uint32_t)m) continue;
        const float* s = src + (size_t)(p / k) * d;
        float* o = out + (size_t)row * d;
        for (int i = threadIdx.x; i < d; i += blockDim.x) atomicAdd(o + i, c * s[i]);
    }
}
