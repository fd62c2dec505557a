// CPU kernels of the fused scaled + masked softmax of training attention, forward and backward, threaded
// over rows (OpenMP) and vectorised inside a row. No Paddle here: csrc/tests/ builds these same functions
// into a plain shared library to compare them with the CUDA kernels (kernels/masked_softmax_cuda.cuh).
//
// Layout: scores s (B, H, Lq, Lk) contiguous, rows r = ((b * H) + h) * Lq + i; an optional additive mask m
// with ``mask_batch_stride`` = Lq * Lk (a (B, 1, Lq, Lk) mask) or 0 (one (1, 1, Lq, Lk) mask for every b),
// m == nullptr for no mask.
//
// An entry (i, j) is *masked* when the causal flag is set and j > i + (Lk - Lq), or when its mask value
// is <= lowest(T) (PaddleNLP's finfo.min, or -inf). Over the unmasked entries of a row
//
//   x_j = s_j * scale + m_j,      p_j = exp(x_j - max_k x_k) / sum_k exp(x_k - max_k x_k)
//
// (the max-shifted softmax), p_j = 0 on masked entries, and a row whose every entry is masked is all zeros
// (where the plain composition softmax(s * scale + m) gives 1/Lk or NaN). The forward skips the masked head
// and tail of a row (the causal end, and leading / trailing masked columns of the mask row: left / right
// padding) and writes zeros there.
//
// Backward from the saved P (the Jacobian of softmax, dp_j/dx_k = p_j (delta_jk - p_k)):
//
//   ds_j = scale * p_j * ( dp_j - sum_k dp_k p_k )
//
// which is 0 wherever p_j is 0, so it works on the span of a row between its first and last non-zero p.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "fast_math.h"

namespace alignment_ops {

// [begin, end) of row i where entries can be unmasked: the causal end, then the masked head / tail of the mask row.
template <typename T>
inline void masked_softmax_span(const T* mrow, int64_t i, int64_t Lq, int64_t Lk, bool causal, int64_t* begin,
                                int64_t* end) {
  int64_t e = Lk;
  if (causal) e = std::min<int64_t>(Lk, std::max<int64_t>(0, i + (Lk - Lq) + 1));
  int64_t b = 0;
  if (mrow != nullptr) {
    const T lowest = std::numeric_limits<T>::lowest();
    while (e > 0 && !(mrow[e - 1] > lowest)) --e;
    while (b < e && !(mrow[b] > lowest)) ++b;
  }
  *begin = b;
  *end = e;
}

template <typename T>
void masked_softmax_forward_cpu(const T* s, const T* m, int64_t B, int64_t H, int64_t Lq, int64_t Lk,
                                int64_t mask_batch_stride, bool causal, float scale, T* p, int nthreads) {
  const int64_t R = B * H * Lq;
  const T sc = static_cast<T>(scale);
  const T lowest = std::numeric_limits<T>::lowest();
  const T neg_inf = -std::numeric_limits<T>::infinity();
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    const int64_t i = r % Lq, b = r / (H * Lq);
    const T* sr = s + r * Lk;
    T* pr = p + r * Lk;
    const T* mr = m == nullptr ? nullptr : m + b * mask_batch_stride + i * Lk;
    int64_t j0, j1;
    masked_softmax_span(mr, i, Lq, Lk, causal, &j0, &j1);
    std::fill(pr, pr + j0, T(0));
    std::fill(pr + std::max(j0, j1), pr + Lk, T(0));
    if (j0 >= j1) continue;  // every entry masked: zeros
    T mx = neg_inf;
    if (mr == nullptr) {
#pragma omp simd reduction(max : mx)
      for (int64_t j = j0; j < j1; ++j) mx = std::max(mx, sr[j] * sc);
      T sum = T(0);
#pragma omp simd reduction(+ : sum)
      for (int64_t j = j0; j < j1; ++j) {
        const T e = fast_exp(sr[j] * sc - mx);
        pr[j] = e;
        sum += e;
      }
      const T inv = T(1) / sum;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) pr[j] *= inv;
    } else {
#pragma omp simd reduction(max : mx)
      for (int64_t j = j0; j < j1; ++j) mx = std::max(mx, mr[j] > lowest ? sr[j] * sc + mr[j] : neg_inf);
      T sum = T(0);
#pragma omp simd reduction(+ : sum)
      for (int64_t j = j0; j < j1; ++j) {
        const T e = mr[j] > lowest ? fast_exp(sr[j] * sc + mr[j] - mx) : T(0);
        pr[j] = e;
        sum += e;
      }
      const T inv = T(1) / sum;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) pr[j] *= inv;
    }
  }
}

template <typename T>
void masked_softmax_backward_cpu(const T* p, const T* dp, int64_t R, int64_t Lq, int64_t Lk, bool causal, float scale,
                                 T* ds, int nthreads) {
  const T sc = static_cast<T>(scale);
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    const int64_t i = r % Lq;
    const T* pr = p + r * Lk;
    const T* gr = dp + r * Lk;
    T* dr = ds + r * Lk;
    int64_t j1 = causal ? std::min<int64_t>(Lk, std::max<int64_t>(0, i + (Lk - Lq) + 1)) : Lk;
    while (j1 > 0 && pr[j1 - 1] == T(0)) --j1;
    int64_t j0 = 0;
    while (j0 < j1 && pr[j0] == T(0)) ++j0;
    std::fill(dr, dr + j0, T(0));
    std::fill(dr + j1, dr + Lk, T(0));
    T dot = T(0);
#pragma omp simd reduction(+ : dot)
    for (int64_t j = j0; j < j1; ++j) dot += gr[j] * pr[j];
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) dr[j] = sc * pr[j] * (gr[j] - dot);
  }
}

}  // namespace alignment_ops
