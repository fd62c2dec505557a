// Paddle custom operator ``decode_attention``: one new query per row over a preallocated KV cache (append
// the step's rotated key and its value at column t IN PLACE, rotary on the query, masked softmax, weighted
// sum; GQA). The maths and the layout are in kernels/attention_cpu.h; the CUDA kernels (same semantics) are
// in kernels/attention_cuda.cuh, compiled in when Paddle is built with CUDA (ALIGNMENT_WITH_CUDA).
//
// Inputs : Q (B, Hq*D), K (B, Hkv*D), V (B, Hkv*D), Cos (S_tab, D), Sin (S_tab, D), Pos (B,) int64,
//          KeyMask (B, Smax) int64, CacheK / CacheV (B, Smax, Hkv, D) -- updated in place (CacheKOut / CacheVOut)
// Attrs  : num_kv_heads, t (the cache column of the new token), scale (1 / sqrt(D)), nthreads (CPU)
// Output : Out (B, Hq*D)
#include <vector>

#include "kernels/attention_cpu.h"
#include "paddle/extension.h"

#ifdef ALIGNMENT_WITH_CUDA
void decode_attention_cuda(const paddle::Tensor& q, const paddle::Tensor& k, const paddle::Tensor& v,
                           const paddle::Tensor& cos, const paddle::Tensor& sin, const paddle::Tensor& pos,
                           const paddle::Tensor& key_mask, paddle::Tensor& cache_k, paddle::Tensor& cache_v,
                           paddle::Tensor& out, int64_t Hq, int64_t Hkv, int64_t D, int64_t t, float scale);
#endif

std::vector<paddle::Tensor> DecodeAttentionForward(const paddle::Tensor& q_in, const paddle::Tensor& k_in,
                                                   const paddle::Tensor& v_in, const paddle::Tensor& cos_in,
                                                   const paddle::Tensor& sin_in, const paddle::Tensor& pos_in,
                                                   const paddle::Tensor& mask_in, paddle::Tensor& cache_k,
                                                   paddle::Tensor& cache_v, int64_t num_kv_heads, int64_t t,
                                                   float scale, int nthreads) {
  const auto& cs = cache_k.shape();
  PD_CHECK(cs.size() == 4 && cache_v.shape() == cs, "decode_attention: caches must be (B, Smax, Hkv, D)");
  const int64_t B = cs[0], Smax = cs[1], Hkv = cs[2], D = cs[3];
  PD_CHECK(Hkv == num_kv_heads, "decode_attention: cache has ", Hkv, " kv heads, expected ", num_kv_heads);
  PD_CHECK(q_in.shape().size() == 2 && q_in.shape()[0] == B && q_in.shape()[1] % D == 0,
           "decode_attention: q must be (B, Hq*D)");
  const int64_t Hq = q_in.shape()[1] / D;
  PD_CHECK(Hq % Hkv == 0, "decode_attention: query heads must be a multiple of the kv heads");
  PD_CHECK(k_in.numel() == B * Hkv * D && v_in.numel() == B * Hkv * D, "decode_attention: k, v must be (B, Hkv*D)");
  PD_CHECK(D % 2 == 0 && D <= 256, "decode_attention: head_dim must be even and <= 256");
  PD_CHECK(cos_in.shape().size() == 2 && cos_in.shape()[1] == D, "decode_attention: rotary tables must be (S, D)");
  PD_CHECK(mask_in.shape().size() == 2 && mask_in.shape()[0] == B && mask_in.shape()[1] == Smax,
           "decode_attention: key_mask must be (B, Smax)");
  PD_CHECK(0 <= t && t < Smax, "decode_attention: column t=", t, " outside the cache of ", Smax);
  PD_CHECK(q_in.dtype() == paddle::DataType::FLOAT32 && cache_k.dtype() == paddle::DataType::FLOAT32,
           "decode_attention: float32 only");
  PD_CHECK(cache_k.is_contiguous() && cache_v.is_contiguous(), "decode_attention: caches must be contiguous");
  const paddle::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const paddle::Tensor cos = cos_in.contiguous(), sin = sin_in.contiguous();
  const paddle::Tensor pos = pos_in.contiguous(), mask = mask_in.contiguous();
  auto out = paddle::empty({B, Hq * D}, paddle::DataType::FLOAT32, q.place());
#ifdef ALIGNMENT_WITH_CUDA
  if (q.is_gpu()) {
    decode_attention_cuda(q, k, v, cos, sin, pos, mask, cache_k, cache_v, out, Hq, Hkv, D, t, scale);
    return {out};
  }
#endif
  PD_CHECK(q.is_cpu(), "decode_attention: this build has no CUDA kernels");
  alignment_ops::decode_attention_cpu(q.data<float>(), k.data<float>(), v.data<float>(), cos.data<float>(),
                                      sin.data<float>(), cos.shape()[0], pos.data<int64_t>(), mask.data<int64_t>(),
                                      cache_k.data<float>(), cache_v.data<float>(), B, Hq, Hkv, D, Smax, t, scale,
                                      out.data<float>(), nthreads);
  return {out};
}

PD_BUILD_OP(decode_attention)
    .Inputs({"Q", "K", "V", "Cos", "Sin", "Pos", "KeyMask", "CacheK", "CacheV"})
    .Outputs({"Out", "CacheKOut", "CacheVOut"})
    .SetInplaceMap({{"CacheK", "CacheKOut"}, {"CacheV", "CacheVOut"}})
    .Attrs({"num_kv_heads: int64_t", "t: int64_t", "scale: float", "nthreads: int"})
    .SetKernelFn(PD_KERNEL(DecodeAttentionForward));
