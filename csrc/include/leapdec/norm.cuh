// rms_norm and fused_add_rms_norm (reference.py::rms_norm, fused_add_rms_norm). One warp per row:
// lanes stride over the row's D elements, a float32 sum of squares reduced by warp_sum, then
// out = T(T(x * inv) * weight). ADD first writes residual = T(input + residual) and normalises it
// into input (out == input then); each lane rereads only what it wrote, so no barrier is needed.
// Decode and verify steps have few rows: a warp per row keeps every row in flight at once.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "leapdec/math.cuh"
#include "leapdec/vec_dtypes.cuh"

namespace leapdec {

constexpr int kNormWarps = 4;  // rows per block

// x: [rows, d] (T), residual: [rows, d] (T, ADD only), weight: [d] (TW), out: [rows, d] (T).
// grid: (ceil(rows / kNormWarps)), block: (32 * kNormWarps).
template <typename T, typename TW, bool ADD>
__global__ void rms_norm_kernel(T* out, const T* x, T* __restrict__ residual,
                                const TW* __restrict__ weight, int64_t rows, int64_t d, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kNormWarps + (threadIdx.x >> 5);
  if (row >= rows) return;
  const T* xr = x + row * d;
  T* rr = ADD ? residual + row * d : nullptr;
  float ss = 0.f;
  for (int64_t c = lane; c < d; c += 32) {
    float v = to_float(xr[c]);
    if (ADD) {
      const T s = from_float<T>(v + to_float(rr[c]));
      rr[c] = s;
      v = to_float(s);
    }
    ss += v * v;
  }
  ss = math::warp_sum(ss);
  const float inv = 1.f / sqrtf(ss / static_cast<float>(d) + eps);
  const T* src = ADD ? rr : xr;
  T* o = out + row * d;
  for (int64_t c = lane; c < d; c += 32) {
    o[c] = from_float<T>(to_float(from_float<T>(to_float(src[c]) * inv)) * to_float(weight[c]));
  }
}

}  // namespace leapdec
