// Paged KV cache layout and the two cache-write kernels (append_paged_kv, move_kv_slots).
//
// A layer's cache is k_cache, v_cache: [num_pages, page_size, H_kv, D], contiguous, so the
// H_kv * D values of one slot (slot = page * page_size + offset) form one contiguous "row".
// Requests address their pages FlashInfer-style: kv_indptr [B+1], kv_indices [nnz_pages],
// kv_last_page_len [B] (1..page_size); position p of request b lives in page
// kv_indices[kv_indptr[b] + p / page_size] at offset p % page_size.
//
// The write kernels copy whole rows in "units" (uint4, uint2, uint32_t or uint16_t, picked by
// the launcher from the row size and pointer alignment), so they are dtype-agnostic. Slots
// outside [0, num_slots) are skipped: bad indices never write outside the cache.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "leapdec/math.cuh"

namespace leapdec {

// One request's view of the paged cache, with every index clamped so that reads stay inside
// kv_indices (a bad kv_indptr shortens the request instead of reading out of bounds).
struct RequestKV {
  int page_begin;  // first entry of the request in kv_indices
  int kv_len;      // number of KV positions
};

__device__ __forceinline__ RequestKV load_request_kv(const int32_t* kv_indptr,
                                                     const int32_t* kv_last_page_len,
                                                     int num_kv_indices, int page_size, int b) {
  int p0 = kv_indptr[b], p1 = kv_indptr[b + 1];
  p0 = min(max(p0, 0), num_kv_indices);
  p1 = min(max(p1, p0), num_kv_indices);
  const int n_pages = p1 - p0;
  const int last = min(max(kv_last_page_len[b], 1), page_size);
  RequestKV r;
  r.page_begin = p0;
  r.kv_len = n_pages > 0 ? (n_pages - 1) * page_size + last : 0;
  return r;
}

// Element offset of (position pos of a request, kv head) in the cache, or -1 when the page id
// is out of range (the attention kernels then read that position as zeros).
__device__ __forceinline__ int64_t paged_row_offset(const int32_t* kv_indices, int page_begin,
                                                    const math::FastDiv& page_div, int num_pages,
                                                    int num_kv_heads, int head_dim, int pos,
                                                    int kv_head) {
  uint32_t page_idx, off;
  page_div.divmod(static_cast<uint32_t>(pos), page_idx, off);
  const int page = kv_indices[page_begin + static_cast<int>(page_idx)];
  if (page < 0 || page >= num_pages) return -1;
  return ((static_cast<int64_t>(page) * page_div.d + off) * num_kv_heads + kv_head) * head_dim;
}

// append_paged_kv: k, v [N, row_units] -> k_cache, v_cache [num_slots, row_units] at slots[N].
// grid: (N), block: (any multiple of 32); slot < 0 or >= num_slots skips the row.
template <typename Unit>
__global__ void append_paged_kv_kernel(const Unit* __restrict__ k, const Unit* __restrict__ v,
                                       Unit* __restrict__ k_cache, Unit* __restrict__ v_cache,
                                       const int32_t* __restrict__ slots, int64_t num_slots,
                                       int row_units) {
  const int64_t i = blockIdx.x;
  const int64_t slot = slots[i];
  if (slot < 0 || slot >= num_slots) return;
  const Unit* k_src = k + i * row_units;
  const Unit* v_src = v + i * row_units;
  Unit* k_dst = k_cache + slot * row_units;
  Unit* v_dst = v_cache + slot * row_units;
  for (int c = threadIdx.x; c < row_units; c += blockDim.x) {
    k_dst[c] = k_src[c];
    v_dst[c] = v_src[c];
  }
}

// move_kv_slots: cache rows src[M] -> dst[M] with every read before any write.
// cache: [num_slots, row_units] (blockIdx.y selects k_cache or v_cache); src, dst: [M].
// grid: (ceil(row_units / cols_per_cta), 2), block: (any), dynamic smem: M * cols_per_cta units.
// CTA x owns the columns [x * cols_per_cta, ...) of every row: it stages them from all source
// rows in shared memory, syncs, then writes them to all destination rows. No other CTA touches
// those columns, so a destination that is also a source is always read first. Pairs with a
// slot outside [0, num_slots) are skipped.
template <typename Unit>
__global__ void move_kv_slots_kernel(Unit* __restrict__ k_cache, Unit* __restrict__ v_cache,
                                     const int32_t* __restrict__ src,
                                     const int32_t* __restrict__ dst, int m, int64_t num_slots,
                                     int row_units, int cols_per_cta) {
  extern __shared__ uint4 move_smem[];
  Unit* stage = reinterpret_cast<Unit*>(move_smem);
  Unit* cache = blockIdx.y == 0 ? k_cache : v_cache;
  const int c0 = blockIdx.x * cols_per_cta;
  const int cols = min(cols_per_cta, row_units - c0);
  const int work = m * cols;
  for (int e = threadIdx.x; e < work; e += blockDim.x) {
    const int j = e / cols, c = e - j * cols;
    const int64_t s = src[j];
    if (s >= 0 && s < num_slots) stage[j * cols_per_cta + c] = cache[s * row_units + c0 + c];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < work; e += blockDim.x) {
    const int j = e / cols, c = e - j * cols;
    const int64_t s = src[j], d = dst[j];
    if (s >= 0 && s < num_slots && d >= 0 && d < num_slots) {
      cache[d * row_units + c0 + c] = stage[j * cols_per_cta + c];
    }
  }
}

}  // namespace leapdec
