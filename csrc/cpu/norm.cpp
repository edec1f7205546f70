// CPU rms_norm and fused_add_rms_norm (reference.py::rms_norm, fused_add_rms_norm): per row of D,
// float32 sum of squares, inv = 1 / sqrt(mean + eps), out = T(T(x * inv) * weight) (the normalised
// row is rounded to the activations' dtype before the weight, as Hugging Face's LlamaRMSNorm does).
// The fused form first writes residual = T(input + residual) and normalises that into input, so
// a decoder layer's residual add and the next norm are one pass and one call (vLLM's
// fused_add_rms_norm). A decode step has one row: the call costs ~1 us where torch's rms_norm
// costs ~15 us on a 2-core VM. Rows run in parallel when there are many. silu_and_mul (SwiGLU's
// gate, vLLM's op) lives here too: out = T(T(silu(gate)) * up) per row of [gate | up].
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "checks.h"
#include "ops.h"

namespace leapdec {
namespace {

constexpr int64_t kTaskElems = 1 << 14;  // elements per parallel task (at least)
constexpr int kLanes = 8;                // independent partial sums (the compiler vectorises them)

template <typename T>
inline float f32(T v) {
  return static_cast<float>(v);
}

// Rows [r0, r1) of x [rows, d]; ADD: residual rows are updated first and normalised instead.
template <bool ADD, typename T, typename TW>
void norm_rows(T* out, const T* x, T* residual, const TW* w, int64_t d, float eps, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * d;
    T* rr = ADD ? residual + r * d : nullptr;
    float part[kLanes] = {};
    int64_t c = 0;
    for (; c + kLanes <= d; c += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        float v = f32(xr[c + l]);
        if constexpr (ADD) {
          const T s = static_cast<T>(v + f32(rr[c + l]));
          rr[c + l] = s;
          v = f32(s);
        }
        part[l] += v * v;
      }
    }
    for (; c < d; ++c) {
      float v = f32(xr[c]);
      if constexpr (ADD) {
        const T s = static_cast<T>(v + f32(rr[c]));
        rr[c] = s;
        v = f32(s);
      }
      part[0] += v * v;
    }
    float ss = 0.0f;
    for (float p : part) ss += p;
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
    const T* src = ADD ? rr : xr;
    T* o = out + r * d;
    for (int64_t j = 0; j < d; ++j) o[j] = static_cast<T>(f32(static_cast<T>(f32(src[j]) * inv)) * f32(w[j]));
  }
}

template <bool ADD>
void norm_dispatch(at::Tensor& out, const at::Tensor& x, at::Tensor* residual, const at::Tensor& weight,
                   int64_t d, double eps) {
  const int64_t rows = d == 0 ? 0 : x.numel() / d;
  if (rows == 0) return;
  const int64_t grain = std::max<int64_t>(1, kTaskElems / d);
  auto run = [&](auto xtag, auto wtag) {
    using T = decltype(xtag);
    using TW = decltype(wtag);
    T* o = static_cast<T*>(out.data_ptr());
    const T* xp = static_cast<const T*>(x.data_ptr());
    T* rp = ADD ? static_cast<T*>(residual->data_ptr()) : nullptr;
    const TW* wp = static_cast<const TW*>(weight.data_ptr());
    const float e = static_cast<float>(eps);
    at::parallel_for(0, rows, grain, [&](int64_t a, int64_t b) { norm_rows<ADD>(o, xp, rp, wp, d, e, a, b); });
  };
  auto with_weight = [&](auto xtag) {
    switch (weight.scalar_type()) {
      case at::kFloat:
        return run(xtag, float{});
      case at::kBFloat16:
        return run(xtag, c10::BFloat16{});
      default:  // checked: float16
        return run(xtag, c10::Half{});
    }
  };
  switch (x.scalar_type()) {
    case at::kFloat:
      return with_weight(float{});
    case at::kBFloat16:
      return with_weight(c10::BFloat16{});
    default:  // checked: float16
      return with_weight(c10::Half{});
  }
}

template <typename T>
void silu_mul_rows(T* out, const T* in, int64_t d, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* g = in + r * 2 * d;
    const T* u = g + d;
    T* o = out + r * d;
    for (int64_t j = 0; j < d; ++j) {
      const float x = f32(g[j]);
      const T act = static_cast<T>(x / (1.0f + std::exp(-x)));
      o[j] = static_cast<T>(f32(act) * f32(u[j]));
    }
  }
}

}  // namespace

void silu_and_mul_cpu(at::Tensor& out, const at::Tensor& input) {
  const int64_t d = check_silu_and_mul_args(out, input);
  const int64_t rows = d == 0 ? 0 : out.numel() / d;
  if (rows == 0) return;
  const int64_t grain = std::max<int64_t>(1, kTaskElems / d);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out.data_ptr());
    const T* in = static_cast<const T*>(input.data_ptr());
    at::parallel_for(0, rows, grain, [&](int64_t a, int64_t b) { silu_mul_rows(o, in, d, a, b); });
  };
  switch (input.scalar_type()) {
    case at::kFloat:
      return run(float{});
    case at::kBFloat16:
      return run(c10::BFloat16{});
    default:  // checked: float16
      return run(c10::Half{});
  }
}

void rms_norm_cpu(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight, double eps) {
  const int64_t d = check_rms_norm_args(input, out, "out", weight, eps);
  norm_dispatch<false>(out, input, nullptr, weight, d, eps);
}

void fused_add_rms_norm_cpu(at::Tensor& input, at::Tensor& residual, const at::Tensor& weight, double eps) {
  const int64_t d = check_fused_add_rms_norm_args(input, residual, weight, eps);
  norm_dispatch<true>(input, input, &residual, weight, d, eps);
}

}  // namespace leapdec
