// Split-KV decode attention: every request of the call has qo_len == 1 (or 0).
//
// The KV cache is read once per (request, KV head): a CTA processes the whole GQA group of
// query heads that share its KV head (GROUP_TILE of them; larger groups use several head
// tiles). Long sequences are cut into num_splits chunks handled by separate CTAs, whose
// normalized partials go to the workspace and are combined by merge_splits_kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "leapdec/attention_common.cuh"
#include "leapdec/math.cuh"
#include "leapdec/paged_kv.cuh"
#include "leapdec/vec_dtypes.cuh"

namespace leapdec {

template <typename T, int HEAD_DIM, int GROUP_TILE>
struct DecodeTraits {
  static constexpr int kVec = Vec16<T>::kSize;              // elements per 16-byte load
  static constexpr int kLanesPerRow = HEAD_DIM / kVec;      // lanes sharing one K/V row
  static_assert(kLanesPerRow >= 1 && kLanesPerRow <= 32 && 32 % kLanesPerRow == 0,
                "a K/V row must split evenly over a warp's lanes");
  static constexpr int kRowsPerLoad = 32 / kLanesPerRow;    // rows per warp-wide 16-byte load
  static constexpr int kUnroll = GROUP_TILE <= 2 ? 4 : 2;   // loads in flight per lane (K and V each)
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRowsPerWarpIter = kRowsPerLoad * kUnroll;
  static constexpr int kRowsPerCtaIter = kRowsPerWarpIter * kWarps;
};

// Decode: q [total_q, H_q, D], k/v cache [num_pages, page_size, H_kv, D] -> o [total_q, H_q, D]
// (or split partials). grid: (batch, H_kv * head_tiles, num_splits), block: (128), where
// head_tiles = ceil(group_size / GROUP_TILE).
// CTA (b, kv head, head tile, split) walks KV positions [begin, end) of its split in chunks:
// warp w takes chunk rows [base, base + kRowsPerWarpIter) with base advancing by
// kRowsPerCtaIter; lane (r, c) of a warp holds dims [c*kVec, (c+1)*kVec) of rows
// base + u*kRowsPerLoad + r (u < kUnroll). The next chunk's K/V loads are issued before the
// current chunk is computed. Each lane keeps an online-softmax state per query head of the
// tile; states are merged across the warp's row groups (shuffles) and across warps (smem).
template <typename T, int HEAD_DIM, int GROUP_TILE>
__global__ void __launch_bounds__(DecodeTraits<T, HEAD_DIM, GROUP_TILE>::kThreads)
    decode_attention_kernel(const AttentionParams<T> p) {
  using Tr = DecodeTraits<T, HEAD_DIM, GROUP_TILE>;
  constexpr int VEC = Tr::kVec;
  constexpr int LPR = Tr::kLanesPerRow;
  constexpr int RPL = Tr::kRowsPerLoad;
  constexpr int U = Tr::kUnroll;
  constexpr int NW = Tr::kWarps;
  constexpr int GT = GROUP_TILE;
  __shared__ float sm_acc[NW][GT][HEAD_DIM];
  __shared__ float sm_m[NW][GT];
  __shared__ float sm_l[NW][GT];

  const int b = blockIdx.x;
  const int group = p.group_size;
  const int head_tiles = math::ceil_div(group, GT);
  const int kv_head = blockIdx.y / head_tiles;
  const int head_tile = blockIdx.y - kv_head * head_tiles;
  const int split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row_in_load = lane / LPR, col = lane % LPR;

  const int row = p.qo_indptr[b];
  if (p.qo_indptr[b + 1] - row != 1 || row < 0 || row >= p.total_q) return;
  const RequestKV req =
      load_request_kv(p.kv_indptr, p.kv_last_page_len, p.num_kv_indices, p.page_div.d, b);
  // The query is the last position: causal and none see everything; custom sees the prefix
  // plus itself when its 1x1 mask entry is set.
  int visible = req.kv_len;
  if (p.mask_mode == kMaskCustom && visible > 0 &&
      !custom_mask_bit(p, p.mask_indptr[b], 1, 0, 0)) {
    --visible;
  }
  int begin, end;
  split_range(visible, split, p.num_splits, p.split_chunk, begin, end);

  // This lane's slice of each query head, pre-scaled so that q.k is a base-2 score.
  float q[GT][VEC];
#pragma unroll
  for (int h = 0; h < GT; ++h) {
    const int qh = head_tile * GT + h;
    if (qh < group) {
      const T* src = p.q + (static_cast<int64_t>(row) * p.num_qo_heads + kv_head * group + qh) * HEAD_DIM +
                     col * VEC;
      unpack16<T>(ld16(src), q[h]);
#pragma unroll
      for (int e = 0; e < VEC; ++e) q[h][e] *= p.sm_scale_log2;
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) q[h][e] = 0.f;
    }
  }

  float m[GT], l[GT], acc[GT][VEC];
#pragma unroll
  for (int h = 0; h < GT; ++h) {
    m[h] = math::neg_inf();
    l[h] = 0.f;
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[h][e] = 0.f;
  }

  uint4 k_next[U], v_next[U];
  bool ok_next[U];
  auto load_chunk = [&](int base) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int pos = base + u * RPL + row_in_load;
      // A position past the split is masked; one on an out-of-range page reads as zeros.
      int64_t off = -1;
      if (pos < end) {
        off = paged_row_offset(p.kv_indices, req.page_begin, p.page_div, p.num_pages,
                               p.num_kv_heads, HEAD_DIM, pos, kv_head);
      }
      ok_next[u] = pos < end;
      if (off >= 0) {
        k_next[u] = ld_stream16(p.k_cache + off + col * VEC);
        v_next[u] = ld_stream16(p.v_cache + off + col * VEC);
      } else {
        k_next[u] = make_uint4(0, 0, 0, 0);
        v_next[u] = make_uint4(0, 0, 0, 0);
      }
    }
  };

  int base = begin + warp * Tr::kRowsPerWarpIter;
  if (base < end) load_chunk(base);
  for (; base < end; base += Tr::kRowsPerCtaIter) {
    uint4 k_cur[U], v_cur[U];
    bool ok[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      k_cur[u] = k_next[u];
      v_cur[u] = v_next[u];
      ok[u] = ok_next[u];
    }
    if (base + Tr::kRowsPerCtaIter < end) load_chunk(base + Tr::kRowsPerCtaIter);

    // Scores of the U rows for every head: partial dot over this lane's dims, then a
    // reduction over the kLanesPerRow lanes that share the row.
    float s[U][GT];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[VEC];
      unpack16<T>(k_cur[u], kf);
#pragma unroll
      for (int h = 0; h < GT; ++h) {
        float dot = 0.f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) dot = fmaf(q[h][e], kf[e], dot);
        s[u][h] = dot;
      }
    }
#pragma unroll
    for (int off = LPR / 2; off > 0; off >>= 1) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
#pragma unroll
        for (int h = 0; h < GT; ++h) s[u][h] += math::shfl_xor(s[u][h], off);
      }
    }

    // Online softmax update with the chunk's U rows at once.
    float ref[GT];
#pragma unroll
    for (int h = 0; h < GT; ++h) {
      float mx = math::neg_inf();
#pragma unroll
      for (int u = 0; u < U; ++u) {
        s[u][h] = ok[u] ? s[u][h] : math::neg_inf();
        mx = fmaxf(mx, s[u][h]);
      }
      const float m_new = fmaxf(m[h], mx);
      ref[h] = math::softmax_ref(m_new);
      const float scale = math::ptx_exp2(m[h] - ref[h]);
      m[h] = m_new;
      l[h] *= scale;
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[h][e] *= scale;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float vf[VEC];
      unpack16<T>(v_cur[u], vf);
#pragma unroll
      for (int h = 0; h < GT; ++h) {
        const float pr = math::ptx_exp2(s[u][h] - ref[h]);
        l[h] += pr;
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[h][e] = fmaf(pr, vf[e], acc[h][e]);
      }
    }
  }

  // Merge the warp's row groups (lanes c, c + LPR, c + 2 LPR, ... hold the same dims).
#pragma unroll
  for (int off = LPR; off < 32; off <<= 1) {
#pragma unroll
    for (int h = 0; h < GT; ++h) {
      const float m_o = math::shfl_xor(m[h], off);
      const float l_o = math::shfl_xor(l[h], off);
      float sa, sb;
      m[h] = math::merge_scales(m[h], m_o, &sa, &sb);
      l[h] = l[h] * sa + l_o * sb;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float a_o = math::shfl_xor(acc[h][e], off);
        acc[h][e] = acc[h][e] * sa + a_o * sb;
      }
    }
  }
  if (row_in_load == 0) {
#pragma unroll
    for (int h = 0; h < GT; ++h) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) sm_acc[warp][h][col * VEC + e] = acc[h][e];
      if (lane == 0) {
        sm_m[warp][h] = m[h];
        sm_l[warp][h] = l[h];
      }
    }
  }
  __syncthreads();

  // Merge the warps: thread t owns 4 dims of one head.
  for (int idx = threadIdx.x; idx < GT * HEAD_DIM / 4; idx += Tr::kThreads) {
    const int h = idx / (HEAD_DIM / 4);
    const int d0 = (idx - h * (HEAD_DIM / 4)) * 4;
    const int qh = head_tile * GT + h;
    if (qh >= group) continue;
    float m_all = math::neg_inf();
#pragma unroll
    for (int w = 0; w < NW; ++w) m_all = fmaxf(m_all, sm_m[w][h]);
    const float r = math::softmax_ref(m_all);
    float l_all = 0.f, out[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int w = 0; w < NW; ++w) {
      const float sc = math::ptx_exp2(sm_m[w][h] - r);
      l_all += sm_l[w][h] * sc;
#pragma unroll
      for (int e = 0; e < 4; ++e) out[e] += sm_acc[w][h][d0 + e] * sc;
    }
    write_result(p, split, row, kv_head * group + qh, d0, out, 4, m_all, l_all, d0 == 0, HEAD_DIM);
  }
}

}  // namespace leapdec
