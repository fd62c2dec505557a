// Paddle custom operator ``fused_sample``: penalties, min-length EOS suppression, temperature, top-k,
// top-p and a seeded draw of the next token for a batch of rows, finished rows emitting pad. The
// semantics are in kernels/sampling_cpu.h (CPU) and kernels/sampling_cuda.cuh (CUDA). No gradient.
//
// Inputs : logits (B, V) float32, history (B, H) int64, history_mask (B, H) int64 (0 = not counted),
//          finished (B,) bool, eos_ids (k,) int64.
// Attrs  : temperature, top_k, top_p, repetition_penalty, frequency_penalty, presence_penalty, cur_len,
//          min_len, pad_id, do_sample, seed, nthreads.
// Output : ids (B,) int64.
#include <vector>

#include "kernels/sampling_cpu.h"
#include "paddle/extension.h"

#ifdef ALIGNMENT_WITH_CUDA
paddle::Tensor fused_sample_cuda(const paddle::Tensor& logits, const paddle::Tensor& history,
                                 const paddle::Tensor& history_mask, const paddle::Tensor& finished,
                                 const paddle::Tensor& eos_ids, const alignment_ops::SamplingParams& args);
#endif

std::vector<paddle::Tensor> FusedSampleForward(const paddle::Tensor& logits_in, const paddle::Tensor& history_in,
                                               const paddle::Tensor& history_mask_in,
                                               const paddle::Tensor& finished, const paddle::Tensor& eos_ids,
                                               float temperature, int64_t top_k, float top_p,
                                               float repetition_penalty, float frequency_penalty,
                                               float presence_penalty, int64_t cur_len, int64_t min_len,
                                               int64_t pad_id, bool do_sample, int64_t seed, int nthreads) {
  PD_CHECK(logits_in.shape().size() == 2, "fused_sample: logits must be (B, V)");
  PD_CHECK(logits_in.dtype() == paddle::DataType::FLOAT32, "fused_sample: logits must be float32");
  PD_CHECK(history_in.shape().size() == 2 && history_in.shape()[0] == logits_in.shape()[0],
           "fused_sample: history must be (B, H)");
  PD_CHECK(temperature > 0.f, "fused_sample: temperature must be > 0");
  const paddle::Tensor logits = logits_in.contiguous();
  const paddle::Tensor history = history_in.contiguous();
  const paddle::Tensor history_mask = history_mask_in.contiguous();
  const int64_t B = logits.shape()[0], V = logits.shape()[1], H = history.shape()[1];
  const alignment_ops::SamplingParams p = alignment_ops::make_sampling_params(
      temperature, top_k, top_p, repetition_penalty, frequency_penalty, presence_penalty, cur_len, min_len, pad_id,
      do_sample, static_cast<uint64_t>(seed));
#ifdef ALIGNMENT_WITH_CUDA
  if (logits.is_gpu()) return {fused_sample_cuda(logits, history, history_mask, finished, eos_ids, p)};
#endif
  PD_CHECK(logits.is_cpu(), "fused_sample: this build has no CUDA kernels");
  auto ids = paddle::empty({B}, paddle::DataType::INT64, logits.place());
  alignment_ops::sample_tokens_cpu(logits.data<float>(), history.data<int64_t>(), history_mask.data<int64_t>(),
                                   finished.data<bool>(), eos_ids.data<int64_t>(), eos_ids.numel(), B, V, H, p,
                                   ids.data<int64_t>(), nullptr, nthreads);
  return {ids};
}

std::vector<std::vector<int64_t>> FusedSampleInferShape(const std::vector<int64_t>& logits,
                                                        const std::vector<int64_t>&, const std::vector<int64_t>&,
                                                        const std::vector<int64_t>&, const std::vector<int64_t>&) {
  return {{logits[0]}};
}

std::vector<paddle::DataType> FusedSampleInferDtype(const paddle::DataType&, const paddle::DataType&,
                                                    const paddle::DataType&, const paddle::DataType&,
                                                    const paddle::DataType&) {
  return {paddle::DataType::INT64};
}

PD_BUILD_OP(fused_sample)
    .Inputs({"Logits", "History", "HistoryMask", "Finished", "EosIds"})
    .Outputs({"Ids"})
    .Attrs({"temperature: float", "top_k: int64_t", "top_p: float", "repetition_penalty: float",
            "frequency_penalty: float", "presence_penalty: float", "cur_len: int64_t", "min_len: int64_t",
            "pad_id: int64_t", "do_sample: bool", "seed: int64_t", "nthreads: int"})
    .SetKernelFn(PD_KERNEL(FusedSampleForward))
    .SetInferShapeFn(PD_INFER_SHAPE(FusedSampleInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(FusedSampleInferDtype));

// ``fused_penalties``: steps 1-2 of the sampler alone (penalised logits (B, V)), to test them.
std::vector<paddle::Tensor> FusedPenaltiesForward(const paddle::Tensor& logits_in, const paddle::Tensor& history_in,
                                                  const paddle::Tensor& history_mask_in,
                                                  const paddle::Tensor& eos_ids, float repetition_penalty,
                                                  float frequency_penalty, float presence_penalty, int64_t cur_len,
                                                  int64_t min_len, int nthreads) {
  PD_CHECK(logits_in.is_cpu() && logits_in.dtype() == paddle::DataType::FLOAT32,
           "fused_penalties: CPU float32 logits only");
  const paddle::Tensor logits = logits_in.contiguous();
  const paddle::Tensor history = history_in.contiguous();
  const paddle::Tensor history_mask = history_mask_in.contiguous();
  const int64_t B = logits.shape()[0], V = logits.shape()[1], H = history.shape()[1];
  const alignment_ops::SamplingParams p = alignment_ops::make_sampling_params(
      1.f, 0, 1.f, repetition_penalty, frequency_penalty, presence_penalty, cur_len, min_len, 0, false, 0);
  auto out = paddle::empty({B, V}, paddle::DataType::FLOAT32, logits.place());
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<int32_t> counts(V, 0);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      float* row = out.data<float>() + b * V;
      std::copy(logits.data<float>() + b * V, logits.data<float>() + (b + 1) * V, row);
      alignment_ops::penalise_row(row, history.data<int64_t>() + b * H, history_mask.data<int64_t>() + b * H, H, V,
                                  eos_ids.data<int64_t>(), eos_ids.numel(), p, counts.data());
    }
  }
  return {out};
}

PD_BUILD_OP(fused_penalties)
    .Inputs({"Logits", "History", "HistoryMask", "EosIds"})
    .Outputs({"Out"})
    .Attrs({"repetition_penalty: float", "frequency_penalty: float", "presence_penalty: float", "cur_len: int64_t",
            "min_len: int64_t", "nthreads: int"})
    .SetKernelFn(PD_KERNEL(FusedPenaltiesForward));
