// Small device math helpers shared by the kernels: fast exp2/log2, warp shuffles, and a
// division by a runtime constant (page_size) done as a multiply-high and a shift.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace leapdec {
namespace math {

constexpr float kLog2e = 1.4426950408889634f;  // log2(e): scores are kept in base 2
constexpr float kLn2 = 0.6931471805599453f;    // ln(2): converts a base-2 lse to natural log

// The host branches below only serve host-side emulation of the kernels in tests.
__host__ __device__ __forceinline__ float neg_inf() { return -INFINITY; }

// 2^x; exp2(-inf) = 0.
__host__ __device__ __forceinline__ float ptx_exp2(float x) {
#ifdef __CUDA_ARCH__
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return std::exp2(x);
#endif
}

// log2(x) for x > 0.
__host__ __device__ __forceinline__ float ptx_log2(float x) {
#ifdef __CUDA_ARCH__
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return std::log2(x);
#endif
}

__device__ __forceinline__ float shfl_xor(float x, int lane_mask) {
  return __shfl_xor_sync(0xffffffffu, x, lane_mask);
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x = fmaxf(x, shfl_xor(x, off));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x += shfl_xor(x, off);
  return x;
}

// The reference point of an online softmax whose running max is m: m itself, or 0 while
// every score seen so far is -inf (so exp2(s - ref) gives 0 instead of NaN).
__host__ __device__ __forceinline__ float softmax_ref(float m) { return m == neg_inf() ? 0.f : m; }

// Merge of two base-2 softmax states (m, l): returns the new max and the two rescale factors.
__host__ __device__ __forceinline__ float merge_scales(float m_a, float m_b, float* scale_a, float* scale_b) {
  const float m = fmaxf(m_a, m_b);
  const float ref = softmax_ref(m);
  *scale_a = ptx_exp2(m_a - ref);
  *scale_b = ptx_exp2(m_b - ref);
  return m;
}

// n / d and n % d for 0 <= n < 2^31 and a divisor d >= 1 fixed at launch (Granlund-Montgomery:
// s = ceil(log2 d), m = floor(2^32 (2^s - d) / d) + 1, n / d = (umulhi(n, m) + n) >> s).
struct FastDiv {
  uint32_t d = 1, m = 1, s = 0;

  FastDiv() = default;
  __host__ __device__ explicit FastDiv(uint32_t divisor) : d(divisor) {
    s = 0;
    while ((uint64_t(1) << s) < d) ++s;
    m = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << s) - d)) / d + 1);
  }

  __host__ __device__ __forceinline__ uint32_t div(uint32_t n) const {
#ifdef __CUDA_ARCH__
    const uint32_t hi = __umulhi(n, m);
#else
    const uint32_t hi = static_cast<uint32_t>((uint64_t(n) * m) >> 32);
#endif
    return static_cast<uint32_t>((uint64_t(hi) + n) >> s);
  }

  __host__ __device__ __forceinline__ void divmod(uint32_t n, uint32_t& q, uint32_t& r) const {
    q = div(n);
    r = n - q * d;
  }
};

__host__ __device__ __forceinline__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace math
}  // namespace leapdec
