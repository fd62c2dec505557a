// CPU kernels of the fused completion log-probs: log p(label) and the entropy of softmax(scale * z),
// one pass over each row for the forward and one for the backward, threaded over rows (OpenMP) and
// vectorised inside a row. No Paddle here: csrc/tests/ builds these same functions into a plain shared
// library to compare them with the CUDA kernels.
//
// Layout: logits (N, L, V) contiguous; labels (N, T) with offset + T <= L: labels[:, t] is scored by
// logits[:, offset + t] (so neither ``logits[:, :-1]`` (T = L - 1, offset 0) nor a response window
// ``logits[:, P-1 : P-1+R]`` (offset P - 1) has to be sliced and copied). A label < 0 marks an ignored
// position: its outputs are 0 and its gradient row is 0. Gradient rows outside the window are 0.
//
//   z'  = scale * z                       (scale = 1 / temperature)
//   lse = log sum_v exp(z'_v)
//   logp = z'_label - lse
//   H    = lse - sum_v p_v z'_v            (p = softmax(z'))
//   dL/dz_v = scale * ( g_logp (1[v = label] - p_v) - g_H p_v (z'_v - lse + H) )
//
// The backward writes only the gradient: nothing (N, L, V)-sized besides it is allocated.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "fast_math.h"

namespace alignment_ops {

template <typename T>
void logps_forward_cpu(const T* logits, const int64_t* labels, int64_t N, int64_t L, int64_t Tn, int64_t V,
                       float scale, bool with_entropy, T* logps, T* entropy, T* lse_out, int nthreads,
                       int64_t offset = 0) {
  const int64_t rows = N * Tn;
  const T s = static_cast<T>(scale);
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = r / Tn, t = r % Tn;
    const int64_t label = labels[r];
    if (label < 0 || label >= V) {
      logps[r] = T(0);
      entropy[r] = T(0);
      lse_out[r] = T(0);
      continue;
    }
    const T* z = logits + (n * L + offset + t) * V;
    T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
    for (int64_t v = 0; v < V; ++v) m = std::max(m, z[v]);
    m *= s;  // scale > 0: the max of the scaled row
    T sum = T(0), wsum = T(0);
    if (with_entropy) {
#pragma omp simd reduction(+ : sum, wsum)
      for (int64_t v = 0; v < V; ++v) {
        const T x = z[v] * s - m;
        const T e = fast_exp(x);
        sum += e;
        wsum += e * x;  // sum_v e_v (z'_v - m): the shift keeps the products small
      }
    } else {
#pragma omp simd reduction(+ : sum)
      for (int64_t v = 0; v < V; ++v) sum += fast_exp(z[v] * s - m);
    }
    const T lse = m + std::log(sum);
    lse_out[r] = lse;
    logps[r] = z[label] * s - lse;
    // H = lse - E[z'] = lse - (m + wsum / sum)
    entropy[r] = with_entropy ? (lse - m) - wsum / sum : T(0);
  }
}

template <typename T>
void logps_backward_cpu(const T* logits, const int64_t* labels, const T* lse_in, const T* entropy,
                        const T* grad_logps /* nullable */, const T* grad_entropy /* nullable */, int64_t N, int64_t L,
                        int64_t Tn, int64_t V, float scale, T* grad_logits, int nthreads, int64_t offset = 0) {
  const T s = static_cast<T>(scale);
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t row = 0; row < N * L; ++row) {
    const int64_t n = row / L, t = row % L - offset;
    T* g = grad_logits + row * V;
    const int64_t r = n * Tn + t;
    const int64_t label = (t >= 0 && t < Tn) ? labels[r] : -1;
    if (label < 0 || label >= V) {
      std::fill(g, g + V, T(0));
      continue;
    }
    const T* z = logits + row * V;
    const T lse = lse_in[r];
    const T gl = grad_logps != nullptr ? grad_logps[r] : T(0);
    const T gh = grad_entropy != nullptr ? grad_entropy[r] : T(0);
    if (gh != T(0)) {
      const T h = entropy[r];
#pragma omp simd
      for (int64_t v = 0; v < V; ++v) {
        const T logp = z[v] * s - lse;
        const T p = fast_exp(logp);
        g[v] = -s * p * (gl + gh * (logp + h));
      }
    } else {
#pragma omp simd
      for (int64_t v = 0; v < V; ++v) g[v] = -s * gl * fast_exp(z[v] * s - lse);
    }
    g[label] += s * gl;
  }
}

}  // namespace alignment_ops
