// unmask_and_filter: one pass over each position's logits (online softmax: top-1 token and
// probability, entropy; Gumbel-max sampling with counter-based noise) and the per-row commit
// rules of the diffusion-LM decoders (LLaDA top-k, Fast-dLLM threshold / factor, Learn2PD
// learned filter, WeDLM entropy, ReDiff revise, End-of-Text Prediction).
//
// The functions marked LEAPDEC_UNMASK_FN are shared by the CPU kernel (csrc/cpu/diffusion.cpp)
// and the CUDA kernels at the bottom of this file, so both backends compute the same numbers
// with the same code. Torch-free; the meaning of the op is python/leapdec/reference.py.
//
// Terms (per row b of the batch, L positions, vocabulary V):
//   window      [block_start[b], block_end[b]): the positions that may commit / be revised.
//   processed   a position whose logits are read: every window position, and with eotp the
//               masked positions after the window (End-of-Text candidates).
//   candidate   a masked, processed, valid window position.
//   valid       the position's logits hold no NaN / +inf and at least one finite value.
//   priority    what candidates are ranked by, best first: the confidence p(predicted), or
//               for the entropy policy -(entropy + penalty * (l - first masked index)).
//               Ties go to the lower position index.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LEAPDEC_UNMASK_FN __host__ __device__ __forceinline__
#else
#define LEAPDEC_UNMASK_FN inline
#endif
#if defined(__CUDA_ARCH__)
#define LEAPDEC_UNMASK_UNROLL _Pragma("unroll")
#else
#define LEAPDEC_UNMASK_UNROLL
#endif

namespace leapdec {
namespace unmask {

enum class Policy : int { kTopK = 0, kThreshold = 1, kFactor = 2, kLearned = 3, kEntropy = 4 };

// Scalar arguments of one call (the tensors travel separately).
struct Params {
  int batch = 0, seq_len = 0, vocab = 0;
  Policy policy = Policy::kTopK;
  double threshold = 0.0;        // threshold: tau (commit conf >= tau); entropy: commit score < it
  double factor = 1.0;           // factor: largest n with conf_(n) >= 1 - factor / (n + 1)
  float position_penalty = 0.f;  // entropy: score = entropy + penalty * (l - first masked)
  float temperature = 0.f;       // > 0: Gumbel-max sampling of the predicted token
  int64_t eos_id = -1;           // < 0: no EOS (no End-of-Text Prediction)
  int64_t pad_id = -1;           // written after an EOS by End-of-Text Prediction
  bool eotp = false;
  double eot_threshold = 0.0;    // a masked EOS prediction truncates when conf >= this
  bool revise = false;
  double revise_topk = 1.0;      // fraction of the eligible revisions applied, best first
  double accept_logit = 0.0;     // learned: accept where filter logit > logit(accept_threshold)
  int filter_in = 0, filter_hidden = 0;
};

// Bits of the per-position flags the commit step keeps (CUDA: in shared memory).
constexpr uint8_t kFlagMasked = 1;     // masked when the call started
constexpr uint8_t kFlagProcessed = 2;  // logits were read
constexpr uint8_t kFlagValid = 4;      // processed and the logits were valid
constexpr uint8_t kFlagCommitted = 8;  // committed by this call

// ------------------------------------------------------------------ float bits and order

LEAPDEC_UNMASK_FN uint32_t float_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

LEAPDEC_UNMASK_FN float bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// Monotone map float -> uint32 (a < b  <=>  ordered(a) < ordered(b)), and its inverse.
LEAPDEC_UNMASK_FN uint32_t float_to_ordered(float f) {
  const uint32_t u = float_bits(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

LEAPDEC_UNMASK_FN float ordered_to_float(uint32_t o) {
  return bits_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

// -0 -> +0, so the integer order of sort keys agrees with float comparison.
LEAPDEC_UNMASK_FN float canonical_zero(float x) { return x == 0.f ? 0.f : x; }

// a * b + c with two roundings (never fused into an FMA), as PyTorch computes it.
LEAPDEC_UNMASK_FN float mul_add_rn(float a, float b, float c) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(__fmul_rn(a, b), c);
#else
  volatile float prod = a * b;
  return prod + c;
#endif
}

// ------------------------------------------------------------------ counter-based noise
// Gumbel noise g(seed, l, v) is a pure function of the row's seed, the position l and the
// token v (not of b, so a row's samples do not depend on the rest of the batch):
//   key = mix(mix(lo32(seed) ^ 0x9e3779b9) ^ hi32(seed));  key_l = mix(key ^ (l * 0x85ebca6b))
//   h = mix(key_l ^ (v * 0x9e3779b9));  u = (2 * (h >> 9) + 1) * 2^-24  in (0, 1)
//   g = -log(-log(u))      (float32; all products are mod 2^32)
// mix is Wellons' lowbias32. The sampled token is argmax_v (logit_v + temperature * g_v).

LEAPDEC_UNMASK_FN uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

LEAPDEC_UNMASK_FN uint32_t noise_key(uint64_t seed, uint32_t position) {
  uint32_t a = mix32(static_cast<uint32_t>(seed) ^ 0x9e3779b9U);
  a = mix32(a ^ static_cast<uint32_t>(seed >> 32));
  return mix32(a ^ (position * 0x85ebca6bU));
}

LEAPDEC_UNMASK_FN float noise_uniform(uint32_t key, uint32_t token) {
  const uint32_t h = mix32(key ^ (token * 0x9e3779b9U));
  return static_cast<float>(((h >> 9) << 1) | 1u) * 5.9604644775390625e-08f;  // 2^-24
}

LEAPDEC_UNMASK_FN float gumbel(uint32_t key, uint32_t token) {
  return -logf(-logf(noise_uniform(key, token)));
}

// ------------------------------------------------------------------ online softmax

// Running statistics of a stretch of one position's logits x_v.
struct SoftmaxStats {
  float m;           // max x (-inf until a finite value is seen)
  float s;           // sum exp(x - m)
  float t;           // sum exp(x - m) * (x - m)
  float best_score;  // max of the score (x, or x + temperature * g)
  float best_x;      // the logit at best_idx
  int best_idx;      // argmax of the score, first on ties; -1 while none
  int invalid;       // a NaN or +inf was seen
};

LEAPDEC_UNMASK_FN void stats_init(SoftmaxStats& st) {
  st.m = -INFINITY;
  st.s = 0.f;
  st.t = 0.f;
  st.best_score = -INFINITY;
  st.best_x = -INFINITY;
  st.best_idx = -1;
  st.invalid = 0;
}

// Move the reference max of (s, t) to new_m >= m.
LEAPDEC_UNMASK_FN void stats_rescale(SoftmaxStats& st, float new_m) {
  if (st.s > 0.f) {
    const float dm = st.m - new_m;
    const float sc = expf(dm);
    st.t = sc * (st.t + dm * st.s);
    st.s *= sc;
  }
  st.m = new_m;
}

// Fold n <= N logits x[0..n) at vocabulary indices idx0.. (increasing, after every index
// already folded into st) with their scores score[0..n). kGreedy: the score is the logit
// itself (score is ignored), so one comparison per logit tracks both the max and the argmax.
// A NaN or +inf logit makes s NaN (exp(NaN), exp(inf - inf)), which marks st invalid; a chunk
// with no finite logit is checked for NaN directly.
template <int N, bool kGreedy>
LEAPDEC_UNMASK_FN void stats_add(SoftmaxStats& st, const float* x, const float* score, int n,
                                 int idx0) {
  float cmax = -INFINITY;
LEAPDEC_UNMASK_UNROLL
  for (int i = 0; i < N; ++i) {
    if (i < n) {
      if constexpr (kGreedy) {
        if (x[i] > st.best_score) {
          st.best_score = x[i];
          st.best_idx = idx0 + i;
        }
      } else {
        cmax = fmaxf(cmax, x[i]);
        if (score[i] > st.best_score) {
          st.best_score = score[i];
          st.best_x = x[i];
          st.best_idx = idx0 + i;
        }
      }
    }
  }
  if constexpr (kGreedy) {
    st.best_x = st.best_score;
    cmax = st.best_score;  // >= the running max m: no finite logit is lost
  }
  if (cmax == -INFINITY) {  // nothing finite so far in this chunk: only NaN or -inf
    for (int i = 0; i < n; ++i) {
      if (x[i] != x[i]) st.invalid = 1;
    }
    return;
  }
  if (cmax > st.m) stats_rescale(st, cmax);
LEAPDEC_UNMASK_UNROLL
  for (int i = 0; i < N; ++i) {
    if (i < n) {
      const float d = x[i] - st.m;                 // -inf for a -inf logit
      const float e = expf(d);                     // 0 for -inf, NaN for NaN
      st.s += e;
      st.t += e * fmaxf(d, -3.402823466e+38f);     // 0 * (-FLT_MAX) = 0, never 0 * -inf
    }
  }
  if (st.s != st.s) st.invalid = 1;
}

// st <- st merged with o (any order: the argmax keeps the lower index on ties).
LEAPDEC_UNMASK_FN void stats_merge(SoftmaxStats& st, const SoftmaxStats& o) {
  st.invalid |= o.invalid;
  if (o.best_idx >= 0 &&
      (st.best_idx < 0 || o.best_score > st.best_score ||
       (o.best_score == st.best_score && o.best_idx < st.best_idx))) {
    st.best_score = o.best_score;
    st.best_x = o.best_x;
    st.best_idx = o.best_idx;
  }
  if (!(o.s > 0.f)) return;
  if (!(st.s > 0.f)) {
    st.m = o.m;
    st.s = o.s;
    st.t = o.t;
    return;
  }
  const float m = fmaxf(st.m, o.m);
  stats_rescale(st, m);
  const float dm = o.m - m;
  const float sc = expf(dm);
  st.s += sc * o.s;
  st.t += sc * (o.t + dm * o.s);
}

// What the commit rules see of one position.
struct PositionStats {
  int predicted;  // the argmax (or sampled) token; -1 when invalid
  float conf;     // softmax(logits)[predicted] (no temperature); NaN when invalid
  float entropy;  // -sum p log p in nats; NaN when invalid
  bool valid;
};

LEAPDEC_UNMASK_FN PositionStats stats_finalize(const SoftmaxStats& st) {
  PositionStats r;
  if (st.invalid || !(st.s > 0.f) || st.best_idx < 0 || !(st.best_x > -INFINITY)) {
    r.predicted = -1;
    r.conf = NAN;
    r.entropy = NAN;
    r.valid = false;
    return r;
  }
  r.predicted = st.best_idx;
  r.conf = expf(st.best_x - st.m) / st.s;
  r.entropy = fmaxf(logf(st.s) - st.t / st.s, 0.f);
  r.valid = true;
  return r;
}

// ------------------------------------------------------------------ commit rules

LEAPDEC_UNMASK_FN void clamp_window(int& start, int& end, int seq_len) {
  start = start < 0 ? 0 : (start > seq_len ? seq_len : start);
  end = end < start ? start : (end > seq_len ? seq_len : end);
}

LEAPDEC_UNMASK_FN bool is_processed(int l, int start, int end, bool masked, bool eotp) {
  return (l >= start && l < end) || (eotp && masked && l >= end);
}

// WeDLM's score: entropy + penalty * (l - first masked index of the window), in float32.
LEAPDEC_UNMASK_FN float entropy_score(float entropy, float penalty, int distance) {
  return mul_add_rn(penalty, static_cast<float>(distance), entropy);
}

// Higher is better: the confidence, or minus the entropy score.
LEAPDEC_UNMASK_FN float priority_of(Policy policy, float conf, float entropy, float penalty,
                                    int distance) {
  if (policy == Policy::kEntropy) return canonical_zero(-entropy_score(entropy, penalty, distance));
  return canonical_zero(conf);
}

// Does the candidate at 0-based rank r (best first) pass the policy's test? For threshold,
// factor and entropy the passing ranks are a prefix of the order (factor >= 0), so the
// number committed is how many pass (at least 1).
LEAPDEC_UNMASK_FN bool passes_at_rank(const Params& p, float priority, int rank) {
  switch (p.policy) {
    case Policy::kThreshold:
      return static_cast<double>(priority) >= p.threshold;
    case Policy::kFactor:
      return static_cast<double>(priority) >= 1.0 - p.factor / static_cast<double>(rank + 2);
    case Policy::kEntropy:
      return -static_cast<double>(priority) < p.threshold;
    default:
      return false;
  }
}

// How many of the best-ranked candidates commit: k (top-k and the learned filter's quota) or
// the passing count, clamped to [1, num_candidates] (0 when there is none).
LEAPDEC_UNMASK_FN int commit_quota(const Params& p, int k, int num_candidates, int passing) {
  if (num_candidates <= 0) return 0;
  const int n = (p.policy == Policy::kTopK || p.policy == Policy::kLearned) ? k : passing;
  return n < 1 ? 1 : (n > num_candidates ? num_candidates : n);
}

// ReDiff: how many of the `eligible` revisions are applied: ceil(fraction * eligible) (with a
// 1e-6 slack so that 0.3 * 10 gives 3), all for fraction >= 1, none for fraction <= 0.
LEAPDEC_UNMASK_FN int revise_count(double fraction, int eligible) {
  if (fraction >= 1.0) return eligible;
  if (!(fraction > 0.0)) return 0;
#ifdef __CUDA_ARCH__
  const double prod = __dmul_rn(fraction, static_cast<double>(eligible));
#else
  volatile double prod = fraction * static_cast<double>(eligible);  // never fused
#endif
  const double n = ceil(prod - 1e-6);
  return n < 0.0 ? 0 : (n > eligible ? eligible : static_cast<int>(n));
}

// Sort key: ascending key order = priority descending, then window offset ascending.
LEAPDEC_UNMASK_FN uint64_t rank_key(float priority, int offset) {
  return (static_cast<uint64_t>(~float_to_ordered(priority)) << 32) | static_cast<uint32_t>(offset);
}
constexpr uint64_t kNoKey = ~uint64_t{0};
LEAPDEC_UNMASK_FN float key_priority(uint64_t key) {
  return ordered_to_float(~static_cast<uint32_t>(key >> 32));
}
LEAPDEC_UNMASK_FN int key_offset(uint64_t key) { return static_cast<int>(key & 0xffffffffu); }

// Key whose maximum picks the End-of-Text position: highest confidence, then lowest index.
LEAPDEC_UNMASK_FN uint64_t eot_key(float conf, int l) {
  return (static_cast<uint64_t>(float_to_ordered(canonical_zero(conf))) << 32) |
         (0xffffffffu - static_cast<uint32_t>(l));
}
LEAPDEC_UNMASK_FN int eot_key_position(uint64_t key) {
  return static_cast<int>(0xffffffffu - static_cast<uint32_t>(key & 0xffffffffu));
}

// Learn2PD filter: x[F] = the window's confidences (x_j for window position start + j: its
// confidence whether masked or not, 0 when invalid; 1 past the window's end), then
// h = relu(w1 [H, F] x + b1), logit = w2 [F, H] h + b2; accept x_j where logit_j >
// log(t / (1 - t)), i.e. sigmoid(logit_j) > the accept threshold t.
LEAPDEC_UNMASK_FN float filter_input(bool inside_window, bool valid, float conf) {
  return !inside_window ? 1.f : (valid ? conf : 0.f);
}

LEAPDEC_UNMASK_FN float filter_hidden_unit(const float* w1, const float* b1, const float* x,
                                           int in, int j) {
  float acc = b1[j];
  const float* w = w1 + static_cast<int64_t>(j) * in;
  for (int f = 0; f < in; ++f) acc += w[f] * x[f];
  return fmaxf(acc, 0.f);
}

LEAPDEC_UNMASK_FN float filter_output_unit(const float* w2, const float* b2, const float* h,
                                           int hidden, int i) {
  float acc = b2[i];
  const float* w = w2 + static_cast<int64_t>(i) * hidden;
  for (int j = 0; j < hidden; ++j) acc += w[j] * h[j];
  return acc;
}

// ReDiff: may an already-unmasked window position holding `token` be rewritten with
// `predicted`? Only when they differ, the token is not padding, and the new token is more
// probable than the current one (logit_pred > logit_token; a token outside the vocabulary
// counts as improbable).
LEAPDEC_UNMASK_FN bool revise_eligible(int64_t token, int predicted, int64_t pad_id, int vocab,
                                       float logit_pred, float logit_token) {
  if (token == pad_id || token == predicted) return false;
  if (token < 0 || token >= vocab) return true;
  return logit_pred > logit_token;
}

}  // namespace unmask
}  // namespace leapdec

// ====================================================================== CUDA kernels
#if defined(__CUDACC__)

#include <cuda_runtime.h>

#include "leapdec/vec_dtypes.cuh"

namespace leapdec {
namespace unmask {

// A partial of the statistics kernel: 8 x 32-bit words per (b, l, split).
constexpr int kPartialWords = 8;

__device__ __forceinline__ void store_partial(float* dst, const SoftmaxStats& st) {
  reinterpret_cast<float4*>(dst)[0] = make_float4(st.m, st.s, st.t, st.best_score);
  reinterpret_cast<float4*>(dst)[1] =
      make_float4(st.best_x, __int_as_float(st.best_idx), __int_as_float(st.invalid), 0.f);
}

__device__ __forceinline__ SoftmaxStats load_partial(const float* src) {
  const float4 a = reinterpret_cast<const float4*>(src)[0];
  const float4 c = reinterpret_cast<const float4*>(src)[1];
  SoftmaxStats st;
  st.m = a.x;
  st.s = a.y;
  st.t = a.z;
  st.best_score = a.w;
  st.best_x = c.x;
  st.best_idx = __float_as_int(c.y);
  st.invalid = __float_as_int(c.z);
  return st;
}

__device__ __forceinline__ SoftmaxStats shfl_down_stats(const SoftmaxStats& st, int offset) {
  SoftmaxStats o;
  o.m = __shfl_down_sync(0xffffffffu, st.m, offset);
  o.s = __shfl_down_sync(0xffffffffu, st.s, offset);
  o.t = __shfl_down_sync(0xffffffffu, st.t, offset);
  o.best_score = __shfl_down_sync(0xffffffffu, st.best_score, offset);
  o.best_x = __shfl_down_sync(0xffffffffu, st.best_x, offset);
  o.best_idx = __shfl_down_sync(0xffffffffu, st.best_idx, offset);
  o.invalid = __shfl_down_sync(0xffffffffu, st.invalid, offset);
  return o;
}

// Block-wide merge; the result is valid in thread 0. kThreads is a multiple of 32.
template <int kThreads>
__device__ __forceinline__ SoftmaxStats block_merge(SoftmaxStats st) {
  constexpr int kWarps = kThreads / 32;
  __shared__ SoftmaxStats warp_stats[kWarps];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) stats_merge(st, shfl_down_stats(st, off));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_stats[warp] = st;
  __syncthreads();
  if (warp == 0) {
    if (lane < kWarps) {
      st = warp_stats[lane];
    } else {
      stats_init(st);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) stats_merge(st, shfl_down_stats(st, off));
  }
  return st;
}

// Statistics pass. grid (num_splits, L, B), kThreads threads.
//   logits [B, L, V] (T), masked [B, L], block_start/end [B] int32, seeds [B] int64 (or null)
//   -> partials [B, L, num_splits, 8] float32 for every processed position.
// Split s covers vectors [s * vecs_per_split, (s + 1) * vecs_per_split) of kVec elements
// (kVec = 16 bytes / sizeof(T) when every row is 16-byte aligned, else 1). Each thread walks
// its vectors in increasing order, kUnroll loads in flight.
template <typename T, int kVec, int kThreads, int kUnroll>
__global__ void __launch_bounds__(kThreads)
    unmask_stats_kernel(const T* __restrict__ logits, const bool* __restrict__ masked,
                        const int* __restrict__ block_start, const int* __restrict__ block_end,
                        const int64_t* __restrict__ seeds, float* __restrict__ partials, Params p,
                        int num_splits, int vecs_per_split) {
  const int split = blockIdx.x, l = blockIdx.y, b = blockIdx.z;
  const int L = p.seq_len, V = p.vocab;
  int start = block_start[b], end = block_end[b];
  clamp_window(start, end, L);
  const int64_t pos = static_cast<int64_t>(b) * L + l;
  if (!is_processed(l, start, end, masked[pos], p.eotp)) return;

  const int num_vecs = V / kVec;
  const int v_begin = split * vecs_per_split;
  const int v_end = min(num_vecs, v_begin + vecs_per_split);
  const T* row = logits + pos * V;
  const bool sample = p.temperature > 0.f;
  const uint32_t key = sample ? noise_key(static_cast<uint64_t>(seeds[b]), static_cast<uint32_t>(l)) : 0u;

  SoftmaxStats st;
  stats_init(st);
  for (int i0 = v_begin + static_cast<int>(threadIdx.x); i0 < v_end; i0 += kThreads * kUnroll) {
    float x[kUnroll][kVec];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = i0 + u * kThreads;
      if (i < v_end) {
        if constexpr (kVec > 1) {
          unpack16<T>(ld_stream16(row + static_cast<int64_t>(i) * kVec), x[u]);
        } else {
          x[u][0] = to_float(row[i]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = i0 + u * kThreads;
      if (i < v_end) {
        if (sample) {
          float score[kVec];
#pragma unroll
          for (int j = 0; j < kVec; ++j) {
            const uint32_t v = static_cast<uint32_t>(i * kVec + j);
            score[j] = mul_add_rn(p.temperature, gumbel(key, v), x[u][j]);
          }
          stats_add<kVec, false>(st, x[u], score, kVec, i * kVec);
        } else {
          stats_add<kVec, true>(st, x[u], x[u], kVec, i * kVec);
        }
      }
    }
  }
  st = block_merge<kThreads>(st);
  if (threadIdx.x == 0) {
    store_partial(partials + (pos * num_splits + split) * kPartialWords, st);
  }
}

// In-place ascending bitonic sort of keys[0..n), n a power of two; all threads take part.
__device__ __forceinline__ void bitonic_sort(uint64_t* keys, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      __syncthreads();
      for (int i = threadIdx.x; i < n / 2; i += blockDim.x) {
        const int lo = 2 * i - (i & (stride - 1));
        const int hi = lo + stride;
        const bool ascending = (lo & size) == 0;
        const uint64_t a = keys[lo], c = keys[hi];
        if ((a > c) == ascending) {
          keys[lo] = c;
          keys[hi] = a;
        }
      }
    }
  }
  __syncthreads();
}

__device__ __forceinline__ int next_pow2(int n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

// Per-row commit. grid (B), kThreads threads, dynamic shared memory:
//   keys u64[sort_capacity] | filter x f32[F] | filter h f32[H] | flags u8[L] | accept u8[F]
// Reads the partials, writes predicted / confidence / entropy [B, L], then applies the policy,
// the revision and End-of-Text Prediction to tokens [B, L] (TokT) and masked [B, L], and
// writes committed [B] and eot_pos [B].
template <typename T, typename TokT, int kThreads>
__global__ void __launch_bounds__(kThreads)
    unmask_commit_kernel(const float* __restrict__ partials, int num_splits,
                         const T* __restrict__ logits, TokT* tokens, bool* masked,
                         int* __restrict__ committed, float* confidence, int* __restrict__ eot_pos,
                         int* predicted, float* entropy, const int* __restrict__ block_start,
                         const int* __restrict__ block_end, const int* __restrict__ k,
                         const float* __restrict__ w1, const float* __restrict__ b1,
                         const float* __restrict__ w2, const float* __restrict__ b2, Params p,
                         int sort_capacity) {
  extern __shared__ __align__(16) unsigned char smem[];
  uint64_t* keys = reinterpret_cast<uint64_t*>(smem);
  float* fx = reinterpret_cast<float*>(keys + sort_capacity);
  float* fh = fx + p.filter_in;
  uint8_t* flags = reinterpret_cast<uint8_t*>(fh + p.filter_hidden);
  uint8_t* accept = flags + p.seq_len;
  __shared__ int s_first_masked, s_first_eos, s_count, s_candidates, s_passing, s_eligible;
  __shared__ unsigned long long s_eot_key;

  const int b = blockIdx.x, tid = threadIdx.x;
  const int L = p.seq_len, V = p.vocab;
  const int64_t row = static_cast<int64_t>(b) * L;
  int start = block_start[b], end = block_end[b];
  clamp_window(start, end, L);
  const int W = end - start;
  if (tid == 0) {
    s_first_masked = L;
    s_first_eos = L;
    s_count = 0;
    s_candidates = 0;
    s_passing = 0;
    s_eligible = 0;
    s_eot_key = 0ull;
  }
  __syncthreads();

  // A: finish every position's statistics.
  for (int l = tid; l < L; l += kThreads) {
    const bool m = masked[row + l];
    const bool processed = is_processed(l, start, end, m, p.eotp);
    uint8_t f = m ? kFlagMasked : 0;
    int pred = -1;
    float conf = -INFINITY, ent = INFINITY;
    if (processed) {
      f |= kFlagProcessed;
      const float* src = partials + (row + l) * num_splits * kPartialWords;
      SoftmaxStats st = load_partial(src);
      for (int s = 1; s < num_splits; ++s) stats_merge(st, load_partial(src + s * kPartialWords));
      const PositionStats ps = stats_finalize(st);
      pred = ps.predicted;
      conf = ps.conf;
      ent = ps.entropy;
      if (ps.valid) f |= kFlagValid;
    }
    predicted[row + l] = pred;
    confidence[row + l] = conf;
    entropy[row + l] = ent;
    flags[l] = f;
    if (m && l >= start && l < end) atomicMin(&s_first_masked, l);
  }
  __syncthreads();

  // Learned filter over the window's confidences.
  const bool learned = p.policy == Policy::kLearned;
  if (learned) {
    for (int f = tid; f < p.filter_in; f += kThreads) {
      const int l = start + f;
      const bool inside = l < end;
      fx[f] = filter_input(inside, inside && (flags[l] & kFlagValid), inside ? confidence[row + l] : 0.f);
    }
    __syncthreads();
    for (int j = tid; j < p.filter_hidden; j += kThreads) {
      fh[j] = filter_hidden_unit(w1, b1, fx, p.filter_in, j);
    }
    __syncthreads();
    for (int i = tid; i < p.filter_in; i += kThreads) {
      accept[i] = static_cast<double>(filter_output_unit(w2, b2, fh, p.filter_hidden, i)) > p.accept_logit;
    }
  }

  // Rank the candidates.
  const int n_sort = next_pow2(W > 1 ? W : 1);
  const int first_masked = s_first_masked;
  for (int i = tid; i < n_sort; i += kThreads) {
    uint64_t key = kNoKey;
    if (i < W) {
      const int l = start + i;
      const uint8_t f = flags[l];
      if ((f & kFlagMasked) && (f & kFlagValid)) {
        key = rank_key(priority_of(p.policy, confidence[row + l], entropy[row + l],
                                   p.position_penalty, l - first_masked),
                       i);
        atomicAdd(&s_candidates, 1);
      }
    }
    keys[i] = key;
  }
  bitonic_sort(keys, n_sort);  // syncs before and after
  const int nc = s_candidates;
  if (p.policy == Policy::kThreshold || p.policy == Policy::kFactor || p.policy == Policy::kEntropy) {
    for (int r = tid; r < nc; r += kThreads) {
      if (passes_at_rank(p, key_priority(keys[r]), r)) atomicAdd(&s_passing, 1);
    }
    __syncthreads();
  }
  const int quota = commit_quota(p, k != nullptr ? k[b] : 1, nc, s_passing);

  // Commit.
  for (int r = tid; r < nc; r += kThreads) {
    const int off = key_offset(keys[r]);
    const bool take = r < quota || (learned && off < p.filter_in && accept[off]);
    if (take) {
      const int l = start + off;
      const int pred = predicted[row + l];
      tokens[row + l] = static_cast<TokT>(pred);
      masked[row + l] = false;
      flags[l] |= kFlagCommitted;
      atomicAdd(&s_count, 1);
      if (static_cast<int64_t>(pred) == p.eos_id) atomicMin(&s_first_eos, l);
    }
  }
  __syncthreads();

  // ReDiff revision of the window's already-unmasked positions.
  if (p.revise) {
    const bool all = p.revise_topk >= 1.0;
    for (int i = tid; i < n_sort; i += kThreads) {
      uint64_t key = kNoKey;
      if (i < W) {
        const int l = start + i;
        const uint8_t f = flags[l];
        if (!(f & kFlagMasked) && (f & kFlagValid)) {
          const int64_t tok = static_cast<int64_t>(tokens[row + l]);
          const int pred = predicted[row + l];
          const T* lg = logits + (row + l) * V;
          const bool in_vocab = tok >= 0 && tok < V;
          const float logit_tok = in_vocab ? to_float(lg[tok]) : -INFINITY;
          if (revise_eligible(tok, pred, p.pad_id, V, to_float(lg[pred]), logit_tok)) {
            if (all) {
              tokens[row + l] = static_cast<TokT>(pred);
            } else {
              key = rank_key(canonical_zero(confidence[row + l]), i);
              atomicAdd(&s_eligible, 1);
            }
          }
        }
      }
      if (!all) keys[i] = key;
    }
    if (!all) {
      bitonic_sort(keys, n_sort);
      const int n_rev = revise_count(p.revise_topk, s_eligible);
      for (int r = tid; r < n_rev; r += kThreads) {
        const int l = start + key_offset(keys[r]);
        tokens[row + l] = static_cast<TokT>(predicted[row + l]);
      }
    }
    __syncthreads();
  }

  // End-of-Text Prediction.
  int eot = -1;
  if (p.eotp && p.eos_id >= 0) {
    if (s_first_eos < L) {
      eot = s_first_eos;
    } else {
      for (int l = start + tid; l < L; l += kThreads) {
        const uint8_t f = flags[l];
        if ((f & kFlagMasked) && !(f & kFlagCommitted) && (f & kFlagValid) &&
            static_cast<int64_t>(predicted[row + l]) == p.eos_id &&
            static_cast<double>(confidence[row + l]) >= p.eot_threshold) {
          atomicMax(&s_eot_key, static_cast<unsigned long long>(eot_key(confidence[row + l], l)));
        }
      }
      __syncthreads();
      if (s_eot_key != 0ull) eot = eot_key_position(s_eot_key);
    }
    if (eot >= 0) {
      for (int l = eot + 1 + tid; l < L; l += kThreads) {
        tokens[row + l] = static_cast<TokT>(p.pad_id);
        masked[row + l] = false;
      }
    }
  }
  if (tid == 0) {
    committed[b] = s_count;
    eot_pos[b] = eot;
  }
}

}  // namespace unmask
}  // namespace leapdec

#endif  // __CUDACC__
