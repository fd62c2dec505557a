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
//     at least the best token; ties kept) -- the rule of the sort-based reference, found here with a
//     partial sort of a growing candidate set (64, 256, ... tokens) instead of a full sort;
//  5. draw u(seed, row) (rng.h) and take the first v (vocabulary order) whose cumulative kept mass
//     exceeds u times the kept total.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
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

// Steps 3-5 on one penalised row; ``idx`` is a V-sized scratch buffer.
inline int64_t choose_token(float* x, int64_t V, const SamplingParams& p, uint64_t row, int64_t* idx) {
  const float ninf = -std::numeric_limits<float>::infinity();
  if (!p.do_sample) return std::max_element(x, x + V) - x;  // first maximum, like argmax
  const float inv_t = 1.f / p.temperature;
  float m = ninf;
  for (int64_t v = 0; v < V; ++v) {
    x[v] *= inv_t;
    m = std::max(m, x[v]);
  }
  float threshold = ninf;  // keep x >= threshold
  if (p.top_k > 0 && p.top_k < V) {
    std::copy(x, x + V, reinterpret_cast<float*>(idx));  // float scratch inside the index buffer
    float* tmp = reinterpret_cast<float*>(idx);
    std::nth_element(tmp, tmp + (p.top_k - 1), tmp + V, std::greater<float>());
    threshold = tmp[p.top_k - 1];
  }
  // probabilities (unnormalised) of the kept tokens, written back into x
  float total = 0.f;
  for (int64_t v = 0; v < V; ++v) {
    const float e = x[v] >= threshold ? fast_exp(x[v] - m) : 0.f;
    x[v] = e;
    total += e;
  }
  if (p.top_p < 1.f) {
    int64_t n_cand = 0;
    for (int64_t v = 0; v < V; ++v)
      if (x[v] > 0.f) idx[n_cand++] = v;
    const float target = p.top_p * total;
    auto by_prob = [x](int64_t a, int64_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
    float cut = 0.f;
    for (int64_t k = std::min<int64_t>(64, n_cand);; k = std::min<int64_t>(k * 4, n_cand)) {
      std::partial_sort(idx, idx + k, idx + n_cand, by_prob);
      float before = 0.f;
      int64_t i = 0;
      while (i < k && (i == 0 || before < target)) before += x[idx[i++]];
      // i tokens kept; done when the prefix stopped below k or covered every candidate
      if (before >= target || k == n_cand) {
        cut = x[idx[i - 1]];
        break;
      }
    }
    total = 0.f;
    for (int64_t v = 0; v < V; ++v) {
      if (x[v] < cut) x[v] = 0.f;
      total += x[v];
    }
  }
  const float u = uniform01(p.seed, row) * total;
  float acc = 0.f;
  int64_t last = 0;
  for (int64_t v = 0; v < V; ++v) {
    if (x[v] <= 0.f) continue;
    acc += x[v];
    last = v;
    if (acc > u) return v;
  }
  return last;  // rounding left u at the very top: the last kept token
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
      out_ids[b] = choose_token(row.data(), V, p, static_cast<uint64_t>(b), idx.data());
    }
  }
}

}  // namespace alignment_ops
