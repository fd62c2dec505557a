// CUDA kernels of the fused completion log-probs, the same semantics as kernels/logps_cpu.h (read the
// formulas there): one thread block per (n, t) row, two reductions over V for the forward (max, then
// sum of exp and of exp-weighted logits), one pass for the backward. Launchers take raw device
// pointers and a stream so that both the Paddle operator (logps_op.cu) and the standalone harness
// (csrc/tests/) use them.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_common.cuh"

namespace alignment_ops {

constexpr int kLogpsBlock = 256;

template <typename T>
__global__ void logps_forward_kernel(const T* __restrict__ logits, const int64_t* __restrict__ labels, int64_t L,
                                     int64_t Tn, int64_t V, T scale, bool with_entropy, T* logps, T* entropy,
                                     T* lse_out, int64_t offset) {
  __shared__ T scratch[32];
  const int64_t r = blockIdx.x;
  const int64_t n = r / Tn, t = r % Tn;
  const int64_t label = labels[r];
  if (label < 0 || label >= V) {
    if (threadIdx.x == 0) logps[r] = entropy[r] = lse_out[r] = T(0);
    return;
  }
  const T* z = logits + (n * L + offset + t) * V;
  T m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) m = max(m, z[v]);
  m = block_max(m, scratch, T(-INFINITY)) * scale;
  T sum = T(0), wsum = T(0);
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const T x = z[v] * scale - m;
    const T e = dev_exp(x);
    sum += e;
    wsum += e * x;
  }
  sum = block_sum(sum, scratch);
  if (with_entropy) wsum = block_sum(wsum, scratch);
  if (threadIdx.x == 0) {
    const T lse = m + log(sum);
    lse_out[r] = lse;
    logps[r] = z[label] * scale - lse;
    entropy[r] = with_entropy ? (lse - m) - wsum / sum : T(0);
  }
}

template <typename T>
__global__ void logps_backward_kernel(const T* __restrict__ logits, const int64_t* __restrict__ labels,
                                      const T* __restrict__ lse_in, const T* __restrict__ entropy,
                                      const T* __restrict__ grad_logps, const T* __restrict__ grad_entropy,
                                      int64_t L, int64_t Tn, int64_t V, T scale, T* grad_logits, int64_t offset) {
  const int64_t row = blockIdx.x;
  const int64_t n = row / L, t = row % L - offset;
  T* g = grad_logits + row * V;
  const int64_t r = n * Tn + t;
  const int64_t label = (t >= 0 && t < Tn) ? labels[r] : -1;
  if (label < 0 || label >= V) {
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) g[v] = T(0);
    return;
  }
  const T* z = logits + row * V;
  const T lse = lse_in[r];
  const T gl = grad_logps != nullptr ? grad_logps[r] : T(0);
  const T gh = grad_entropy != nullptr ? grad_entropy[r] : T(0);
  const T h = entropy[r];
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const T logp = z[v] * scale - lse;
    const T p = dev_exp(logp);
    g[v] = -scale * p * (gl + gh * (logp + h)) + (v == label ? scale * gl : T(0));
  }
}

template <typename T>
void launch_logps_forward(const T* logits, const int64_t* labels, int64_t N, int64_t L, int64_t Tn, int64_t V,
                          float scale, bool with_entropy, T* logps, T* entropy, T* lse, cudaStream_t stream,
                          int64_t offset = 0) {
  if (N * Tn == 0) return;
  logps_forward_kernel<T><<<static_cast<unsigned>(N * Tn), kLogpsBlock, 0, stream>>>(
      logits, labels, L, Tn, V, static_cast<T>(scale), with_entropy, logps, entropy, lse, offset);
}

template <typename T>
void launch_logps_backward(const T* logits, const int64_t* labels, const T* lse, const T* entropy,
                           const T* grad_logps, const T* grad_entropy, int64_t N, int64_t L, int64_t Tn, int64_t V,
                           float scale, T* grad_logits, cudaStream_t stream, int64_t offset = 0) {
  if (N * L == 0) return;
  logps_backward_kernel<T><<<static_cast<unsigned>(N * L), kLogpsBlock, 0, stream>>>(
      logits, labels, lse, entropy, grad_logps, grad_entropy, L, Tn, V, static_cast<T>(scale), grad_logits, offset);
}

}  // namespace alignment_ops
