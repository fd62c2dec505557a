// CUDA side of the ``fused_sample`` Paddle operator (declared in sampling_op.cc); kernel in
// kernels/sampling_cuda.cuh. Compiled only when Paddle is built with CUDA.
#include "kernels/sampling_cuda.cuh"
#include "paddle/extension.h"

paddle::Tensor fused_sample_cuda(const paddle::Tensor& logits, const paddle::Tensor& history,
                                 const paddle::Tensor& history_mask, const paddle::Tensor& finished,
                                 const paddle::Tensor& eos_ids, const alignment_ops::SamplingParams& args) {
  const int64_t B = logits.shape()[0], V = logits.shape()[1], H = history.shape()[1];
  auto ids = paddle::empty({B}, paddle::DataType::INT64, logits.place());
  auto work = paddle::empty({B, V}, paddle::DataType::FLOAT32, logits.place());
  alignment_ops::launch_sample_tokens(logits.data<float>(), history.data<int64_t>(), history_mask.data<int64_t>(),
                                      finished.data<bool>(), eos_ids.data<int64_t>(), eos_ids.numel(), B, V, H,
                                      args, work.data<float>(), ids.data<int64_t>(), logits.stream());
  return ids;
}
