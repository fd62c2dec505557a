// CUDA side of the ``fused_logps`` Paddle operator (declared in logps_op.cc); kernels in
// kernels/logps_cuda.cuh. Compiled only when Paddle is built with CUDA.
#include <vector>

#include "kernels/logps_cuda.cuh"
#include "paddle/extension.h"

std::vector<paddle::Tensor> fused_logps_cuda_forward(const paddle::Tensor& logits, const paddle::Tensor& labels,
                                                     float scale, bool with_entropy, int64_t offset) {
  const auto& s = logits.shape();
  const int64_t N = s[0], L = s[1], V = s[2], T = labels.shape()[1];
  auto logps = paddle::empty({N, T}, logits.dtype(), logits.place());
  auto entropy = paddle::empty({N, T}, logits.dtype(), logits.place());
  auto lse = paddle::empty({N, T}, logits.dtype(), logits.place());
  PD_DISPATCH_FLOATING_TYPES(logits.type(), "fused_logps_cuda_forward", ([&] {
    alignment_ops::launch_logps_forward<data_t>(logits.data<data_t>(), labels.data<int64_t>(), N, L, T, V, scale,
                                                with_entropy, logps.data<data_t>(), entropy.data<data_t>(),
                                                lse.data<data_t>(), logits.stream(), offset);
  }));
  return {logps, entropy, lse};
}

paddle::Tensor fused_logps_cuda_backward(const paddle::Tensor& logits, const paddle::Tensor& labels,
                                         const paddle::Tensor& lse, const paddle::Tensor& entropy,
                                         const paddle::Tensor* grad_logps, const paddle::Tensor* grad_entropy,
                                         float scale, int64_t offset) {
  const auto& s = logits.shape();
  const int64_t N = s[0], L = s[1], V = s[2], T = labels.shape()[1];
  auto grad_logits = paddle::empty(s, logits.dtype(), logits.place());
  PD_DISPATCH_FLOATING_TYPES(logits.type(), "fused_logps_cuda_backward", ([&] {
    alignment_ops::launch_logps_backward<data_t>(
        logits.data<data_t>(), labels.data<int64_t>(), lse.data<data_t>(), entropy.data<data_t>(),
        grad_logps ? grad_logps->data<data_t>() : nullptr, grad_entropy ? grad_entropy->data<data_t>() : nullptr,
        N, L, T, V, scale, grad_logits.data<data_t>(), logits.stream(), offset);
  }));
  return grad_logits;
}
