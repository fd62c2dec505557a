// CPU kernels of the fused RMSNorm (Zhang & Sennrich, "Root Mean Square Layer Normalization", arXiv
// 1910.07467) over the last axis, forward and backward, threaded over rows (OpenMP) and vectorised inside
// a row. No Paddle here: csrc/tests/ builds these same functions into a plain shared library to compare
// them with the CUDA kernels (kernels/rms_norm_cuda.cuh).
//
// Layout: x (R, H) contiguous (R = every leading axis flattened), w (H), rstd (R).
//
//   rstd_r = 1 / sqrt( (1/H) sum_h x_rh^2 + eps )          (saved for the backward)
//   y_rh   = x_rh * rstd_r * w_h
//
// Backward, with xhat = x * rstd and g = dy * w:
//
//   dx_rh = rstd_r * ( g_rh - xhat_rh * (1/H) sum_k g_rk xhat_rk )
//   dw_h  = sum_r dy_rh * xhat_rh
//
// Sums are accumulated in T (float32 for float32 inputs). dw is reduced deterministically for a given
// ``nthreads``: the rows are cut into ``nthreads`` fixed contiguous blocks, each block sums its rows in
// order into its own partial row, and the partials are added in block order (whatever number of
// threads OpenMP actually runs).
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace alignment_ops {

template <typename T>
void rms_norm_forward_cpu(const T* x, const T* w, int64_t R, int64_t H, float eps, T* y, T* rstd, int nthreads) {
  const T inv_h = T(1) / static_cast<T>(H);
  const T e = static_cast<T>(eps);
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    const T* xr = x + r * H;
    T* yr = y + r * H;
    T ss = T(0);
#pragma omp simd reduction(+ : ss)
    for (int64_t h = 0; h < H; ++h) ss += xr[h] * xr[h];
    const T rs = T(1) / std::sqrt(ss * inv_h + e);
    rstd[r] = rs;
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) yr[h] = (rs * xr[h]) * w[h];
  }
}

// One block of rows [r0, r1): dx of those rows, and their dw contribution added to ``dw_part`` (H).
template <typename T>
inline void rms_norm_backward_rows(const T* dy, const T* x, const T* w, const T* rstd, int64_t r0, int64_t r1,
                                   int64_t H, T* dx, T* dw_part) {
  const T inv_h = T(1) / static_cast<T>(H);
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * H;
    const T* gr = dy + r * H;
    T* dxr = dx + r * H;
    const T rs = rstd[r];
    T dot = T(0);  // sum_k dy_k w_k x_k  (times rstd below: sum_k g_k xhat_k)
#pragma omp simd reduction(+ : dot)
    for (int64_t h = 0; h < H; ++h) dot += gr[h] * w[h] * xr[h];
    const T c = dot * rs * inv_h;  // (1/H) sum_k g_k xhat_k
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) {
      const T xhat = xr[h] * rs;
      dxr[h] = rs * (gr[h] * w[h] - xhat * c);
      dw_part[h] += gr[h] * xhat;
    }
  }
}

template <typename T>
void rms_norm_backward_cpu(const T* dy, const T* x, const T* w, const T* rstd, int64_t R, int64_t H, T* dx, T* dw,
                           int nthreads) {
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(nthreads, R));
  std::fill(dw, dw + H, T(0));
  if (R == 0) return;
  if (blocks == 1) {
    rms_norm_backward_rows(dy, x, w, rstd, 0, R, H, dx, dw);
    return;
  }
  std::vector<T> partial(static_cast<size_t>(blocks * H), T(0));
#pragma omp parallel for num_threads(nthreads) schedule(static, 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t r0 = R * b / blocks, r1 = R * (b + 1) / blocks;
    rms_norm_backward_rows(dy, x, w, rstd, r0, r1, H, dx, partial.data() + b * H);
  }
  for (int64_t b = 0; b < blocks; ++b) {
    const T* p = partial.data() + b * H;
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) dw[h] += p[h];
  }
}

}  // namespace alignment_ops
