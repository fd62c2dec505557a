// Paddle custom operator ``fused_masked_softmax``: P = softmax(S * scale + M) over the last axis of attention
// scores S (B, H, Lq, Lk), with an optional additive mask M and an optional causal flag, and its backward
// dS = scale * P * (dP - sum_j dP_j P_j) from the saved P. The maths (and what "masked" means) are in
// kernels/masked_softmax_cpu.h; the CUDA kernels (same semantics) are in kernels/masked_softmax_cuda.cuh and
// are compiled in when Paddle is built with CUDA (ALIGNMENT_WITH_CUDA, set by alignment/ops/_build.py).
//
// Inputs : scores (B, H, Lq, Lk) float32/float64; mask of the same dtype: (B, 1, Lq, Lk) (any shape of
//          B * Lq * Lk values), (1, 1, Lq, Lk) (Lq * Lk values, shared by every b) or an empty tensor (no mask).
//          The mask gets no gradient.
// Attrs  : scale, causal (j > i + (Lk - Lq) masked), nthreads (CPU threads over rows).
// Outputs: P (the shape of scores), saved for the backward.
#include <vector>

#include "kernels/masked_softmax_cpu.h"
#include "paddle/extension.h"

#ifdef ALIGNMENT_WITH_CUDA
std::vector<paddle::Tensor> fused_masked_softmax_cuda_forward(const paddle::Tensor& scores, const paddle::Tensor& mask,
                                                              int64_t mask_batch_stride, float scale, bool causal);
std::vector<paddle::Tensor> fused_masked_softmax_cuda_backward(const paddle::Tensor& p, const paddle::Tensor& grad_p,
                                                               float scale, bool causal);
#endif

namespace {

// Lq * Lk (one mask row block per batch row), 0 (one block for every b) or -1 (no mask).
int64_t masked_softmax_mask_stride(const paddle::Tensor& scores, const paddle::Tensor& mask) {
  PD_CHECK(scores.shape().size() == 4, "fused_masked_softmax: scores must be (B, H, Lq, Lk)");
  const auto& s = scores.shape();
  const int64_t block = s[2] * s[3];
  if (mask.numel() == 0) return -1;
  PD_CHECK(mask.dtype() == scores.dtype(), "fused_masked_softmax: the mask must have the dtype of the scores");
  PD_CHECK(mask.place() == scores.place(), "fused_masked_softmax: scores and mask must be on one device");
  const auto& ms = mask.shape();
  PD_CHECK(ms.size() >= 2 && ms[ms.size() - 1] == s[3] && ms[ms.size() - 2] == s[2],
           "fused_masked_softmax: the mask must end in (Lq, Lk)");
  if (mask.numel() == block) return 0;
  PD_CHECK(mask.numel() == s[0] * block, "fused_masked_softmax: the mask must be (B, 1, Lq, Lk) or (1, 1, Lq, Lk)");
  return block;
}

}  // namespace

std::vector<paddle::Tensor> FusedMaskedSoftmaxForward(const paddle::Tensor& s_in, const paddle::Tensor& m_in,
                                                      float scale, bool causal, int nthreads) {
  const int64_t stride = masked_softmax_mask_stride(s_in, m_in);
  const paddle::Tensor s = s_in.is_contiguous() ? s_in : s_in.contiguous();
  const paddle::Tensor m = (stride < 0 || m_in.is_contiguous()) ? m_in : m_in.contiguous();
#ifdef ALIGNMENT_WITH_CUDA
  if (s.is_gpu()) return fused_masked_softmax_cuda_forward(s, m, stride, scale, causal);
#endif
  PD_CHECK(s.is_cpu(), "fused_masked_softmax: this build has no CUDA kernels");
  const auto& sh = s.shape();
  auto p = paddle::empty(sh, s.dtype(), s.place());
  PD_DISPATCH_FLOATING_TYPES(s.type(), "fused_masked_softmax_forward", ([&] {
    alignment_ops::masked_softmax_forward_cpu<data_t>(s.data<data_t>(), stride < 0 ? nullptr : m.data<data_t>(),
                                                      sh[0], sh[1], sh[2], sh[3], stride < 0 ? 0 : stride, causal,
                                                      scale, p.data<data_t>(), nthreads);
  }));
  return {p};
}

std::vector<paddle::Tensor> FusedMaskedSoftmaxBackward(const paddle::Tensor& p_in, const paddle::Tensor& gp_in,
                                                       float scale, bool causal, int nthreads) {
  const paddle::Tensor p = p_in.is_contiguous() ? p_in : p_in.contiguous();
  const paddle::Tensor gp = gp_in.is_contiguous() ? gp_in : gp_in.contiguous();
#ifdef ALIGNMENT_WITH_CUDA
  if (p.is_gpu()) return fused_masked_softmax_cuda_backward(p, gp, scale, causal);
#endif
  const auto& sh = p.shape();
  auto ds = paddle::empty(sh, p.dtype(), p.place());
  PD_DISPATCH_FLOATING_TYPES(p.type(), "fused_masked_softmax_backward", ([&] {
    alignment_ops::masked_softmax_backward_cpu<data_t>(p.data<data_t>(), gp.data<data_t>(), sh[0] * sh[1] * sh[2],
                                                       sh[2], sh[3], causal, scale, ds.data<data_t>(), nthreads);
  }));
  return {ds};
}

std::vector<std::vector<int64_t>> FusedMaskedSoftmaxInferShape(const std::vector<int64_t>& s,
                                                               const std::vector<int64_t>& m) {
  return {s};
}

std::vector<paddle::DataType> FusedMaskedSoftmaxInferDtype(const paddle::DataType& s, const paddle::DataType& m) {
  return {s};
}

PD_BUILD_OP(fused_masked_softmax)
    .Inputs({"Scores", "Mask"})
    .Outputs({"P"})
    .Attrs({"scale: float", "causal: bool", "nthreads: int"})
    .SetKernelFn(PD_KERNEL(FusedMaskedSoftmaxForward))
    .SetInferShapeFn(PD_INFER_SHAPE(FusedMaskedSoftmaxInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(FusedMaskedSoftmaxInferDtype));

PD_BUILD_GRAD_OP(fused_masked_softmax)
    .Inputs({"P", paddle::Grad("P")})
    .Outputs({paddle::Grad("Scores")})
    .Attrs({"scale: float", "causal: bool", "nthreads: int"})
    .SetKernelFn(PD_KERNEL(FusedMaskedSoftmaxBackward));
