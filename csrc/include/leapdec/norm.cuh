// rms_norm and fused_add_rms_norm (reference.py::rms_norm, fused_add_rms_norm), and silu_and_mul
// (reference.py::silu_and_mul, elementwise, at the end). The norms run one warp per row:
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

// silu_and_mul: out[r, j] = T(T(silu(in[r, j])) * in[r, d + j]); in: [rows, 2d], out: [rows, d].
// grid-stride over rows * d elements. grid: (any), block: (256).
template <typename T>
__global__ void silu_and_mul_kernel(T* __restrict__ out, const T* __restrict__ in, int64_t rows, int64_t d) {
  const int64_t total = rows * d;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / d, j = i - r * d;
    const float x = to_float(in[r * 2 * d + j]);
    const float act = to_float(from_float<T>(x / (1.f + expf(-x))));
    out[i] = from_float<T>(act * to_float(in[r * 2 * d + d + j]));
  }
}

}  // namespace leapdec
