// linear for few rows (reference.py::linear): out[M, N] = x[M, K] @ weight[N, K]^T (+ bias[N]).
// A decode or verify step has M <= 16 rows and streams every weight once: one warp per weight
// row reads it coalesced, each lane keeps the M partial dot products in registers (float32),
// and a warp reduction finishes them. M > kLinearMaxRows is split by the launcher. PACKED: the
// weight is [ceil(n/8), ceil(k/8), 8, 8] (row 8t + r, column 8b + j at [t][b][r][j]).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "leapdec/math.cuh"
#include "leapdec/vec_dtypes.cuh"

namespace leapdec {

constexpr int kLinearMaxRows = 16;  // x rows per launch
constexpr int kLinearWarps = 4;     // weight rows per block

// x: [m, k] (TX), weight: [n, k] or packed (TW), bias: [n] (TB) or null, out: [m, n] (TX).
// grid: (ceil(n / kLinearWarps)), block: (32 * kLinearWarps). m <= kLinearMaxRows.
template <typename TX, typename TW, typename TB, bool PACKED = false>
__global__ void linear_few_rows_kernel(TX* __restrict__ out, const TX* __restrict__ x,
                                       const TW* __restrict__ weight, const TB* __restrict__ bias,
                                       int m, int64_t n, int64_t k) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kLinearWarps + (threadIdx.x >> 5);
  if (row >= n) return;
  const int64_t kb = (k + 7) / 8;
  const TW* w = PACKED ? weight + (row / 8) * kb * 64 + (row % 8) * 8 : weight + row * k;
  float acc[kLinearMaxRows];
#pragma unroll
  for (int r = 0; r < kLinearMaxRows; ++r) acc[r] = 0.f;
  for (int64_t c = lane; c < k; c += 32) {
    const float wv = to_float(PACKED ? w[(c / 8) * 64 + (c % 8)] : w[c]);
#pragma unroll
    for (int r = 0; r < kLinearMaxRows; ++r) {
      if (r < m) acc[r] += wv * to_float(x[r * k + c]);
    }
  }
  const float b = bias == nullptr ? 0.f : to_float(bias[row]);
#pragma unroll
  for (int r = 0; r < kLinearMaxRows; ++r) {
    if (r < m) {
      const float s = math::warp_sum(acc[r]);
      if (lane == 0) out[r * n + row] = from_float<TX>(s + b);
    }
  }
}

}  // namespace leapdec
