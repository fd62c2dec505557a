// CUDA side of the ``fused_rms_norm_op`` Paddle operator (declared in rms_norm_op.cc); kernels in
// kernels/rms_norm_cuda.cuh. Compiled only when Paddle is built with CUDA.
#include <vector>

#include "kernels/rms_norm_cuda.cuh"
#include "paddle/extension.h"

std::vector<paddle::Tensor> fused_rms_norm_cuda_forward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                                        float epsilon) {
  const int64_t H = x.shape().back();
  const int64_t R = H == 0 ? 0 : x.numel() / H;
  auto y = paddle::empty(x.shape(), x.dtype(), x.place());
  auto rstd = paddle::empty({R}, x.dtype(), x.place());
  PD_DISPATCH_FLOATING_TYPES(x.type(), "fused_rms_norm_cuda_forward", ([&] {
    alignment_ops::launch_rms_norm_forward<data_t>(x.data<data_t>(), weight.data<data_t>(), R, H, epsilon,
                                                   y.data<data_t>(), rstd.data<data_t>(), x.stream());
  }));
  return {y, rstd};
}

std::vector<paddle::Tensor> fused_rms_norm_cuda_backward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                                         const paddle::Tensor& rstd, const paddle::Tensor& grad_y) {
  const int64_t H = x.shape().back();
  const int64_t R = H == 0 ? 0 : x.numel() / H;
  auto dx = paddle::empty(x.shape(), x.dtype(), x.place());
  auto dw = paddle::empty(weight.shape(), weight.dtype(), weight.place());
  auto workspace = paddle::empty({alignment_ops::rms_norm_dw_chunks(R), H}, x.dtype(), x.place());
  PD_DISPATCH_FLOATING_TYPES(x.type(), "fused_rms_norm_cuda_backward", ([&] {
    alignment_ops::launch_rms_norm_backward<data_t>(grad_y.data<data_t>(), x.data<data_t>(), weight.data<data_t>(),
                                                    rstd.data<data_t>(), R, H, dx.data<data_t>(), dw.data<data_t>(),
                                                    workspace.data<data_t>(), x.stream());
  }));
  return {dx, dw};
}
