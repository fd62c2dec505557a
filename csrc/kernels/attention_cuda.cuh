// CUDA kernels of the decode attention, the same semantics as kernels/attention_cpu.h (read the layout and
// the formulas there). Two launches on one stream:
//   1. append: one block per (row, kv head), one thread per channel: rotary on the new key, write key and
//      value into the cache at column t;
//   2. attend: one block per (row, query head), kWarps warps; warp w takes the columns j = w, w + kWarps, ...
//      (lanes split the D channels, a warp reduction gives the score) with an online softmax (running max,
//      running sum, running weighted value in registers: D <= 32 * kMaxPerLane); the warps' partial results
//      are merged in shared memory (split-K "flash decoding"). No limit on the cache length.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_common.cuh"

namespace alignment_ops {

constexpr int kAttnWarps = 4;
constexpr int kMaxPerLane = 8;  // D <= 256

__device__ __forceinline__ int64_t clamp_pos(int64_t p, int64_t s_tab) { return p < 0 ? 0 : (p >= s_tab ? s_tab - 1 : p); }

__global__ void decode_attention_append_kernel(const float* __restrict__ k, const float* __restrict__ v,
                                               const float* __restrict__ cos_tab, const float* __restrict__ sin_tab,
                                               int64_t s_tab, const int64_t* __restrict__ pos, float* cache_k,
                                               float* cache_v, int64_t Hkv, int64_t D, int64_t Smax, int64_t t) {
  const int64_t r = blockIdx.x, b = r / Hkv, h = r % Hkv, half = D / 2;
  const int64_t p = clamp_pos(pos[b], s_tab);
  const float* x = k + r * D;
  const float* c = cos_tab + p * D;
  const float* s = sin_tab + p * D;
  const int64_t dst = ((b * Smax + t) * Hkv + h) * D;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const float other = i < half ? -x[i + half] : x[i - half];
    cache_k[dst + i] = x[i] * c[i] + other * s[i];
    cache_v[dst + i] = v[r * D + i];
  }
}

__global__ void decode_attention_kernel(const float* __restrict__ q, const float* __restrict__ cos_tab,
                                        const float* __restrict__ sin_tab, int64_t s_tab,
                                        const int64_t* __restrict__ pos, const int64_t* __restrict__ key_mask,
                                        const float* __restrict__ cache_k, const float* __restrict__ cache_v,
                                        int64_t Hq, int64_t Hkv, int64_t D, int64_t Smax, int64_t t, float scale,
                                        float* out) {
  __shared__ float qs[32 * kMaxPerLane];
  __shared__ float part_m[kAttnWarps], part_l[kAttnWarps];
  __shared__ float part_o[kAttnWarps][32 * kMaxPerLane];
  const int64_t r = blockIdx.x, b = r / Hq, h = r % Hq, hk = h / (Hq / Hkv), half = D / 2;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t p = clamp_pos(pos[b], s_tab);
  const float* x = q + r * D;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const float other = i < half ? -x[i + half] : x[i - half];
    qs[i] = (x[i] * cos_tab[p * D + i] + other * sin_tab[p * D + i]) * scale;
  }
  __syncthreads();
  float m = -INFINITY, l = 0.f, acc[kMaxPerLane];
#pragma unroll
  for (int u = 0; u < kMaxPerLane; ++u) acc[u] = 0.f;
  const int64_t* mask = key_mask + b * Smax;
  for (int64_t j = warp; j <= t; j += kAttnWarps) {
    if (mask[j] == 0) continue;  // uniform across the warp
    const float* kj = cache_k + ((b * Smax + j) * Hkv + hk) * D;
    float s = 0.f;
#pragma unroll
    for (int u = 0; u < kMaxPerLane; ++u) {
      const int64_t d = lane + 32 * u;
      if (d < D) s += qs[d] * kj[d];
    }
    s = warp_sum(s);
    const float m_new = fmaxf(m, s);
    const float corr = __expf(m - m_new);  // exp(-inf) = 0 on the first valid column
    const float e = __expf(s - m_new);
    const float* vj = cache_v + ((b * Smax + j) * Hkv + hk) * D;
    l = l * corr + e;
#pragma unroll
    for (int u = 0; u < kMaxPerLane; ++u) {
      const int64_t d = lane + 32 * u;
      if (d < D) acc[u] = acc[u] * corr + e * vj[d];
    }
    m = m_new;
  }
  if (lane == 0) {
    part_m[warp] = m;
    part_l[warp] = l;
  }
#pragma unroll
  for (int u = 0; u < kMaxPerLane; ++u) {
    const int64_t d = lane + 32 * u;
    if (d < D) part_o[warp][d] = acc[u];
  }
  __syncthreads();
  float gm = -INFINITY;
  for (int w = 0; w < kAttnWarps; ++w) gm = fmaxf(gm, part_m[w]);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float num = 0.f, den = 0.f;
    if (gm != -INFINITY) {
      for (int w = 0; w < kAttnWarps; ++w) {
        if (part_m[w] == -INFINITY) continue;
        const float f = __expf(part_m[w] - gm);
        num += f * part_o[w][d];
        den += f * part_l[w];
      }
    }
    out[r * D + d] = den > 0.f ? num / den : 0.f;
  }
}

inline void launch_decode_attention(const float* q, const float* k, const float* v, const float* cos_tab,
                                    const float* sin_tab, int64_t s_tab, const int64_t* pos, const int64_t* key_mask,
                                    float* cache_k, float* cache_v, int64_t B, int64_t Hq, int64_t Hkv, int64_t D,
                                    int64_t Smax, int64_t t, float scale, float* out, cudaStream_t stream) {
  if (B == 0) return;
  const unsigned threads = static_cast<unsigned>(D < 32 ? 32 : (D > 1024 ? 1024 : D));
  decode_attention_append_kernel<<<static_cast<unsigned>(B * Hkv), threads, 0, stream>>>(
      k, v, cos_tab, sin_tab, s_tab, pos, cache_k, cache_v, Hkv, D, Smax, t);
  decode_attention_kernel<<<static_cast<unsigned>(B * Hq), 32 * kAttnWarps, 0, stream>>>(
      q, cos_tab, sin_tab, s_tab, pos, key_mask, cache_k, cache_v, Hq, Hkv, D, Smax, t, scale, out);
}

}  // namespace alignment_ops
