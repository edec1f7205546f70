// Runs the leapdec CUDA kernel templates under host emulation (emu_prelude.h, emu_mma.cuh) and
// compares them with a double-precision reference: the split-KV decode kernel, the tensor-core
// and CUDA-core multi-query kernels, the split merge, the cache writes, RoPE and linear; plus a run with
// corrupt indices whose only check is that nothing is read or written out of bounds (built with
// AddressSanitizer by tests/ops/test_cuda_kernels_emulated.py). Usage: kernels_emulated [suite]
// with suite one of fastdiv, writes, decode, mma, simt, generic, corrupt, linear, norm (default: all). Exit 1 on failure.
#include "leapdec/attention_decode.cuh"
#include "leapdec/attention_prefill.cuh"
#include "leapdec/linear.cuh"
#include "leapdec/norm.cuh"
#include "leapdec/paged_kv.cuh"
#include "leapdec/rope.cuh"

#include <algorithm>
#include <cassert>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

using namespace leapdec;

template <typename T> float tof(T x);
template <> float tof(float x) { return x; }
template <> float tof(__half x) { return __half2float(x); }
template <> float tof(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> T fromf(float x);
template <> float fromf(float x) { return x; }
template <> __half fromf(float x) { return __float2half_rn(x); }
template <> __nv_bfloat16 fromf(float x) { return __float2bfloat16_rn(x); }

struct Case {
  std::vector<int> qo, kv;
  int hq, hkv, page_size, mode, splits, chunk;  // chunk 0: computed from max kv / splits
  const char* name;
};

static int g_fail = 0;

// PATH 0: decode kernel with group tile GT; 1: tensor-core kernel; 2: CUDA-core kernel;
// 3: CUDA-core kernel with a run-time head dim (D any value up to 256).
template <typename T, int D, int PATH, int GT = 1>
void run_attention(const Case& c, unsigned seed, bool with_lse = true, bool corrupt = false) {
  constexpr int path = PATH;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int B = c.qo.size();
  std::vector<int> npages(B);
  int total_pages = 2;
  for (int b = 0; b < B; ++b) { npages[b] = (c.kv[b] + c.page_size - 1) / c.page_size; total_pages += npages[b]; }
  std::vector<int> perm(total_pages);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  const size_t cache_elems = size_t(total_pages) * c.page_size * c.hkv * D;
  std::vector<T> kc(cache_elems), vc(cache_elems);
  for (auto& x : kc) x = fromf<T>(nd(rng));
  for (auto& x : vc) x = fromf<T>(nd(rng));
  std::vector<int> qo_indptr{0}, kv_indptr{0}, kv_indices, last;
  for (int b = 0; b < B; ++b) {
    qo_indptr.push_back(qo_indptr.back() + c.qo[b]);
    kv_indptr.push_back(kv_indptr.back() + npages[b]);
    last.push_back(npages[b] ? c.kv[b] - (npages[b] - 1) * c.page_size : 1);
  }
  for (int i = 0; i < kv_indptr.back(); ++i) kv_indices.push_back(perm[i]);
  const int total_q = qo_indptr.back();
  std::vector<T> q(size_t(total_q) * c.hq * D), o(q.size(), fromf<T>(12345.f));
  for (auto& x : q) x = fromf<T>(nd(rng));
  std::vector<float> lse(size_t(total_q) * c.hq, 777.f);
  // custom masks: random trees (ancestor masks); a few rows all false when there is no prefix
  std::vector<uint8_t> mask;
  std::vector<int> mask_indptr{0};
  for (int b = 0; b < B; ++b) {
    const int n = c.qo[b];
    std::vector<int> par(n, -1);
    for (int i = 1; i < n; ++i) par[i] = rng() % i;
    std::vector<uint8_t> m(size_t(n) * n, 0);
    for (int i = 0; i < n; ++i) for (int j = i; j >= 0; j = par[j]) m[size_t(i) * n + j] = 1;
    if (n > 3 && c.kv[b] == n) for (int j = 0; j < n; ++j) m[size_t(2) * n + j] = 0;  // row sees nothing
    if (n == 1 && b % 2 == 0) m[0] = 0;  // decode row hides its own position
    mask.insert(mask.end(), m.begin(), m.end());
    mask_indptr.push_back(mask_indptr.back() + n * n);
  }
  if (corrupt) {  // bad indices: kernels must stay in bounds (ASan checks), values are not compared
    kv_indices[0] = 1 << 20;
    if (kv_indices.size() > 2) kv_indices[2] = -5;
    last[0] = c.page_size + 5;
    kv_indptr[B] += 3;
    if (B > 1) mask_indptr[1] = 1 << 30;
  }
  const int group = c.hq / c.hkv;
  const int max_kv = *std::max_element(c.kv.begin(), c.kv.end());
  const int max_qo = *std::max_element(c.qo.begin(), c.qo.end());
  int splits = c.splits, chunk = 64;
  if (splits > 1) {
    chunk = c.chunk ? c.chunk : ((max_kv + splits - 1) / splits + 63) / 64 * 64;
  }
  std::vector<float> ws(size_t(splits) * total_q * c.hq * (D + 1), 999.f);

  AttentionParams<T> p{};
  p.q = q.data(); p.o = o.data(); p.lse = with_lse ? lse.data() : nullptr;
  p.k_cache = kc.data(); p.v_cache = vc.data();
  p.qo_indptr = qo_indptr.data(); p.kv_indptr = kv_indptr.data(); p.kv_indices = kv_indices.data();
  p.kv_last_page_len = last.data();
  p.custom_mask = c.mode == kMaskCustom ? mask.data() : nullptr;
  p.mask_indptr = c.mode == kMaskCustom ? mask_indptr.data() : nullptr;
  p.mask_numel = mask.size();
  p.partial_o = ws.data();
  p.partial_lse = ws.data() + size_t(splits) * total_q * c.hq * D;
  p.page_div = math::FastDiv(c.page_size);
  p.batch = B; p.total_q = total_q; p.num_qo_heads = c.hq; p.num_kv_heads = c.hkv; p.head_dim = D; p.group_size = group;
  p.num_pages = total_pages; p.num_kv_indices = kv_indices.size(); p.mask_mode = c.mode;
  const float sm_scale = 1.f / std::sqrt(float(D));
  p.sm_scale_log2 = sm_scale * math::kLog2e;
  p.num_splits = splits; p.split_chunk = chunk;

  if constexpr (PATH == 0) {
    const int ht = (group + GT - 1) / GT;  // the launcher's choice is GT >= group (or 8)
    emu::launch(dim3(B, c.hkv * ht, splits), dim3(128), [&] { decode_attention_kernel<T, D, GT>(p); });
  } else if constexpr (PATH == 1) {
    if constexpr (sizeof(T) == 2) {
      using Tr = PrefillMmaTraits<T, D>;
      assert(Tr::kSmemBytes <= sizeof(prefill_smem));
      const int qt = (max_qo * group + Tr::kTileQ - 1) / Tr::kTileQ;
      emu::launch(dim3(B * splits, c.hkv, std::max(1, qt / 2)), dim3(128), [&] { prefill_mma_kernel<T, D>(p); });
    }
  } else if constexpr (PATH == 2) {
    assert(PrefillSimtTraits<D>::smem_bytes(D) <= sizeof(simt_smem));
    const int qt = (max_qo * group + 15) / 16;
    emu::launch(dim3(B * splits, c.hkv, qt), dim3(128), [&] { prefill_simt_kernel<T, D>(p); });
  } else {
    static_assert(PATH == 3, "unknown path");
    assert(PrefillSimtTraits<0>::smem_bytes(D) <= sizeof(simt_smem));
    const int qt = (max_qo * group + 15) / 16;
    emu::launch(dim3(B * splits, c.hkv, std::max(1, qt - 1)), dim3(128), [&] { prefill_simt_kernel<T, 0>(p); });
  }
  if (splits > 1) {
    const int64_t pairs = int64_t(total_q) * c.hq;
    const int ppb = 128 / (D / 4);
    emu::launch(dim3((pairs + ppb - 1) / ppb), dim3(128), [&] {
      merge_splits_kernel<T, D>(p.partial_o, p.partial_lse, p.o, p.lse, pairs, splits);
    });
  }

  if (corrupt) {
    std::printf("ok    %-28s corrupt indices, path=%d: no out-of-bounds access\n", c.name, path);
    return;
  }
  // reference
  double max_err = 0, max_lse_err = 0;
  for (int b = 0; b < B; ++b) {
    const int kv_len = c.kv[b], qo_len = c.qo[b], prefix = kv_len - qo_len;
    for (int i = 0; i < qo_len; ++i) {
      for (int h = 0; h < c.hq; ++h) {
        const int kh = h / group;
        std::vector<double> s(kv_len);
        double mx = -INFINITY;
        for (int pos = 0; pos < kv_len; ++pos) {
          bool vis = true;
          if (c.mode == kMaskCausal) vis = pos <= prefix + i;
          if (c.mode == kMaskCustom) vis = pos < prefix || mask[mask_indptr[b] + size_t(i) * qo_len + pos - prefix];
          if (!vis) { s[pos] = -INFINITY; continue; }
          const int page = kv_indices[kv_indptr[b] + pos / c.page_size];
          const size_t off = ((size_t(page) * c.page_size + pos % c.page_size) * c.hkv + kh) * D;
          double dot = 0;
          for (int e = 0; e < D; ++e) dot += double(tof(q[(size_t(qo_indptr[b] + i) * c.hq + h) * D + e])) * tof(kc[off + e]);
          s[pos] = dot * sm_scale;
          mx = std::max(mx, s[pos]);
        }
        double l = 0;
        std::vector<double> acc(D, 0.0);
        if (mx != -INFINITY) {
          for (int pos = 0; pos < kv_len; ++pos) {
            if (s[pos] == -INFINITY) continue;
            const double w = std::exp(s[pos] - mx);
            l += w;
            const int page = kv_indices[kv_indptr[b] + pos / c.page_size];
            const size_t off = ((size_t(page) * c.page_size + pos % c.page_size) * c.hkv + kh) * D;
            for (int e = 0; e < D; ++e) acc[e] += w * tof(vc[off + e]);
          }
        }
        const size_t row = size_t(qo_indptr[b] + i) * c.hq + h;
        for (int e = 0; e < D; ++e) {
          const double want = l > 0 ? acc[e] / l : 0.0;
          max_err = std::max(max_err, std::abs(want - tof(o[row * D + e])));
        }
        if (with_lse) {
          const double want_lse = l > 0 ? mx + std::log(l) : -INFINITY;
          const double got = lse[row];
          if (std::isinf(want_lse) || std::isinf(got)) {
            if (!(std::isinf(want_lse) && std::isinf(got) && want_lse < 0 && got < 0)) max_lse_err = INFINITY;
          } else {
            max_lse_err = std::max(max_lse_err, std::abs(want_lse - got));
          }
        }
      }
    }
  }
  const double tol = sizeof(T) == 4 ? 1e-4 : (std::is_same_v<T, __half> ? 4e-3 : 3e-2);
  const bool ok = max_err <= tol && max_lse_err <= 1e-3;
  if (!ok) ++g_fail;
  std::printf("%-5s %-28s %s D=%d T=%zu path=%d splits=%d: max_err %.2e lse_err %.2e\n", ok ? "ok" : "FAIL",
              c.name, c.mode == 0 ? "none" : c.mode == 1 ? "causal" : "custom", D, sizeof(T), path, splits,
              max_err, max_lse_err);
}

template <typename T>
void run_writes(unsigned seed) {
  std::mt19937 rng(seed);
  const int pages = 6, ps = 4, hkv = 2, d = 64, n = 5, hq = 3;
  const int slots_n = pages * ps, row = hkv * d;
  std::vector<T> kc(size_t(slots_n) * row + 64, fromf<T>(0.f)), vc(kc.size(), fromf<T>(0.f));
  std::vector<T> k(size_t(n) * row), v(k.size()), q(size_t(n) * hq * d);
  std::normal_distribution<float> nd;
  for (auto& x : k) x = fromf<T>(nd(rng));
  for (auto& x : v) x = fromf<T>(nd(rng));
  for (auto& x : q) x = fromf<T>(nd(rng));
  std::vector<int> slots{3, -1, 23, 24, 0};
  // append (as uint16/uint32 units)
  emu::launch(dim3(n), dim3(64), [&] {
    append_paged_kv_kernel<T>(k.data(), v.data(), kc.data(), vc.data(), slots.data(), slots_n, row);
  });
  bool ok = true;
  for (int i = 0; i < n; ++i) {
    for (int e = 0; e < row; ++e) {
      if (slots[i] >= 0 && slots[i] < slots_n) ok &= tof(kc[size_t(slots[i]) * row + e]) == tof(k[size_t(i) * row + e]);
    }
  }
  for (size_t e = size_t(slots_n) * row; e < kc.size(); ++e) ok &= tof(kc[e]) == 0.f;  // nothing past the end
  // move with overlap: shift rows 0..9 -> 1..10 (reads before writes)
  std::vector<T> before = kc;
  std::vector<int> src(10), dst(10);
  for (int j = 0; j < 10; ++j) { src[j] = j; dst[j] = j + 1; }
  src.push_back(100); dst.push_back(2);  // out of range source: skipped
  for (int cols : {1, 7, 128}) {
    kc = before;
    const int m = src.size();
    emu::launch(dim3((row + cols - 1) / cols, 2), dim3(96), [&] {
      move_kv_slots_kernel<T>(kc.data(), vc.data(), src.data(), dst.data(), m, slots_n, row, cols);
    });
    for (int j = 0; j < 10; ++j)
      for (int e = 0; e < row; ++e) ok &= tof(kc[size_t(dst[j]) * row + e]) == tof(before[size_t(src[j]) * row + e]);
  }
  // rope
  const int rot = 32, max_pos = 16;
  std::vector<float> cs(size_t(max_pos) * rot);
  for (int pp = 0; pp < max_pos; ++pp)
    for (int f = 0; f < rot / 2; ++f) {
      const double inv = std::pow(10000.0, -2.0 * f / rot);
      cs[pp * rot + f] = std::cos(pp * inv);
      cs[pp * rot + rot / 2 + f] = std::sin(pp * inv);
    }
  std::vector<int64_t> pos{3, 0, 15, 7, 99};
  for (bool neox : {true, false}) {
    std::vector<T> qq = q, kc2(size_t(slots_n) * row, fromf<T>(0.f)), vc2 = kc2;
    emu::launch(dim3(n), dim3(64), [&] {
      rope_append_paged_kv_kernel<T, float>(qq.data(), k.data(), v.data(), pos.data(), cs.data(), kc2.data(),
                                            vc2.data(), slots.data(), max_pos, slots_n, hq, hkv, d, rot, neox);
    });
    auto rotate = [&](const T* x, int e, int64_t pp) -> float {
      if (e >= rot) return tof(x[e]);
      const int half = rot / 2;
      int c, a, bb;
      if (neox) { c = e < half ? e : e - half; a = c; bb = c + half; } else { c = e / 2; a = 2 * c; bb = a + 1; }
      const float co = cs[pp * rot + c], si = cs[pp * rot + half + c];
      const float x1 = tof(x[a]), x2 = tof(x[bb]);
      return e == a ? x1 * co - x2 * si : x2 * co + x1 * si;
    };
    for (int i = 0; i < n; ++i) {
      const bool valid_pos = pos[i] >= 0 && pos[i] < max_pos;
      for (int h = 0; h < hq; ++h)
        for (int e = 0; e < d; ++e) {
          const T* x = q.data() + (size_t(i) * hq + h) * d;
          const float want = valid_pos ? tof(fromf<T>(rotate(x, e, pos[i]))) : tof(x[e]);
          ok &= tof(qq[(size_t(i) * hq + h) * d + e]) == want;
        }
      if (!valid_pos || slots[i] < 0 || slots[i] >= slots_n) continue;
      for (int h = 0; h < hkv; ++h)
        for (int e = 0; e < d; ++e) {
          const T* x = k.data() + (size_t(i) * hkv + h) * d;
          ok &= tof(kc2[size_t(slots[i]) * row + h * d + e]) == tof(fromf<T>(rotate(x, e, pos[i])));
          ok &= tof(vc2[size_t(slots[i]) * row + h * d + e]) == tof(v[size_t(i) * row + h * d + e]);
        }
    }
  }
  if (!ok) ++g_fail;
  std::printf("%-5s writes (append/move/rope) T=%zu\n", ok ? "ok" : "FAIL", sizeof(T));
}

// linear_few_rows_kernel: out[m, n] = x[m, k] @ w[n, k]^T (+ bias) against a double reference,
// with n not a multiple of the warps per block (the last block's idle warps) and k not a
// multiple of 32 (lanes past the end).
template <typename TX, typename TW, bool PACKED = false>
void run_linear(int m, int n, int k, bool with_bias, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<TX> x(size_t(m) * k), out(size_t(m) * n, fromf<TX>(-7.f));
  std::vector<TW> w(size_t(n) * k), b(n);
  for (auto& v : x) v = fromf<TX>(nd(rng));
  for (auto& v : w) v = fromf<TW>(nd(rng));
  for (auto& v : b) v = fromf<TW>(nd(rng));
  const TW* bp = with_bias ? b.data() : nullptr;
  const int kb = (k + 7) / 8;
  std::vector<TW> wp(size_t((n + 7) / 8) * kb * 64, fromf<TW>(0.f));  // packed layout
  for (int r = 0; r < n; ++r)
    for (int c = 0; c < k; ++c) wp[(size_t(r / 8) * kb + c / 8) * 64 + (r % 8) * 8 + c % 8] = w[size_t(r) * k + c];
  emu::launch(dim3((n + kLinearWarps - 1) / kLinearWarps), dim3(32 * kLinearWarps), [&] {
    linear_few_rows_kernel<TX, TW, TW, PACKED>(out.data(), x.data(), PACKED ? wp.data() : w.data(), bp, m, n, k);
  });
  double worst = 0;
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      double ref = with_bias ? tof(b[j]) : 0.0;
      for (int c = 0; c < k; ++c) ref += double(tof(x[size_t(i) * k + c])) * tof(w[size_t(j) * k + c]);
      const double err = std::abs(tof(out[size_t(i) * n + j]) - ref) / (1.0 + std::abs(ref));
      worst = std::max(worst, err);
    }
  }
  const double tol = sizeof(TX) == 4 ? 1e-5 : (std::is_same_v<TX, __half> ? 2e-3 : 1.6e-2);
  const bool ok = worst <= tol;
  if (!ok) ++g_fail;
  std::printf("%-5s linear m%d n%d k%d%s%s (max rel err %.2e)\n", ok ? "ok" : "FAIL", m, n, k,
              with_bias ? " bias" : "", PACKED ? " packed" : "", worst);
}

// rms_norm_kernel (ADD: fused_add_rms_norm) against a double reference of the same roundings,
// with rows not a multiple of the warps per block and d not a multiple of 32.
template <typename T, typename TW, bool ADD>
void run_norm(int rows, int d, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 2.f);
  std::vector<T> x(size_t(rows) * d), res(size_t(rows) * d), out(size_t(rows) * d, fromf<T>(-7.f));
  std::vector<TW> w(d);
  for (auto& v : x) v = fromf<T>(nd(rng));
  for (auto& v : res) v = fromf<T>(nd(rng));
  for (auto& v : w) v = fromf<TW>(nd(rng));
  const std::vector<T> x0 = x, res0 = res;
  const float eps = 1e-5f;
  emu::launch(dim3((rows + kNormWarps - 1) / kNormWarps), dim3(32 * kNormWarps), [&] {
    if (ADD) {
      rms_norm_kernel<T, TW, true>(x.data(), x.data(), res.data(), w.data(), rows, d, eps);
    } else {
      rms_norm_kernel<T, TW, false>(out.data(), x.data(), nullptr, w.data(), rows, d, eps);
    }
  });
  const std::vector<T>& got = ADD ? x : out;
  bool ok = true;
  double worst = 0;
  for (int r = 0; r < rows; ++r) {
    std::vector<float> row(d);
    double ss = 0;
    for (int c = 0; c < d; ++c) {
      const size_t i = size_t(r) * d + c;
      row[c] = ADD ? tof(fromf<T>(tof(x0[i]) + tof(res0[i]))) : tof(x0[i]);
      if (ADD) ok &= tof(res[i]) == row[c];  // the residual add rounds exactly once
      ss += double(row[c]) * row[c];
    }
    const double inv = 1.0 / std::sqrt(ss / d + eps);
    for (int c = 0; c < d; ++c) {
      const double want = double(tof(fromf<T>(float(row[c] * inv)))) * tof(w[c]);
      worst = std::max(worst, std::abs(tof(got[size_t(r) * d + c]) - want) / (1.0 + std::abs(want)));
    }
  }
  const double tol = sizeof(T) == 4 ? 1e-5 : (std::is_same_v<T, __half> ? 2e-3 : 1.6e-2);
  ok &= worst <= tol;
  if (!ok) ++g_fail;
  std::printf("%-5s rms_norm%s rows%d d%d (max rel err %.2e)\n", ok ? "ok" : "FAIL", ADD ? " fused add" : "",
              rows, d, worst);
}

// silu_and_mul_kernel: out[r, j] = T(T(silu(gate)) * up) against a double reference, with a grid
// smaller than the elements (the grid-stride loop) and d not a multiple of the block.
template <typename T>
void run_silu_and_mul(int rows, int d, int blocks, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 3.f);
  std::vector<T> in(size_t(rows) * 2 * d), out(size_t(rows) * d, fromf<T>(-7.f));
  for (auto& v : in) v = fromf<T>(nd(rng));
  emu::launch(dim3(blocks), dim3(256), [&] { silu_and_mul_kernel<T>(out.data(), in.data(), rows, d); });
  double worst = 0;
  for (int r = 0; r < rows; ++r) {
    for (int j = 0; j < d; ++j) {
      const double g = tof(in[size_t(r) * 2 * d + j]), u = tof(in[size_t(r) * 2 * d + d + j]);
      const double want = double(tof(fromf<T>(float(g / (1.0 + std::exp(-g)))))) * u;
      worst = std::max(worst, std::abs(tof(out[size_t(r) * d + j]) - want) / (1.0 + std::abs(want)));
    }
  }
  const double tol = sizeof(T) == 4 ? 1e-5 : (std::is_same_v<T, __half> ? 2e-3 : 1.6e-2);
  const bool ok = worst <= tol;
  if (!ok) ++g_fail;
  std::printf("%-5s silu_and_mul rows%d d%d blocks%d (max rel err %.2e)\n", ok ? "ok" : "FAIL", rows, d, blocks,
              worst);
}

int main(int argc, char** argv) {
  const std::string only = argc > 1 ? argv[1] : "";
  if (only.empty() || only == "fastdiv") {  // page_size division over a range of divisors
    bool ok = true;
    for (uint32_t dv : {1u, 2u, 3u, 5u, 7u, 16u, 17u, 64u, 100u, 255u, 1000u, 65537u}) {
      math::FastDiv f(dv);
      for (uint32_t n = 0; n < 200000; ++n) ok &= f.div(n) == n / dv;
      for (uint32_t n : {0x7fffffffu, 0x7ffffffeu, 123456789u}) ok &= f.div(n) == n / dv;
    }
    if (!ok) ++g_fail;
    std::printf("%-5s fastdiv\n", ok ? "ok" : "FAIL");
  }
  if (only.empty() || only == "writes") {
    run_writes<__half>(1);
    run_writes<float>(2);
  }
  if (only.empty() || only == "decode") {
    Case d1{{1, 1, 0, 1}, {1, 300, 7, 150}, 4, 4, 16, kMaskCausal, 1, 0, "decode mha"};
    run_attention<__half, 128, 0, 1>(d1, 1);
    Case d2{{1, 1, 1}, {1, 300, 97}, 8, 2, 8, kMaskCustom, 3, 0, "decode gqa4 custom split3"};
    run_attention<__nv_bfloat16, 64, 0, 4>(d2, 2);
    Case d3{{1, 1}, {260, 33}, 7, 1, 1, kMaskNone, 2, 64, "decode g7 split2 short-chunk"};
    run_attention<float, 128, 0, 8>(d3, 3);
    Case d4{{1, 1}, {200, 3}, 2, 1, 5, kMaskCausal, 4, 0, "decode g2 split4"};
    run_attention<__half, 64, 0, 2>(d4, 4, false);
  }
  if (only.empty() || only == "mma") {
    Case m1{{70, 5}, {130, 40}, 2, 2, 16, kMaskCausal, 1, 0, "mma mha causal"};
    run_attention<__half, 128, 1>(m1, 5);
    Case m2{{70, 5}, {200, 40}, 2, 2, 16, kMaskCustom, 2, 0, "mma mha custom split2"};
    run_attention<__half, 64, 1>(m2, 6);
    Case m3{{30, 9}, {30, 150}, 6, 2, 3, kMaskCustom, 1, 0, "mma g3 custom no-prefix"};
    run_attention<__nv_bfloat16, 128, 1>(m3, 7);
    Case m4{{23, 1}, {140, 70}, 4, 1, 16, kMaskNone, 3, 0, "mma g4 none split3"};
    run_attention<__nv_bfloat16, 64, 1>(m4, 8);
  }
  if (only.empty() || only == "simt") {
    Case s1{{20, 3}, {90, 3}, 4, 2, 4, kMaskCausal, 2, 0, "simt g2 causal split2"};
    run_attention<float, 64, 2>(s1, 9);
    Case s2{{12, 5}, {12, 60}, 3, 3, 16, kMaskCustom, 1, 0, "simt custom"};
    run_attention<float, 128, 2>(s2, 10);
  }
  if (only.empty() || only == "generic") {  // head dims other than 64 / 128
    Case g1{{1, 1, 1}, {70, 1, 33}, 6, 2, 16, kMaskCausal, 1, 0, "generic d40 decode"};
    run_attention<__half, 40, 3>(g1, 14);
    Case g2{{19, 5}, {50, 5}, 3, 1, 4, kMaskCustom, 1, 0, "generic d24 custom"};
    run_attention<float, 24, 3>(g2, 15);
    Case g3{{9, 2}, {40, 66}, 4, 4, 16, kMaskNone, 1, 0, "generic d200"};
    run_attention<__nv_bfloat16, 200, 3>(g3, 16);
  }
  if (only.empty() || only == "corrupt") {
    Case c1{{1, 1}, {300, 40}, 4, 2, 16, kMaskCustom, 2, 0, "corrupt decode"};
    run_attention<__half, 64, 0, 2>(c1, 11, true, true);
    Case c2{{40, 7}, {150, 40}, 4, 2, 16, kMaskCustom, 2, 0, "corrupt mma"};
    run_attention<__half, 64, 1>(c2, 12, true, true);
    run_attention<float, 64, 2>(c2, 13, true, true);
  }
  if (only.empty() || only == "linear") {
    run_linear<float, float>(1, 9, 70, false, 21);
    run_linear<float, __nv_bfloat16>(5, 13, 33, true, 22);
    run_linear<__half, __half>(16, 6, 100, true, 23);
    run_linear<__nv_bfloat16, float>(3, 4, 5, false, 24);
    run_linear<float, __nv_bfloat16, true>(2, 13, 37, true, 25);
    run_linear<float, float, true>(1, 8, 64, false, 26);
  }
  if (only.empty() || only == "norm") {
    run_norm<float, float, false>(1, 70, 31);
    run_norm<float, float, true>(6, 33, 32);
    run_norm<__nv_bfloat16, float, true>(5, 100, 33);
    run_norm<__half, __half, false>(9, 64, 34);
    run_norm<float, __nv_bfloat16, false>(3, 5, 35);
    run_silu_and_mul<float>(3, 300, 2, 36);
    run_silu_and_mul<__nv_bfloat16>(5, 33, 1, 37);
    run_silu_and_mul<__half>(1, 7, 4, 38);
  }
  std::printf(g_fail ? "FAILURES: %d\n" : "all ok\n", g_fail);
  return g_fail != 0;
}
