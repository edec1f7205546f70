// rope_append_paged_kv: RoPE at logical positions on q (in place) and k, fused with the paged
// cache write of the rotated k and of v (reference.py::rope_append_paged_kv).
//
// cos_sin: [max_pos, rot], cos of the rot/2 frequencies then their sin (vLLM layout). The first
// rot dims of each head rotate: NeoX style pairs (c, c + rot/2), GPT-J style pairs (2c, 2c+1);
// dims >= rot pass through. Math in float32, rounded once to T, like the reference.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "leapdec/vec_dtypes.cuh"

namespace leapdec {

// Indices of the two elements of rotation pair c and the frequency they use.
__device__ __forceinline__ void rope_pair(int c, int half, bool is_neox, int& a, int& b) {
  a = is_neox ? c : 2 * c;
  b = is_neox ? c + half : 2 * c + 1;
}

// q: [N, H_q, D] (in place), k, v: [N, H_kv, D], positions: [N] int64, cos_sin: [max_pos, rot],
// k_cache, v_cache: [num_slots, H_kv, D], slots: [N].
// grid: (N), block: (any multiple of 32). Token i: rotate its q heads, then (slot in range)
// write its rotated k heads and its v heads to the slot. A position outside [0, max_pos)
// skips the token (q untouched, nothing written); a slot outside [0, num_slots) skips the write.
template <typename T, typename C>
__global__ void rope_append_paged_kv_kernel(T* __restrict__ q, const T* __restrict__ k,
                                            const T* __restrict__ v,
                                            const int64_t* __restrict__ positions,
                                            const C* __restrict__ cos_sin, T* __restrict__ k_cache,
                                            T* __restrict__ v_cache,
                                            const int32_t* __restrict__ slots, int64_t max_pos,
                                            int64_t num_slots, int h_q, int h_kv, int head_dim,
                                            int rot, bool is_neox) {
  const int64_t i = blockIdx.x;
  const int64_t pos = positions[i];
  if (pos < 0 || pos >= max_pos) return;
  const int half = rot / 2;
  const C* cos = cos_sin + pos * rot;
  const C* sin = cos + half;

  // q: one thread per rotation pair, so the in-place update never races.
  T* q_row = q + i * h_q * head_dim;
  for (int idx = threadIdx.x; idx < h_q * half; idx += blockDim.x) {
    const int h = idx / half, c = idx - h * half;
    int a, b;
    rope_pair(c, half, is_neox, a, b);
    T* x = q_row + h * head_dim;
    const float x1 = to_float(x[a]), x2 = to_float(x[b]);
    const float co = to_float(cos[c]), si = to_float(sin[c]);
    x[a] = from_float<T>(x1 * co - x2 * si);
    x[b] = from_float<T>(x2 * co + x1 * si);
  }

  const int64_t slot = slots[i];
  if (slot < 0 || slot >= num_slots) return;
  const int row = h_kv * head_dim;
  const T* k_row = k + i * row;
  const T* v_row = v + i * row;
  T* k_dst = k_cache + slot * row;
  T* v_dst = v_cache + slot * row;
  // k is read-only here: one thread per output element, reading its pair partner.
  for (int idx = threadIdx.x; idx < row; idx += blockDim.x) {
    const int h = idx / head_dim, e = idx - h * head_dim;
    const T* x = k_row + h * head_dim;
    if (e < rot) {
      const int c = is_neox ? (e < half ? e : e - half) : e / 2;
      int a, b;
      rope_pair(c, half, is_neox, a, b);
      const float x1 = to_float(x[a]), x2 = to_float(x[b]);
      const float co = to_float(cos[c]), si = to_float(sin[c]);
      k_dst[idx] = from_float<T>(e == a ? x1 * co - x2 * si : x2 * co + x1 * si);
    } else {
      k_dst[idx] = x[e];
    }
    v_dst[idx] = v_row[idx];
  }
}

}  // namespace leapdec
