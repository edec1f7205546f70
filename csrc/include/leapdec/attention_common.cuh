// What every paged-attention kernel shares: the parameter block, the mask rule, the epilogue
// that writes one (query row, head) result, and the kernel that merges split-KV partials.
//
// Scores are kept in base 2 (q.k * sm_scale * log2 e) so the online softmax uses exp2. A
// (row, head) state is (m = running max, l = sum of exp2(s - m), acc = sum of exp2(s - m) * v).
// Split-KV partials are stored normalized: o = acc / l and lse2 = m + log2 l (base 2), or
// o = 0 and lse2 = -inf for a split that saw nothing.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "leapdec/math.cuh"
#include "leapdec/paged_kv.cuh"
#include "leapdec/vec_dtypes.cuh"

namespace leapdec {

enum : int { kMaskNone = 0, kMaskCausal = 1, kMaskCustom = 2 };

template <typename T>
struct AttentionParams {
  const T* q;                 // [total_q, num_qo_heads, head_dim]
  T* o;                       // [total_q, num_qo_heads, head_dim]
  float* lse;                 // [total_q, num_qo_heads] natural log, or nullptr
  const T* k_cache;           // [num_pages, page_size, num_kv_heads, head_dim]
  const T* v_cache;           // same
  const int32_t* qo_indptr;   // [batch + 1]
  const int32_t* kv_indptr;   // [batch + 1]
  const int32_t* kv_indices;  // [num_kv_indices]
  const int32_t* kv_last_page_len;  // [batch]
  const uint8_t* custom_mask;       // flat bool, request b's [qo_len, qo_len] at mask_indptr[b]
  const int32_t* mask_indptr;       // [batch + 1]
  int64_t mask_numel;
  float* partial_o;    // [num_splits, total_q, num_qo_heads, head_dim] (num_splits > 1)
  float* partial_lse;  // [num_splits, total_q, num_qo_heads], base 2
  math::FastDiv page_div;  // page_size
  int batch;
  int total_q;
  int num_qo_heads;
  int num_kv_heads;
  int head_dim;    // read by kernels whose head dim is not a template argument
  int group_size;  // num_qo_heads / num_kv_heads
  int num_pages;
  int num_kv_indices;
  int mask_mode;
  float sm_scale_log2;  // sm_scale * log2(e)
  int num_splits;       // KV splits per (request, head); 1 writes o/lse directly
  int split_chunk;      // KV positions per split (a multiple of every kernel's KV tile);
                        // the last split also takes whatever lies beyond
};

// The KV positions [begin, end) that split `split` covers out of [0, kv_hi).
__device__ __forceinline__ void split_range(int kv_hi, int split, int num_splits, int chunk,
                                            int& begin, int& end) {
  begin = split * chunk;
  end = split == num_splits - 1 ? kv_hi : min(kv_hi, begin + chunk);
}

// Byte of request b's custom mask at (query i, new position j), 0 when out of bounds.
template <typename T>
__device__ __forceinline__ bool custom_mask_bit(const AttentionParams<T>& p, int64_t mask_begin,
                                                int qo_len, int i, int j) {
  if (i < 0 || i >= qo_len || j < 0 || j >= qo_len) return false;
  const int64_t idx = mask_begin + static_cast<int64_t>(i) * qo_len + j;
  return idx >= 0 && idx < p.mask_numel && p.custom_mask[idx] != 0;
}

// Writes one (query row, qo head) result from its final softmax state. `acc` holds n dims
// starting at dim d0; the thread with write_lse also writes the lse.
template <typename T>
__device__ __forceinline__ void write_result(const AttentionParams<T>& p, int split, int row,
                                             int qo_head, int d0, const float* acc, int n, float m,
                                             float l, bool write_lse, int head_dim) {
  const float inv = l > 0.f ? 1.f / l : 0.f;
  const int64_t pair = static_cast<int64_t>(row) * p.num_qo_heads + qo_head;
  if (p.num_splits == 1) {
    T* dst = p.o + pair * head_dim + d0;
    for (int e = 0; e < n; ++e) dst[e] = from_float<T>(acc[e] * inv);
    if (write_lse && p.lse != nullptr) {
      p.lse[pair] = l > 0.f ? (m + math::ptx_log2(l)) * math::kLn2 : math::neg_inf();
    }
  } else {
    const int64_t slice = static_cast<int64_t>(split) * p.total_q * p.num_qo_heads;
    float* dst = p.partial_o + (slice + pair) * head_dim + d0;
    for (int e = 0; e < n; ++e) dst[e] = acc[e] * inv;
    if (write_lse) p.partial_lse[slice + pair] = l > 0.f ? m + math::ptx_log2(l) : math::neg_inf();
  }
}

// Merge split-KV partials: o[row, h] = sum_s w_s o_s / sum_s w_s with w_s = 2^(lse2_s - max).
// partial_o: [num_splits, total_q * H, HEAD_DIM], partial_lse: [num_splits, total_q * H];
// o: [total_q * H, HEAD_DIM] in T, lse: [total_q * H] natural log (or nullptr).
// grid: (ceil(total_q * H / (128 / (HEAD_DIM / 4)))), block: (128); HEAD_DIM / 4 threads per
// (row, head), each owning 4 consecutive dims.
template <typename T, int HEAD_DIM>
__global__ void __launch_bounds__(128)
    merge_splits_kernel(const float* __restrict__ partial_o, const float* __restrict__ partial_lse,
                        T* __restrict__ o, float* __restrict__ lse, int64_t num_pairs,
                        int num_splits) {
  constexpr int kThreadsPerPair = HEAD_DIM / 4;
  constexpr int kPairsPerBlock = 128 / kThreadsPerPair;
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * kPairsPerBlock + threadIdx.x / kThreadsPerPair;
  if (pair >= num_pairs) return;
  const int d0 = (threadIdx.x % kThreadsPerPair) * 4;
  float m = math::neg_inf();
  for (int s = 0; s < num_splits; ++s) m = fmaxf(m, partial_lse[s * num_pairs + pair]);
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  float w_sum = 0.f;
  if (m != math::neg_inf()) {
    for (int s = 0; s < num_splits; ++s) {
      const float w = math::ptx_exp2(partial_lse[s * num_pairs + pair] - m);
      if (w == 0.f) continue;  // an empty split holds o = 0; skip its read
      const float4 x = *reinterpret_cast<const float4*>(partial_o + (s * num_pairs + pair) * HEAD_DIM + d0);
      acc.x += w * x.x;
      acc.y += w * x.y;
      acc.z += w * x.z;
      acc.w += w * x.w;
      w_sum += w;
    }
  }
  const float inv = w_sum > 0.f ? 1.f / w_sum : 0.f;
  store4(o + pair * HEAD_DIM + d0, make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv));
  if (lse != nullptr && d0 == 0) {
    lse[pair] = w_sum > 0.f ? (m + math::ptx_log2(w_sum)) * math::kLn2 : math::neg_inf();
  }
}

}  // namespace leapdec
