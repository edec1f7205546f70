// CPU ctc_prefix_score (csrc/include/leapdec/ctc_prefix_score.h, reference.py): one task per
// block of hypotheses; a hypothesis' candidates form a row that advances frame by frame with
// SIMD log-adds (the recursion is sequential in time, parallel over candidates). The
// argument checks shared with the CUDA backend are defined here too.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "checks.h"
#include "ctc_checks.h"
#include "ops.h"
#include "simd.h"

namespace leapdec {

ctc::Problem check_ctc_prefix_score_args(const at::Tensor& r_out, const at::Tensor& psi,
                                         const at::Tensor& log_probs, const at::Tensor& frame_lens,
                                         const at::Tensor& r_prev, const at::Tensor& prefix_len,
                                         const at::Tensor& last_token, const at::Tensor& hyp_utt,
                                         const at::Tensor& cand, int64_t blank, int64_t eos) {
  check_dim(log_probs, 3, "log_probs", "[B, T, V] (CTC log-softmax per utterance)");
  check_float_dtype(log_probs, "log_probs", log_probs.is_cuda());
  check_contiguous(log_probs, "log_probs");
  const int64_t B = log_probs.size(0), T = log_probs.size(1), V = log_probs.size(2);
  TORCH_CHECK(T >= 1, "log_probs must have at least one frame (dim 1), got ", T);
  TORCH_CHECK(V >= 1, "log_probs must have a vocabulary (dim 2), got ", V);
  TORCH_CHECK(T < (int64_t{1} << 31) && V < (int64_t{1} << 31) && T * V < (int64_t{1} << 40),
              "log_probs is too large: ", log_probs.sizes());
  auto check_index = [&](const at::Tensor& t, const char* name, int64_t len, const char* what) {
    check_dtype(t, at::kInt, name);
    check_dim(t, 1, name, what);
    check_contiguous(t, name);
    check_same_device(t, log_probs, name, "log_probs");
    TORCH_CHECK(t.size(0) == len, name, " must have ", len, " entries (", what, "), got ", t.size(0));
  };
  check_index(frame_lens, "frame_lens", B, "one per utterance of log_probs");
  check_dim(r_prev, 3, "r_prev", "[T, 2, N] float32 (non-blank / blank forward variables)");
  check_dtype(r_prev, at::kFloat, "r_prev");
  check_contiguous(r_prev, "r_prev");
  check_same_device(r_prev, log_probs, "r_prev", "log_probs");
  TORCH_CHECK(r_prev.size(0) == T && r_prev.size(1) == 2, "r_prev must be [T=", T,
              ", 2, N], got ", r_prev.sizes());
  const int64_t N = r_prev.size(2);
  check_index(prefix_len, "prefix_len", N, "one per hypothesis");
  check_index(last_token, "last_token", N, "one per hypothesis");
  check_index(hyp_utt, "hyp_utt", N, "one per hypothesis");
  check_dtype(cand, at::kInt, "cand");
  check_dim(cand, 2, "cand", "[N, C] int32 (candidate tokens per hypothesis)");
  check_contiguous(cand, "cand");
  check_same_device(cand, log_probs, "cand", "log_probs");
  TORCH_CHECK(cand.size(0) == N, "cand must have N=", N, " rows (one per hypothesis), got ", cand.size(0));
  const int64_t C = cand.size(1);
  TORCH_CHECK(N < (int64_t{1} << 31) && C < (int64_t{1} << 31), "cand is too large: ", cand.sizes());
  check_dtype(r_out, at::kFloat, "r_out");
  check_contiguous(r_out, "r_out");
  check_same_device(r_out, log_probs, "r_out", "log_probs");
  TORCH_CHECK(r_out.dim() == 4 && r_out.size(0) == T && r_out.size(1) == 2 && r_out.size(2) == N &&
                  r_out.size(3) == C,
              "r_out must be [T, 2, N, C] = [", T, ", 2, ", N, ", ", C, "], got ", r_out.sizes());
  check_dtype(psi, at::kFloat, "psi");
  check_contiguous(psi, "psi");
  check_same_device(psi, log_probs, "psi", "log_probs");
  TORCH_CHECK(psi.dim() == 2 && psi.size(0) == N && psi.size(1) == C, "psi must be [N, C] = [", N,
              ", ", C, "], got ", psi.sizes());
  TORCH_CHECK(blank >= 0 && blank < V, "blank must be in [0, V=", V, "), got ", blank);
  TORCH_CHECK(eos != blank, "eos must differ from blank (", blank, ")");
  TORCH_CHECK(eos >= INT32_MIN && eos <= INT32_MAX, "eos must fit in int32, got ", eos);
  return ctc::Problem{static_cast<int>(T), static_cast<int>(V), static_cast<int>(N),
                      static_cast<int>(C), static_cast<int>(blank), static_cast<int>(eos)};
}

namespace {

using simd::vf;
using ctc::kLogZero;

// log(1 + y) for y in [0, 1] (y = exp(-|a - b|) of a log-add): Cephes logf on z = 1 + y
// (halved above sqrt(2)), degree-9 polynomial. Absolute error ~1e-7.
template <int W>
LEAPDEC_SIMD_INLINE vf<W> log1p_unit(vf<W> y) {
  vf<W> z = y + 1.0f;
  const auto big = z > 1.41421356f;
  z = big ? z * 0.5f : z;
  const vf<W> e = big ? simd::splat<W>(0.693147180559945f) : vf<W>{};
  const vf<W> f = z - 1.0f;
  vf<W> p = simd::splat<W>(7.0376836292e-2f);
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const vf<W> f2 = f * f;
  return f + (f2 * f * p - 0.5f * f2) + e;
}

template <int W>
LEAPDEC_SIMD_INLINE vf<W> log_add(vf<W> a, vf<W> b) {
  const vf<W> hi = a > b ? a : b;
  const vf<W> lo = a > b ? b : a;
  return hi + log1p_unit<W>(simd::exp_nonpos<W>(lo - hi));
}

// Lanes j .. min(j + W, C) - 1 of a row of C floats: a whole-vector store when it fits.
template <int W>
LEAPDEC_SIMD_INLINE void store_row(float* dst, vf<W> v, int j, int C) {
  if (j + W <= C) {
    simd::store<W>(dst + j, v);
  } else {
    for (int k = 0; k < C - j; ++k) dst[j + k] = v[k];
  }
}

// One hypothesis n: its C candidates (padded to a multiple of W in the scratch rows) advance
// over the frames together: begin() sets frame 0, step(t) computes frame t, finish() writes
// psi. scratch: 5 rows of Cp floats and T floats.
template <int W, typename T>
struct HypRow {
  const ctc::Problem& p;
  const T* lp;         // the utterance's log_probs [T, V]
  int len, prefix_len, start;
  int64_t n;
  const int* cand;     // [C]
  const float* pn;     // r_prev[t, 0, n] at pn[t * 2N]
  const float* pb;     // r_prev[t, 1, n]
  float* out;          // r_out[0, 0, n, :]
  float *rn, *rb, *ps, *rep, *phi_sum;
  int* col;            // candidate column, 0 for padding

  LEAPDEC_SIMD_INLINE HypRow(const ctc::Problem& p_, const T* lp_, int len_, const float* r_prev, int prefix_len_,
                             int last, int64_t n_, const int* cand_, float* r_out, float* scratch)
      : p(p_), lp(lp_), len(len_), prefix_len(prefix_len_), start(std::max(prefix_len_, 1)), n(n_),
        cand(cand_) {
    const int C = p.num_cands, Cp = (C + W - 1) / W * W;
    const int64_t N = p.num_hyps;
    rn = scratch;
    rb = rn + Cp;
    ps = rb + Cp;
    rep = ps + Cp;  // 1 where the candidate repeats the last label
    col = reinterpret_cast<int*>(rep + Cp);
    phi_sum = rep + 2 * Cp;  // [T] logaddexp of r_prev's two rows
    pn = r_prev + n;
    pb = r_prev + N + n;
    out = r_out + n * C;
    for (int j = 0; j < Cp; ++j) {
      const int c = j < C ? cand[j] : -1;
      col[j] = c < 0 ? 0 : c;
      rep[j] = (prefix_len > 0 && c == last) ? 1.0f : 0.0f;
      rn[j] = prefix_len == 0 ? static_cast<float>(lp[col[j]]) : kLogZero;
      rb[j] = kLogZero;
      ps[j] = kLogZero;
    }
    for (int t = 0; t + 1 < std::min(len, p.frames); ++t) {
      phi_sum[t] = ctc::log_add(pn[t * 2 * N], pb[t * 2 * N]);
    }
    std::copy(rn, rn + C, out);
    std::fill(out + N * C, out + N * C + C, kLogZero);
  }

  // Frame t >= 1. Candidates go through whole vectors (gathered lane by lane, written to r_out
  // straight from the registers): re-reading scratch rows written by stores of another size
  // would stall on store forwarding whenever C is not a multiple of W.
  LEAPDEC_SIMD_INLINE void step(int t) {
    const int C = p.num_cands, Cp = (C + W - 1) / W * W;
    const int64_t N = p.num_hyps, V = p.vocab;
    if (t == start) std::copy(rn, rn + Cp, ps);
    float* out_n = out + t * 2 * N * C;  // r_out[t, 0, n, :]
    float* out_b = out_n + N * C;        // r_out[t, 1, n, :]
    if (t < start) {
      std::fill(rn, rn + Cp, kLogZero);
      std::fill(rb, rb + Cp, kLogZero);
      std::fill(out_n, out_n + C, kLogZero);
      std::fill(out_b, out_b + C, kLogZero);
      return;
    }
    if (t < len) {
      const T* row = lp + t * V;
      const vf<W> xb = simd::splat<W>(static_cast<float>(row[p.blank]));
      const vf<W> phi_rep = simd::splat<W>(pb[(t - 1) * 2 * N]);
      const vf<W> phi_all = simd::splat<W>(phi_sum[t - 1]);
      for (int j = 0; j < Cp; j += W) {
        const vf<W> r0 = simd::load<W>(rn + j), r1 = simd::load<W>(rb + j);
        vf<W> x;
        for (int k = 0; k < W; ++k) x[k] = static_cast<float>(row[col[j + k]]);
        const vf<W> phi = simd::load<W>(rep + j) > 0.5f ? phi_rep : phi_all;
        const vf<W> new_n = log_add<W>(r0, phi) + x, new_b = log_add<W>(r0, r1) + xb;
        simd::store<W>(rn + j, new_n);
        simd::store<W>(rb + j, new_b);
        simd::store<W>(ps + j, log_add<W>(simd::load<W>(ps + j), phi + x));
        store_row<W>(out_n, new_n, j, C);
        store_row<W>(out_b, new_b, j, C);
      }
    } else {
      const vf<W> zero = simd::splat<W>(kLogZero);
      for (int j = 0; j < Cp; j += W) {
        const vf<W> new_b = log_add<W>(simd::load<W>(rn + j), simd::load<W>(rb + j));
        simd::store<W>(rb + j, new_b);
        simd::store<W>(rn + j, zero);
        store_row<W>(out_n, zero, j, C);
        store_row<W>(out_b, new_b, j, C);
      }
    }
  }

  LEAPDEC_SIMD_INLINE void finish(float* psi_out) {
    const int C = p.num_cands, Cp = (C + W - 1) / W * W;
    const int64_t N = p.num_hyps, out_t = 2 * N * C;
    if (start >= p.frames) std::copy(rn, rn + Cp, ps);
    const float end_score = ctc::log_add(pn[(len - 1) * 2 * N], pb[(len - 1) * 2 * N]);
    for (int j = 0; j < C; ++j) {
      const int c = cand[j];
      float s = ps[j];
      if (c < 0) {
        for (int t = 0; t < p.frames; ++t) out[t * out_t + j] = out[t * out_t + N * C + j] = kLogZero;
        s = kLogZero;
      } else if (c == p.eos) {
        s = end_score;
      } else if (c == p.blank) {
        s = kLogZero;
      }
      psi_out[n * C + j] = s;
    }
  }
};

template <typename T>
struct Args {
  const T* lp;
  const int* frame_lens;
  const float* r_prev;
  const int* prefix_len;
  const int* last_token;
  const int* hyp_utt;
  const int* cand;
  float* r_out;
  float* psi;
};

// Hypotheses in blocks of kBlock: frame by frame across the block, so that frame t's writes
// r_out[t, k, n0 .. n0 + kBlock, :] are one contiguous run instead of T strided rows per hypothesis.
constexpr int kBlock = 8;

template <int W, typename T>
LEAPDEC_SIMD_INLINE void score_range(const ctc::Problem& p, const Args<T>& a, int64_t begin, int64_t end) {
  const int Cp = (p.num_cands + W - 1) / W * W;
  const size_t per_hyp = 5 * static_cast<size_t>(Cp) + p.frames;
  std::vector<float> scratch(kBlock * per_hyp);
  std::vector<HypRow<W, T>> rows;
  rows.reserve(kBlock);
  for (int64_t n0 = begin; n0 < end; n0 += kBlock) {
    rows.clear();
    for (int64_t n = n0; n < std::min<int64_t>(end, n0 + kBlock); ++n) {
      const int b = a.hyp_utt[n];
      rows.emplace_back(p, a.lp + static_cast<int64_t>(b) * p.frames * p.vocab, a.frame_lens[b], a.r_prev,
                        a.prefix_len[n], a.last_token[n], n, a.cand + n * p.num_cands, a.r_out,
                        scratch.data() + (n - n0) * per_hyp);
    }
    for (int t = 1; t < p.frames; ++t) {
      for (auto& row : rows) row.step(t);
    }
    for (auto& row : rows) row.finish(a.psi);
  }
}

template <typename T>
void score_range_base(const ctc::Problem& p, const Args<T>& a, int64_t begin, int64_t end) {
  score_range<4>(p, a, begin, end);
}
#ifdef LEAPDEC_SIMD_X86
template <typename T>
LEAPDEC_TARGET_AVX2 void score_range_avx2(const ctc::Problem& p, const Args<T>& a, int64_t begin, int64_t end) {
  score_range<8>(p, a, begin, end);
}
template <typename T>
LEAPDEC_TARGET_AVX512 void score_range_avx512(const ctc::Problem& p, const Args<T>& a, int64_t begin,
                                              int64_t end) {
  score_range<16>(p, a, begin, end);
}
#endif

template <typename T>
void run(const ctc::Problem& p, const Args<T>& a) {
  auto fn = &score_range_base<T>;
#ifdef LEAPDEC_SIMD_X86
  // Rows shorter than 16 candidates would waste most of an AVX-512 vector.
  switch (simd::best_isa()) {
    case simd::Isa::kAvx512: fn = p.num_cands > 8 ? &score_range_avx512<T> : &score_range_avx2<T>; break;
    case simd::Isa::kAvx2: fn = &score_range_avx2<T>; break;
    case simd::Isa::kBase: break;
  }
#endif
  // Work per hypothesis ~ T * C log-adds; a task gets at least ~64k of them.
  const int64_t per_hyp = std::max<int64_t>(1, static_cast<int64_t>(p.frames) * p.num_cands);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / per_hyp);
  at::parallel_for(0, p.num_hyps, grain, [&](int64_t begin, int64_t end) { fn(p, a, begin, end); });
}

}  // namespace

void ctc_prefix_score_cpu(at::Tensor& r_out, at::Tensor& psi, const at::Tensor& log_probs,
                          const at::Tensor& frame_lens, const at::Tensor& r_prev,
                          const at::Tensor& prefix_len, const at::Tensor& last_token,
                          const at::Tensor& hyp_utt, const at::Tensor& cand, int64_t blank,
                          int64_t eos) {
  const ctc::Problem p = check_ctc_prefix_score_args(r_out, psi, log_probs, frame_lens, r_prev,
                                                     prefix_len, last_token, hyp_utt, cand, blank, eos);
  TORCH_CHECK(log_probs.device().is_cpu(), "ctc_prefix_score_cpu: log_probs must be a CPU tensor");
  const int64_t B = log_probs.size(0);
  const int* lens = frame_lens.data_ptr<int>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lens[b] >= 1 && lens[b] <= p.frames, "frame_lens[", b, "] = ", lens[b],
                " must be in [1, T=", p.frames, "]");
  }
  const int* utt = hyp_utt.data_ptr<int>();
  const int* plen = prefix_len.data_ptr<int>();
  for (int64_t n = 0; n < p.num_hyps; ++n) {
    TORCH_CHECK(utt[n] >= 0 && utt[n] < B, "hyp_utt[", n, "] = ", utt[n], " must be in [0, B=", B, ")");
    TORCH_CHECK(plen[n] >= 0, "prefix_len[", n, "] = ", plen[n], " must be >= 0");
  }
  const int* cp = cand.data_ptr<int>();
  for (int64_t i = 0; i < cand.numel(); ++i) {
    TORCH_CHECK(cp[i] >= -1 && cp[i] < p.vocab, "cand[", i / std::max(p.num_cands, 1), ", ",
                i % std::max(p.num_cands, 1), "] = ", cp[i], " must be in [-1, V=", p.vocab,
                ") (-1 pads a candidate row)");
  }
  if (p.num_hyps == 0 || p.num_cands == 0) return;
  auto go = [&](auto* lp) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(lp)>>;
    Args<T> a{lp, lens, r_prev.data_ptr<float>(), plen, last_token.data_ptr<int>(), utt, cp,
              r_out.data_ptr<float>(), psi.data_ptr<float>()};
    run<T>(p, a);
  };
  switch (log_probs.scalar_type()) {
    case at::kFloat: go(log_probs.data_ptr<float>()); break;
    case at::kBFloat16: go(static_cast<const c10::BFloat16*>(log_probs.data_ptr())); break;
    case at::kHalf: go(static_cast<const c10::Half*>(log_probs.data_ptr())); break;
    default: TORCH_CHECK(false, "ctc_prefix_score: unsupported log_probs dtype ", log_probs.scalar_type());
  }
}

}  // namespace leapdec
