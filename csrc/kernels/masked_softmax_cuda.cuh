// CUDA kernels of the fused scaled + masked softmax, the same semantics as kernels/masked_softmax_cpu.h (read
// the formulas and the meaning of "masked" there): one thread block per row (B * H * Lq rows of Lk), a block
// max and a block sum for the forward, one block sum for the backward. The causal end of a row is skipped in
// both passes (zeros written there); masked entries inside it contribute 0, and a row with no unmasked entry
// is all zeros. Launchers take raw device pointers and a stream so that both the Paddle operator
// (masked_softmax_op.cu) and the standalone harness (csrc/tests/) use them.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_common.cuh"

namespace alignment_ops {

constexpr int kSoftmaxBlock = 256;

template <typename T>
__device__ __forceinline__ T masked_softmax_lowest();
template <>
__device__ __forceinline__ float masked_softmax_lowest<float>() { return -3.402823466e+38f; }
template <>
__device__ __forceinline__ double masked_softmax_lowest<double>() { return -1.7976931348623157e+308; }

__device__ __forceinline__ int64_t masked_softmax_end(int64_t i, int64_t Lq, int64_t Lk, bool causal) {
  if (!causal) return Lk;
  const int64_t e = i + (Lk - Lq) + 1;
  return e < 0 ? 0 : (e > Lk ? Lk : e);
}

// m == nullptr: no mask; otherwise the mask row of batch b is m + b * mask_batch_stride + i * Lk.
template <typename T>
__global__ void masked_softmax_forward_kernel(const T* __restrict__ s, const T* __restrict__ m, int64_t H, int64_t Lq,
                                              int64_t Lk, int64_t mask_batch_stride, bool causal, T scale,
                                              T* __restrict__ p) {
  __shared__ T scratch[32];
  const int64_t r = blockIdx.x;
  const int64_t i = r % Lq, b = r / (H * Lq);
  const T* sr = s + r * Lk;
  const T* mr = m == nullptr ? nullptr : m + b * mask_batch_stride + i * Lk;
  T* pr = p + r * Lk;
  const int64_t end = masked_softmax_end(i, Lq, Lk, causal);
  const T neg_inf = -INFINITY;
  const T lowest = masked_softmax_lowest<T>();
  T mx = neg_inf;
  for (int64_t j = threadIdx.x; j < end; j += blockDim.x) {
    const T x = mr == nullptr ? sr[j] * scale : (mr[j] > lowest ? sr[j] * scale + mr[j] : neg_inf);
    mx = max(mx, x);
  }
  mx = block_max(mx, scratch, neg_inf);
  if (mx == neg_inf) {  // every entry masked
    for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x) pr[j] = T(0);
    return;
  }
  T sum = T(0);
  for (int64_t j = threadIdx.x; j < end; j += blockDim.x) {
    const bool valid = mr == nullptr || mr[j] > lowest;
    const T e = valid ? dev_exp<T>(sr[j] * scale + (mr == nullptr ? T(0) : mr[j]) - mx) : T(0);
    pr[j] = e;
    sum += e;
  }
  const T inv = T(1) / block_sum(sum, scratch);
  for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x) pr[j] = j < end ? pr[j] * inv : T(0);
}

template <typename T>
__global__ void masked_softmax_backward_kernel(const T* __restrict__ p, const T* __restrict__ dp, int64_t Lq,
                                               int64_t Lk, bool causal, T scale, T* __restrict__ ds) {
  __shared__ T scratch[32];
  const int64_t r = blockIdx.x;
  const int64_t i = r % Lq;
  const T* pr = p + r * Lk;
  const T* gr = dp + r * Lk;
  T* dr = ds + r * Lk;
  const int64_t end = masked_softmax_end(i, Lq, Lk, causal);
  T dot = T(0);
  for (int64_t j = threadIdx.x; j < end; j += blockDim.x) dot += gr[j] * pr[j];
  dot = block_sum(dot, scratch);
  for (int64_t j = threadIdx.x; j < Lk; j += blockDim.x) dr[j] = j < end ? scale * pr[j] * (gr[j] - dot) : T(0);
}

template <typename T>
void launch_masked_softmax_forward(const T* s, const T* m, int64_t B, int64_t H, int64_t Lq, int64_t Lk,
                                   int64_t mask_batch_stride, bool causal, float scale, T* p, cudaStream_t stream) {
  const int64_t R = B * H * Lq;
  if (R == 0 || Lk == 0) return;
  masked_softmax_forward_kernel<T><<<static_cast<unsigned>(R), kSoftmaxBlock, 0, stream>>>(
      s, m, H, Lq, Lk, mask_batch_stride, causal, static_cast<T>(scale), p);
}

template <typename T>
void launch_masked_softmax_backward(const T* p, const T* dp, int64_t R, int64_t Lq, int64_t Lk, bool causal,
                                    float scale, T* ds, cudaStream_t stream) {
  if (R == 0 || Lk == 0) return;
  masked_softmax_backward_kernel<T><<<static_cast<unsigned>(R), kSoftmaxBlock, 0, stream>>>(p, dp, Lq, Lk, causal,
                                                                                           static_cast<T>(scale), ds);
}

}  // namespace alignment_ops
