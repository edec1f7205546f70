// CPU paged attention: ragged queries over a paged KV cache (reference.py::paged_attention).
//
// Work item = (request b, KV head g, block of the request's queries). The item's rows are
// its queries x the G = H_q/H_kv query heads that share KV head g, so every K/V row is read
// once per group. An item walks its pages directly, kTileKV positions at a time (float32
// cache rows are read in place, bf16/fp16 rows are widened once per tile), scores the tile
// for all rows, masks it, and folds it into a float32 online softmax. Two layouts:
//   few rows (decode):        rows in registers, a tile's positions along the vector lanes;
//   many rows (trees, blocks): rows along the vector lanes ([position][row] scores,
//                             [dim][row] accumulators), K/V elements broadcast.
// The loops are templates on the vector width W (simd.h), compiled for AVX-512, AVX2 and the
// baseline ISA; the best one for the CPU runs. Items are ordered by cost and pulled from a
// shared counter by at::parallel_for threads.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "ops.h"
#include "simd.h"

namespace leapdec {
namespace {

using simd::vf;

constexpr int64_t kTileKV = 32;           // KV positions per tile
constexpr int64_t kRowsPerItem = 64;      // target (query, head) rows per work item
constexpr int64_t kLaneRows = 16;         // from this many rows, rows go along the lanes
constexpr int64_t kSerialCost = 1 << 18;  // below this many multiply-adds, stay on one thread
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ================================================================ few rows: [row][position]

// s[r*kTileKV + j] = dot(q[r*d:], k[j][:d]) for all j < kTileKV (k[] holds kTileKV valid
// row pointers; scores past the tile's end are overwritten by the caller). W positions at a
// time, their horizontal sums done together.
template <int W>
LEAPDEC_SIMD_INLINE void scores_rows(const float* __restrict q, int64_t rows, int64_t d,
                                     const float* const* k, float* __restrict s) {
  const int64_t dv = d - d % W;
  for (int64_t r = 0; r < rows; ++r) {
    const float* qr = q + r * d;
    for (int64_t j0 = 0; j0 < kTileKV; j0 += W) {
      const float* const* kb = k + j0;
      vf<W> a[W];
#pragma GCC unroll 16
      for (int x = 0; x < W; ++x) a[x] = vf<W>{};
      for (int64_t c = 0; c < dv; c += W) {
        const vf<W> qv = simd::load<W>(qr + c);
#pragma GCC unroll 16
        for (int x = 0; x < W; ++x) a[x] += qv * simd::load<W>(kb[x] + c);
      }
      vf<W> dots = simd::hsum_many<W>(a);
      for (int64_t c = dv; c < d; ++c) {
        for (int x = 0; x < W; ++x) dots[x] += qr[c] * kb[x][c];
      }
      simd::store<W>(s + r * kTileKV + j0, dots);
    }
  }
}

// Online softmax over one tile: scores s[rows, kTileKV] (-inf where masked) become weights
// (in place); each row's accumulator o[r] and sum l[r] are rescaled to the new running max
// m[r]. A row that sees nothing in this tile gets zero weights.
template <int W>
LEAPDEC_SIMD_INLINE void softmax_rows(float* __restrict s, int64_t rows, int64_t d,
                                      float* __restrict m, float* __restrict l,
                                      float* __restrict o) {
  constexpr int kVecs = kTileKV / W;
  const int64_t dv = d - d % W;
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * kTileKV;
    vf<W> sv[kVecs];
    for (int x = 0; x < kVecs; ++x) sv[x] = simd::load<W>(sr + x * W);
    vf<W> mv = sv[0];
    for (int x = 1; x < kVecs; ++x) mv = simd::vmax<W>(mv, sv[x]);
    const float mx = simd::hmax<W>(mv);
    if (mx == kNegInf) {
      std::fill(sr, sr + kTileKV, 0.f);
      continue;
    }
    const float m_new = std::max(m[r], mx);
    vf<W> sum{};
    for (int x = 0; x < kVecs; ++x) {
      const vf<W> p = simd::exp_nonpos<W>(sv[x] - m_new);
      simd::store<W>(sr + x * W, p);
      sum += p;
    }
    if (m_new != m[r]) {
      const float alpha = m[r] == kNegInf ? 0.f : std::exp(m[r] - m_new);
      float* orow = o + r * d;
      for (int64_t c = 0; c < dv; c += W) simd::store<W>(orow + c, simd::load<W>(orow + c) * alpha);
      for (int64_t c = dv; c < d; ++c) orow[c] *= alpha;
      l[r] *= alpha;
      m[r] = m_new;
    }
    l[r] += simd::hsum<W>(sum);
  }
}

// o[r*d + c + W*x] += sum_{j<n} p[r*kTileKV + j] * v[j][c + W*x] for NR rows from r0 and NC
// vectors from c: NR*NC independent accumulators, each V load shared by NR rows.
template <int W, int NR, int NC>
LEAPDEC_SIMD_INLINE void accumulate_rows_block(const float* __restrict p, int64_t n,
                                               const float* const* v, int64_t d,
                                               float* __restrict o, int64_t r0, int64_t c) {
  vf<W> a[NR][NC];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
#pragma GCC unroll 8
    for (int x = 0; x < NC; ++x) a[r][x] = simd::load<W>(o + (r0 + r) * d + c + x * W);
  }
  for (int64_t j = 0; j < n; ++j) {
    const float* vj = v[j] + c;
#pragma GCC unroll 8
    for (int x = 0; x < NC; ++x) {
      const vf<W> vv = simd::load<W>(vj + x * W);
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) a[r][x] += p[(r0 + r) * kTileKV + j] * vv;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
#pragma GCC unroll 8
    for (int x = 0; x < NC; ++x) simd::store<W>(o + (r0 + r) * d + c + x * W, a[r][x]);
  }
}

// o[r*d:] += sum_{j<n} p[r*kTileKV + j] * v[j][:d].
template <int W>
LEAPDEC_SIMD_INLINE void accumulate_rows(const float* __restrict p, int64_t rows, int64_t n,
                                         const float* const* v, int64_t d, float* __restrict o) {
  const int64_t dv = d - d % W;
  int64_t r0 = 0;
  for (; r0 + 4 <= rows; r0 += 4) {
    int64_t c = 0;
    for (; c + 2 * W <= dv; c += 2 * W) accumulate_rows_block<W, 4, 2>(p, n, v, d, o, r0, c);
    for (; c < dv; c += W) accumulate_rows_block<W, 4, 1>(p, n, v, d, o, r0, c);
  }
  for (; r0 < rows; ++r0) {
    int64_t c = 0;
    for (; c + 8 * W <= dv; c += 8 * W) accumulate_rows_block<W, 1, 8>(p, n, v, d, o, r0, c);
    for (; c + 4 * W <= dv; c += 4 * W) accumulate_rows_block<W, 1, 4>(p, n, v, d, o, r0, c);
    for (; c < dv; c += W) accumulate_rows_block<W, 1, 1>(p, n, v, d, o, r0, c);
  }
  for (int64_t r = 0; r < rows; ++r) {  // dims past the last full vector
    for (int64_t c = dv; c < d; ++c) {
      float acc = o[r * d + c];
      for (int64_t j = 0; j < n; ++j) acc += p[r * kTileKV + j] * v[j][c];
      o[r * d + c] = acc;
    }
  }
}

// ================================================================ many rows: rows in lanes
// R = rows rounded up to W. qt[c*R + r] = q[r][c]; st[j*R + r] = score of row r at position
// j; ot[c*R + r] = accumulator of row r, dim c.

// Row vectors per register block: 4 positions (or dims) x kBlockVecs vectors of accumulators.
template <int W>
constexpr int kBlockVecs = W == 16 ? 4 : 2;

// st[j*R + rv0 + W*v + lane] for j < n, the NV row vectors from rv0; four positions at once.
template <int W, int NV>
LEAPDEC_SIMD_INLINE void scores_lanes_block(const float* __restrict qt, int64_t R, int64_t d,
                                            const float* const* k, int64_t n,
                                            float* __restrict st, int64_t rv0) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const float *k0 = k[j], *k1 = k[j + 1], *k2 = k[j + 2], *k3 = k[j + 3];
    vf<W> a0[NV] = {}, a1[NV] = {}, a2[NV] = {}, a3[NV] = {};
    for (int64_t c = 0; c < d; ++c) {
      const float* qc = qt + c * R + rv0;
      const float b0 = k0[c], b1 = k1[c], b2 = k2[c], b3 = k3[c];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const vf<W> qv = simd::load<W>(qc + v * W);
        a0[v] += b0 * qv;
        a1[v] += b1 * qv;
        a2[v] += b2 * qv;
        a3[v] += b3 * qv;
      }
    }
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      simd::store<W>(st + j * R + rv0 + v * W, a0[v]);
      simd::store<W>(st + (j + 1) * R + rv0 + v * W, a1[v]);
      simd::store<W>(st + (j + 2) * R + rv0 + v * W, a2[v]);
      simd::store<W>(st + (j + 3) * R + rv0 + v * W, a3[v]);
    }
  }
  for (; j < n; ++j) {
    const float* kj = k[j];
    vf<W> a[NV] = {};
    for (int64_t c = 0; c < d; ++c) {
      const float b = kj[c];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) a[v] += b * simd::load<W>(qt + c * R + rv0 + v * W);
    }
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) simd::store<W>(st + j * R + rv0 + v * W, a[v]);
  }
}

template <int W>
LEAPDEC_SIMD_INLINE void scores_lanes(const float* __restrict qt, int64_t R, int64_t d,
                                      const float* const* k, int64_t n, float* __restrict st) {
  constexpr int B = kBlockVecs<W>;
  int64_t rv0 = 0;
  for (; rv0 + B * W <= R; rv0 += B * W) scores_lanes_block<W, B>(qt, R, d, k, n, st, rv0);
  for (; rv0 < R; rv0 += W) scores_lanes_block<W, 1>(qt, R, d, k, n, st, rv0);
}

// Online softmax over one tile in the lanes layout (see softmax_rows): st[kTileKV, R] ->
// weights, m, l [R] updated, ot [d, R] rescaled. A row that has seen nothing keeps m = -inf,
// l = 0.
template <int W>
LEAPDEC_SIMD_INLINE void softmax_lanes(float* __restrict st, int64_t R, int64_t d,
                                       float* __restrict m, float* __restrict l,
                                       float* __restrict ot) {
  const vf<W> neg_inf = simd::splat<W>(kNegInf);
  for (int64_t v0 = 0; v0 < R; v0 += W) {
    vf<W> mx = simd::load<W>(st + v0);
    for (int64_t j = 1; j < kTileKV; ++j) mx = simd::vmax<W>(mx, simd::load<W>(st + j * R + v0));
    const vf<W> m_old = simd::load<W>(m + v0);
    const vf<W> m_new = simd::vmax<W>(m_old, mx);
    const vf<W> m_use = m_new == neg_inf ? vf<W>{} : m_new;  // no -inf - -inf
    const vf<W> alpha = simd::exp_nonpos<W>(m_old - m_use);
    vf<W> sum{};
    for (int64_t j = 0; j < kTileKV; ++j) {
      const vf<W> p = simd::exp_nonpos<W>(simd::load<W>(st + j * R + v0) - m_use);
      simd::store<W>(st + j * R + v0, p);
      sum += p;
    }
    simd::store<W>(l + v0, simd::load<W>(l + v0) * alpha + sum);
    simd::store<W>(m + v0, m_new);
    for (int64_t c = 0; c < d; ++c) {
      simd::store<W>(ot + c * R + v0, simd::load<W>(ot + c * R + v0) * alpha);
    }
  }
}

// ot[c*R + rv0 + W*v + lane] += sum_{j<n} st[j*R + ...] * v[j][c]; four dims at once.
template <int W, int NV>
LEAPDEC_SIMD_INLINE void accumulate_lanes_block(const float* __restrict st, int64_t R, int64_t n,
                                                const float* const* vr, int64_t d,
                                                float* __restrict ot, int64_t rv0) {
  int64_t c = 0;
  for (; c + 4 <= d; c += 4) {
    vf<W> a0[NV], a1[NV], a2[NV], a3[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      a0[v] = simd::load<W>(ot + c * R + rv0 + v * W);
      a1[v] = simd::load<W>(ot + (c + 1) * R + rv0 + v * W);
      a2[v] = simd::load<W>(ot + (c + 2) * R + rv0 + v * W);
      a3[v] = simd::load<W>(ot + (c + 3) * R + rv0 + v * W);
    }
    for (int64_t j = 0; j < n; ++j) {
      const float* vj = vr[j] + c;
      const float b0 = vj[0], b1 = vj[1], b2 = vj[2], b3 = vj[3];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const vf<W> pv = simd::load<W>(st + j * R + rv0 + v * W);
        a0[v] += b0 * pv;
        a1[v] += b1 * pv;
        a2[v] += b2 * pv;
        a3[v] += b3 * pv;
      }
    }
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      simd::store<W>(ot + c * R + rv0 + v * W, a0[v]);
      simd::store<W>(ot + (c + 1) * R + rv0 + v * W, a1[v]);
      simd::store<W>(ot + (c + 2) * R + rv0 + v * W, a2[v]);
      simd::store<W>(ot + (c + 3) * R + rv0 + v * W, a3[v]);
    }
  }
  for (; c < d; ++c) {
    vf<W> a[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) a[v] = simd::load<W>(ot + c * R + rv0 + v * W);
    for (int64_t j = 0; j < n; ++j) {
      const float b = vr[j][c];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) a[v] += b * simd::load<W>(st + j * R + rv0 + v * W);
    }
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) simd::store<W>(ot + c * R + rv0 + v * W, a[v]);
  }
}

template <int W>
LEAPDEC_SIMD_INLINE void accumulate_lanes(const float* __restrict st, int64_t R, int64_t n,
                                          const float* const* vr, int64_t d,
                                          float* __restrict ot) {
  constexpr int B = kBlockVecs<W>;
  int64_t rv0 = 0;
  for (; rv0 + B * W <= R; rv0 += B * W) accumulate_lanes_block<W, B>(st, R, n, vr, d, ot, rv0);
  for (; rv0 < R; rv0 += W) accumulate_lanes_block<W, 1>(st, R, n, vr, d, ot, rv0);
}

// ================================================================ element conversion

inline float to_float(float x) { return x; }
inline float to_float(c10::Half x) { return static_cast<float>(x); }
inline float to_float(c10::BFloat16 x) { return static_cast<float>(x); }

// ================================================================ work items

struct Problem {
  const int* qo_indptr;
  const int* kv_indptr;
  const int* kv_indices;
  const int* last_page_len;
  const bool* custom_mask;  // null unless mask_mode == custom
  const int* mask_indptr;
  int64_t page_size, h_q, h_kv, group, d;
  MaskMode mode;
  float sm_scale;
};

struct WorkItem {
  int32_t b, g, i0, i1;  // request, KV head, queries [i0, i1) of the request
  int64_t cost;          // multiply-adds, for scheduling
};

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Per-thread float32 scratch for items of up to max_rows rows (both layouts, any W <= 16).
struct Scratch {
  std::vector<float> q, s, o, m, l, kf, vf;
  std::vector<const float*> k_rows, v_rows;
  Scratch(int64_t max_rows, int64_t d)
      : q(round_up(max_rows, 16) * d), s(round_up(max_rows, 16) * kTileKV),
        o(round_up(max_rows, 16) * d), m(round_up(max_rows, 16)), l(round_up(max_rows, 16)),
        kf(kTileKV * d), vf(kTileKV * d), k_rows(kTileKV), v_rows(kTileKV) {}
};

inline int64_t kv_length(const Problem& pb, int64_t b) {
  const int64_t n_pages = pb.kv_indptr[b + 1] - pb.kv_indptr[b];
  return n_pages == 0 ? 0 : pb.page_size * (n_pages - 1) + pb.last_page_len[b];
}

// Float32 views of the K (or V) rows of positions [t0, t0+n) of request b, KV head g, read
// through the page table: float32 rows in place, other dtypes widened into buf.
template <int W, typename T>
LEAPDEC_SIMD_INLINE void tile_rows(const Problem& pb, const T* cache, int64_t b, int64_t g,
                                   int64_t t0, int64_t n, float* buf, const float** out) {
  const int* pages = pb.kv_indices + pb.kv_indptr[b];
  const T* raw[kTileKV];
  int64_t page_slot = t0 / pb.page_size, off = t0 % pb.page_size;
  for (int64_t j = 0; j < n; ++j) {
    raw[j] = cache + ((pages[page_slot] * pb.page_size + off) * pb.h_kv + g) * pb.d;
    if (++off == pb.page_size) {
      off = 0;
      ++page_slot;
    }
  }
  if constexpr (std::is_same_v<T, float>) {
    std::copy(raw, raw + n, out);
    (void)buf;
  } else {
    const int64_t d = pb.d, dv = d - d % W;
    for (int64_t j = 0; j < n; ++j) {
      float* dst = buf + j * d;
      if constexpr (std::is_same_v<T, c10::BFloat16>) {
        const uint16_t* src = reinterpret_cast<const uint16_t*>(raw[j]);
        for (int64_t c = 0; c < dv; c += W) simd::store<W>(dst + c, simd::load_bf16<W>(src + c));
        for (int64_t c = dv; c < d; ++c) dst[c] = to_float(raw[j][c]);
      } else {
        for (int64_t c = 0; c < d; ++c) dst[c] = to_float(raw[j][c]);
      }
      out[j] = dst;
    }
  }
}

// Geometry of one item, shared by both layouts.
struct ItemView {
  int64_t q0, qo_len, kv_len, prefix, rows, kv_end;
  const bool* mask;  // the request's [qo_len, qo_len] custom mask, or null
};

inline ItemView view_of(const Problem& pb, const WorkItem& w) {
  ItemView it;
  it.q0 = pb.qo_indptr[w.b];
  it.qo_len = pb.qo_indptr[w.b + 1] - it.q0;
  it.kv_len = kv_length(pb, w.b);
  it.prefix = it.kv_len - it.qo_len;
  it.rows = static_cast<int64_t>(w.i1 - w.i0) * pb.group;
  // Causal: the block's last query sees positions <= prefix + i1 - 1.
  it.kv_end = pb.mode == MaskMode::kCausal ? it.prefix + w.i1 : it.kv_len;
  it.mask = pb.mode == MaskMode::kCustom ? pb.custom_mask + pb.mask_indptr[w.b] : nullptr;
  return it;
}

// Row r of an item is query i0 + r / group, query head g*group + r % group: a query's heads
// are adjacent in q, so its rows are one contiguous [group, d] slice of q and out.
template <typename T>
void write_row(const Problem& pb, const WorkItem& w, const ItemView& it, int64_t r,
               const float* acc, int64_t stride, float m, float l, T* out, float* lse) {
  const int64_t qi = it.q0 + w.i0 + r / pb.group;
  const int64_t h = w.g * pb.group + r % pb.group;
  T* dst = out + (qi * pb.h_q + h) * pb.d;
  const float inv = l > 0.f ? 1.f / l : 0.f;  // l == 0: the query sees nothing
  for (int64_t c = 0; c < pb.d; ++c) dst[c] = static_cast<T>(acc[c * stride] * inv);
  if (lse != nullptr) lse[qi * pb.h_q + h] = l > 0.f ? m + std::log(l) : kNegInf;
}

// Few rows: rows in registers, positions along the lanes.
template <int W, typename T>
LEAPDEC_SIMD_INLINE void run_item_rows(const Problem& pb, const WorkItem& w, const T* q, const T* k_cache,
                   const T* v_cache, T* out, float* lse, Scratch& sc) {
  const ItemView it = view_of(pb, w);
  const int64_t d = pb.d, rows = it.rows;
  float *qf = sc.q.data(), *s = sc.s.data(), *o = sc.o.data(), *m = sc.m.data(), *l = sc.l.data();
  const T* qsrc = q + ((it.q0 + w.i0) * pb.h_q + w.g * pb.group) * d;
  for (int64_t r = 0; r < rows; ++r) {
    const T* src = qsrc + ((r / pb.group) * pb.h_q + r % pb.group) * d;
    for (int64_t c = 0; c < d; ++c) qf[r * d + c] = to_float(src[c]) * pb.sm_scale;
  }
  std::fill(m, m + rows, kNegInf);
  std::fill(l, l + rows, 0.f);
  std::fill(o, o + rows * d, 0.f);
  for (int64_t t0 = 0; t0 < it.kv_end; t0 += kTileKV) {
    const int64_t n = std::min(kTileKV, it.kv_end - t0);
    tile_rows<W>(pb, k_cache, w.b, w.g, t0, n, sc.kf.data(), sc.k_rows.data());
    std::fill(sc.k_rows.begin() + n, sc.k_rows.end(), sc.k_rows[0]);  // pad to a full tile
    scores_rows<W>(qf, rows, d, sc.k_rows.data(), s);
    const int64_t j_new = std::max<int64_t>(0, it.prefix - t0);  // the prefix is never masked
    for (int64_t r = 0; r < rows; ++r) {
      float* sr = s + r * kTileKV;
      const int64_t i = w.i0 + r / pb.group;
      if (pb.mode == MaskMode::kCausal) {  // query i sees positions <= prefix + i
        std::fill(sr + std::clamp<int64_t>(it.prefix + i + 1 - t0, 0, n), sr + kTileKV, kNegInf);
        continue;
      }
      std::fill(sr + n, sr + kTileKV, kNegInf);
      if (pb.mode == MaskMode::kCustom) {
        const bool* mrow = it.mask + i * it.qo_len;  // indexed by position - prefix
        for (int64_t j = j_new; j < n; ++j) {
          if (!mrow[t0 + j - it.prefix]) sr[j] = kNegInf;
        }
      }
    }
    softmax_rows<W>(s, rows, d, m, l, o);
    tile_rows<W>(pb, v_cache, w.b, w.g, t0, n, sc.vf.data(), sc.v_rows.data());
    accumulate_rows<W>(s, rows, n, sc.v_rows.data(), d, o);
  }
  for (int64_t r = 0; r < rows; ++r) write_row(pb, w, it, r, o + r * d, 1, m[r], l[r], out, lse);
}

// Many rows: rows along the lanes (R = rows rounded up; padded rows have q = 0 and are dropped).
template <int W, typename T>
LEAPDEC_SIMD_INLINE void run_item_lanes(const Problem& pb, const WorkItem& w, const T* q, const T* k_cache,
                    const T* v_cache, T* out, float* lse, Scratch& sc) {
  const ItemView it = view_of(pb, w);
  const int64_t d = pb.d, rows = it.rows, R = round_up(rows, W);
  float *qt = sc.q.data(), *st = sc.s.data(), *ot = sc.o.data(), *m = sc.m.data(), *l = sc.l.data();
  const T* qsrc = q + ((it.q0 + w.i0) * pb.h_q + w.g * pb.group) * d;
  std::fill(qt, qt + d * R, 0.f);
  for (int64_t r = 0; r < rows; ++r) {
    const T* src = qsrc + ((r / pb.group) * pb.h_q + r % pb.group) * d;
    for (int64_t c = 0; c < d; ++c) qt[c * R + r] = to_float(src[c]) * pb.sm_scale;
  }
  std::fill(m, m + R, kNegInf);
  std::fill(l, l + R, 0.f);
  std::fill(ot, ot + d * R, 0.f);
  for (int64_t t0 = 0; t0 < it.kv_end; t0 += kTileKV) {
    const int64_t n = std::min(kTileKV, it.kv_end - t0);
    tile_rows<W>(pb, k_cache, w.b, w.g, t0, n, sc.kf.data(), sc.k_rows.data());
    scores_lanes<W>(qt, R, d, sc.k_rows.data(), n, st);
    std::fill(st + n * R, st + kTileKV * R, kNegInf);
    if (pb.mode == MaskMode::kCausal) {
      // Position pos > prefix + i0 is hidden from the rows of queries i < pos - prefix.
      for (int64_t j = std::max<int64_t>(0, it.prefix + w.i0 + 1 - t0); j < n; ++j) {
        const int64_t hidden = std::min(rows, (t0 + j - it.prefix - w.i0) * pb.group);
        std::fill(st + j * R, st + j * R + hidden, kNegInf);
      }
    } else if (pb.mode == MaskMode::kCustom) {
      for (int64_t j = std::max<int64_t>(0, it.prefix - t0); j < n; ++j) {
        const bool* mcol = it.mask + (t0 + j - it.prefix);  // + i * qo_len
        float* sj = st + j * R;
        for (int64_t r = 0; r < rows; ++r) {
          if (!mcol[(w.i0 + r / pb.group) * it.qo_len]) sj[r] = kNegInf;
        }
      }
    }
    softmax_lanes<W>(st, R, d, m, l, ot);
    tile_rows<W>(pb, v_cache, w.b, w.g, t0, n, sc.vf.data(), sc.v_rows.data());
    accumulate_lanes<W>(st, R, n, sc.v_rows.data(), d, ot);
  }
  for (int64_t r = 0; r < rows; ++r) write_row(pb, w, it, r, ot + r, R, m[r], l[r], out, lse);
}

template <int W, typename T>
LEAPDEC_SIMD_INLINE void run_item_w(const Problem& pb, const WorkItem& w, const T* q,
                                    const T* k_cache, const T* v_cache, T* out, float* lse,
                                    Scratch& sc) {
  if ((w.i1 - w.i0) * pb.group >= kLaneRows) {
    run_item_lanes<W>(pb, w, q, k_cache, v_cache, out, lse, sc);
  } else {
    run_item_rows<W>(pb, w, q, k_cache, v_cache, out, lse, sc);
  }
}

// One work item, compiled per ISA.
template <typename T>
using RunItemFn = void (*)(const Problem&, const WorkItem&, const T*, const T*, const T*, T*,
                           float*, Scratch&);

template <typename T>
void run_item_base(const Problem& pb, const WorkItem& w, const T* q, const T* k_cache,
                   const T* v_cache, T* out, float* lse, Scratch& sc) {
  run_item_w<4>(pb, w, q, k_cache, v_cache, out, lse, sc);
}

#ifdef LEAPDEC_SIMD_X86
template <typename T>
LEAPDEC_TARGET_AVX2 void run_item_avx2(const Problem& pb, const WorkItem& w, const T* q,
                                       const T* k_cache, const T* v_cache, T* out, float* lse,
                                       Scratch& sc) {
  run_item_w<8>(pb, w, q, k_cache, v_cache, out, lse, sc);
}

template <typename T>
LEAPDEC_TARGET_AVX512 void run_item_avx512(const Problem& pb, const WorkItem& w, const T* q,
                                           const T* k_cache, const T* v_cache, T* out,
                                           float* lse, Scratch& sc) {
  run_item_w<16>(pb, w, q, k_cache, v_cache, out, lse, sc);
}
#endif

template <typename T>
RunItemFn<T> run_item_for_cpu() {
#ifdef LEAPDEC_SIMD_X86
  switch (simd::best_isa()) {
    case simd::Isa::kAvx512: return &run_item_avx512<T>;
    case simd::Isa::kAvx2: return &run_item_avx2<T>;
    case simd::Isa::kBase: break;
  }
#endif
  return &run_item_base<T>;
}

template <typename T>
void paged_attention_impl(const Problem& pb, int64_t batch, T* out, float* lse, const T* q,
                          const T* k_cache, const T* v_cache) {
  // Queries per item: enough rows to reuse each K/V row, few enough that causal blocks skip
  // the positions their queries cannot see.
  const int64_t q_block = std::max<int64_t>(1, kRowsPerItem / pb.group);
  std::vector<WorkItem> items;
  int64_t total_cost = 0, max_qo_len = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t qo_len = pb.qo_indptr[b + 1] - pb.qo_indptr[b];
    if (qo_len == 0) continue;
    max_qo_len = std::max(max_qo_len, qo_len);
    const int64_t kv_len = kv_length(pb, b);
    for (int64_t i0 = 0; i0 < qo_len; i0 += q_block) {
      const int64_t i1 = std::min(qo_len, i0 + q_block);
      const int64_t seen = pb.mode == MaskMode::kCausal ? kv_len - qo_len + i1 : kv_len;
      const int64_t cost = (i1 - i0) * pb.group * seen * pb.d;
      for (int64_t g = 0; g < pb.h_kv; ++g) {
        items.push_back({static_cast<int32_t>(b), static_cast<int32_t>(g),
                         static_cast<int32_t>(i0), static_cast<int32_t>(i1), cost});
        total_cost += cost;
      }
    }
  }
  if (items.empty()) return;
  const RunItemFn<T> run_item = run_item_for_cpu<T>();
  const int64_t max_rows = std::min(q_block, max_qo_len) * pb.group;

  const int64_t threads = std::min<int64_t>(at::get_num_threads(), items.size());
  if (threads <= 1 || total_cost < kSerialCost) {
    Scratch sc(max_rows, pb.d);
    for (const auto& w : items) run_item(pb, w, q, k_cache, v_cache, out, lse, sc);
    return;
  }
  // Largest items first, handed out one at a time: ragged batches stay balanced.
  std::stable_sort(items.begin(), items.end(),
                   [](const WorkItem& a, const WorkItem& c) { return a.cost > c.cost; });
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    Scratch sc(max_rows, pb.d);
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t k = next.fetch_add(1); k < static_cast<int64_t>(items.size());
           k = next.fetch_add(1)) {
        run_item(pb, items[k], q, k_cache, v_cache, out, lse, sc);
      }
    }
  });
}

}  // namespace

void paged_attention_cpu(at::Tensor& out, const std::optional<at::Tensor>& lse, const at::Tensor& q,
                         const at::Tensor& k_cache, const at::Tensor& v_cache,
                         const at::Tensor& qo_indptr, const at::Tensor& kv_indptr,
                         const at::Tensor& kv_indices, const at::Tensor& kv_last_page_len,
                         const std::string& mask_mode, const std::optional<at::Tensor>& custom_mask,
                         const std::optional<at::Tensor>& mask_indptr, double sm_scale,
                         int64_t max_qo_len, int64_t max_kv_len,
                         const std::optional<at::Tensor>& workspace) {
  (void)max_qo_len;  // size hints for the CUDA grid; the CPU kernel reads the index tensors
  (void)max_kv_len;
  (void)workspace;
  const int mode = check_paged_attention_args(out, lse, q, k_cache, v_cache, qo_indptr, kv_indptr,
                                              kv_indices, kv_last_page_len, mask_mode,
                                              custom_mask, mask_indptr);
  TORCH_CHECK(q.device().is_cpu(), "paged_attention_cpu: q must be a CPU tensor, got ", q.device());
  const int64_t num_pages = k_cache.size(0), page_size = k_cache.size(1);
  check_paged_indices_values(qo_indptr, kv_indptr, kv_indices, kv_last_page_len, num_pages,
                             page_size, q.size(0), custom_mask, mask_indptr);

  Problem pb;
  pb.qo_indptr = qo_indptr.data_ptr<int>();
  pb.kv_indptr = kv_indptr.data_ptr<int>();
  pb.kv_indices = kv_indices.data_ptr<int>();
  pb.last_page_len = kv_last_page_len.data_ptr<int>();
  pb.mode = static_cast<MaskMode>(mode);
  pb.custom_mask = pb.mode == MaskMode::kCustom ? custom_mask->data_ptr<bool>() : nullptr;
  pb.mask_indptr = pb.mode == MaskMode::kCustom ? mask_indptr->data_ptr<int>() : nullptr;
  pb.page_size = page_size;
  pb.h_q = q.size(1);
  pb.h_kv = k_cache.size(2);
  pb.group = pb.h_q / pb.h_kv;
  pb.d = q.size(2);
  pb.sm_scale = static_cast<float>(sm_scale);
  const int64_t batch = kv_last_page_len.size(0);
  float* lse_ptr = lse.has_value() ? lse->data_ptr<float>() : nullptr;

  switch (q.scalar_type()) {
    case at::kFloat:
      paged_attention_impl<float>(pb, batch, out.data_ptr<float>(), lse_ptr, q.data_ptr<float>(),
                                  k_cache.data_ptr<float>(), v_cache.data_ptr<float>());
      break;
    case at::kBFloat16:
      paged_attention_impl<c10::BFloat16>(pb, batch, out.data_ptr<c10::BFloat16>(), lse_ptr,
                                          q.data_ptr<c10::BFloat16>(),
                                          k_cache.data_ptr<c10::BFloat16>(),
                                          v_cache.data_ptr<c10::BFloat16>());
      break;
    case at::kHalf:
      paged_attention_impl<c10::Half>(pb, batch, out.data_ptr<c10::Half>(), lse_ptr,
                                      q.data_ptr<c10::Half>(), k_cache.data_ptr<c10::Half>(),
                                      v_cache.data_ptr<c10::Half>());
      break;
    default:
      TORCH_CHECK(false, "paged_attention: unsupported dtype ", q.scalar_type());
  }
}

}  // namespace leapdec
