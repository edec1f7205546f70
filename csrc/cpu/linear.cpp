// CPU linear (reference.py): out[M, N] = x[M, K] @ weight[N, K]^T (+ bias[N]) for the few rows
// a decode, verify or draft step has. A one-row step streams the weights once and is memory
// bound: the kernel reads each weight row once per tile of W/4 x rows, widens 16-bit weights
// (bf16, fp16) to float32 in registers, and accumulates in float32. torch's sgemm, by
// contrast, costs 1.8x its one-row time for two rows on a 2-core AVX2 VM, and its one-row GEMV
// uses one thread. Weights come plain [N, K] or packed in 8-row tiles (read sequentially). One
// parallel task per block of weight rows / tiles. Meaning: python/leapdec/reference.py::linear.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "ops.h"
#include "simd.h"

namespace leapdec {
namespace {

using simd::vf;

constexpr int kRows = 4;                         // weight rows per tile (several x rows)
constexpr int64_t kBlock = 16;                   // weight rows per unit of parallel work
constexpr int64_t kTaskElems = 1 << 15;          // weight elements per parallel task (at least)
// Packed 16-bit weights are widened into an L1 buffer once per chunk only above this many x rows:
// below it, widening each row's loads again (2 instructions per vector) is cheaper than the store
// and reload (bf16 SmolLM2 step: 2 rows cost 1.41 one-row steps with the buffer, 1.27 without).
constexpr int64_t kWidenMinRows = 4;

// W weights at p widened to float32.
template <int W>
LEAPDEC_SIMD_INLINE vf<W> load_w(const float* p) {
  return simd::load<W>(p);
}
template <int W>
LEAPDEC_SIMD_INLINE vf<W> load_w(const c10::BFloat16* p) {
  return simd::load_bf16<W>(reinterpret_cast<const uint16_t*>(p));
}
template <int W>
LEAPDEC_SIMD_INLINE vf<W> load_w(const c10::Half* p) {
#ifdef LEAPDEC_SIMD_X86
  if constexpr (W == 8) return simd::load_f16x8(reinterpret_cast<const uint16_t*>(p));
  if constexpr (W == 16) return simd::load_f16x16(reinterpret_cast<const uint16_t*>(p));
#endif
  float tmp[W];
  for (int i = 0; i < W; ++i) tmp[i] = static_cast<float>(p[i]);
  return simd::load<W>(tmp);
}

// One tile: R weight rows (wr[R], widened from T) against MT x rows from xr (row stride k),
// over columns [c0, c1) (a multiple of W long); acc[m * R + r] += the lane-wise products.
template <int W, int R, int MT, typename T>
LEAPDEC_SIMD_INLINE void tile_dots(const float* xr, int64_t k, const T* const* wr, int64_t c0,
                                   int64_t c1, vf<W>* acc) {
  for (int64_t c = c0; c < c1; c += W) {
    vf<W> wv[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) wv[r] = load_w<W>(wr[r] + c);
#pragma GCC unroll 16
    for (int m = 0; m < MT; ++m) {
      const vf<W> xv = simd::load<W>(xr + m * k + c);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) acc[m * R + r] += wv[r] * xv;
    }
  }
}

// Rows [n0, n1) of y[Mp, N] (float32) for x[Mp, K] float32 (Mp a multiple of MT, padded rows
// zero) and weight rows of type T. Each tile is R weight rows x MT x rows with R * MT = W, so its
// W dot products reduce with one hsum_many. With several x tiles, 16-bit weights are widened
// once per chunk of kChunk columns into a float32 buffer (in L1) that every x tile then reads.
template <int W, int R, typename T>
LEAPDEC_SIMD_INLINE void linear_rows(const float* x, const T* w, float* y, int64_t mp, int64_t n,
                                     int64_t k, int64_t n0, int64_t n1) {
  constexpr int MT = W / R;
  constexpr int64_t kChunk = 512;
  const int64_t kv = k - k % W;
  const bool widen = !std::is_same_v<T, float> && mp > MT;
  alignas(64) float buf[R * kChunk];
  for (int64_t r0 = n0; r0 < n1; r0 += R) {
    const T* wr[R];
    for (int r = 0; r < R; ++r) wr[r] = w + std::min<int64_t>(r0 + r, n - 1) * k;  // clamp the tail
    // Column tails (k % W) by scalar products.
    for (int64_t m = 0; m < mp; ++m) {
      for (int r = 0; r < R && r0 + r < n1; ++r) {
        float s = 0.0f;
        for (int64_t c = kv; c < k; ++c) s += static_cast<float>(wr[r][c]) * x[m * k + c];
        y[m * n + r0 + r] = s;
      }
    }
    const int64_t chunk = widen ? kChunk : std::max<int64_t>(kv, 1);
    for (int64_t c0 = 0; c0 < kv; c0 += chunk) {
      const int64_t c1 = std::min(kv, c0 + chunk);
      const float* fr[R];
      if (widen) {
        for (int r = 0; r < R; ++r) {
          for (int64_t c = c0; c < c1; c += W) simd::store<W>(buf + r * kChunk + (c - c0), load_w<W>(wr[r] + c));
          fr[r] = buf + r * kChunk - c0;
        }
      }
      for (int64_t m0 = 0; m0 < mp; m0 += MT) {
        vf<W> acc[W];
        for (int a = 0; a < W; ++a) acc[a] = simd::splat<W>(0.0f);
        if (widen) {
          tile_dots<W, R, MT>(x + m0 * k, k, fr, c0, c1, acc);
        } else {
          tile_dots<W, R, MT>(x + m0 * k, k, wr, c0, c1, acc);
        }
        const vf<W> dots = simd::hsum_many<W>(acc);  // lane m * R + r
        for (int m = 0; m < MT; ++m) {
          for (int r = 0; r < R && r0 + r < n1; ++r) y[(m0 + m) * n + r0 + r] += dots[m * R + r];
        }
      }
    }
  }
}

// The kernel for one ISA: one x row uses W weight rows per tile, two x rows W / 2 (AVX-512:
// not padded to a 4-row tile, whose dead half cost a 4096 x 192 float32 LM head 1.8x its one-row
// time for two rows), more use kRows.
template <int W, typename T>
LEAPDEC_SIMD_INLINE void linear_rows_any(const float* x, const T* w, float* y, int64_t mp,
                                         int64_t n, int64_t k, int64_t n0, int64_t n1) {
  if (mp == 1) {
    linear_rows<W, W>(x, w, y, mp, n, k, n0, n1);
  } else if (mp == 2 && W / 2 > kRows) {
    linear_rows<W, W / 2>(x, w, y, mp, n, k, n0, n1);
  } else {
    linear_rows<W, kRows>(x, w, y, mp, n, k, n0, n1);
  }
}

template <typename T>
using RowsFn = void (*)(const float*, const T*, float*, int64_t, int64_t, int64_t, int64_t, int64_t);

template <typename T>
void rows_base(const float* x, const T* w, float* y, int64_t mp, int64_t n, int64_t k, int64_t n0,
               int64_t n1) {
  linear_rows_any<4>(x, w, y, mp, n, k, n0, n1);
}
#ifdef LEAPDEC_SIMD_X86
template <typename T>
LEAPDEC_TARGET_AVX2 void rows_avx2(const float* x, const T* w, float* y, int64_t mp, int64_t n,
                                   int64_t k, int64_t n0, int64_t n1) {
  linear_rows_any<8>(x, w, y, mp, n, k, n0, n1);
}
template <typename T>
LEAPDEC_TARGET_AVX512 void rows_avx512(const float* x, const T* w, float* y, int64_t mp, int64_t n,
                                       int64_t k, int64_t n0, int64_t n1) {
  linear_rows_any<16>(x, w, y, mp, n, k, n0, n1);
}
#endif

template <typename T>
std::pair<RowsFn<T>, int> pick_rows_fn() {  // (kernel, x rows per tile)
#ifdef LEAPDEC_SIMD_X86
  switch (simd::best_isa()) {
    case simd::Isa::kAvx512:
      return {&rows_avx512<T>, 16 / kRows};
    case simd::Isa::kAvx2:
      return {&rows_avx2<T>, 8 / kRows};
    default:
      break;
  }
#endif
  return {&rows_base<T>, 4 / kRows};
}

template <typename T>
void linear_impl(const float* x, const T* w, float* y, int64_t mp, int64_t n, int64_t k) {
  const RowsFn<T> fn = pick_rows_fn<T>().first;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const int64_t grain = std::max<int64_t>(1, kTaskElems / std::max<int64_t>(k * kBlock, 1));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    fn(x, w, y, mp, n, k, b0 * kBlock, std::min(n, b1 * kBlock));
  });
}

// ---------------------------------------------------------------- packed weights
// weight: [ceil(N/8), ceil(K/8), 8, 8] (ops.pack_linear_weight): tile t, column block b holds rows
// 8t + r, columns 8b + j at [t][b][r][j], zero padded. A tile's rows are one sequential run of
// memory, which streams from DRAM ~1.5x faster on this machine than 8 rows read side by side.

// Prefetch into L2 the cache lines of packed block b - b0 of the next chunk (pf; null: none).
template <typename S>
LEAPDEC_SIMD_INLINE void prefetch_block(const char* pf, int64_t i) {
  if (pf == nullptr) return;
  constexpr int kLines = static_cast<int>(64 * sizeof(S) / 64);
#pragma GCC unroll 4
  for (int l = 0; l < kLines; ++l) __builtin_prefetch(pf + i * 64 * sizeof(S) + l * 64, 0, 2);
}

// acc[r] += the products of the 8 rows of blocks [b0, b1) of src (packed order, 64 per block)
// with x row xr (V = 8 / W vectors per block). pf: the next chunk, prefetched block by block
// while this pass computes from L1 (see packed_tiles).
template <int W, typename S>
LEAPDEC_SIMD_INLINE void packed_dots(const S* src, const float* xr, int64_t b0, int64_t b1, vf<W>* acc,
                                     const char* pf = nullptr) {
  constexpr int V = 8 / W;
  for (int64_t b = b0; b < b1; ++b) {
    prefetch_block<S>(pf, b - b0);
    vf<W> xv[V];
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) xv[v] = simd::load<W>(xr + b * 8 + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < 8; ++r) {
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) acc[r] += load_w<W>(src + b * 64 + r * 8 + v * W) * xv[v];
    }
  }
}

// Two x rows at once: acc0[r] / acc1[r] (r < 4) += weight rows 4h + r of blocks [b0, b1) of src
// times x rows x0 / x1. Each weight vector is loaded (and widened) once for both rows, which
// halves the loads per FMA; 4 weight rows per pass keep the 8 accumulators in registers.
template <int W, typename S>
LEAPDEC_SIMD_INLINE void packed_dots_pair(const S* src, const float* x0, const float* x1, int64_t b0,
                                          int64_t b1, int h, vf<W>* acc0, vf<W>* acc1,
                                          const char* pf = nullptr) {
  constexpr int V = 8 / W;
  for (int64_t b = b0; b < b1; ++b) {
    prefetch_block<S>(pf, b - b0);
    vf<W> xa[V], xb[V];
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) {
      xa[v] = simd::load<W>(x0 + b * 8 + v * W);
      xb[v] = simd::load<W>(x1 + b * 8 + v * W);
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) {
        const vf<W> wv = load_w<W>(src + b * 64 + (4 * h + r) * 8 + v * W);
        acc0[r] += wv * xa[v];
        acc1[r] += wv * xb[v];
      }
    }
  }
}

// Tiles [t0, t1) of y[M, N] (float32) for x[M, K] float32 and packed weights of type T. Above
// kWidenMinRows x rows, 16-bit weights are widened once per chunk into a float32 buffer (in L1).
template <int W, typename T>
LEAPDEC_SIMD_INLINE void packed_tiles(const float* x, const T* w, float* y, int64_t m, int64_t n,
                                      int64_t k, int64_t t0, int64_t t1) {
  constexpr int64_t kChunk = 64;  // column blocks per chunk
  const int64_t kb = (k + 7) / 8, kfull = k / 8;
  const bool widen = !std::is_same_v<T, float> && m > kWidenMinRows;
  // 16-bit weights widened in registers: two x rows share each widened vector (2-4 rows: 20-23 %
  // faster on one thread, SmolLM2's 211 bf16 layers 8-13 % on two). float32 weights and the
  // widened buffer stay one row at a time, where pairs were 5-10 % slower.
  const bool pairs = !std::is_same_v<T, float> && !widen;
  alignas(64) float buf[kChunk * 64];
  for (int64_t t = t0; t < t1; ++t) {
    const T* wt = w + t * kb * 64;
    const int rows = static_cast<int>(std::min<int64_t>(8, n - t * 8));
    float* yt = y + t * 8;
    for (int64_t i = 0; i < m; ++i) {
      for (int r = 0; r < rows; ++r) yt[i * n + r] = 0.0f;
    }
    for (int64_t c0 = 0; c0 < kfull; c0 += kChunk) {
      const int64_t c1 = std::min(kfull, c0 + kChunk);
      if (widen) {
        for (int64_t e = c0 * 64; e < c1 * 64; e += W) simd::store<W>(buf + e - c0 * 64, load_w<W>(wt + e));
      }
      // The first pass over a chunk streams it from memory; later passes (more x rows) read it
      // from L1 and would leave the memory system idle, so the second pass prefetches the next
      // chunk into L2 (the packed weights are one sequential stream up to this task's last
      // tile). SmolLM2 forward over 200 cached tokens, 2 threads, in one-token steps, without ->
      // with: bf16 5 rows 1.88 -> 1.51, 8 rows 2.7 -> 2.0; float32 5 rows 1.30 -> 1.25.
      const T* next = wt + c1 * 64;
      const int64_t ahead = std::min<int64_t>(c1 - c0, (w + t1 * kb * 64 - next) / 64);
      const char* pf_next = ahead == c1 - c0 ? reinterpret_cast<const char*>(next) : nullptr;
      int64_t i = 0;
      for (; pairs && i + 1 < m; i += 2) {  // x rows in pairs
        for (int h = 0; h < 2 && 4 * h < rows; ++h) {
          vf<W> acc[8];  // acc[0..3]: row i, acc[4..7]: row i + 1
          for (auto& a : acc) a = simd::splat<W>(0.0f);
          packed_dots_pair<W>(wt, x + i * k, x + (i + 1) * k, c0, c1, h, acc, acc + 4,
                              i == 2 && h == 0 ? pf_next : nullptr);
          float dots[8];
          if constexpr (W == 8) {
            simd::store<8>(dots, simd::hsum_many<8>(acc));
          } else {
            for (int a = 0; a < 8; ++a) dots[a] = simd::hsum<W>(acc[a]);
          }
          for (int r = 0; r < 4 && 4 * h + r < rows; ++r) {
            yt[i * n + 4 * h + r] += dots[r];
            yt[(i + 1) * n + 4 * h + r] += dots[4 + r];
          }
        }
      }
      for (; i < m; ++i) {
        vf<W> acc[8];
        for (auto& a : acc) a = simd::splat<W>(0.0f);
        const char* pf = (widen ? i == 0 : i == (pairs ? 2 : 1)) ? pf_next : nullptr;
        if (widen) {
          packed_dots<W>(buf - c0 * 64, x + i * k, c0, c1, acc, pf);
        } else {
          packed_dots<W>(wt, x + i * k, c0, c1, acc, pf);
        }
        if constexpr (W == 8) {
          const vf<8> dots = simd::hsum_many<8>(acc);
          for (int r = 0; r < rows; ++r) yt[i * n + r] += dots[r];
        } else {
          for (int r = 0; r < rows; ++r) yt[i * n + r] += simd::hsum<W>(acc[r]);
        }
      }
    }
    if (kfull < kb) {  // the last, partial column block
      const T* tail = wt + kfull * 64;
      for (int64_t i = 0; i < m; ++i) {
        const float* xr = x + i * k + kfull * 8;
        for (int r = 0; r < rows; ++r) {
          float s = 0.0f;
          for (int64_t j = 0; j < k - kfull * 8; ++j) s += static_cast<float>(tail[r * 8 + j]) * xr[j];
          yt[i * n + r] += s;
        }
      }
    }
  }
}

template <typename T>
void packed_base(const float* x, const T* w, float* y, int64_t m, int64_t n, int64_t k, int64_t t0,
                 int64_t t1) {
  packed_tiles<4>(x, w, y, m, n, k, t0, t1);
}
#ifdef LEAPDEC_SIMD_X86
template <typename T>
LEAPDEC_TARGET_AVX2 void packed_avx2(const float* x, const T* w, float* y, int64_t m, int64_t n,
                                     int64_t k, int64_t t0, int64_t t1) {
  packed_tiles<8>(x, w, y, m, n, k, t0, t1);
}
#endif

template <typename T>
void packed_impl(const float* x, const T* w, float* y, int64_t m, int64_t n, int64_t k) {
  RowsFn<T> fn = &packed_base<T>;
#ifdef LEAPDEC_SIMD_X86
  if (simd::best_isa() != simd::Isa::kBase) fn = &packed_avx2<T>;  // AVX-512 CPUs run it too
#endif
  const int64_t tiles = (n + 7) / 8;
  const int64_t grain = std::max<int64_t>(1, kTaskElems / std::max<int64_t>(((k + 7) / 8) * 64, 1));
  at::parallel_for(0, tiles, grain, [&](int64_t a, int64_t b) { fn(x, w, y, m, n, k, a, b); });
}

int x_rows_per_tile(at::ScalarType wtype) {
  switch (wtype) {
    case at::kBFloat16:
      return pick_rows_fn<c10::BFloat16>().second;
    case at::kHalf:
      return pick_rows_fn<c10::Half>().second;
    default:
      return pick_rows_fn<float>().second;
  }
}

}  // namespace

void linear_cpu(at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                const std::optional<at::Tensor>& bias) {
  const int64_t n = check_linear_args(out, x, weight, bias);
  const int64_t m = x.size(0), k = x.size(1);
  if (m == 0 || n == 0) return;
  const bool packed = weight.dim() == 4;
  // x as float32 rows padded to a whole number of tiles (zeros), y as float32 [Mp, N]. One or
  // two rows and packed weights run untiled over x (linear_rows_any has a tile for two rows).
  const int64_t mt = x_rows_per_tile(weight.scalar_type());
  const int64_t mp = (m <= 2 || packed) ? m : (m + mt - 1) / mt * mt;
  const bool direct_x = x.scalar_type() == at::kFloat && mp == m;
  const bool direct_y = out.scalar_type() == at::kFloat && mp == m;
  std::vector<float> xbuf(direct_x ? 0 : mp * k, 0.0f), ybuf(direct_y ? 0 : mp * n);
  const float* xp = x.scalar_type() == at::kFloat && direct_x ? x.data_ptr<float>() : xbuf.data();
  if (!direct_x) {
    if (x.scalar_type() == at::kFloat) {
      std::memcpy(xbuf.data(), x.data_ptr<float>(), m * k * sizeof(float));
    } else {  // checked: bfloat16
      const c10::BFloat16* xs = x.data_ptr<c10::BFloat16>();
      for (int64_t i = 0; i < m * k; ++i) xbuf[i] = static_cast<float>(xs[i]);
    }
  }
  float* yp = direct_y ? out.data_ptr<float>() : ybuf.data();
  if (k == 0) {
    std::fill(yp, yp + mp * n, 0.0f);
  } else {
    auto run = [&](auto tag) {
      using T = decltype(tag);
      const T* w = static_cast<const T*>(weight.data_ptr());
      if (packed) {
        packed_impl(xp, w, yp, mp, n, k);
      } else {
        linear_impl(xp, w, yp, mp, n, k);
      }
    };
    switch (weight.scalar_type()) {
      case at::kFloat:
        run(float{});
        break;
      case at::kBFloat16:
        run(c10::BFloat16{});
        break;
      default:  // checked: float16
        run(c10::Half{});
        break;
    }
  }
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    for (int64_t i = 0; i < m; ++i) {
      float* row = yp + i * n;
      if (b.scalar_type() == at::kFloat) {
        const float* bp = b.data_ptr<float>();
        for (int64_t j = 0; j < n; ++j) row[j] += bp[j];
      } else if (b.scalar_type() == at::kBFloat16) {
        const c10::BFloat16* bp = b.data_ptr<c10::BFloat16>();
        for (int64_t j = 0; j < n; ++j) row[j] += static_cast<float>(bp[j]);
      } else {
        const c10::Half* bp = b.data_ptr<c10::Half>();
        for (int64_t j = 0; j < n; ++j) row[j] += static_cast<float>(bp[j]);
      }
    }
  }
  if (!direct_y) {
    if (out.scalar_type() == at::kFloat) {
      std::memcpy(out.data_ptr<float>(), yp, m * n * sizeof(float));
    } else {  // checked: bfloat16
      c10::BFloat16* o = out.data_ptr<c10::BFloat16>();
      for (int64_t i = 0; i < m * n; ++i) o[i] = static_cast<c10::BFloat16>(yp[i]);
    }
  }
}

}  // namespace leapdec
