// CUDA kernel of the fused next-token sampler, the semantics of kernels/sampling_cpu.h (read the
// steps there). One thread block per row; ``work`` is a (B, V) float buffer for the penalised row.
// No sort at all: the top-k threshold (the k-th largest logit) and the top-p threshold (the smallest
// probability whose strictly-larger mass is below top_p) are found by bisection over the 32-bit
// order-preserving keys of the floats -- 32 block reductions over V, exact.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_common.cuh"
#include "rng.h"
#include "sampling_params.h"

namespace alignment_ops {

constexpr int kSampleBlock = 512;

__device__ __forceinline__ uint32_t float_key(float f) {  // monotone: a < b  <=>  key(a) < key(b)
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__global__ void sample_tokens_kernel(const float* __restrict__ logits, const int64_t* __restrict__ hist,
                                     const int64_t* __restrict__ hist_mask, const bool* __restrict__ finished,
                                     const int64_t* __restrict__ eos_ids, int64_t n_eos, int64_t V, int64_t H,
                                     SamplingParams a, float* work, int64_t* out_ids) {
  __shared__ float fscratch[32];
  __shared__ int64_t iscratch[32];
  __shared__ float chunk_before[kSampleBlock];
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  if (finished != nullptr && finished[b]) {
    if (tid == 0) out_ids[b] = a.pad_id;
    return;
  }
  const float* z = logits + b * V;
  float* x = work + b * V;
  const int64_t* h = hist + b * H;
  const int64_t* hm = hist_mask == nullptr ? nullptr : hist_mask + b * H;
  for (int64_t v = tid; v < V; v += blockDim.x) x[v] = z[v];
  __syncthreads();
  // 1. penalties: the first counted occurrence of each token applies them, with the token's count
  if (a.repetition_penalty != 1.f || a.frequency_penalty != 0.f || a.presence_penalty != 0.f) {
    for (int64_t j = tid; j < H; j += blockDim.x) {
      const int64_t tok = h[j];
      if (tok < 0 || tok >= V || (hm != nullptr && hm[j] == 0)) continue;
      bool first = true;
      int count = 0;
      for (int64_t i = 0; i < H; ++i) {
        if (h[i] != tok || (hm != nullptr && hm[i] == 0)) continue;
        if (i < j) { first = false; break; }
        ++count;
      }
      if (!first) continue;
      float v = x[tok];
      v = v < 0.f ? v * a.repetition_penalty : v / a.repetition_penalty;
      x[tok] = v - count * a.frequency_penalty - a.presence_penalty;
    }
    __syncthreads();
  }
  // 2. min-length EOS suppression
  if (a.cur_len < a.min_len && tid == 0)
    for (int64_t e = 0; e < n_eos; ++e)
      if (eos_ids[e] >= 0 && eos_ids[e] < V) x[eos_ids[e]] = -INFINITY;
  __syncthreads();
  // 3. greedy: first index of the maximum
  float best = -INFINITY;
  int64_t best_i = V;
  for (int64_t v = tid; v < V; v += blockDim.x)
    if (x[v] > best) { best = x[v]; best_i = v; }
  const float m_raw = block_max(best, fscratch, -INFINITY);
  if (!a.do_sample) {
    int64_t cand = best == m_raw ? best_i : V;
    for (int o = 16; o > 0; o >>= 1) cand = min(cand, __shfl_xor_sync(0xffffffffu, cand, o));
    __syncthreads();
    if ((tid & 31) == 0) iscratch[tid >> 5] = cand;
    __syncthreads();
    if (tid == 0) {
      int64_t r = V;
      for (int w = 0; w < (blockDim.x + 31) / 32; ++w) r = min(r, iscratch[w]);
      out_ids[b] = r;
    }
    return;
  }
  // 4. temperature; top-k threshold by bisection on keys: the largest key y with count(key >= y) >= k
  const float inv_t = 1.f / a.temperature;
  const float m = m_raw * inv_t;
  for (int64_t v = tid; v < V; v += blockDim.x) x[v] *= inv_t;
  __syncthreads();
  uint32_t kcut = 0;
  if (a.top_k > 0 && a.top_k < V) {
    uint32_t lo = 0, hi = 0xFFFFFFFFu;
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo) / 2 + 1;
      float c = 0.f;
      for (int64_t v = tid; v < V; v += blockDim.x) c += float_key(x[v]) >= mid ? 1.f : 0.f;
      if (block_sum(c, fscratch) >= static_cast<float>(a.top_k)) lo = mid; else hi = mid - 1;
    }
    kcut = lo;
  }
  // 5. unnormalised probabilities of the kept tokens
  float part = 0.f;
  for (int64_t v = tid; v < V; v += blockDim.x) {
    const float e = float_key(x[v]) >= kcut ? __expf(x[v] - m) : 0.f;
    x[v] = e;
    part += e;
  }
  float total = block_sum(part, fscratch);
  // 6. top-p: the smallest key y (of a probability) whose strictly-larger mass is below top_p * total
  if (a.top_p < 1.f) {
    const float target = a.top_p * total;
    uint32_t lo = 0, hi = 0x7F800000u;  // probabilities are >= 0: their raw bits are monotone
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo) / 2;
      float s = 0.f;
      for (int64_t v = tid; v < V; v += blockDim.x) s += __float_as_uint(x[v]) > mid ? x[v] : 0.f;
      if (block_sum(s, fscratch) < target) hi = mid; else lo = mid + 1;
    }
    part = 0.f;
    for (int64_t v = tid; v < V; v += blockDim.x) {
      if (__float_as_uint(x[v]) < lo) x[v] = 0.f;
      part += x[v];
    }
    total = block_sum(part, fscratch);
  }
  // 7. inverse CDF in vocabulary order: contiguous chunks per thread, exclusive scan of chunk sums
  const float u = uniform01(a.seed, static_cast<uint64_t>(b)) * total;
  const int64_t chunk = (V + blockDim.x - 1) / blockDim.x;
  const int64_t c0 = tid * chunk, c1 = min(V, c0 + chunk);
  float mine = 0.f;
  int64_t last = -1;
  for (int64_t v = c0; v < c1; ++v)
    if (x[v] > 0.f) { mine += x[v]; last = v; }
  chunk_before[tid] = mine;
  __syncthreads();
  if (tid == 0) {
    float acc = 0.f;
    for (int i = 0; i < blockDim.x; ++i) { const float s = chunk_before[i]; chunk_before[i] = acc; acc += s; }
  }
  __syncthreads();
  // the last kept token of the row, for a u that rounding left at the very top
  int64_t row_last = last;
  for (int o = 16; o > 0; o >>= 1) row_last = max(row_last, __shfl_xor_sync(0xffffffffu, row_last, o));
  if ((tid & 31) == 0) iscratch[tid >> 5] = row_last;
  __syncthreads();
  if (tid == 0) {
    int64_t r = -1;
    for (int w = 0; w < (blockDim.x + 31) / 32; ++w) r = max(r, iscratch[w]);
    out_ids[b] = r;
  }
  __syncthreads();
  const float before = chunk_before[tid];
  if (mine > 0.f && before <= u && u < before + mine) {
    float acc = before;
    for (int64_t v = c0; v < c1; ++v) {
      if (x[v] <= 0.f) continue;
      acc += x[v];
      if (acc > u) { out_ids[b] = v; break; }
    }
  }
}

inline void launch_sample_tokens(const float* logits, const int64_t* hist, const int64_t* hist_mask,
                                 const bool* finished, const int64_t* eos_ids, int64_t n_eos, int64_t B, int64_t V,
                                 int64_t H, const SamplingParams& a, float* work, int64_t* out_ids,
                                 cudaStream_t stream) {
  if (B == 0) return;
  sample_tokens_kernel<<<static_cast<unsigned>(B), kSampleBlock, 0, stream>>>(logits, hist, hist_mask, finished,
                                                                             eos_ids, n_eos, V, H, a, work, out_ids);
}

}  // namespace alignment_ops
