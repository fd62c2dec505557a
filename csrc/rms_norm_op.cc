// Paddle custom operator ``fused_rms_norm_op``: RMSNorm over the last axis, y = x * rsqrt(mean(x^2) + eps) * w,
// with its fused backward (dx and dw). The maths are in kernels/rms_norm_cpu.h; the CUDA kernels (same
// semantics) are in kernels/rms_norm_cuda.cuh and are compiled in when Paddle is built with CUDA
// (ALIGNMENT_WITH_CUDA, set by alignment/ops/_build.py). Named ``fused_rms_norm_op``, not ``fused_rms_norm``:
// that is an operator type of other Paddle builds (auto-parallel knows it), and registering a custom operator
// under a taken name aborts the process.
//
// Inputs : x (..., H) float32/float64, weight (H) of the same dtype.
// Attrs  : epsilon (added to mean(x^2)), nthreads (CPU threads over rows; dw is deterministic for a given value).
// Outputs: y (the shape of x), rstd (R) = 1 / sqrt(mean(x^2) + eps) per row (R = numel / H), saved for the
//          backward.
#include <vector>

#include "kernels/rms_norm_cpu.h"
#include "paddle/extension.h"

#ifdef ALIGNMENT_WITH_CUDA
std::vector<paddle::Tensor> fused_rms_norm_cuda_forward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                                        float epsilon);
std::vector<paddle::Tensor> fused_rms_norm_cuda_backward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                                         const paddle::Tensor& rstd, const paddle::Tensor& grad_y);
#endif

namespace {

void check_rms_inputs(const paddle::Tensor& x, const paddle::Tensor& weight) {
  PD_CHECK(x.shape().size() >= 1, "fused_rms_norm_op: x must have at least one axis");
  PD_CHECK(weight.shape().size() == 1 && weight.shape()[0] == x.shape().back(),
           "fused_rms_norm_op: weight must be (H,) with H the last axis of x");
  PD_CHECK(weight.dtype() == x.dtype(), "fused_rms_norm_op: x and weight must have one dtype");
  PD_CHECK(weight.place() == x.place(), "fused_rms_norm_op: x and weight must be on one device");
}

}  // namespace

std::vector<paddle::Tensor> FusedRmsNormForward(const paddle::Tensor& x_in, const paddle::Tensor& w_in, float epsilon,
                                                int nthreads) {
  check_rms_inputs(x_in, w_in);
  const paddle::Tensor x = x_in.is_contiguous() ? x_in : x_in.contiguous();
  const paddle::Tensor w = w_in.is_contiguous() ? w_in : w_in.contiguous();
#ifdef ALIGNMENT_WITH_CUDA
  if (x.is_gpu()) return fused_rms_norm_cuda_forward(x, w, epsilon);
#endif
  PD_CHECK(x.is_cpu(), "fused_rms_norm_op: this build has no CUDA kernels");
  const int64_t H = x.shape().back();
  const int64_t R = H == 0 ? 0 : x.numel() / H;
  auto y = paddle::empty(x.shape(), x.dtype(), x.place());
  auto rstd = paddle::empty({R}, x.dtype(), x.place());
  PD_DISPATCH_FLOATING_TYPES(x.type(), "fused_rms_norm_forward", ([&] {
    alignment_ops::rms_norm_forward_cpu<data_t>(x.data<data_t>(), w.data<data_t>(), R, H, epsilon,
                                                y.data<data_t>(), rstd.data<data_t>(), nthreads);
  }));
  return {y, rstd};
}

std::vector<paddle::Tensor> FusedRmsNormBackward(const paddle::Tensor& x_in, const paddle::Tensor& w_in,
                                                 const paddle::Tensor& rstd, const paddle::Tensor& gy_in,
                                                 float epsilon, int nthreads) {
  const paddle::Tensor x = x_in.is_contiguous() ? x_in : x_in.contiguous();
  const paddle::Tensor w = w_in.is_contiguous() ? w_in : w_in.contiguous();
  const paddle::Tensor gy = gy_in.is_contiguous() ? gy_in : gy_in.contiguous();
#ifdef ALIGNMENT_WITH_CUDA
  if (x.is_gpu()) return fused_rms_norm_cuda_backward(x, w, rstd, gy);
#endif
  const int64_t H = x.shape().back();
  const int64_t R = H == 0 ? 0 : x.numel() / H;
  auto dx = paddle::empty(x.shape(), x.dtype(), x.place());
  auto dw = paddle::empty(w.shape(), w.dtype(), w.place());
  PD_DISPATCH_FLOATING_TYPES(x.type(), "fused_rms_norm_backward", ([&] {
    alignment_ops::rms_norm_backward_cpu<data_t>(gy.data<data_t>(), x.data<data_t>(), w.data<data_t>(),
                                                 rstd.data<data_t>(), R, H, dx.data<data_t>(), dw.data<data_t>(),
                                                 nthreads);
  }));
  return {dx, dw};
}

std::vector<std::vector<int64_t>> FusedRmsNormInferShape(const std::vector<int64_t>& x,
                                                         const std::vector<int64_t>& weight) {
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < x.size(); ++i) rows = (x[i] < 0 || rows < 0) ? -1 : rows * x[i];
  return {x, {rows}};
}

std::vector<paddle::DataType> FusedRmsNormInferDtype(const paddle::DataType& x, const paddle::DataType& weight) {
  return {x, x};
}

PD_BUILD_OP(fused_rms_norm_op)
    .Inputs({"X", "Weight"})
    .Outputs({"Y", "Rstd"})
    .Attrs({"epsilon: float", "nthreads: int"})
    .SetKernelFn(PD_KERNEL(FusedRmsNormForward))
    .SetInferShapeFn(PD_INFER_SHAPE(FusedRmsNormInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(FusedRmsNormInferDtype));

PD_BUILD_GRAD_OP(fused_rms_norm_op)
    .Inputs({"X", "Weight", "Rstd", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight")})
    .Attrs({"epsilon: float", "nthreads: int"})
    .SetKernelFn(PD_KERNEL(FusedRmsNormBackward));
