// CUDA side of the ``fused_masked_softmax`` Paddle operator (declared in masked_softmax_op.cc); kernels in
// kernels/masked_softmax_cuda.cuh. Compiled only when Paddle is built with CUDA.
#include <vector>

#include "kernels/masked_softmax_cuda.cuh"
#include "paddle/extension.h"

std::vector<paddle::Tensor> fused_masked_softmax_cuda_forward(const paddle::Tensor& scores, const paddle::Tensor& mask,
                                                              int64_t mask_batch_stride, float scale, bool causal) {
  const auto& sh = scores.shape();
  auto p = paddle::empty(sh, scores.dtype(), scores.place());
  PD_DISPATCH_FLOATING_TYPES(scores.type(), "fused_masked_softmax_cuda_forward", ([&] {
    alignment_ops::launch_masked_softmax_forward<data_t>(
        scores.data<data_t>(), mask_batch_stride < 0 ? nullptr : mask.data<data_t>(), sh[0], sh[1], sh[2], sh[3],
        mask_batch_stride < 0 ? 0 : mask_batch_stride, causal, scale, p.data<data_t>(), scores.stream());
  }));
  return {p};
}

std::vector<paddle::Tensor> fused_masked_softmax_cuda_backward(const paddle::Tensor& p, const paddle::Tensor& grad_p,
                                                               float scale, bool causal) {
  const auto& sh = p.shape();
  auto ds = paddle::empty(sh, p.dtype(), p.place());
  PD_DISPATCH_FLOATING_TYPES(p.type(), "fused_masked_softmax_cuda_backward", ([&] {
    alignment_ops::launch_masked_softmax_backward<data_t>(p.data<data_t>(), grad_p.data<data_t>(),
                                                          sh[0] * sh[1] * sh[2], sh[2], sh[3], causal, scale,
                                                          ds.data<data_t>(), p.stream());
  }));
  return {ds};
}
