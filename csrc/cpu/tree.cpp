// CPU tree speculative decoding ops: build_tree and verify_tree_{greedy, typical, sampling}
// (reference.py). The per-request logic is shared with the CUDA kernels
// (include/leapdec/tree.cuh); here it runs one request (or one tree row) per task.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "leapdec/tree.cuh"
#include "ops.h"
#include "tree_checks.h"

namespace leapdec {
namespace {

// Requests (rows of V floats) per parallel task so that each task touches enough memory.
inline int64_t grain_for(int64_t row_elems) {
  return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(row_elems, 1));
}

// Typical test of one node from the target logits row z [V] at its parent (tree.cuh:
// TypicalNodeLogprobKernel computes the same in the same order of operations per element).
template <typename T>
float typical_node_logprob(const T* z, int64_t vocab, int64_t x, float threshold, float alpha,
                           float temperature) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t y = 0; y < vocab; ++y) m = std::max(m, static_cast<float>(z[y]) / temperature);
  float s = 0.f;
  for (int64_t y = 0; y < vocab; ++y) s += std::exp(static_cast<float>(z[y]) / temperature - m);
  float h = 0.f;
  for (int64_t y = 0; y < vocab; ++y) {
    const float p = std::exp(static_cast<float>(z[y]) / temperature - m) / s;
    h -= p * std::log(p + tree::kTypicalEntropyEps);
  }
  const float lp = (static_cast<float>(z[x]) / temperature - m) - std::log(s);
  return tree::typical_passes(std::exp(lp), std::exp(-h), threshold, alpha)
             ? lp
             : -std::numeric_limits<float>::infinity();
}

// Lossless tree speculative sampling of one request (tree.cuh: VerifyTreeSamplingKernel).
template <typename T>
int sample_tree(const int64_t* cand, const int32_t* par, const T* draft, const T* target,
                const float* coins, int64_t num_nodes, int64_t vocab, tree::DraftRule rule,
                std::vector<float>& p, std::vector<float>& q, int32_t* accept_index, int64_t* bonus) {
  const bool deterministic = rule == tree::DraftRule::kDeterministic;
  auto load = [&](const T* src, std::vector<float>& dst) {
    float s = 0.f;
    for (int64_t y = 0; y < vocab; ++y) {
      dst[y] = static_cast<float>(src[y]);
      s += dst[y];
    }
    return s;
  };
  int64_t u = 0;
  int len = 1;
  accept_index[0] = 0;
  float p_total = 0.f, q_total = 1.f;
  while (true) {
    p_total = load(target + u * vocab, p);
    if (!deterministic) q_total = load(draft + u * vocab, q);
    int64_t next = -1;
    for (int64_t c = u + 1; c < num_nodes; ++c) {
      if (par[c] != u) continue;
      const int64_t x = cand[c];
      const float qx = deterministic ? 1.f : q[x];
      if (tree::sampling_accepts(coins[c], p[x], p_total, qx, deterministic ? 1.f : q_total)) {
        next = c;
        break;
      }
      float r_sum = 0.f, q_sum = 0.f;
      for (int64_t y = 0; y < vocab; ++y) {
        const float r = tree::residual_entry(rule, y == x, p[y], p_total, deterministic ? 0.f : q[y],
                                             q_total);
        p[y] = r;
        r_sum += r;
        if (rule == tree::DraftRule::kWithoutReplacement) {
          if (y == x) q[y] = 0.f;
          q_sum += q[y];
        }
      }
      p_total = r_sum;
      if (rule == tree::DraftRule::kWithoutReplacement) q_total = q_sum;
      if (!(p_total > 0.f)) p_total = load(target + u * vocab, p);
    }
    if (next < 0) break;
    u = next;
    accept_index[len++] = static_cast<int32_t>(u);
  }
  for (int64_t k = len; k < num_nodes; ++k) accept_index[k] = -1;
  // Bonus by inverse CDF with coins[0].
  float mass = 0.f;
  for (int64_t y = 0; y < vocab; ++y) mass += p[y];
  const float t = coins[0] * mass;
  int64_t token = -1, last_positive = -1;
  float cum = 0.f;
  for (int64_t y = 0; y < vocab; ++y) {
    cum += p[y];
    if (p[y] > 0.f) last_positive = y;
    if (cum > t) {
      token = y;
      break;
    }
  }
  if (token < 0) token = last_positive < 0 ? 0 : last_positive;  // rounding, or no mass at all
  *bonus = token;
  return len;
}

}  // namespace

// parents [B, T] -> mask [B, T, T] bool (j is i or an ancestor of i), depth [B, T] int32 (-1 absent).
void build_tree_cpu(at::Tensor& mask, at::Tensor& depth, const at::Tensor& parents) {
  check_build_tree_args(mask, depth, parents);
  const int64_t batch = parents.size(0), num_nodes = parents.size(1);
  check_tree_parents_values(parents);
  const int32_t* par = parents.data_ptr<int32_t>();
  bool* out = mask.data_ptr<bool>();
  int32_t* dep = depth.data_ptr<int32_t>();
  at::parallel_for(0, batch * num_nodes, grain_for(num_nodes), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row % num_nodes;
      const int32_t* p = par + (row - i);
      bool* m = out + row * num_nodes;
      std::memset(m, 0, static_cast<size_t>(num_nodes));
      const int d = tree::node_depth(p, static_cast<int>(i));
      dep[row] = d;
      if (d < 0) continue;
      for (int64_t n = i; n > 0; n = p[n]) m[n] = true;
      m[0] = true;
    }
  });
}

// candidates, target_tokens [B, T] int64 -> accept_len [B], accept_index [B, T], bonus [B].
void verify_tree_greedy_cpu(at::Tensor& accept_len, at::Tensor& accept_index, at::Tensor& bonus,
                            const at::Tensor& candidates, const at::Tensor& parents,
                            const at::Tensor& target_tokens) {
  check_verify_greedy_args(accept_len, accept_index, bonus, candidates, parents, target_tokens);
  check_tree_parents_values(parents);
  const int64_t batch = parents.size(0), num_nodes = parents.size(1);
  const int64_t* cand = candidates.data_ptr<int64_t>();
  const int64_t* target = target_tokens.data_ptr<int64_t>();
  const int32_t* par = parents.data_ptr<int32_t>();
  int32_t* len_out = accept_len.data_ptr<int32_t>();
  int32_t* idx_out = accept_index.data_ptr<int32_t>();
  int64_t* bonus_out = bonus.data_ptr<int64_t>();
  at::parallel_for(0, batch, grain_for(num_nodes), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t off = b * num_nodes;
      const int len = tree::greedy_accept(cand + off, par + off, target + off,
                                          static_cast<int>(num_nodes), idx_out + off);
      len_out[b] = len;
      bonus_out[b] = target[off + idx_out[off + len - 1]];
    }
  });
}

// target_logits [B, T, V] -> accept_len [B], accept_index [B, T], bonus [B], node_logprob [B, T].
void verify_tree_typical_cpu(at::Tensor& accept_len, at::Tensor& accept_index, at::Tensor& bonus,
                             at::Tensor& node_logprob, const at::Tensor& candidates,
                             const at::Tensor& parents, const at::Tensor& target_logits,
                             double posterior_threshold, double posterior_alpha, double temperature) {
  check_verify_typical_args(accept_len, accept_index, bonus, node_logprob, candidates, parents,
                            target_logits, temperature);
  check_tree_parents_values(parents);
  const int64_t batch = parents.size(0), num_nodes = parents.size(1), vocab = target_logits.size(2);
  check_candidates_in_vocab(candidates, parents, vocab);
  const int64_t* cand = candidates.data_ptr<int64_t>();
  const int32_t* par = parents.data_ptr<int32_t>();
  float* lp_out = node_logprob.data_ptr<float>();
  int32_t* len_out = accept_len.data_ptr<int32_t>();
  int32_t* idx_out = accept_index.data_ptr<int32_t>();
  int64_t* bonus_out = bonus.data_ptr<int64_t>();
  const float thr = static_cast<float>(posterior_threshold);
  const float alpha = static_cast<float>(posterior_alpha);
  const float temp = static_cast<float>(temperature);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, target_logits.scalar_type(),
                                  "verify_tree_typical_cpu", [&] {
    const scalar_t* logits = target_logits.data_ptr<scalar_t>();
    at::parallel_for(0, batch * num_nodes, grain_for(vocab), [&](int64_t begin, int64_t end) {
      for (int64_t node = begin; node < end; ++node) {
        const int64_t c = node % num_nodes;
        const int64_t u = par[node];
        if (c == 0) {
          lp_out[node] = 0.f;
        } else if (u < 0) {
          lp_out[node] = -std::numeric_limits<float>::infinity();
        } else {
          lp_out[node] = typical_node_logprob(logits + (node - c + u) * vocab, vocab, cand[node],
                                              thr, alpha, temp);
        }
      }
    });
    at::parallel_for(0, batch, grain_for(vocab), [&](int64_t begin, int64_t end) {
      std::vector<int32_t> depth(num_nodes);
      std::vector<float> score(num_nodes);
      for (int64_t b = begin; b < end; ++b) {
        const int64_t off = b * num_nodes;
        const int len = tree::typical_select(par + off, lp_out + off, static_cast<int>(num_nodes),
                                             depth.data(), score.data(), idx_out + off);
        len_out[b] = len;
        const scalar_t* z = logits + (off + idx_out[off + len - 1]) * vocab;
        int64_t best = 0;
        for (int64_t y = 1; y < vocab; ++y)
          if (static_cast<float>(z[y]) > static_cast<float>(z[best])) best = y;
        bonus_out[b] = best;
      }
    });
  });
}

// draft_probs, target_probs [B, T, V], coins [B, T] -> accept_len [B], accept_index [B, T], bonus [B].
void verify_tree_sampling_cpu(at::Tensor& accept_len, at::Tensor& accept_index, at::Tensor& bonus,
                              const at::Tensor& candidates, const at::Tensor& parents,
                              const std::optional<at::Tensor>& draft_probs,
                              const at::Tensor& target_probs, const at::Tensor& coins,
                              const std::string& draft_rule,
                              const std::optional<at::Tensor>& workspace) {
  (void)workspace;  // the CUDA scratch; each CPU task keeps its own p and q rows
  const tree::DraftRule rule = check_verify_sampling_args(accept_len, accept_index, bonus, candidates,
                                                          parents, draft_probs, target_probs, coins,
                                                          draft_rule);
  const bool deterministic = rule == tree::DraftRule::kDeterministic;
  check_tree_parents_values(parents);
  const int64_t batch = parents.size(0), num_nodes = parents.size(1), vocab = target_probs.size(2);
  check_candidates_in_vocab(candidates, parents, vocab);
  const float* coin = coins.data_ptr<float>();
  for (int64_t k = 0; k < coins.numel(); ++k)
    TORCH_CHECK(coin[k] >= 0.f && coin[k] < 1.f, "coins[", k / num_nodes, "][", k % num_nodes,
                "] = ", coin[k], " must be uniform in [0, 1)");
  const int64_t* cand = candidates.data_ptr<int64_t>();
  const int32_t* par = parents.data_ptr<int32_t>();
  int32_t* len_out = accept_len.data_ptr<int32_t>();
  int32_t* idx_out = accept_index.data_ptr<int32_t>();
  int64_t* bonus_out = bonus.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, target_probs.scalar_type(),
                                  "verify_tree_sampling_cpu", [&] {
    const scalar_t* target = target_probs.data_ptr<scalar_t>();
    const scalar_t* draft = deterministic ? nullptr : draft_probs->data_ptr<scalar_t>();
    at::parallel_for(0, batch, grain_for(vocab * num_nodes), [&](int64_t begin, int64_t end) {
      std::vector<float> p(vocab), q(deterministic ? 0 : vocab);
      for (int64_t b = begin; b < end; ++b) {
        const int64_t off = b * num_nodes;
        len_out[b] = sample_tree(cand + off, par + off, draft ? draft + off * vocab : nullptr,
                                 target + off * vocab, coin + off, num_nodes, vocab, rule, p, q,
                                 idx_out + off, bonus_out + b);
      }
    });
  });
}

}  // namespace leapdec
