// Paddle custom operator ``fused_logps``: per-token log p(label) and entropy of softmax(logits / T)
// for a causal LM's completion tokens, with its fused backward. The maths and the layout are in
// kernels/logps_cpu.h; the CUDA kernels (same semantics) are in kernels/logps_cuda.cuh and are
// compiled in when Paddle is built with CUDA (ALIGNMENT_WITH_CUDA, set by alignment/ops/_build.py).
//
// Inputs : logits (N, L, V) float32/float64, labels (N, T) int64 with offset + T <= L (negative = ignored):
//          labels[:, t] is scored by logits[:, offset + t].
// Attrs  : scale = 1 / temperature (> 0), with_entropy, nthreads (CPU threads over rows), offset.
// Outputs: logps (N, T), entropy (N, T) (zeros unless with_entropy), lse (N, T) (saved for backward).
#include <vector>

#include "kernels/logps_cpu.h"
#include "paddle/extension.h"

#ifdef ALIGNMENT_WITH_CUDA
std::vector<paddle::Tensor> fused_logps_cuda_forward(const paddle::Tensor& logits, const paddle::Tensor& labels,
                                                     float scale, bool with_entropy, int64_t offset);
paddle::Tensor fused_logps_cuda_backward(const paddle::Tensor& logits, const paddle::Tensor& labels,
                                         const paddle::Tensor& lse, const paddle::Tensor& entropy,
                                         const paddle::Tensor* grad_logps, const paddle::Tensor* grad_entropy,
                                         float scale, int64_t offset);
#endif

namespace {

void check_inputs(const paddle::Tensor& logits, const paddle::Tensor& labels, int64_t offset) {
  PD_CHECK(logits.shape().size() == 3, "fused_logps: logits must be (N, L, V), got rank ", logits.shape().size());
  PD_CHECK(labels.shape().size() == 2, "fused_logps: labels must be (N, T), got rank ", labels.shape().size());
  PD_CHECK(labels.shape()[0] == logits.shape()[0] && offset >= 0 && offset + labels.shape()[1] <= logits.shape()[1],
           "fused_logps: labels (N, T) must have the N of logits (N, L, V) and offset + T <= L");
  PD_CHECK(labels.dtype() == paddle::DataType::INT64, "fused_logps: labels must be int64");
}

}  // namespace

std::vector<paddle::Tensor> FusedLogpsForward(const paddle::Tensor& logits_in, const paddle::Tensor& labels_in,
                                              float scale, bool with_entropy, int nthreads, int64_t offset) {
  check_inputs(logits_in, labels_in, offset);
  PD_CHECK(scale > 0.f, "fused_logps: scale (1 / temperature) must be > 0");
  const paddle::Tensor logits = logits_in.is_contiguous() ? logits_in : logits_in.contiguous();
  const paddle::Tensor labels = labels_in.is_contiguous() ? labels_in : labels_in.contiguous();
#ifdef ALIGNMENT_WITH_CUDA
  if (logits.is_gpu()) return fused_logps_cuda_forward(logits, labels, scale, with_entropy, offset);
#endif
  PD_CHECK(logits.is_cpu(), "fused_logps: this build has no CUDA kernels");
  const auto& s = logits.shape();
  const int64_t N = s[0], L = s[1], V = s[2], T = labels.shape()[1];
  auto logps = paddle::empty({N, T}, logits.dtype(), logits.place());
  auto entropy = paddle::empty({N, T}, logits.dtype(), logits.place());
  auto lse = paddle::empty({N, T}, logits.dtype(), logits.place());
  PD_DISPATCH_FLOATING_TYPES(logits.type(), "fused_logps_forward", ([&] {
    alignment_ops::logps_forward_cpu<data_t>(logits.data<data_t>(), labels.data<int64_t>(), N, L, T, V, scale,
                                             with_entropy, logps.data<data_t>(), entropy.data<data_t>(),
                                             lse.data<data_t>(), nthreads, offset);
  }));
  return {logps, entropy, lse};
}

std::vector<paddle::Tensor> FusedLogpsBackward(const paddle::Tensor& logits_in, const paddle::Tensor& labels_in,
                                               const paddle::Tensor& lse, const paddle::Tensor& entropy,
                                               const paddle::optional<paddle::Tensor>& grad_logps,
                                               const paddle::optional<paddle::Tensor>& grad_entropy, float scale,
                                               bool with_entropy, int nthreads, int64_t offset) {
  const paddle::Tensor logits = logits_in.is_contiguous() ? logits_in : logits_in.contiguous();
  const paddle::Tensor labels = labels_in.is_contiguous() ? labels_in : labels_in.contiguous();
  // an output that does not reach the loss has no gradient: treat it as zero
  const paddle::Tensor* ge = (with_entropy && grad_entropy && grad_entropy->initialized()) ? &grad_entropy.get() : nullptr;
  const paddle::Tensor* gl = (grad_logps && grad_logps->initialized()) ? &grad_logps.get() : nullptr;
#ifdef ALIGNMENT_WITH_CUDA
  if (logits.is_gpu()) return {fused_logps_cuda_backward(logits, labels, lse, entropy, gl, ge, scale, offset)};
#endif
  const auto& s = logits.shape();
  const int64_t N = s[0], L = s[1], V = s[2], T = labels.shape()[1];
  auto grad_logits = paddle::empty(s, logits.dtype(), logits.place());
  PD_DISPATCH_FLOATING_TYPES(logits.type(), "fused_logps_backward", ([&] {
    alignment_ops::logps_backward_cpu<data_t>(logits.data<data_t>(), labels.data<int64_t>(), lse.data<data_t>(),
                                              entropy.data<data_t>(), gl ? gl->data<data_t>() : nullptr,
                                              ge ? ge->data<data_t>() : nullptr, N, L, T, V, scale,
                                              grad_logits.data<data_t>(), nthreads, offset);
  }));
  return {grad_logits};
}

std::vector<std::vector<int64_t>> FusedLogpsInferShape(const std::vector<int64_t>& logits,
                                                       const std::vector<int64_t>& labels) {
  return {labels, labels, labels};
}

std::vector<paddle::DataType> FusedLogpsInferDtype(const paddle::DataType& logits, const paddle::DataType& labels) {
  return {logits, logits, logits};
}

PD_BUILD_OP(fused_logps)
    .Inputs({"Logits", "Labels"})
    .Outputs({"Logps", "Entropy", "Lse"})
    .Attrs({"scale: float", "with_entropy: bool", "nthreads: int", "offset: int64_t"})
    .SetKernelFn(PD_KERNEL(FusedLogpsForward))
    .SetInferShapeFn(PD_INFER_SHAPE(FusedLogpsInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(FusedLogpsInferDtype));

PD_BUILD_GRAD_OP(fused_logps)
    .Inputs({"Logits", "Labels", "Lse", "Entropy", paddle::Optional(paddle::Grad("Logps")),
             paddle::Optional(paddle::Grad("Entropy"))})
    .Outputs({paddle::Grad("Logits")})
    .Attrs({"scale: float", "with_entropy: bool", "nthreads: int", "offset: int64_t"})
    .SetKernelFn(PD_KERNEL(FusedLogpsBackward));
