// extern "C" entry points over the CUDA kernels, for the standalone harness (harness.py loads this with
// ctypes and passes device pointers of torch or CuPy arrays; no Paddle). float32 only; default stream.
// Build: nvcc -O3 -shared -Xcompiler -fPIC -I.. shim_cuda.cu -o libshim_cuda.so
#include "kernels/attention_cuda.cuh"
#include "kernels/logps_cuda.cuh"
#include "kernels/masked_softmax_cuda.cuh"
#include "kernels/rms_norm_cuda.cuh"
#include "kernels/sampling_cuda.cuh"

extern "C" {

int cuda_logps_forward(const float* logits, const int64_t* labels, int64_t N, int64_t L, int64_t T, int64_t V,
                       float scale, int with_entropy, float* logps, float* entropy, float* lse, int64_t offset) {
  alignment_ops::launch_logps_forward<float>(logits, labels, N, L, T, V, scale, with_entropy != 0, logps, entropy,
                                             lse, 0, offset);
  return static_cast<int>(cudaGetLastError());
}

int cuda_logps_backward(const float* logits, const int64_t* labels, const float* lse, const float* entropy,
                        const float* grad_logps, const float* grad_entropy, int64_t N, int64_t L, int64_t T,
                        int64_t V, float scale, float* grad_logits, int64_t offset) {
  alignment_ops::launch_logps_backward<float>(logits, labels, lse, entropy, grad_logps, grad_entropy, N, L, T, V,
                                              scale, grad_logits, 0, offset);
  return static_cast<int>(cudaGetLastError());
}

int cuda_sample(const float* logits, const int64_t* hist, const int64_t* hist_mask, const bool* finished,
                const int64_t* eos, int64_t n_eos, int64_t B, int64_t V, int64_t H, float temperature, int64_t top_k,
                float top_p, float rep, float freq, float pres, int64_t cur_len, int64_t min_len, int64_t pad_id,
                int do_sample, uint64_t seed, float* work, int64_t* out_ids) {
  const alignment_ops::SamplingParams p = alignment_ops::make_sampling_params(
      temperature, top_k, top_p, rep, freq, pres, cur_len, min_len, pad_id, do_sample != 0, seed);
  alignment_ops::launch_sample_tokens(logits, hist, hist_mask, finished, eos, n_eos, B, V, H, p, work, out_ids, 0);
  return static_cast<int>(cudaGetLastError());
}

int cuda_decode_attention(const float* q, const float* k, const float* v, const float* cos, const float* sin,
                          int64_t s_tab, const int64_t* pos, const int64_t* key_mask, float* cache_k, float* cache_v,
                          int64_t B, int64_t Hq, int64_t Hkv, int64_t D, int64_t Smax, int64_t t, float scale,
                          float* out) {
  alignment_ops::launch_decode_attention(q, k, v, cos, sin, s_tab, pos, key_mask, cache_k, cache_v, B, Hq, Hkv, D, Smax,
                                         t, scale, out, 0);
  return static_cast<int>(cudaGetLastError());
}

int cuda_rms_norm_forward(const float* x, const float* w, int64_t R, int64_t H, float eps, float* y, float* rstd) {
  alignment_ops::launch_rms_norm_forward<float>(x, w, R, H, eps, y, rstd, 0);
  return static_cast<int>(cudaGetLastError());
}

// The dw workspace holds cuda_rms_norm_workspace(R, H) floats.
int64_t cuda_rms_norm_workspace(int64_t R, int64_t H) { return alignment_ops::rms_norm_dw_chunks(R) * H; }

int cuda_rms_norm_backward(const float* dy, const float* x, const float* w, const float* rstd, int64_t R, int64_t H,
                           float* dx, float* dw, float* workspace) {
  alignment_ops::launch_rms_norm_backward<float>(dy, x, w, rstd, R, H, dx, dw, workspace, 0);
  return static_cast<int>(cudaGetLastError());
}

int cuda_masked_softmax_forward(const float* s, const float* mask, int64_t B, int64_t H, int64_t Lq, int64_t Lk,
                                int64_t mask_batch_stride, int causal, float scale, float* p) {
  alignment_ops::launch_masked_softmax_forward<float>(s, mask, B, H, Lq, Lk, mask_batch_stride, causal != 0, scale, p,
                                                      0);
  return static_cast<int>(cudaGetLastError());
}

int cuda_masked_softmax_backward(const float* p, const float* dp, int64_t R, int64_t Lq, int64_t Lk, int causal,
                                 float scale, float* ds) {
  alignment_ops::launch_masked_softmax_backward<float>(p, dp, R, Lq, Lk, causal != 0, scale, ds, 0);
  return static_cast<int>(cudaGetLastError());
}

int cuda_synchronize() { return static_cast<int>(cudaDeviceSynchronize()); }

}  // extern "C"
