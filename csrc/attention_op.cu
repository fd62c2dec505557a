// CUDA side of the ``decode_attention`` Paddle operator (declared in attention_op.cc); kernels in
// kernels/attention_cuda.cuh. Compiled only when Paddle is built with CUDA.
#include "kernels/attention_cuda.cuh"
#include "paddle/extension.h"

void decode_attention_cuda(const paddle::Tensor& q, const paddle::Tensor& k, const paddle::Tensor& v,
                           const paddle::Tensor& cos, const paddle::Tensor& sin, const paddle::Tensor& pos,
                           const paddle::Tensor& key_mask, paddle::Tensor& cache_k, paddle::Tensor& cache_v,
                           paddle::Tensor& out, int64_t Hq, int64_t Hkv, int64_t D, int64_t t, float scale) {
  const int64_t B = cache_k.shape()[0], Smax = cache_k.shape()[1];
  alignment_ops::launch_decode_attention(q.data<float>(), k.data<float>(), v.data<float>(), cos.data<float>(),
                                         sin.data<float>(), cos.shape()[0], pos.data<int64_t>(),
                                         key_mask.data<int64_t>(), cache_k.data<float>(), cache_v.data<float>(), B,
                                         Hq, Hkv, D, Smax, t, scale, out.data<float>(), q.stream());
}
