// ctc_prefix_score: one step of CTC prefix scoring for a batch of hypotheses x candidate tokens,
// ESPnet's CTCPrefixScoreTH semantics (Watanabe et al. 2017, Alg. 2; Seki et al. 2019), in log
// space with ESPnet's finite log-zero (-1e10, so no -inf arithmetic).
//
// Hypothesis n (a prefix g of prefix_len[n] tokens, last token last_token[n]) belongs to
// utterance b = hyp_utt[n] with frames t < len = frame_lens[b] of log_probs[b, t, :]. Its state
// is r_prev[t, {0: non-blank, 1: blank}, n] = log P(g, the alignment's last label at frame t is
// non-blank / blank). For a candidate c = cand[n, j], the prefix h = g + c gets
//   phi[t]   = r_prev[t,1,n]                        if c == last (repeated label: blank between)
//            = logaddexp(r_prev[t,0,n], r_prev[t,1,n])  otherwise (also for an empty prefix)
//   r[t,0]   = logaddexp(r[t-1,0], phi[t-1]) + x[t,c]       for start <= t < len
//   r[t,1]   = logaddexp(r[t-1,0], r[t-1,1]) + x[t,blank]
//   r[t]     = log-zero for 0 < t < start, start = max(prefix_len, 1);
//   r[0,0]   = x[0,c] when prefix_len == 0 else log-zero; r[0,1] = log-zero
//   past the end (t >= max(len, start)): r[t,0] = log-zero, r[t,1] = logaddexp(r[t-1,0], r[t-1,1])
//     (ESPnet pads frames past len with log-zero for labels and 0 for blank)
//   psi      = logsumexp(r[start-1,0], phi[t-1] + x[t,c] for start <= t < len)   (prefix score)
// and psi is replaced by the end score logaddexp(r_prev[len-1,0,n], r_prev[len-1,1,n]) when
// c == eos, by log-zero when c == blank; c < 0 (padding of a ragged candidate set) gives
// log-zero everywhere. Outputs: r_out[t, 2, n, j] and psi[n, j].
// CPU kernel: csrc/cpu/ctc.cpp (rows of candidates, SIMD); CUDA: csrc/cuda/ctc.cu (one thread
// per (n, j), looping over time). Torch-free; spec: python/leapdec/reference.py.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define LEAPDEC_CTC_FN __host__ __device__ __forceinline__
#else
#define LEAPDEC_CTC_FN inline
#endif

namespace leapdec {
namespace ctc {

constexpr float kLogZero = -1e10f;  // ESPnet's logzero

// log(exp(a) + exp(b)) for finite a, b. A term below exp(-88) relative to the other cannot
// change it in float32 (and expf's underflow path is slow on the host): skipped.
LEAPDEC_CTC_FN float log_add(float a, float b) {
  const float hi = a > b ? a : b;
  const float d = (a > b ? b : a) - hi;
  return d < -88.0f ? hi : hi + log1pf(expf(d));
}

// The shape of one call.
struct Problem {
  int frames;      // T (the padded frame count of log_probs and of the states)
  int vocab;       // V
  int num_hyps;    // N
  int num_cands;   // C
  int blank;
  int eos;         // candidates equal to eos get the end score (may be outside [0, V): none)
};

// One column (hypothesis n, candidate slot j) over all frames. lp: the utterance's log_probs
// [T, V] (a pointer or view whose lp[i] converts to float); r_prev indexed [t, k, n];
// r_out [t, k, n, j]; c = cand[n, j] (already in [-1, V)).
template <typename LP>
LEAPDEC_CTC_FN void score_column(const Problem& p, const LP& lp, int len, const float* r_prev,
                                 int prefix_len, int last, int n, int j, int c, float* r_out,
                                 float* psi_out) {
  const int64_t N = p.num_hyps, C = p.num_cands;
  const int64_t out_t = 2 * N * C;  // stride of one frame in r_out
  float* out = r_out + n * C + j;
  if (c < 0) {
    for (int t = 0; t < p.frames; ++t) {
      out[t * out_t] = kLogZero;
      out[t * out_t + N * C] = kLogZero;
    }
    psi_out[n * C + j] = kLogZero;
    return;
  }
  const bool repeat = prefix_len > 0 && c == last;
  const int start = prefix_len > 1 ? prefix_len : 1;
  float rn = prefix_len == 0 ? static_cast<float>(lp[c]) : kLogZero;
  float rb = kLogZero;
  out[0] = rn;
  out[N * C] = rb;
  float psi = kLogZero;
  for (int t = 1; t < p.frames; ++t) {
    if (t == start) psi = rn;  // r[start-1, 0]
    float new_n = kLogZero, new_b = kLogZero;
    if (t >= start) {
      if (t < len) {
        const float pn = r_prev[(t - 1) * 2 * N + n], pb = r_prev[(t - 1) * 2 * N + N + n];
        const float phi = repeat ? pb : log_add(pn, pb);
        const float x = static_cast<float>(lp[static_cast<int64_t>(t) * p.vocab + c]);
        new_n = log_add(rn, phi) + x;
        new_b = log_add(rn, rb) + static_cast<float>(lp[static_cast<int64_t>(t) * p.vocab + p.blank]);
        psi = log_add(psi, phi + x);
      } else {
        new_b = log_add(rn, rb);
      }
    }
    rn = new_n;
    rb = new_b;
    out[t * out_t] = rn;
    out[t * out_t + N * C] = rb;
  }
  if (start >= p.frames) psi = rn;  // no frame left after the prefix: only r[start-1, 0]
  if (c == p.eos) {
    psi = log_add(r_prev[static_cast<int64_t>(len - 1) * 2 * N + n],
                  r_prev[static_cast<int64_t>(len - 1) * 2 * N + N + n]);
  } else if (c == p.blank) {
    psi = kLogZero;
  }
  psi_out[n * C + j] = psi;
}

}  // namespace ctc
}  // namespace leapdec
