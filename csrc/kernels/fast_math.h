// Branch-free float exp shared by the CPU kernels, written so that GCC and Clang vectorise the loops
// that call it (std::exp is a library call that blocks vectorisation unless -ffast-math is given, and
// -ffast-math would also assume no infinities, which masked logits do contain).
//
// Method (Cephes expf): x = k ln2 + r with k = round(x / ln2), |r| <= ln2 / 2; exp(r) by a degree-6
// polynomial; 2^k by writing k into the exponent bits. Relative error about 2e-7 in [-87, 88]; inputs
// below -87.3 (including -inf) give about 1e-38, i.e. a probability of zero for every practical use.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <cstring>

namespace alignment_ops {

inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.3f), 88.3f);
  // k = round(x / ln2) by the shifter trick: adding 1.5 * 2^23 leaves the rounded integer in the low
  // mantissa bits (round half to even). No comparison, no float-to-int conversion with a branch: the
  // compilers vectorise loops over this function without -ffast-math / -fno-trapping-math (a version
  // with ``x >= 0 ? 0.5 : -0.5`` rounding compiled to scalar code with branches).
  constexpr float kShifter = 12582912.f;
  const float t = x * 1.44269504088896341f + kShifter;
  const float k = t - kShifter;
  int32_t t_bits;
  std::memcpy(&t_bits, &t, sizeof(t_bits));
  const int32_t ki = t_bits - 0x4B400000;  // the bits of kShifter
  float r = x - k * 0.693359375f + k * 2.12194440e-4f;  // ln2 split in two for an exact product
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (ki + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// double rows use the library exp: float64 is the accuracy path, not the speed path
inline double fast_exp(double x) { return std::exp(x); }

}  // namespace alignment_ops
