// CPU kernels of the diffusion-decoding ops (reference.py: unmask_and_filter,
// topological_reorder), on the torch-free logic of leapdec/unmask.cuh and leapdec/reorder.cuh.
//
// unmask_and_filter runs in two phases like the CUDA kernels: (1) every processed position's
// statistics in one pass over its logits (parallel over positions), (2) the commit rules of
// each row (parallel over rows). Invalid logits (NaN, +inf, or no finite value at a processed
// position) are an error here; the CUDA kernels instead never commit such a position.
// The argument checks are shared with the CUDA launcher (csrc/diffusion_checks.cpp).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "diffusion_checks.h"
#include "simd.h"
#include "leapdec/reorder.cuh"
#include "leapdec/unmask.cuh"
#include "ops.h"

// The simd helpers are always inlined into their (ISA-specific) callers, so GCC's note about the
// vector-return ABI of targets without AVX-512 does not apply (as in simd.h).
#pragma GCC diagnostic ignored "-Wpsabi"

namespace leapdec {


// ---------------------------------------------------------------- CPU unmask_and_filter

namespace {

using unmask::Params;
using unmask::Policy;

constexpr int kChunk = 16;                    // logits folded per stats_add call
constexpr int64_t kParallelElems = 1 << 16;   // logits per parallel task, at least
constexpr float kInf = std::numeric_limits<float>::infinity();

template <typename T>
inline float as_float(T x) {
  return static_cast<float>(x);
}

template <int W>
LEAPDEC_SIMD_INLINE bool any_lane(const simd::vi<W>& m) {
  int32_t r = 0;
  for (int i = 0; i < W; ++i) r |= m[i];
  return r != 0;
}

// Greedy statistics of one row x[V] (no temperature), vectorized W floats at a time: pass 1
// finds the max (and NaN / +inf), a scan finds its first index, pass 2 sums exp(x - m) and
// exp(x - m) (x - m). The row stays in cache between the passes, so it is read from memory once.
template <int W>
LEAPDEC_SIMD_INLINE void greedy_row_stats_w(const float* x, int64_t V, unmask::SoftmaxStats& st) {
  using F = simd::vf<W>;
  using I = simd::vi<W>;
  const int64_t vv = V - V % W;
  const F pinf = simd::splat<W>(kInf), ninf = simd::splat<W>(-kInf);
  F vmx = ninf;
  I bad = {};
  for (int64_t v = 0; v < vv; v += W) {
    const F a = simd::load<W>(x + v);
    bad |= (a != a) | (a == pinf);
    vmx = simd::vmax<W>(vmx, a);
  }
  float m = vv > 0 ? simd::hmax<W>(vmx) : -kInf;
  bool invalid = any_lane<W>(bad);
  for (int64_t v = vv; v < V; ++v) {
    invalid |= std::isnan(x[v]) || x[v] == kInf;
    m = std::max(m, x[v]);
  }
  unmask::stats_init(st);
  if (invalid) {
    st.invalid = 1;
    return;
  }
  if (m == -kInf) return;  // no finite logit: finalize reports it invalid
  int64_t idx = -1;
  const F mv = simd::splat<W>(m);
  for (int64_t v = 0; v < vv && idx < 0; v += W) {
    if (!any_lane<W>(simd::load<W>(x + v) == mv)) continue;
    for (int j = 0; j < W; ++j) {
      if (x[v + j] == m) {
        idx = v + j;
        break;
      }
    }
  }
  for (int64_t v = vv; v < V && idx < 0; ++v) {
    if (x[v] == m) idx = v;
  }
  F vs = {}, vt = {};
  for (int64_t v = 0; v < vv; v += W) {
    const F d = simd::load<W>(x + v) - mv;
    const F e = simd::exp_nonpos<W>(d);
    vs += e;
    vt += d > ninf ? e * d : F{};
  }
  float s = simd::hsum<W>(vs), t = simd::hsum<W>(vt);
  for (int64_t v = vv; v < V; ++v) {
    const float d = x[v] - m;
    if (d > -kInf) {
      const float e = std::exp(d);
      s += e;
      t += e * d;
    }
  }
  st.m = m;
  st.s = s;
  st.t = t;
  st.best_score = m;
  st.best_x = m;
  st.best_idx = static_cast<int>(idx);
}

void greedy_row_stats_base(const float* x, int64_t V, unmask::SoftmaxStats& st) {
  greedy_row_stats_w<4>(x, V, st);
}

#ifdef LEAPDEC_SIMD_X86
LEAPDEC_TARGET_AVX2 void greedy_row_stats_avx2(const float* x, int64_t V, unmask::SoftmaxStats& st) {
  greedy_row_stats_w<8>(x, V, st);
}

LEAPDEC_TARGET_AVX512 void greedy_row_stats_avx512(const float* x, int64_t V,
                                                   unmask::SoftmaxStats& st) {
  greedy_row_stats_w<16>(x, V, st);
}
#endif

using GreedyRowStatsFn = void (*)(const float*, int64_t, unmask::SoftmaxStats&);

// The widest variant this CPU runs (simd::best_isa, LEAPDEC_CPU_ISA lowers it).
GreedyRowStatsFn greedy_row_stats_for_cpu() {
#ifdef LEAPDEC_SIMD_X86
  switch (simd::best_isa()) {
    case simd::Isa::kAvx512: return &greedy_row_stats_avx512;
    case simd::Isa::kAvx2: return &greedy_row_stats_avx2;
    case simd::Isa::kBase: break;
  }
#endif
  return &greedy_row_stats_base;
}

// Phase 1: predicted / confidence / entropy [B, L] of every processed position.
// Returns the first invalid position (b * L + l), or -1 when every processed one is valid.
template <typename T>
int64_t position_stats(const T* logits, const bool* masked, const int* block_start,
                       const int* block_end, const int64_t* seeds, int* predicted,
                       float* confidence, float* entropy, const Params& p) {
  const int64_t L = p.seq_len, V = p.vocab, n = static_cast<int64_t>(p.batch) * L;
  const bool sample = p.temperature > 0.f;
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};
  const GreedyRowStatsFn greedy_row_stats = greedy_row_stats_for_cpu();
  at::parallel_for(0, n, std::max<int64_t>(1, kParallelElems / V), [&](int64_t begin, int64_t end) {
    float x[kChunk], score[kChunk];
    for (int64_t pos = begin; pos < end; ++pos) {
      const int64_t b = pos / L, l = pos % L;
      if (!unmask::is_processed(static_cast<int>(l), block_start[b], block_end[b], masked[pos], p.eotp)) {
        predicted[pos] = -1;
        confidence[pos] = -kInf;
        entropy[pos] = kInf;
        continue;
      }
      const T* row = logits + pos * V;
      const uint32_t key =
          sample ? unmask::noise_key(static_cast<uint64_t>(seeds[b]), static_cast<uint32_t>(l)) : 0u;
      unmask::SoftmaxStats st;
      unmask::stats_init(st);
      if constexpr (std::is_same_v<T, float>) {
        if (!sample) greedy_row_stats(row, V, st);  // float32 rows: the vectorized path
      }
      const bool chunked = sample || !std::is_same_v<T, float>;
      for (int64_t v0 = 0; chunked && v0 < V; v0 += kChunk) {
        const int cnt = static_cast<int>(std::min<int64_t>(kChunk, V - v0));
        for (int j = 0; j < cnt; ++j) x[j] = as_float(row[v0 + j]);
        if (sample) {
          for (int j = 0; j < cnt; ++j) {
            score[j] = unmask::mul_add_rn(p.temperature, unmask::gumbel(key, static_cast<uint32_t>(v0 + j)), x[j]);
          }
          unmask::stats_add<kChunk, false>(st, x, score, cnt, static_cast<int>(v0));
        } else {  // the CUDA kernel's greedy code, on bf16 / fp16 rows
          unmask::stats_add<kChunk, true>(st, x, x, cnt, static_cast<int>(v0));
        }
      }
      const unmask::PositionStats ps = unmask::stats_finalize(st);
      predicted[pos] = ps.predicted;
      confidence[pos] = ps.conf;
      entropy[pos] = ps.entropy;
      if (!ps.valid) {
        int64_t prev = first_bad.load();
        while (pos < prev && !first_bad.compare_exchange_weak(prev, pos)) {
        }
      }
    }
  });
  const int64_t bad = first_bad.load();
  return bad == std::numeric_limits<int64_t>::max() ? -1 : bad;
}

// Error for the invalid position pos: NaN / +inf, or no finite logit at all.
template <typename T>
[[noreturn]] void reject_logits(const T* logits, int64_t pos, const Params& p) {
  const T* row = logits + pos * static_cast<int64_t>(p.vocab);
  for (int64_t v = 0; v < p.vocab; ++v) {
    const float x = as_float(row[v]);
    TORCH_CHECK(!std::isnan(x) && x != kInf, "logits[", pos / p.seq_len, ", ", pos % p.seq_len, ", ", v,
                "] is ", x, ": unmask_and_filter needs finite logits (-inf is allowed)");
  }
  TORCH_CHECK(false, "logits[", pos / p.seq_len, ", ", pos % p.seq_len,
              "] has no finite value (every logit is -inf)");
}

// Phase 2: the commit rules of row b (see unmask.cuh and reference.py for the rules).
template <typename T, typename TokT>
void commit_row(int64_t b, const T* logits, TokT* tokens, bool* masked, int* committed,
                const float* confidence, int* eot_pos, const int* predicted, const float* entropy,
                const int* block_start, const int* block_end, const int* k, const float* w1,
                const float* b1, const float* w2, const float* b2, const Params& p) {
  const int L = p.seq_len, V = p.vocab;
  const int64_t row = b * L;
  const int start = block_start[b], end = block_end[b], W = end - start;
  std::vector<uint8_t> flags(L);
  int first_masked = L;
  for (int l = 0; l < L; ++l) {
    const bool m = masked[row + l];
    uint8_t f = m ? unmask::kFlagMasked : 0;
    if (predicted[row + l] >= 0) f |= unmask::kFlagProcessed | unmask::kFlagValid;
    flags[l] = f;
    if (m && l >= start && l < end && l < first_masked) first_masked = l;
  }

  std::vector<uint8_t> accept;
  if (p.policy == Policy::kLearned) {
    std::vector<float> fx(p.filter_in), fh(p.filter_hidden);
    for (int f = 0; f < p.filter_in; ++f) {
      const int l = start + f;
      const bool inside = l < end;
      fx[f] = unmask::filter_input(inside, inside && (flags[l] & unmask::kFlagValid),
                                   inside ? confidence[row + l] : 0.f);
    }
    for (int j = 0; j < p.filter_hidden; ++j) fh[j] = unmask::filter_hidden_unit(w1, b1, fx.data(), p.filter_in, j);
    accept.resize(p.filter_in);
    for (int i = 0; i < p.filter_in; ++i) {
      accept[i] = static_cast<double>(unmask::filter_output_unit(w2, b2, fh.data(), p.filter_hidden, i)) >
                  p.accept_logit;
    }
  }

  // Rank the candidates, best first.
  std::vector<uint64_t> keys;
  keys.reserve(W);
  for (int i = 0; i < W; ++i) {
    const int l = start + i;
    if ((flags[l] & unmask::kFlagMasked) && (flags[l] & unmask::kFlagValid)) {
      keys.push_back(unmask::rank_key(unmask::priority_of(p.policy, confidence[row + l], entropy[row + l],
                                                          p.position_penalty, l - first_masked),
                                      i));
    }
  }
  std::sort(keys.begin(), keys.end());
  const int nc = static_cast<int>(keys.size());
  int passing = 0;
  if (p.policy == Policy::kThreshold || p.policy == Policy::kFactor || p.policy == Policy::kEntropy) {
    for (int r = 0; r < nc; ++r) passing += unmask::passes_at_rank(p, unmask::key_priority(keys[r]), r) ? 1 : 0;
  }
  const int quota = unmask::commit_quota(p, k != nullptr ? k[b] : 1, nc, passing);

  int count = 0, first_eos = L;
  for (int r = 0; r < nc; ++r) {
    const int off = unmask::key_offset(keys[r]);
    const bool take = r < quota || (p.policy == Policy::kLearned && off < p.filter_in && accept[off]);
    if (!take) continue;
    const int l = start + off;
    tokens[row + l] = static_cast<TokT>(predicted[row + l]);
    masked[row + l] = false;
    flags[l] |= unmask::kFlagCommitted;
    ++count;
    if (static_cast<int64_t>(predicted[row + l]) == p.eos_id) first_eos = std::min(first_eos, l);
  }

  if (p.revise) {
    std::vector<uint64_t> eligible;
    for (int i = 0; i < W; ++i) {
      const int l = start + i;
      if ((flags[l] & unmask::kFlagMasked) || !(flags[l] & unmask::kFlagValid)) continue;
      const int64_t tok = static_cast<int64_t>(tokens[row + l]);
      const int pred = predicted[row + l];
      const T* lg = logits + (row + l) * static_cast<int64_t>(V);
      const float logit_tok = (tok >= 0 && tok < V) ? as_float(lg[tok]) : -kInf;
      if (unmask::revise_eligible(tok, pred, p.pad_id, V, as_float(lg[pred]), logit_tok)) {
        eligible.push_back(unmask::rank_key(unmask::canonical_zero(confidence[row + l]), i));
      }
    }
    std::sort(eligible.begin(), eligible.end());
    const int n_rev = unmask::revise_count(p.revise_topk, static_cast<int>(eligible.size()));
    for (int r = 0; r < n_rev; ++r) {
      const int l = start + unmask::key_offset(eligible[r]);
      tokens[row + l] = static_cast<TokT>(predicted[row + l]);
    }
  }

  int eot = -1;
  if (p.eotp && p.eos_id >= 0) {
    if (first_eos < L) {
      eot = first_eos;
    } else {
      uint64_t best = 0;
      for (int l = start; l < L; ++l) {
        const uint8_t f = flags[l];
        if ((f & unmask::kFlagMasked) && !(f & unmask::kFlagCommitted) && (f & unmask::kFlagValid) &&
            static_cast<int64_t>(predicted[row + l]) == p.eos_id &&
            static_cast<double>(confidence[row + l]) >= p.eot_threshold) {
          best = std::max(best, unmask::eot_key(confidence[row + l], l));
        }
      }
      if (best != 0) eot = unmask::eot_key_position(best);
    }
    for (int l = eot + 1; eot >= 0 && l < L; ++l) {
      tokens[row + l] = static_cast<TokT>(p.pad_id);
      masked[row + l] = false;
    }
  }
  committed[b] = count;
  eot_pos[b] = eot;
}

template <typename T>
void unmask_cpu_impl(const at::Tensor& logits, at::Tensor& tokens, at::Tensor& masked,
                     at::Tensor& committed, at::Tensor& confidence, at::Tensor& eot_pos,
                     at::Tensor& predicted, at::Tensor& entropy, const at::Tensor& block_start,
                     const at::Tensor& block_end, const std::optional<at::Tensor>& k,
                     const std::optional<at::Tensor>& seeds, const std::optional<at::Tensor>& w1,
                     const std::optional<at::Tensor>& b1, const std::optional<at::Tensor>& w2,
                     const std::optional<at::Tensor>& b2, const Params& p) {
  const T* lg = static_cast<const T*>(logits.data_ptr());
  bool* mk = masked.data_ptr<bool>();
  const int* bs = block_start.data_ptr<int>();
  const int* be = block_end.data_ptr<int>();
  int* pred = predicted.data_ptr<int>();
  float* conf = confidence.data_ptr<float>();
  float* ent = entropy.data_ptr<float>();
  const int64_t bad = position_stats<T>(lg, mk, bs, be, seeds.has_value() ? seeds->data_ptr<int64_t>() : nullptr,
                                        pred, conf, ent, p);
  if (bad >= 0) reject_logits(lg, bad, p);
  const int* kp = k.has_value() ? k->data_ptr<int>() : nullptr;
  const float* w1p = w1.has_value() ? w1->data_ptr<float>() : nullptr;
  const float* b1p = b1.has_value() ? b1->data_ptr<float>() : nullptr;
  const float* w2p = w2.has_value() ? w2->data_ptr<float>() : nullptr;
  const float* b2p = b2.has_value() ? b2->data_ptr<float>() : nullptr;
  int* cm = committed.data_ptr<int>();
  int* eot = eot_pos.data_ptr<int>();
  auto run = [&](auto* tok) {
    at::parallel_for(0, p.batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        commit_row<T>(b, lg, tok, mk, cm, conf, eot, pred, ent, bs, be, kp, w1p, b1p, w2p, b2p, p);
      }
    });
  };
  if (tokens.scalar_type() == at::kLong) {
    run(tokens.data_ptr<int64_t>());
  } else {
    run(tokens.data_ptr<int32_t>());
  }
}

}  // namespace

void unmask_and_filter_cpu(const at::Tensor& logits, at::Tensor& tokens, at::Tensor& masked,
                           at::Tensor& committed, at::Tensor& confidence, at::Tensor& eot_pos,
                           at::Tensor& predicted, at::Tensor& entropy, const at::Tensor& block_start,
                           const at::Tensor& block_end, const std::optional<at::Tensor>& k,
                           const std::optional<at::Tensor>& seeds,
                           const std::optional<at::Tensor>& filter_w1,
                           const std::optional<at::Tensor>& filter_b1,
                           const std::optional<at::Tensor>& filter_w2,
                           const std::optional<at::Tensor>& filter_b2,
                           const std::optional<at::Tensor>& workspace, const std::string& policy,
                           double threshold, double factor, double position_penalty,
                           double temperature, int64_t eos_id, int64_t pad_id, bool eotp,
                           double eot_threshold, bool revise, double revise_topk,
                           double accept_threshold, int64_t num_splits) {
  const Params p = check_unmask_and_filter_args(
      logits, tokens, masked, committed, confidence, eot_pos, predicted, entropy, block_start,
      block_end, k, seeds, filter_w1, filter_b1, filter_w2, filter_b2, policy, threshold, factor,
      position_penalty, temperature, eos_id, pad_id, eotp, eot_threshold, revise, revise_topk,
      accept_threshold);
  TORCH_CHECK(num_splits >= 1, "num_splits must be >= 1, got ", num_splits);
  (void)workspace;  // the CPU kernel keeps its statistics in the outputs
  const int* bs = block_start.data_ptr<int>();
  const int* be = block_end.data_ptr<int>();
  for (int64_t b = 0; b < p.batch; ++b) {
    TORCH_CHECK(bs[b] >= 0 && bs[b] <= be[b] && be[b] <= p.seq_len, "block_start[", b, "] = ", bs[b],
                ", block_end[", b, "] = ", be[b], ": the window must satisfy 0 <= start <= end <= L (",
                p.seq_len, ")");
    TORCH_CHECK(p.policy != Policy::kLearned || be[b] - bs[b] <= p.filter_in, "row ", b, "'s window has ",
                be[b] - bs[b], " positions, more than the learned filter's input size F = ", p.filter_in);
  }
  if (p.batch == 0 || p.seq_len == 0) {
    committed.zero_();
    eot_pos.fill_(-1);
    return;
  }
  switch (logits.scalar_type()) {
    case at::kFloat:
      unmask_cpu_impl<float>(logits, tokens, masked, committed, confidence, eot_pos, predicted, entropy,
                             block_start, block_end, k, seeds, filter_w1, filter_b1, filter_w2,
                             filter_b2, p);
      break;
    case at::kBFloat16:
      unmask_cpu_impl<c10::BFloat16>(logits, tokens, masked, committed, confidence, eot_pos, predicted,
                                     entropy, block_start, block_end, k, seeds, filter_w1, filter_b1,
                                     filter_w2, filter_b2, p);
      break;
    case at::kHalf:
      unmask_cpu_impl<c10::Half>(logits, tokens, masked, committed, confidence, eot_pos, predicted,
                                 entropy, block_start, block_end, k, seeds, filter_w1, filter_b1,
                                 filter_w2, filter_b2, p);
      break;
    default:
      TORCH_CHECK(false, "unmask_and_filter: unsupported logits dtype ", logits.scalar_type());
  }
}

// ---------------------------------------------------------------- CPU topological_reorder

namespace {

template <typename TokT, typename PosT>
void reorder_cpu_impl(const at::Tensor& tokens, const at::Tensor& masked, const at::Tensor& positions,
                      at::Tensor& tokens_out, at::Tensor& positions_out, at::Tensor& perm,
                      at::Tensor& inv_perm) {
  const int64_t batch = tokens.size(0);
  const int w = static_cast<int>(tokens.size(1));
  const TokT* tok = tokens.data_ptr<TokT>();
  const bool* m = masked.data_ptr<bool>();
  const PosT* pos = positions.data_ptr<PosT>();
  TokT* tok_out = tokens_out.data_ptr<TokT>();
  PosT* pos_out = positions_out.data_ptr<PosT>();
  int32_t* pm = perm.data_ptr<int32_t>();
  int32_t* ipm = inv_perm.data_ptr<int32_t>();
  const int64_t grain = std::max<int64_t>(1, kParallelElems / std::max(w, 1));
  at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t o = b * w;
      reorder::reorder_row(tok + o, m + o, pos + o, tok_out + o, pos_out + o, pm + o, ipm + o, w);
    }
  });
}

template <typename TokT>
void reorder_dispatch_pos(const at::Tensor& tokens, const at::Tensor& masked, const at::Tensor& positions,
                          at::Tensor& tokens_out, at::Tensor& positions_out, at::Tensor& perm,
                          at::Tensor& inv_perm) {
  if (positions.scalar_type() == at::kLong) {
    reorder_cpu_impl<TokT, int64_t>(tokens, masked, positions, tokens_out, positions_out, perm, inv_perm);
  } else {
    reorder_cpu_impl<TokT, int32_t>(tokens, masked, positions, tokens_out, positions_out, perm, inv_perm);
  }
}

}  // namespace

void topological_reorder_cpu(const at::Tensor& tokens, const at::Tensor& masked,
                             const at::Tensor& positions, at::Tensor& tokens_out,
                             at::Tensor& positions_out, at::Tensor& perm, at::Tensor& inv_perm) {
  check_topological_reorder_args(tokens, masked, positions, tokens_out, positions_out, perm, inv_perm);
  if (tokens.numel() == 0) return;
  if (tokens.scalar_type() == at::kLong) {
    reorder_dispatch_pos<int64_t>(tokens, masked, positions, tokens_out, positions_out, perm, inv_perm);
  } else {
    reorder_dispatch_pos<int32_t>(tokens, masked, positions, tokens_out, positions_out, perm, inv_perm);
  }
}

}  // namespace leapdec
