// Tree speculative decoding: the per-request logic of build_tree and verify_tree_{greedy,
// typical,sampling}, shared by the CPU kernels (csrc/cpu/tree.cpp) and the CUDA kernels below.
// Torch-free; the meaning of every op is python/leapdec/reference.py.
//
// A draft tree of T nodes is one row parents[T] (int32): node 0 is the root (the last
// accepted token, parents[0] = -1), node i > 0 has its parent at 0 <= parents[i] < i, and
// parents[i] = -2 marks an absent node (padding of ragged batches). The kernels never trust
// these values: node 0 is always the root, a node whose chain to the root is broken counts as
// absent, and no index read from a tensor is used before it is range-checked, so a bad tree
// gives a defined result and never an out-of-bounds access (the CPU ops and the Python
// wrappers reject bad trees with an error before any kernel runs).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define LEAPDEC_TREE_FN __host__ __device__ __forceinline__
#else
#define LEAPDEC_TREE_FN inline
#endif

namespace leapdec {
namespace tree {

constexpr int32_t kRootParent = -1;    // parents[b][0]
constexpr int32_t kAbsentParent = -2;  // an absent (padding) node
// Medusa's entropy: H = -sum p log(p + eps) (medusa/model/utils.py, evaluate_posterior).
constexpr float kTypicalEntropyEps = 1e-5f;

// How the children of a node were drafted from the draft distribution q at that node; this
// decides how q changes after a sibling is rejected (verify_tree_sampling).
//   kIid:                 siblings drawn independently from q (SpecInfer): q stays.
//   kWithoutReplacement:  siblings drawn from q without replacement (recursive rejection
//                         sampling): the rejected token leaves q, which is renormalised.
//   kDeterministic:       siblings picked deterministically (top-k, EAGLE/Medusa trees): each
//                         draft token counts as certain, q = one-hot(x); draft_probs unused.
enum class DraftRule : int { kIid = 0, kWithoutReplacement = 1, kDeterministic = 2 };

// Depth of node i (root = 0), or -1 when node i is absent or its chain to the root is broken.
LEAPDEC_TREE_FN int node_depth(const int32_t* parents, int i) {
  int depth = 0;
  while (i > 0) {
    const int p = parents[i];
    if (p < 0 || p >= i) return -1;
    i = p;
    ++depth;
  }
  return depth;
}

// Greedy verification of one tree: from the root, move to the first child c (lowest index)
// of the current node u with candidates[c] == target[u], until none matches. Children of a
// node have higher indices than the node, so one ascending scan finds the path. Writes the
// accepted nodes from the root to accept_index[0..len) and -1 after; returns len (>= 1).
template <typename Tok>
LEAPDEC_TREE_FN int greedy_accept(const Tok* candidates, const int32_t* parents, const Tok* target,
                                  int num_nodes, int32_t* accept_index) {
  int u = 0, len = 1;
  accept_index[0] = 0;
  for (int c = 1; c < num_nodes; ++c) {
    if (parents[c] == u && candidates[c] == target[u]) {
      accept_index[len++] = c;
      u = c;
    }
  }
  for (int k = len; k < num_nodes; ++k) accept_index[k] = -1;
  return len;
}

// Typical acceptance: node_logprob[c] is log p_target(candidates[c] | parent) where node c
// passes the typical test and -inf where it fails (node 0: 0). The accepted path ends at the
// deepest node whose whole root path passes; ties go to the higher summed log-probability
// (summed from the root down, in float32), then to the lowest node index. depth/score are
// scratch rows [num_nodes]. Writes accept_index like greedy_accept; returns len (>= 1).
LEAPDEC_TREE_FN int typical_select(const int32_t* parents, const float* node_logprob, int num_nodes,
                                   int32_t* depth, float* score, int32_t* accept_index) {
  depth[0] = 0;
  score[0] = 0.f;
  int best = 0;
  for (int c = 1; c < num_nodes; ++c) {
    const int p = parents[c];
    const float lp = node_logprob[c];
    if (p >= 0 && p < c && depth[p] >= 0 && lp > -3.0e38f) {
      depth[c] = depth[p] + 1;
      score[c] = score[p] + lp;
      if (depth[c] > depth[best] || (depth[c] == depth[best] && score[c] > score[best])) best = c;
    } else {
      depth[c] = -1;
    }
  }
  const int len = depth[best] + 1;
  for (int k = len - 1, n = best; k >= 0; --k) {
    accept_index[k] = n;
    n = k > 0 ? parents[n] : 0;
  }
  for (int k = len; k < num_nodes; ++k) accept_index[k] = -1;
  return len;
}

// Typical test of one candidate: p(x) > min(threshold, alpha * exp(-H)) for the target
// distribution at its parent with entropy H.
LEAPDEC_TREE_FN bool typical_passes(float px, float entropy_exp_neg, float threshold, float alpha) {
  const float t = alpha * entropy_exp_neg;
  return px > (threshold < t ? threshold : t);
}

// Speculative sampling test of draft token x at a node whose current target mass is p (total
// P, possibly an unnormalised residual) and draft mass q (total Q): accept with probability
// min(1, (p(x)/P) / (q(x)/Q)) using a uniform coin in [0, 1). Deterministic drafts pass
// q(x) = Q = 1.
LEAPDEC_TREE_FN bool sampling_accepts(float coin, float px, float p_total, float qx, float q_total) {
  return coin * qx * p_total < px * q_total;
}

// Entry y of the target residual after x was rejected: max(0, p/P - q/Q) (deterministic
// drafts: p with x removed, as q = one-hot(x)). Not normalised; the caller sums it.
LEAPDEC_TREE_FN float residual_entry(DraftRule rule, bool is_x, float p, float p_total, float q,
                                     float q_total) {
  if (rule == DraftRule::kDeterministic) return is_x ? 0.f : p;
  const float r = p / p_total - (q_total > 0.f ? q / q_total : 0.f);
  return r > 0.f ? r : 0.f;
}

}  // namespace tree
}  // namespace leapdec

#if defined(__CUDACC__)

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <climits>

#include "leapdec/vec_dtypes.cuh"

namespace leapdec {
namespace tree {

// ---------------------------------------------------------------- build_tree
// parents [B, T] -> mask [B, T, T] (mask[b][i][j]: j is i or an ancestor of i), depth [B, T].
// grid: B*T blocks (one per mask row), block: any size; dynamic smem: T bytes (the row).
template <typename Mask = bool>
__global__ void BuildTreeKernel(const int32_t* __restrict__ parents, Mask* __restrict__ mask,
                                int32_t* __restrict__ depth, int num_nodes) {
  extern __shared__ unsigned char row_flags[];
  const int64_t row = blockIdx.x;  // b * T + i
  const int i = static_cast<int>(row % num_nodes);
  const int32_t* par = parents + (row - i);
  for (int j = threadIdx.x; j < num_nodes; j += blockDim.x) row_flags[j] = 0;
  __syncthreads();
  if (threadIdx.x == 0) {
    const int d = node_depth(par, i);
    depth[row] = d;
    if (d >= 0) {
      for (int n = i; n > 0; n = par[n]) row_flags[n] = 1;
      row_flags[0] = 1;
    }
  }
  __syncthreads();
  Mask* out = mask + row * num_nodes;
  for (int j = threadIdx.x; j < num_nodes; j += blockDim.x) out[j] = row_flags[j] != 0;
}

// ---------------------------------------------------------------- verify_tree_greedy
// candidates, target [B, T] int64, parents [B, T] -> accept_len [B], accept_index [B, T], bonus [B].
// grid: ceil(B / blockDim) blocks, one thread per request walking its tree.
template <typename Tok>
__global__ void VerifyTreeGreedyKernel(const Tok* __restrict__ candidates,
                                       const int32_t* __restrict__ parents,
                                       const Tok* __restrict__ target,
                                       int32_t* __restrict__ accept_len,
                                       int32_t* __restrict__ accept_index, Tok* __restrict__ bonus,
                                       int batch, int num_nodes) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const int64_t off = static_cast<int64_t>(b) * num_nodes;
  const int len = greedy_accept(candidates + off, parents + off, target + off, num_nodes,
                                accept_index + off);
  accept_len[b] = len;
  bonus[b] = target[off + accept_index[off + len - 1]];
}

// ---------------------------------------------------------------- block helpers
template <int kBlock>
struct BlockOps {
  using Reduce = cub::BlockReduce<float, kBlock>;
  using Scan = cub::BlockScan<float, kBlock>;
  union Storage {
    typename Reduce::TempStorage reduce;
    typename Scan::TempStorage scan;
  };

  // Block-wide sum, returned to every thread; the storage may be reused right after.
  static __device__ float sum(float v, Storage& storage, float& bcast) {
    const float s = Reduce(storage.reduce).Sum(v);
    if (threadIdx.x == 0) bcast = s;
    __syncthreads();
    const float r = bcast;
    __syncthreads();
    return r;
  }

  static __device__ float max(float v, Storage& storage, float& bcast) {
    const float s = Reduce(storage.reduce).Reduce(v, MaxOp());
    if (threadIdx.x == 0) bcast = s;
    __syncthreads();
    const float r = bcast;
    __syncthreads();
    return r;
  }

  struct MaxOp {
    __device__ float operator()(float a, float b) const { return a > b ? a : b; }
  };
};

// (value, index) argmax pair: larger value wins, ties go to the lower index (torch.argmax).
struct ArgMax {
  float value;
  int index;
};
struct ArgMaxOp {
  __device__ ArgMax operator()(const ArgMax& a, const ArgMax& b) const {
    if (a.value > b.value || (a.value == b.value && a.index < b.index)) return a;
    return b;
  }
};

// ---------------------------------------------------------------- verify_tree_typical
// Phase 1: node_logprob [B, T] from target_logits [B, T, V]: for node c with parent u,
// log p(candidates[c] | u) under softmax(logits[u] / temperature) where c passes the typical
// test, else -inf; node 0 gets 0. grid: B*T blocks, one per node; block: kBlock threads.
template <typename T, int kBlock>
__global__ void TypicalNodeLogprobKernel(const int64_t* __restrict__ candidates,
                                         const int32_t* __restrict__ parents,
                                         const T* __restrict__ logits,
                                         float* __restrict__ node_logprob, int num_nodes, int vocab,
                                         float threshold, float alpha, float temperature) {
  using Ops = BlockOps<kBlock>;
  __shared__ typename Ops::Storage storage;
  __shared__ float bcast;
  const int64_t node = blockIdx.x;  // b * T + c
  const int c = static_cast<int>(node % num_nodes);
  const int64_t row0 = node - c;
  const int u = parents[node];
  const int64_t x = candidates[node];
  if (c == 0 || u < 0 || u >= c || x < 0 || x >= vocab) {
    if (threadIdx.x == 0) node_logprob[node] = c == 0 ? 0.f : -INFINITY;
    return;
  }
  const T* z = logits + (row0 + u) * vocab;
  float m = -INFINITY;
  for (int y = threadIdx.x; y < vocab; y += kBlock) m = fmaxf(m, to_float(z[y]) / temperature);
  m = Ops::max(m, storage, bcast);
  float s = 0.f;
  for (int y = threadIdx.x; y < vocab; y += kBlock) s += expf(to_float(z[y]) / temperature - m);
  s = Ops::sum(s, storage, bcast);
  float h = 0.f;
  for (int y = threadIdx.x; y < vocab; y += kBlock) {
    const float p = expf(to_float(z[y]) / temperature - m) / s;
    h -= p * logf(p + kTypicalEntropyEps);
  }
  h = Ops::sum(h, storage, bcast);
  if (threadIdx.x == 0) {
    const float lp = (to_float(z[x]) / temperature - m) - logf(s);
    node_logprob[node] = typical_passes(expf(lp), expf(-h), threshold, alpha) ? lp : -INFINITY;
  }
}

// Phase 2: pick the accepted path from node_logprob and the bonus token = argmax of the raw
// logits at its last node. grid: B blocks; block: kBlock threads; dynamic smem: 8 T bytes.
template <typename T, int kBlock>
__global__ void TypicalSelectKernel(const int32_t* __restrict__ parents,
                                    const float* __restrict__ node_logprob,
                                    const T* __restrict__ logits, int32_t* __restrict__ accept_len,
                                    int32_t* __restrict__ accept_index, int64_t* __restrict__ bonus,
                                    int num_nodes, int vocab) {
  using Reduce = cub::BlockReduce<ArgMax, kBlock>;
  __shared__ typename Reduce::TempStorage storage;
  __shared__ int last_node;
  extern __shared__ float scratch[];  // score [T], then depth [T]
  const int b = blockIdx.x;
  const int64_t off = static_cast<int64_t>(b) * num_nodes;
  if (threadIdx.x == 0) {
    float* score = scratch;
    int32_t* depth = reinterpret_cast<int32_t*>(scratch + num_nodes);
    const int len = typical_select(parents + off, node_logprob + off, num_nodes, depth, score,
                                   accept_index + off);
    accept_len[b] = len;
    last_node = accept_index[off + len - 1];
  }
  __syncthreads();
  const T* z = logits + (off + last_node) * vocab;
  ArgMax best{-INFINITY, INT_MAX};
  for (int y = threadIdx.x; y < vocab; y += kBlock) {
    best = ArgMaxOp()(best, ArgMax{to_float(z[y]), y});
  }
  const ArgMax r = Reduce(storage).Reduce(best, ArgMaxOp());
  if (threadIdx.x == 0) bonus[b] = r.index == INT_MAX ? 0 : r.index;
}

// ---------------------------------------------------------------- verify_tree_sampling
// One block per request walks its tree. At node u the current target p (a copy of
// target_probs[u] in the workspace, later the residual) and draft q (draft_probs[u]) live in
// workspace [B, 2, V]; children are tried in index order with coins[b][c]; the bonus token is
// drawn by inverse CDF from the final p with coins[b][0].
// grid: B blocks; block: kBlock threads.
template <typename T, int kBlock>
__global__ void VerifyTreeSamplingKernel(const int64_t* __restrict__ candidates,
                                         const int32_t* __restrict__ parents,
                                         const T* __restrict__ draft_probs,
                                         const T* __restrict__ target_probs,
                                         const float* __restrict__ coins, float* __restrict__ workspace,
                                         int32_t* __restrict__ accept_len,
                                         int32_t* __restrict__ accept_index, int64_t* __restrict__ bonus,
                                         int num_nodes, int vocab, DraftRule rule) {
  using Ops = BlockOps<kBlock>;
  __shared__ typename Ops::Storage storage;
  __shared__ float bcast;
  __shared__ int found, last_positive;
  const int b = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t off = static_cast<int64_t>(b) * num_nodes;
  const bool deterministic = rule == DraftRule::kDeterministic;
  float* p = workspace + static_cast<int64_t>(b) * 2 * vocab;
  float* q = p + vocab;

  // Copy a row into the workspace and return its sum.
  auto load = [&](const T* src, float* dst) {
    float s = 0.f;
    for (int y = tid; y < vocab; y += kBlock) {
      const float v = to_float(src[y]);
      dst[y] = v;
      s += v;
    }
    return Ops::sum(s, storage, bcast);
  };

  int u = 0, len = 1;
  if (tid == 0) accept_index[off] = 0;
  float p_total = 0.f, q_total = 1.f;
  while (true) {
    p_total = load(target_probs + (off + u) * vocab, p);
    if (!deterministic) q_total = load(draft_probs + (off + u) * vocab, q);
    int next = -1;
    for (int c = u + 1; c < num_nodes; ++c) {
      if (parents[off + c] != u) continue;
      const int64_t x = candidates[off + c];
      if (x < 0 || x >= vocab) continue;
      const float px = p[x];
      const float qx = deterministic ? 1.f : q[x];
      __syncthreads();  // every thread has read p[x], q[x] before anyone rewrites them
      if (sampling_accepts(coins[off + c], px, p_total, qx, deterministic ? 1.f : q_total)) {
        next = c;
        break;
      }
      float r_sum = 0.f, q_sum = 0.f;
      for (int y = tid; y < vocab; y += kBlock) {
        const float r = residual_entry(rule, y == x, p[y], p_total, deterministic ? 0.f : q[y], q_total);
        p[y] = r;
        r_sum += r;
        if (rule == DraftRule::kWithoutReplacement) {
          const float qy = y == x ? 0.f : q[y];
          q[y] = qy;
          q_sum += qy;
        }
      }
      p_total = Ops::sum(r_sum, storage, bcast);
      if (rule == DraftRule::kWithoutReplacement) q_total = Ops::sum(q_sum, storage, bcast);
      // No residual mass left (p == q up to rounding, so the rejection had probability ~0):
      // fall back to the target itself.
      if (!(p_total > 0.f)) p_total = load(target_probs + (off + u) * vocab, p);
    }
    if (next < 0) break;
    u = next;
    if (tid == 0) accept_index[off + len] = u;
    ++len;
  }
  for (int k = len + tid; k < num_nodes; k += kBlock) accept_index[off + k] = -1;
  if (tid == 0) accept_len[b] = len;

  // Bonus: the first y with cumsum(p)[y] > coin * sum(p); if rounding leaves none, the last
  // y with p[y] > 0; if p has no mass at all, token 0.
  float mass = 0.f;
  for (int y = tid; y < vocab; y += kBlock) mass += p[y];
  const float t = coins[off] * Ops::sum(mass, storage, bcast);
  if (tid == 0) {
    found = INT_MAX;
    last_positive = -1;
  }
  __syncthreads();
  float running = 0.f;
  for (int base = 0; base < vocab; base += kBlock) {
    const int y = base + tid;
    const float v = y < vocab ? p[y] : 0.f;
    float incl, tile_total;
    typename Ops::Scan(storage.scan).InclusiveSum(v, incl, tile_total);
    if (y < vocab && running + incl > t) atomicMin(&found, y);
    running += tile_total;
    __syncthreads();
    const bool done = found != INT_MAX;
    __syncthreads();  // every thread has read found before the next tile may write it
    if (done) break;
  }
  if (found == INT_MAX) {
    for (int y = tid; y < vocab; y += kBlock)
      if (p[y] > 0.f) atomicMax(&last_positive, y);
    __syncthreads();
    if (tid == 0) found = last_positive < 0 ? 0 : last_positive;
  }
  if (tid == 0) bonus[b] = found;
}

}  // namespace tree
}  // namespace leapdec

#endif  // __CUDACC__
