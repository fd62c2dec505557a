// CUDA kernels of the fused RMSNorm, the same semantics as kernels/rms_norm_cpu.h (read the formulas
// there): one thread block per row for the forward and for dx (one block reduction over H each), and a
// deterministic two-stage column reduction for dw: stage 1 sums the rows of each of ``rms_norm_dw_chunks(R)``
// fixed row chunks per column (a fixed order inside the block), stage 2 adds the chunk partials in chunk
// order. Launchers take raw device pointers and a stream so that both the Paddle operator
// (rms_norm_op.cu) and the standalone harness (csrc/tests/) use them.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_common.cuh"

namespace alignment_ops {

constexpr int kRmsBlock = 256;
constexpr int kRmsDwCols = 32;  // columns per dw block (one warp wide)
constexpr int kRmsDwRows = 8;   // row lanes per dw block

// Row chunks of the dw reduction (the workspace of the backward holds chunks * H values).
inline int64_t rms_norm_dw_chunks(int64_t R) {
  const int64_t c = (R + 63) / 64;
  return c < 1 ? 1 : (c > 256 ? 256 : c);
}

template <typename T>
__global__ void rms_norm_forward_kernel(const T* __restrict__ x, const T* __restrict__ w, int64_t H, T eps,
                                        T* __restrict__ y, T* __restrict__ rstd) {
  __shared__ T scratch[32];
  const int64_t r = blockIdx.x;
  const T* xr = x + r * H;
  T ss = T(0);
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) ss += xr[h] * xr[h];
  ss = block_sum(ss, scratch);
  const T rs = T(1) / sqrt(ss / static_cast<T>(H) + eps);
  if (threadIdx.x == 0) rstd[r] = rs;
  T* yr = y + r * H;
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) yr[h] = (rs * xr[h]) * w[h];
}

template <typename T>
__global__ void rms_norm_backward_dx_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                            const T* __restrict__ w, const T* __restrict__ rstd, int64_t H,
                                            T* __restrict__ dx) {
  __shared__ T scratch[32];
  const int64_t r = blockIdx.x;
  const T* xr = x + r * H;
  const T* gr = dy + r * H;
  const T rs = rstd[r];
  T dot = T(0);
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) dot += gr[h] * w[h] * xr[h];
  const T c = block_sum(dot, scratch) * rs / static_cast<T>(H);
  T* dxr = dx + r * H;
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) dxr[h] = rs * (gr[h] * w[h] - (xr[h] * rs) * c);
}

// grid (ceil(H / 32), chunks), block (32, 8): partial[chunk, h] = sum over the chunk's rows of dy * xhat.
template <typename T>
__global__ void rms_norm_dw_partial_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                           const T* __restrict__ rstd, int64_t R, int64_t H, int64_t chunks,
                                           T* __restrict__ partial) {
  __shared__ T acc[kRmsDwRows][kRmsDwCols + 1];
  const int64_t h = static_cast<int64_t>(blockIdx.x) * kRmsDwCols + threadIdx.x;
  const int64_t c = blockIdx.y;
  const int64_t r0 = R * c / chunks, r1 = R * (c + 1) / chunks;
  T s = T(0);
  if (h < H)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kRmsDwRows) s += dy[r * H + h] * (x[r * H + h] * rstd[r]);
  acc[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && h < H) {
    T t = T(0);
    for (int k = 0; k < kRmsDwRows; ++k) t += acc[k][threadIdx.x];
    partial[c * H + h] = t;
  }
}

template <typename T>
__global__ void rms_norm_dw_final_kernel(const T* __restrict__ partial, int64_t H, int64_t chunks,
                                         T* __restrict__ dw) {
  const int64_t h = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (h >= H) return;
  T t = T(0);
  for (int64_t c = 0; c < chunks; ++c) t += partial[c * H + h];
  dw[h] = t;
}

template <typename T>
void launch_rms_norm_forward(const T* x, const T* w, int64_t R, int64_t H, float eps, T* y, T* rstd,
                             cudaStream_t stream) {
  if (R == 0) return;
  rms_norm_forward_kernel<T><<<static_cast<unsigned>(R), kRmsBlock, 0, stream>>>(x, w, H, static_cast<T>(eps), y,
                                                                                  rstd);
}

// ``workspace``: rms_norm_dw_chunks(R) * H values of T.
template <typename T>
void launch_rms_norm_backward(const T* dy, const T* x, const T* w, const T* rstd, int64_t R, int64_t H, T* dx, T* dw,
                              T* workspace, cudaStream_t stream) {
  if (H == 0) return;
  const unsigned col_blocks = static_cast<unsigned>((H + 255) / 256);
  if (R == 0) {
    cudaMemsetAsync(dw, 0, sizeof(T) * H, stream);
    return;
  }
  rms_norm_backward_dx_kernel<T><<<static_cast<unsigned>(R), kRmsBlock, 0, stream>>>(dy, x, w, rstd, H, dx);
  const int64_t chunks = rms_norm_dw_chunks(R);
  const dim3 grid(static_cast<unsigned>((H + kRmsDwCols - 1) / kRmsDwCols), static_cast<unsigned>(chunks));
  rms_norm_dw_partial_kernel<T><<<grid, dim3(kRmsDwCols, kRmsDwRows), 0, stream>>>(dy, x, rstd, R, H, chunks,
                                                                                    workspace);
  rms_norm_dw_final_kernel<T><<<col_blocks, 256, 0, stream>>>(workspace, H, chunks, dw);
}

}  // namespace alignment_ops
