// CPU kernel of the fused next-token sampler: one row per OpenMP iteration.
//
// Per row b (finished rows emit ``pad_id`` and do nothing else):
//  1. penalties on the (B, V) logits z for every token v present in the history (entries with
//     mask 0 or id < 0 are not counted), c_v = its count (PaddleNLP get_token_penalty_multi_scores /
//     CTRL arXiv:1909.05858 §4.1):  z_v <- z_v * alpha if z_v < 0 else z_v / alpha;  z_v -= c_v beta + gamma;
//  2. min-length: while cur_len < min_len every EOS logit is -inf;
//  3. greedy: the first index of the maximum;
//  4. else x = z / temperature; top-k keeps x >= the k-th largest x (ties kept); top-p (nucleus,
//     arXiv:1904.09751) keeps every v whose strictly-larger mass sum_{x_u > x_v} p_u is below top_p (always
//     at least the best token; ties kept) -- the rule of the sort-based reference, found here by a radix
//     selection over the float bits (nucleus_cut) instead of a sort;
//  5. draw u(seed, row) (rng.h) and take the first v (vocabulary order) whose cumulative kept mass
//     exceeds u times the kept total.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <vector>

#include "fast_math.h"
#include "rng.h"
#include "sampling_params.h"

namespace alignment_ops {

// Steps 1-2 on one row, in place; ``counts`` is a zeroed V-sized buffer, left zeroed.
inline void penalise_row(float* z, const int64_t* hist, const int64_t* hist_mask, int64_t H, int64_t V,
                         const int64_t* eos_ids, int64_t n_eos, const SamplingParams& p, int32_t* counts) {
  const bool penalties = p.repetition_penalty != 1.f || p.frequency_penalty != 0.f || p.presence_penalty != 0.f;
  if (penalties) {
    for (int64_t j = 0; j < H; ++j) {
      const int64_t tok = hist[j];
      if (tok >= 0 && tok < V && (hist_mask == nullptr || hist_mask[j] != 0)) ++counts[tok];
    }
    for (int64_t j = 0; j < H; ++j) {
      const int64_t tok = hist[j];
      if (tok < 0 || tok >= V || counts[tok] == 0) continue;
      float v = z[tok];
      v = v < 0.f ? v * p.repetition_penalty : v / p.repetition_penalty;
      z[tok] = v - static_cast<float>(counts[tok]) * p.frequency_penalty - p.presence_penalty;
      counts[tok] = 0;  // each distinct token once; the buffer ends zeroed
    }
  }
  if (p.cur_len < p.min_len) {
    for (int64_t e = 0; e < n_eos; ++e)
      if (eos_ids[e] >= 0 && eos_ids[e] < V) z[eos_ids[e]] = -std::numeric_limits<float>::infinity();
  }
}

// Row reductions as ``omp simd`` reductions: GCC and Clang vectorise a float sum or max only when they
// may reorder it, which ``-ffast-math`` would allow everywhere (and also assume no infinities, which
// masked logits contain); the pragma allows it for these loops alone. The reordering changes the sums'
// rounding in the last bits only.
inline float row_max(const float* __restrict x, int64_t V) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t v = 0; v < V; ++v) m = x[v] > m ? x[v] : m;
  return m;
}

// First index of the maximum (NaN entries never win), like std::max_element; 0 for an all -inf/NaN row.
inline int64_t first_max_index(const float* x, int64_t V) {
  const float m = row_max(x, V);
  for (int64_t v = 0; v < V; ++v)
    if (x[v] == m) return v;
  return 0;
}

// x <- exp(x - m) where x >= threshold, else 0; returns the sum.
inline float exp_kept(float* __restrict x, int64_t V, float threshold, float m) {
  float total = 0.f;
#pragma omp simd reduction(+ : total)
  for (int64_t v = 0; v < V; ++v) {
    const float ev = fast_exp(x[v] - m);  // computed for every token: no branch in the loop
    const float e = x[v] >= threshold ? ev : 0.f;
    x[v] = e;
    total += e;
  }
  return total;
}

// x <- 0 where x < cut; returns the sum of what is left.
inline float drop_below(float* __restrict x, int64_t V, float cut) {
  float total = 0.f;
#pragma omp simd reduction(+ : total)
  for (int64_t v = 0; v < V; ++v) {
    const float e = x[v] < cut ? 0.f : x[v];
    x[v] = e;
    total += e;
  }
  return total;
}

inline float block_sum(const float* __restrict x, int64_t n) {
  float total = 0.f;
#pragma omp simd reduction(+ : total)
  for (int64_t v = 0; v < n; ++v) total += x[v];
  return total;
}

inline void scale_row(float* __restrict x, int64_t V, float factor) {
#pragma omp simd
  for (int64_t v = 0; v < V; ++v) x[v] *= factor;
}

inline uint32_t float_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
}

// The top-p cut: the smallest probability e* among tokens whose strictly-larger mass is below ``target``
// (keep e >= e*). Radix selection over the float bits of e (non-negative, so the raw bits are ordered):
// a 4096-bucket histogram of the mass by the top 12 bits, the bucket where the running mass from the
// top crosses ``target`` is refined by the next 12 bits, then the last 8 -- three passes at most and no
// sort. The first level reads the whole row into four interleaved histograms (consecutive tokens of a
// peaked distribution fall into the same bucket, and one histogram would make every add wait for the
// previous one); the later levels read only the boundary bucket's tokens. (The same selection as the
// bisection of the CUDA kernel, fewer passes.) ``mass`` is a 4 x 4096 scratch buffer, ``idx`` V-sized.
inline float nucleus_cut(const float* e, int64_t V, float target, int64_t* idx, float* mass) {
  static constexpr int kShift[3] = {20, 8, 0};
  static constexpr int kBits[3] = {12, 12, 8};
  constexpr int64_t kWidth0 = 4096;
  std::fill(mass, mass + 4 * kWidth0, 0.f);
  int64_t v = 0;
  for (; v + 4 <= V; v += 4)
    for (int64_t c = 0; c < 4; ++c) mass[c * kWidth0 + (float_bits(e[v + c]) >> 20)] += e[v + c];
  for (; v < V; ++v) mass[float_bits(e[v]) >> 20] += e[v];
  for (int64_t j = 0; j < kWidth0; ++j) mass[j] += mass[kWidth0 + j] + mass[2 * kWidth0 + j] + mass[3 * kWidth0 + j];

  float above = 0.f;  // mass of the tokens already known to be kept (keys above the current prefix)
  uint32_t key_prefix = 0;
  int64_t n = 0;
  for (int level = 0; level < 3; ++level) {
    const int shift = kShift[level];
    const uint32_t width = 1u << kBits[level], mask = width - 1;
    if (level > 0) {
      std::fill(mass, mass + width, 0.f);
      for (int64_t i = 0; i < n; ++i) mass[(float_bits(e[idx[i]]) >> shift) & mask] += e[idx[i]];
    }
    int64_t j = static_cast<int64_t>(width) - 1;
    for (; j >= 0; --j) {
      if (mass[j] == 0.f) continue;
      if (above + mass[j] >= target) break;
      above += mass[j];
    }
    if (j < 0) {  // rounding: every remaining token fits under target -> all kept
      float lowest = std::numeric_limits<float>::infinity();
      if (level == 0) {
        for (int64_t u = 0; u < V; ++u)
          if (e[u] > 0.f && e[u] < lowest) lowest = e[u];
      } else {
        for (int64_t i = 0; i < n; ++i) lowest = std::min(lowest, e[idx[i]]);
      }
      return lowest;
    }
    key_prefix |= static_cast<uint32_t>(j) << shift;
    int64_t m = 0;  // the boundary bucket's tokens, for the next level
    if (level == 0) {
      for (int64_t u = 0; u < V; ++u)
        if ((float_bits(e[u]) >> 20) == static_cast<uint32_t>(j) && e[u] > 0.f) idx[m++] = u;
    } else {
      for (int64_t i = 0; i < n; ++i)
        if (((float_bits(e[idx[i]]) >> shift) & mask) == static_cast<uint32_t>(j)) idx[m++] = idx[i];
    }
    n = m;
    if (n == 0) break;
  }
  float cut;
  std::memcpy(&cut, &key_prefix, sizeof(cut));
  return cut;
}

// The first v (vocabulary order) whose cumulative mass exceeds u; blocks of 256 are skipped by their sums.
inline int64_t draw_index(const float* x, int64_t V, float u) {
  constexpr int64_t kBlock = 256;
  float acc = 0.f;
  int64_t last = 0;
  for (int64_t b = 0; b < V; b += kBlock) {
    const int64_t n = std::min(kBlock, V - b);
    const float s = block_sum(x + b, n);
    if (s <= 0.f) continue;
    if (acc + s <= u) {
      acc += s;
      for (int64_t v = b + n - 1; v >= b; --v)
        if (x[v] > 0.f) {
          last = v;
          break;
        }
      continue;
    }
    for (int64_t v = b; v < b + n; ++v) {  // the crossing block, token by token
      if (x[v] <= 0.f) continue;
      acc += x[v];
      last = v;
      if (acc > u) return v;
    }
  }
  return last;  // rounding left u at the very top: the last kept token
}

// Steps 3-5 on one penalised row; ``idx`` is a V-sized scratch buffer, ``mass`` 4 x 4096 floats.
inline int64_t choose_token(float* x, int64_t V, const SamplingParams& p, uint64_t row, int64_t* idx, float* mass) {
  const float ninf = -std::numeric_limits<float>::infinity();
  if (!p.do_sample) return first_max_index(x, V);  // first maximum, like argmax
  const float inv_t = 1.f / p.temperature;
  if (inv_t != 1.f) scale_row(x, V, inv_t);
  const float m = row_max(x, V);
  float threshold = ninf;  // keep x >= threshold
  if (p.top_k > 0 && p.top_k < V) {
    std::copy(x, x + V, reinterpret_cast<float*>(idx));  // float scratch inside the index buffer
    float* tmp = reinterpret_cast<float*>(idx);
    std::nth_element(tmp, tmp + (p.top_k - 1), tmp + V, std::greater<float>());
    threshold = tmp[p.top_k - 1];
  }
  // probabilities (unnormalised) of the kept tokens, written back into x
  float total = exp_kept(x, V, threshold, m);
  if (p.top_p < 1.f) total = drop_below(x, V, nucleus_cut(x, V, p.top_p * total, idx, mass));
  return draw_index(x, V, uniform01(p.seed, row) * total);
}

inline void sample_tokens_cpu(const float* logits, const int64_t* hist, const int64_t* hist_mask,
                              const bool* finished, const int64_t* eos_ids, int64_t n_eos, int64_t B, int64_t V,
                              int64_t H, const SamplingParams& p, int64_t* out_ids, float* penalised /* nullable */,
                              int nthreads) {
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<float> row(V);
    std::vector<int32_t> counts(V, 0);
    std::vector<int64_t> idx(V);
    std::vector<float> mass(4 * 4096);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      if (finished != nullptr && finished[b]) {
        out_ids[b] = p.pad_id;
        continue;
      }
      std::copy(logits + b * V, logits + (b + 1) * V, row.begin());
      penalise_row(row.data(), hist + b * H, hist_mask == nullptr ? nullptr : hist_mask + b * H, H, V, eos_ids,
                   n_eos, p, counts.data());
      if (penalised != nullptr) std::copy(row.begin(), row.end(), penalised + b * V);
      out_ids[b] = choose_token(row.data(), V, p, static_cast<uint64_t>(b), idx.data(), mass.data());
    }
  }
}

}  // namespace alignment_ops
