// Counter-based uniform numbers shared by the CPU and CUDA samplers: u(seed, step, row) is a pure
// function (SplitMix64 finaliser, Steele, Lea & Flood, OOPSLA 2014), so a draw does not depend on the
// thread count or the device, and the CPU and CUDA kernels see the same uniforms.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define ALIGNMENT_HD __host__ __device__ __forceinline__
#else
#define ALIGNMENT_HD inline
#endif

namespace alignment_ops {

ALIGNMENT_HD uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// uniform in [0, 1) with 24 random bits (exactly representable in float)
ALIGNMENT_HD float uniform01(uint64_t seed, uint64_t row) {
  const uint64_t h = splitmix64(seed ^ splitmix64(row + 0x632BE59BD9B4E019ull));
  return static_cast<float>(h >> 40) * (1.0f / 16777216.0f);
}

}  // namespace alignment_ops
