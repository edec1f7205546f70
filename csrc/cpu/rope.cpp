// CPU rope_append_paged_kv (reference.py): RoPE at logical positions on q (in place) and k,
// fused with the paged cache write of the rotated k and of v. One task per block of tokens.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "checks.h"
#include "ops.h"

namespace leapdec {
namespace {

constexpr int64_t kParallelElems = 1 << 16;  // rotate on one thread below this many elements

// Rotate one head x[D] (first rot dims) into dst[D] at the angles (cos[rot/2], sin[rot/2]);
// dims >= rot pass through. x and dst may alias. Math in float32, like the reference.
template <typename T, typename C>
inline void rotate_head(const T* x, T* dst, const C* cos, const C* sin, int64_t rot, int64_t d,
                        bool is_neox) {
  const int64_t half = rot / 2;
  if (is_neox) {  // pairs (c, c + rot/2)
    for (int64_t c = 0; c < half; ++c) {
      const float x1 = static_cast<float>(x[c]), x2 = static_cast<float>(x[c + half]);
      const float co = static_cast<float>(cos[c]), si = static_cast<float>(sin[c]);
      dst[c] = static_cast<T>(x1 * co - x2 * si);
      dst[c + half] = static_cast<T>(x2 * co + x1 * si);
    }
  } else {  // interleaved pairs (2c, 2c + 1)
    for (int64_t c = 0; c < half; ++c) {
      const float x1 = static_cast<float>(x[2 * c]), x2 = static_cast<float>(x[2 * c + 1]);
      const float co = static_cast<float>(cos[c]), si = static_cast<float>(sin[c]);
      dst[2 * c] = static_cast<T>(x1 * co - x2 * si);
      dst[2 * c + 1] = static_cast<T>(x2 * co + x1 * si);
    }
  }
  if (dst != x) std::memcpy(dst + rot, x + rot, (d - rot) * sizeof(T));
}

// q: [N, H_q, D] (in place), k, v: [N, H_kv, D], positions: [N] int64,
// cos_sin: [max_pos, rot] (cos then sin), caches: [num_pages, page_size, H_kv, D].
template <typename T, typename C>
void rope_append_impl(T* q, const T* k, const T* v, const int64_t* positions, const C* cos_sin,
                      T* k_cache, T* v_cache, const int* slots, int64_t n, int64_t h_q,
                      int64_t h_kv, int64_t d, int64_t rot, bool is_neox) {
  const int64_t per_token = (h_q + 2 * h_kv) * d;
  const int64_t grain = std::max<int64_t>(1, kParallelElems / std::max<int64_t>(per_token, 1));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const C* cos = cos_sin + positions[i] * rot;
      const C* sin = cos + rot / 2;
      T* qi = q + i * h_q * d;
      for (int64_t h = 0; h < h_q; ++h) rotate_head(qi + h * d, qi + h * d, cos, sin, rot, d, is_neox);
      const int64_t slot = slots[i];
      if (slot < 0) continue;
      const T* ki = k + i * h_kv * d;
      T* k_dst = k_cache + slot * h_kv * d;
      for (int64_t h = 0; h < h_kv; ++h) rotate_head(ki + h * d, k_dst + h * d, cos, sin, rot, d, is_neox);
      std::memcpy(v_cache + slot * h_kv * d, v + i * h_kv * d, h_kv * d * sizeof(T));
    }
  });
}

template <typename T>
void dispatch_cos_sin(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& positions, const at::Tensor& cos_sin_cache,
                      at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& slot_mapping,
                      bool is_neox) {
  const int64_t n = q.size(0), h_q = q.size(1), h_kv = k.size(1), d = q.size(2);
  const int64_t rot = cos_sin_cache.size(1);
  T* qp = static_cast<T*>(q.data_ptr());
  const T* kp = static_cast<const T*>(k.data_ptr());
  const T* vp = static_cast<const T*>(v.data_ptr());
  T* kc = static_cast<T*>(k_cache.data_ptr());
  T* vc = static_cast<T*>(v_cache.data_ptr());
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int* slots = slot_mapping.data_ptr<int>();
  if (cos_sin_cache.scalar_type() == at::kFloat) {
    rope_append_impl(qp, kp, vp, pos, cos_sin_cache.data_ptr<float>(), kc, vc, slots, n, h_q, h_kv,
                     d, rot, is_neox);
  } else {  // checked: the q dtype
    rope_append_impl(qp, kp, vp, pos, static_cast<const T*>(cos_sin_cache.data_ptr()), kc, vc,
                     slots, n, h_q, h_kv, d, rot, is_neox);
  }
}

}  // namespace

void rope_append_paged_kv_cpu(at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& positions, const at::Tensor& cos_sin_cache,
                              at::Tensor& k_cache, at::Tensor& v_cache,
                              const at::Tensor& slot_mapping, bool is_neox) {
  check_rope_append_args(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping);
  const int64_t n = k.size(0);

  check_slots_in_range(slot_mapping, k_cache.size(0) * k_cache.size(1), "slot_mapping",
                       /*allow_negative=*/true);
  const int64_t max_pos = cos_sin_cache.size(0);
  const int64_t* pos = positions.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(pos[i] >= 0 && pos[i] < max_pos, "positions[", i, "] = ", pos[i],
                " must be in [0, ", max_pos, ") (rows of cos_sin_cache)");
  }

  switch (q.scalar_type()) {
    case at::kFloat:
      dispatch_cos_sin<float>(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping,
                              is_neox);
      break;
    case at::kBFloat16:
      dispatch_cos_sin<c10::BFloat16>(q, k, v, positions, cos_sin_cache, k_cache, v_cache,
                                      slot_mapping, is_neox);
      break;
    case at::kHalf:
      dispatch_cos_sin<c10::Half>(q, k, v, positions, cos_sin_cache, k_cache, v_cache,
                                  slot_mapping, is_neox);
      break;
    default:
      TORCH_CHECK(false, "rope_append_paged_kv: unsupported dtype ", q.scalar_type());
  }
}

}  // namespace leapdec
