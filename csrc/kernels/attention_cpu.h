// CPU kernel of the decode attention: ONE new query per row over a preallocated KV cache.
// No Paddle here: csrc/tests/ builds the same function into a plain shared library to compare it with the
// CUDA kernel (kernels/attention_cuda.cuh, same semantics).
//
// Layout (float32, contiguous):
//   q        (B, Hq, D)          the step's query projection, before rotary
//   k, v     (B, Hkv, D)         the step's key / value projections, before rotary (k)
//   cos, sin (S_tab, D)          the model's rotary tables (rotate-half / NeoX pairing, as Llama and Qwen2)
//   pos      (B,)  int64         the rotary position of the new token of every row
//   key_mask (B, Smax) int64     1 on the cache columns a row may attend to (0: left pads, finished rows)
//   cache_k, cache_v (B, Smax, Hkv, D)  written IN PLACE at column t (the new token); columns < t hold the past
//   out      (B, Hq, D)
//
//   k' = rope(k, pos)  -> cache_k[:, t];   v -> cache_v[:, t]
//   q' = rope(q, pos) * scale
//   s_j = <q', cache_k[b, j, h / G]>  for j <= t with key_mask[b, j] != 0   (G = Hq / Hkv, GQA)
//   out = sum_j softmax(s)_j cache_v[b, j, h / G]          (all-masked row: out = 0)
//
//   rope(x)_i = x_i cos_i - x_{i + D/2} sin_i  (i < D/2),  x_i cos_i + x_{i - D/2} sin_i  (i >= D/2)
//
// This is what PaddleNLP's LlamaAttention / Qwen2Attention compute for a one-token step (apply_rotary_pos_emb,
// concat with past_key_value, q / sqrt(D) @ k^T + additive mask, float32 softmax, @ v), without the cache
// concatenation, the transposes and the (B, H, 1, S) mask tensor.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "fast_math.h"

namespace alignment_ops {

inline void rope_row(const float* x, const float* cos, const float* sin, int64_t D, float mult, float* out) {
  const int64_t half = D / 2;
  for (int64_t i = 0; i < half; ++i) out[i] = (x[i] * cos[i] + (-x[i + half]) * sin[i]) * mult;
  for (int64_t i = half; i < D; ++i) out[i] = (x[i] * cos[i] + x[i - half] * sin[i]) * mult;
}

inline void decode_attention_cpu(const float* q, const float* k, const float* v, const float* cos_tab,
                                 const float* sin_tab, int64_t s_tab, const int64_t* pos, const int64_t* key_mask,
                                 float* cache_k, float* cache_v, int64_t B, int64_t Hq, int64_t Hkv, int64_t D,
                                 int64_t Smax, int64_t t, float scale, float* out, int nthreads) {
  const int64_t G = Hq / Hkv;
  // a decode step is small (B * Hq * t * D multiply-adds): a second thread only pays off on enough work,
  // and waking it costs more than the whole step when the cores are busy with Paddle's own threads
  const int64_t work = B * Hq * (t + 1) * D;
  nthreads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nthreads, work / (1 << 18))));
  // 1. rotate the new keys and append them (and the values) at column t
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t r = 0; r < B * Hkv; ++r) {
    const int64_t b = r / Hkv, h = r % Hkv;
    const int64_t p = std::min<int64_t>(std::max<int64_t>(pos[b], 0), s_tab - 1);
    float* ck = cache_k + ((b * Smax + t) * Hkv + h) * D;
    float* cv = cache_v + ((b * Smax + t) * Hkv + h) * D;
    rope_row(k + r * D, cos_tab + p * D, sin_tab + p * D, D, 1.f, ck);
    std::copy(v + r * D, v + (r + 1) * D, cv);
  }
  // 2. one query head per task: scores over the valid columns, softmax, weighted sum of the values
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<float> qr(D), scores(t + 1);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < B * Hq; ++r) {
      const int64_t b = r / Hq, h = r % Hq, hk = h / G;
      const int64_t p = std::min<int64_t>(std::max<int64_t>(pos[b], 0), s_tab - 1);
      rope_row(q + r * D, cos_tab + p * D, sin_tab + p * D, D, scale, qr.data());
      const int64_t* m = key_mask + b * Smax;
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j <= t; ++j) {
        if (m[j] == 0) continue;
        const float* kj = cache_k + ((b * Smax + j) * Hkv + hk) * D;
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int64_t d = 0; d < D; ++d) s += qr[d] * kj[d];
        scores[j] = s;
        mx = std::max(mx, s);
      }
      float* o = out + r * D;
      std::fill(o, o + D, 0.f);
      if (mx == -std::numeric_limits<float>::infinity()) continue;  // nothing to attend to
      float sum = 0.f;
      for (int64_t j = 0; j <= t; ++j) {
        if (m[j] == 0) continue;
        const float e = fast_exp(scores[j] - mx);
        sum += e;
        const float* vj = cache_v + ((b * Smax + j) * Hkv + hk) * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] += e * vj[d];
      }
      const float inv = 1.f / sum;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] *= inv;
    }
  }
}

}  // namespace alignment_ops
