// Settings of one fused sampling call, shared by the CPU and CUDA kernels (passed to the CUDA kernel
// by value). The meaning of each is in sampling_cpu.h.
#pragma once

#include <cstdint>

namespace alignment_ops {

struct SamplingParams {
  float temperature = 1.f;
  int64_t top_k = 0;
  float top_p = 1.f;
  float repetition_penalty = 1.f;
  float frequency_penalty = 0.f;
  float presence_penalty = 0.f;
  int64_t cur_len = 0;
  int64_t min_len = 0;
  int64_t pad_id = 0;
  bool do_sample = true;
  uint64_t seed = 0;
};

inline SamplingParams make_sampling_params(float temperature, int64_t top_k, float top_p, float repetition_penalty,
                                           float frequency_penalty, float presence_penalty, int64_t cur_len,
                                           int64_t min_len, int64_t pad_id, bool do_sample, uint64_t seed) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.repetition_penalty = repetition_penalty;
  p.frequency_penalty = frequency_penalty;
  p.presence_penalty = presence_penalty;
  p.cur_len = cur_len;
  p.min_len = min_len;
  p.pad_id = pad_id;
  p.do_sample = do_sample;
  p.seed = seed;
  return p;
}

}  // namespace alignment_ops
