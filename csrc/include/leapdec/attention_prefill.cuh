// Multi-query paged attention: prefill, tree verification, diffusion blocks, WeDLM windows.
//
// A CTA owns a tile of a request's "packed rows" (row r = query r / G, query head r % G of the
// G = H_q / H_kv heads sharing one KV head, FlashInfer's packed-GQA order) and walks the KV
// positions of its split tile by tile. Each K/V tile is loaded once into shared memory and used
// by every row of the tile, so the prefix is read once per (request, KV head, query tile)
// instead of once per query. Masks: none (every position), causal (position <= prefix + i),
// custom (the whole prefix, plus new position j where the request's [qo_len, qo_len] mask is
// set; the tile's slice of that mask is staged in shared memory as bits).
//
// prefill_mma_kernel (fp16 / bf16) computes S = Q K^T and O += P V with mma.sync m16n8k16 and
// a two-stage cp.async pipeline; prefill_simt_kernel (any dtype: fp32, and any head dim up to
// 256) does the same walk with CUDA-core dot products.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "leapdec/attention_common.cuh"
#include "leapdec/math.cuh"
#include "leapdec/mma.cuh"
#include "leapdec/paged_kv.cuh"
#include "leapdec/vec_dtypes.cuh"

namespace leapdec {

template <typename T, int HEAD_DIM>
struct PrefillMmaTraits {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kTileQ = 16 * kWarps;            // packed rows per CTA (16 per warp)
  static constexpr int kTileKV = 64;                    // KV positions per tile
  static constexpr int kStride = HEAD_DIM + 8;          // smem row stride: ldmatrix conflict-free
  static constexpr int kTileElems = kTileKV * kStride;  // one K (or V) tile in smem
  static constexpr int kChunksPerRow = HEAD_DIM / 8;    // 16-byte chunks per K/V row
  static constexpr int kChunksPerThread = kTileKV * kChunksPerRow / kThreads;
  static constexpr int kMaskWords = kTileKV / 32;       // mask bits per packed row per tile
  static constexpr int kStages = 2;
  static constexpr size_t kSmemBytes = static_cast<size_t>(kStages) * 2 * kTileElems * sizeof(T) +
                                       static_cast<size_t>(kStages) * kTileQ * kMaskWords * sizeof(uint32_t);
  static_assert(HEAD_DIM % 32 == 0, "head dim must be a multiple of 32");
  static_assert(kTileKV * kChunksPerRow % kThreads == 0, "K/V tile chunks must split over the CTA");
};

// Tensor-core multi-query attention, T = __half or __nv_bfloat16.
// q [total_q, H_q, D], k/v cache [num_pages, page_size, H_kv, D] -> o [total_q, H_q, D] (or
// split partials). grid: (batch * num_splits, H_kv, q tiles), block: (128),
// dynamic smem: PrefillMmaTraits::kSmemBytes.
// CTA (b, split, kv head, tile z) handles packed rows [64 z, 64 z + 64) of request b (and
// z + gridDim.z, ... if the grid has fewer tiles than the request). Warp w owns rows
// 16w..16w+15 of the tile: its Q fragments stay in registers, its S tile is 16 x 64 and its
// O accumulator 16 x D (fp32). Per KV tile: ldmatrix K -> S = Q K^T, scale + mask, online
// softmax on S rows (quad shuffles), P (fp16/bf16) reused in registers as the A operand,
// ldmatrix.trans V -> O += P V. Tile t+1 is copied (cp.async) while tile t is computed.
template <typename T, int HEAD_DIM>
__global__ void __launch_bounds__(PrefillMmaTraits<T, HEAD_DIM>::kThreads)
    prefill_mma_kernel(const AttentionParams<T> p) {
  using Tr = PrefillMmaTraits<T, HEAD_DIM>;
  constexpr int kTileQ = Tr::kTileQ, kTileKV = Tr::kTileKV, kStride = Tr::kStride;
  constexpr int kWords = Tr::kMaskWords;
  constexpr int kDK = HEAD_DIM / 16;  // k-steps of Q K^T
  constexpr int kDN = HEAD_DIM / 8;   // n-tiles of O
  constexpr int kSN = kTileKV / 8;    // n-tiles of S
  constexpr int kPK = kTileKV / 16;   // k-steps of P V
  extern __shared__ uint4 prefill_smem[];
  T* k_smem = reinterpret_cast<T*>(prefill_smem);                              // [2][kTileKV][kStride]
  T* v_smem = k_smem + Tr::kStages * Tr::kTileElems;                          // [2][kTileKV][kStride]
  uint32_t* mask_smem = reinterpret_cast<uint32_t*>(v_smem + Tr::kStages * Tr::kTileElems);  // [2][kTileQ][kWords]

  const int b = blockIdx.x / p.num_splits;
  const int split = blockIdx.x - b * p.num_splits;
  const int kv_head = blockIdx.y;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int gid = lane >> 2, tig = lane & 3;
  const int group = p.group_size;
  const int mode = p.mask_mode;

  const int q_begin = p.qo_indptr[b];
  const int qo_len = p.qo_indptr[b + 1] - q_begin;
  if (qo_len <= 0 || q_begin < 0 || q_begin + qo_len > p.total_q) return;
  const RequestKV req =
      load_request_kv(p.kv_indptr, p.kv_last_page_len, p.num_kv_indices, p.page_div.d, b);
  const int kv_len = req.kv_len;
  const int prefix = kv_len - qo_len;
  if (prefix < 0) return;
  const int packed_rows = qo_len * group;
  const int64_t mask_begin = mode == kMaskCustom ? p.mask_indptr[b] : 0;

  for (int tile = blockIdx.z; tile * kTileQ < packed_rows; tile += gridDim.z) {
    const int r0 = tile * kTileQ;
    const int q_first = r0 / group;
    const int q_last = min(qo_len - 1, (r0 + kTileQ - 1) / group);
    const int rows[2] = {r0 + warp * 16 + gid, r0 + warp * 16 + gid + 8};
    int qi[2], qh[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      qi[i] = rows[i] / group;
      qh[i] = kv_head * group + (rows[i] - qi[i] * group);
    }

    // Q fragments of the warp's 16 rows (zeros for rows past the request).
    uint32_t qf[kDK][4];
    {
      const T* q_row[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        q_row[i] = rows[i] < packed_rows
                       ? p.q + (static_cast<int64_t>(q_begin + qi[i]) * p.num_qo_heads + qh[i]) * HEAD_DIM
                       : nullptr;
      }
#pragma unroll
      for (int kk = 0; kk < kDK; ++kk) {
        const int d = kk * 16 + tig * 2;
        qf[kk][0] = q_row[0] ? *reinterpret_cast<const uint32_t*>(q_row[0] + d) : 0u;
        qf[kk][1] = q_row[1] ? *reinterpret_cast<const uint32_t*>(q_row[1] + d) : 0u;
        qf[kk][2] = q_row[0] ? *reinterpret_cast<const uint32_t*>(q_row[0] + d + 8) : 0u;
        qf[kk][3] = q_row[1] ? *reinterpret_cast<const uint32_t*>(q_row[1] + d + 8) : 0u;
      }
    }

    float o_acc[kDN][4];
#pragma unroll
    for (int n = 0; n < kDN; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o_acc[n][e] = 0.f;
    }
    float m_run[2] = {math::neg_inf(), math::neg_inf()};
    float l_run[2] = {0.f, 0.f};

    const int kv_hi = mode == kMaskCausal ? min(kv_len, prefix + q_last + 1) : kv_len;
    int begin, end;
    split_range(kv_hi, split, p.num_splits, p.split_chunk, begin, end);
    const int n_tiles = end > begin ? math::ceil_div(end - begin, kTileKV) : 0;

    // Issue the cp.async copies of KV tile t into `stage`, and stage its mask bits.
    auto load_tile = [&](int t, int stage) {
      const int k0 = begin + t * kTileKV;
      T* ks = k_smem + stage * Tr::kTileElems;
      T* vs = v_smem + stage * Tr::kTileElems;
#pragma unroll
      for (int j = 0; j < Tr::kChunksPerThread; ++j) {
        const int c = tid + j * Tr::kThreads;
        const int r = c / Tr::kChunksPerRow;
        const int ch = c - r * Tr::kChunksPerRow;
        const int pos = k0 + r;
        int64_t off = -1;
        if (pos < end) {
          off = paged_row_offset(p.kv_indices, req.page_begin, p.page_div, p.num_pages,
                                 p.num_kv_heads, HEAD_DIM, pos, kv_head);
        }
        const bool valid = off >= 0;
        const int64_t src = valid ? off + ch * 8 : 0;
        mma::cp_async_16(mma::smem_u32(ks + r * kStride + ch * 8), p.k_cache + src, valid);
        mma::cp_async_16(mma::smem_u32(vs + r * kStride + ch * 8), p.v_cache + src, valid);
      }
      if (mode == kMaskCustom && k0 + kTileKV > prefix) {
        // Bit (row ql, key c) = does query q_first + ql see position k0 + c; one ballot per word.
        uint32_t* ms = mask_smem + stage * kTileQ * kWords;
        for (int w = warp; w < kTileQ * kWords; w += Tr::kWarps) {
          const int ql = w / kWords;
          const int pos = k0 + (w - ql * kWords) * 32 + lane;
          const bool bit = pos < prefix ||
                           custom_mask_bit(p, mask_begin, qo_len, q_first + ql, pos - prefix);
          const uint32_t word = __ballot_sync(0xffffffffu, bit);
          if (lane == 0) ms[w] = word;
        }
      }
    };

    if (n_tiles > 0) {
      load_tile(0, 0);
      mma::cp_async_commit();
    }
    for (int t = 0; t < n_tiles; ++t) {
      const int stage = t & 1;
      if (t + 1 < n_tiles) {
        load_tile(t + 1, stage ^ 1);
        mma::cp_async_commit();
        mma::cp_async_wait<1>();
      } else {
        mma::cp_async_wait<0>();
      }
      __syncthreads();

      const int k0 = begin + t * kTileKV;
      const T* ks = k_smem + stage * Tr::kTileElems;
      const T* vs = v_smem + stage * Tr::kTileElems;
      const uint32_t* ms = mask_smem + stage * kTileQ * kWords;

      // S = Q K^T: ldmatrix.x4 gives the B fragments of n-tile n for k-steps 2kk2 and 2kk2+1.
      float s[kSN][4];
#pragma unroll
      for (int n = 0; n < kSN; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] = 0.f;
#pragma unroll
        for (int kk2 = 0; kk2 < kDK / 2; ++kk2) {
          uint32_t kb[4];
          const int key = n * 8 + (lane & 7);
          const int dim = (kk2 * 2 + (lane >> 4)) * 16 + ((lane >> 3) & 1) * 8;
          mma::ldmatrix_x4(kb, mma::smem_u32(ks + key * kStride + dim));
          mma::mma_m16n8k16<T>(s[n], qf[2 * kk2], kb[0], kb[1]);
          mma::mma_m16n8k16<T>(s[n], qf[2 * kk2 + 1], kb[2], kb[3]);
        }
      }

      // Scale to base 2 and mask (only tiles that reach the split end or the new positions).
      const bool need_mask = k0 + kTileKV > end || (mode != kMaskNone && k0 + kTileKV > prefix);
#pragma unroll
      for (int n = 0; n < kSN; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[n][e] * p.sm_scale_log2;
          if (need_mask) {
            const int c = n * 8 + tig * 2 + (e & 1);
            const int pos = k0 + c;
            const int i = qi[e >> 1];
            bool vis = pos < end;
            if (mode == kMaskCausal) {
              vis = vis && pos <= prefix + i;
            } else if (mode == kMaskCustom && pos >= prefix) {
              vis = vis && ((ms[(i - q_first) * kWords + (c >> 5)] >> (c & 31)) & 1u);
            }
            x = vis ? x : math::neg_inf();
          }
          s[n][e] = x;
        }
      }

      // Online softmax: row max over the quad that shares a row, rescale, P = exp2(S - ref).
      float ref[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float mx = math::neg_inf();
#pragma unroll
        for (int n = 0; n < kSN; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * i], s[n][2 * i + 1]));
        mx = fmaxf(mx, math::shfl_xor(mx, 1));
        mx = fmaxf(mx, math::shfl_xor(mx, 2));
        const float m_new = fmaxf(m_run[i], mx);
        ref[i] = math::softmax_ref(m_new);
        const float scale = math::ptx_exp2(m_run[i] - ref[i]);
        m_run[i] = m_new;
        l_run[i] *= scale;
#pragma unroll
        for (int n = 0; n < kDN; ++n) {
          o_acc[n][2 * i] *= scale;
          o_acc[n][2 * i + 1] *= scale;
        }
      }
      uint32_t pf[kPK][4];
#pragma unroll
      for (int n = 0; n < kSN; ++n) {
        const float p0 = math::ptx_exp2(s[n][0] - ref[0]);
        const float p1 = math::ptx_exp2(s[n][1] - ref[0]);
        const float p2 = math::ptx_exp2(s[n][2] - ref[1]);
        const float p3 = math::ptx_exp2(s[n][3] - ref[1]);
        l_run[0] += p0 + p1;
        l_run[1] += p2 + p3;
        // S n-tile n covers keys 8n..8n+7 = half (n & 1) of P's k-step n / 2.
        pf[n >> 1][(n & 1) * 2 + 0] = pack_float2<T>(p0, p1);
        pf[n >> 1][(n & 1) * 2 + 1] = pack_float2<T>(p2, p3);
      }

      // O += P V: ldmatrix.x4.trans gives the B fragments of d n-tiles 2n2 and 2n2+1.
#pragma unroll
      for (int kk = 0; kk < kPK; ++kk) {
#pragma unroll
        for (int n2 = 0; n2 < kDN / 2; ++n2) {
          uint32_t vb[4];
          const int key = kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
          const int dim = (n2 * 2 + (lane >> 4)) * 8;
          mma::ldmatrix_x4_trans(vb, mma::smem_u32(vs + key * kStride + dim));
          mma::mma_m16n8k16<T>(o_acc[2 * n2], pf[kk], vb[0], vb[1]);
          mma::mma_m16n8k16<T>(o_acc[2 * n2 + 1], pf[kk], vb[2], vb[3]);
        }
      }
      __syncthreads();  // this stage is overwritten by the copies issued next iteration
    }

    // Epilogue: finish the row sums over the quad, normalize, write rows of this request.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float l = l_run[i];
      l += math::shfl_xor(l, 1);
      l += math::shfl_xor(l, 2);
      if (rows[i] >= packed_rows) continue;
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int64_t pair = static_cast<int64_t>(q_begin + qi[i]) * p.num_qo_heads + qh[i];
      const float lse2 = l > 0.f ? m_run[i] + math::ptx_log2(l) : math::neg_inf();
      if (p.num_splits == 1) {
        T* dst = p.o + pair * HEAD_DIM + tig * 2;
#pragma unroll
        for (int n = 0; n < kDN; ++n) store2(dst + n * 8, o_acc[n][2 * i] * inv, o_acc[n][2 * i + 1] * inv);
        if (tig == 0 && p.lse != nullptr) p.lse[pair] = lse2 * math::kLn2;
      } else {
        const int64_t slice = static_cast<int64_t>(split) * p.total_q * p.num_qo_heads;
        float* dst = p.partial_o + (slice + pair) * HEAD_DIM + tig * 2;
#pragma unroll
        for (int n = 0; n < kDN; ++n) store2(dst + n * 8, o_acc[n][2 * i] * inv, o_acc[n][2 * i + 1] * inv);
        if (tig == 0) p.partial_lse[slice + pair] = lse2;
      }
    }
  }
}

// HEAD_DIM 64 or 128, or 0 for a head dim known at run time (p.head_dim <= kMaxRuntimeDim).
template <int HEAD_DIM>
struct PrefillSimtTraits {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRowsPerWarp = 4;
  static constexpr int kTileQ = kWarps * kRowsPerWarp;  // packed rows per CTA
  static constexpr int kTileKV = 32;                    // KV positions per tile (one per lane)
  static constexpr int kMaxRuntimeDim = 256;
  static constexpr int kDimsPerLane = (HEAD_DIM > 0 ? HEAD_DIM : kMaxRuntimeDim) / 32;  // at most
  static_assert(HEAD_DIM % 32 == 0, "a compile-time head dim must be a multiple of 32");
  // Dynamic smem: q [kTileQ][D], k [kTileKV][D + 1], v [kTileKV][D] as float.
  __host__ __device__ static constexpr size_t smem_bytes(int head_dim) {
    return sizeof(float) * (static_cast<size_t>(kTileQ) * head_dim +
                            static_cast<size_t>(kTileKV) * (head_dim + 1) +
                            static_cast<size_t>(kTileKV) * head_dim);
  }
};

// CUDA-core multi-query attention, any T: the path for float32, and for head dims other than
// 64 / 128 (HEAD_DIM = 0: the head dim p.head_dim is read at run time, any value up to 256).
// q [total_q, H_q, D], k/v cache [num_pages, page_size, H_kv, D] -> o [total_q, H_q, D] (or
// split partials). grid: (batch * num_splits, H_kv, q tiles), block: (128),
// dynamic smem: PrefillSimtTraits::smem_bytes(D).
// CTA (b, split, kv head, tile z) handles packed rows [16 z, 16 z + 16): their queries (float,
// pre-scaled) sit in smem; each KV tile of 32 positions is staged in smem as float. Warp w owns
// 4 rows; for each row lane j scores key j (dot over D against smem), the warp does the online
// softmax, then lane j accumulates dims j, j + 32, ... of P V.
template <typename T, int HEAD_DIM>
__global__ void __launch_bounds__(PrefillSimtTraits<HEAD_DIM>::kThreads)
    prefill_simt_kernel(const AttentionParams<T> p) {
  using Tr = PrefillSimtTraits<HEAD_DIM>;
  constexpr int kTileQ = Tr::kTileQ, kTileKV = Tr::kTileKV, RPW = Tr::kRowsPerWarp;
  constexpr int DPL = Tr::kDimsPerLane;
  const int head_dim = HEAD_DIM > 0 ? HEAD_DIM : p.head_dim;
  extern __shared__ float simt_smem[];
  float* q_s = simt_smem;                          // [kTileQ][head_dim]
  float* k_s = q_s + kTileQ * head_dim;            // [kTileKV][head_dim + 1]: lane j reading
  float* v_s = k_s + kTileKV * (head_dim + 1);     //   row j is conflict-free; v [kTileKV][head_dim]
  const int k_stride = head_dim + 1;

  const int b = blockIdx.x / p.num_splits;
  const int split = blockIdx.x - b * p.num_splits;
  const int kv_head = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = p.group_size;
  const int mode = p.mask_mode;

  const int q_begin = p.qo_indptr[b];
  const int qo_len = p.qo_indptr[b + 1] - q_begin;
  if (qo_len <= 0 || q_begin < 0 || q_begin + qo_len > p.total_q) return;
  const RequestKV req =
      load_request_kv(p.kv_indptr, p.kv_last_page_len, p.num_kv_indices, p.page_div.d, b);
  const int kv_len = req.kv_len;
  const int prefix = kv_len - qo_len;
  if (prefix < 0) return;
  const int packed_rows = qo_len * group;
  const int64_t mask_begin = mode == kMaskCustom ? p.mask_indptr[b] : 0;

  for (int tile = blockIdx.z; tile * kTileQ < packed_rows; tile += gridDim.z) {
    const int r0 = tile * kTileQ;
    const int q_last = min(qo_len - 1, (r0 + kTileQ - 1) / group);
    __syncthreads();  // the previous tile's readers of q_s are done
    for (int idx = threadIdx.x; idx < kTileQ * head_dim; idx += Tr::kThreads) {
      const int r = idx / head_dim, d = idx - r * head_dim;
      const int row = r0 + r;
      float x = 0.f;
      if (row < packed_rows) {
        const int i = row / group;
        const int h = kv_head * group + (row - i * group);
        x = to_float(p.q[(static_cast<int64_t>(q_begin + i) * p.num_qo_heads + h) * head_dim + d]) *
            p.sm_scale_log2;
      }
      q_s[idx] = x;
    }

    float m_run[RPW], l_run[RPW], acc[RPW][DPL];
#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {
      m_run[rr] = math::neg_inf();
      l_run[rr] = 0.f;
#pragma unroll
      for (int j = 0; j < DPL; ++j) acc[rr][j] = 0.f;
    }

    const int kv_hi = mode == kMaskCausal ? min(kv_len, prefix + q_last + 1) : kv_len;
    int begin, end;
    split_range(kv_hi, split, p.num_splits, p.split_chunk, begin, end);

    for (int k0 = begin; k0 < end; k0 += kTileKV) {
      __syncthreads();  // q_s written / the previous KV tile consumed
      for (int r = warp; r < kTileKV; r += Tr::kWarps) {
        const int pos = k0 + r;
        int64_t off = -1;
        if (pos < end) {
          off = paged_row_offset(p.kv_indices, req.page_begin, p.page_div, p.num_pages,
                                 p.num_kv_heads, head_dim, pos, kv_head);
        }
        for (int d = lane; d < head_dim; d += 32) {
          k_s[r * k_stride + d] = off >= 0 ? to_float(p.k_cache[off + d]) : 0.f;
          v_s[r * head_dim + d] = off >= 0 ? to_float(p.v_cache[off + d]) : 0.f;
        }
      }
      __syncthreads();

      const int pos = k0 + lane;
#pragma unroll
      for (int rr = 0; rr < RPW; ++rr) {
        const int lr = warp * RPW + rr;
        const int row = r0 + lr;
        if (row >= packed_rows) continue;  // warp-uniform
        const int i = row / group;
        const float* q_row = q_s + lr * head_dim;
        const float* k_row = k_s + lane * k_stride;
        float s = 0.f;
#pragma unroll 8
        for (int d = 0; d < head_dim; ++d) s = fmaf(q_row[d], k_row[d], s);
        bool vis = pos < end;
        if (mode == kMaskCausal) {
          vis = vis && pos <= prefix + i;
        } else if (mode == kMaskCustom && pos >= prefix) {
          vis = vis && custom_mask_bit(p, mask_begin, qo_len, i, pos - prefix);
        }
        s = vis ? s : math::neg_inf();
        const float m_new = fmaxf(m_run[rr], math::warp_max(s));
        const float ref = math::softmax_ref(m_new);
        const float scale = math::ptx_exp2(m_run[rr] - ref);
        const float pr = math::ptx_exp2(s - ref);
        m_run[rr] = m_new;
        l_run[rr] = l_run[rr] * scale + math::warp_sum(pr);
#pragma unroll
        for (int j = 0; j < DPL; ++j) acc[rr][j] *= scale;
#pragma unroll 8
        for (int key = 0; key < kTileKV; ++key) {
          const float pk = __shfl_sync(0xffffffffu, pr, key);
          const float* v_row = v_s + key * head_dim;
#pragma unroll
          for (int j = 0; j < DPL; ++j) {
            const int d = lane + 32 * j;
            if (HEAD_DIM > 0 || d < head_dim) acc[rr][j] = fmaf(pk, v_row[d], acc[rr][j]);
          }
        }
      }
    }

#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {
      const int row = r0 + warp * RPW + rr;
      if (row >= packed_rows) continue;
      const int i = row / group;
      const int h = kv_head * group + (row - i * group);
#pragma unroll
      for (int j = 0; j < DPL; ++j) {
        const int d = lane + 32 * j;
        if (HEAD_DIM == 0 && d >= head_dim) break;
        write_result(p, split, q_begin + i, h, d, &acc[rr][j], 1, m_run[rr], l_run[rr],
                     lane == 0 && j == 0, head_dim);
      }
    }
  }
}

}  // namespace leapdec
