// extern "C" entry points over the CPU kernels, for the standalone harness (harness.py loads this with
// ctypes; no Paddle). float32 only. Build: g++ -O3 -march=native -fopenmp -shared -fPIC -I.. shim_cpu.cc
#include "kernels/attention_cpu.h"
#include "kernels/logps_cpu.h"
#include "kernels/masked_softmax_cpu.h"
#include "kernels/rms_norm_cpu.h"
#include "kernels/sampling_cpu.h"

extern "C" {

void cpu_logps_forward(const float* logits, const int64_t* labels, int64_t N, int64_t L, int64_t T, int64_t V,
                       float scale, int with_entropy, float* logps, float* entropy, float* lse, int nthreads,
                       int64_t offset) {
  alignment_ops::logps_forward_cpu<float>(logits, labels, N, L, T, V, scale, with_entropy != 0, logps, entropy, lse,
                                          nthreads, offset);
}

void cpu_logps_backward(const float* logits, const int64_t* labels, const float* lse, const float* entropy,
                        const float* grad_logps, const float* grad_entropy, int64_t N, int64_t L, int64_t T,
                        int64_t V, float scale, float* grad_logits, int nthreads, int64_t offset) {
  alignment_ops::logps_backward_cpu<float>(logits, labels, lse, entropy, grad_logps, grad_entropy, N, L, T, V, scale,
                                           grad_logits, nthreads, offset);
}

void cpu_sample(const float* logits, const int64_t* hist, const int64_t* hist_mask, const bool* finished,
                const int64_t* eos, int64_t n_eos, int64_t B, int64_t V, int64_t H, float temperature, int64_t top_k,
                float top_p, float rep, float freq, float pres, int64_t cur_len, int64_t min_len, int64_t pad_id,
                int do_sample, uint64_t seed, int64_t* out_ids, float* penalised, int nthreads) {
  const alignment_ops::SamplingParams p = alignment_ops::make_sampling_params(
      temperature, top_k, top_p, rep, freq, pres, cur_len, min_len, pad_id, do_sample != 0, seed);
  alignment_ops::sample_tokens_cpu(logits, hist, hist_mask, finished, eos, n_eos, B, V, H, p, out_ids, penalised,
                                   nthreads);
}

void cpu_decode_attention(const float* q, const float* k, const float* v, const float* cos, const float* sin,
                          int64_t s_tab, const int64_t* pos, const int64_t* key_mask, float* cache_k, float* cache_v,
                          int64_t B, int64_t Hq, int64_t Hkv, int64_t D, int64_t Smax, int64_t t, float scale,
                          float* out, int nthreads) {
  alignment_ops::decode_attention_cpu(q, k, v, cos, sin, s_tab, pos, key_mask, cache_k, cache_v, B, Hq, Hkv, D, Smax, t,
                                      scale, out, nthreads);
}

void cpu_rms_norm_forward(const float* x, const float* w, int64_t R, int64_t H, float eps, float* y, float* rstd,
                          int nthreads) {
  alignment_ops::rms_norm_forward_cpu<float>(x, w, R, H, eps, y, rstd, nthreads);
}

void cpu_rms_norm_backward(const float* dy, const float* x, const float* w, const float* rstd, int64_t R, int64_t H,
                           float* dx, float* dw, int nthreads) {
  alignment_ops::rms_norm_backward_cpu<float>(dy, x, w, rstd, R, H, dx, dw, nthreads);
}

// mask == nullptr: no mask; mask_batch_stride Lq * Lk ((B, 1, Lq, Lk) mask) or 0 ((1, 1, Lq, Lk) mask).
void cpu_masked_softmax_forward(const float* s, const float* mask, int64_t B, int64_t H, int64_t Lq, int64_t Lk,
                                int64_t mask_batch_stride, int causal, float scale, float* p, int nthreads) {
  alignment_ops::masked_softmax_forward_cpu<float>(s, mask, B, H, Lq, Lk, mask_batch_stride, causal != 0, scale, p,
                                                   nthreads);
}

void cpu_masked_softmax_backward(const float* p, const float* dp, int64_t R, int64_t Lq, int64_t Lk, int causal,
                                 float scale, float* ds, int nthreads) {
  alignment_ops::masked_softmax_backward_cpu<float>(p, dp, R, Lq, Lk, causal != 0, scale, ds, nthreads);
}

}  // extern "C"
