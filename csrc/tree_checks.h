// Argument validation of the tree ops (build_tree, verify_tree_*), shared by the CPU and CUDA
// backends. Structural checks run on every call; value checks (tree shape, token range,
// coins) read the data, so they run here only on CPU tensors and, for CUDA tensors, in the
// Python wrapper (leapdec/ops/tree.py) outside graph capture.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

#include "checks.h"
#include "leapdec/tree.cuh"

namespace leapdec {

inline tree::DraftRule parse_draft_rule(const std::string& rule) {
  if (rule == "iid") return tree::DraftRule::kIid;
  if (rule == "without_replacement") return tree::DraftRule::kWithoutReplacement;
  if (rule == "deterministic") return tree::DraftRule::kDeterministic;
  TORCH_CHECK(false, "draft_rule must be one of 'iid', 'without_replacement', 'deterministic', got '",
              rule, "'");
}

// parents: [B, T] int32, contiguous, T >= 1.
inline void check_tree_parents(const at::Tensor& parents) {
  check_dtype(parents, at::kInt, "parents");
  check_dim(parents, 2, "parents", "[B, T] (parents[b][0] = -1, parents[b][i] < i, -2 absent)");
  check_contiguous(parents, "parents");
  TORCH_CHECK(parents.size(1) >= 1, "parents must hold at least the root node per row, got shape ",
              parents.sizes());
}

// Values of a CPU parents tensor: node 0 is the root (-1); node i > 0 is absent (-2) or has a
// present parent 0 <= parents[b][i] < i.
inline void check_tree_parents_values(const at::Tensor& parents) {
  const int64_t batch = parents.size(0), num_nodes = parents.size(1);
  const int32_t* par = parents.data_ptr<int32_t>();
  for (int64_t b = 0; b < batch; ++b) {
    const int32_t* row = par + b * num_nodes;
    TORCH_CHECK(row[0] == tree::kRootParent, "parents[", b, "][0] must be -1 (node 0 is the root), got ",
                row[0]);
    for (int64_t i = 1; i < num_nodes; ++i) {
      const int32_t p = row[i];
      if (p == tree::kAbsentParent) continue;
      TORCH_CHECK(p >= 0 && p < i, "parents[", b, "][", i, "] = ", p,
                  " is invalid: a node's parent must be an earlier node (0 <= parent < ", i,
                  "), or -2 for an absent node; only node 0 is the root");
      TORCH_CHECK(row[p] != tree::kAbsentParent, "parents[", b, "][", i, "] = ", p,
                  " names an absent node (parents[", b, "][", p, "] = -2)");
    }
  }
}

// Token rows [B, T] int64 matching parents.
inline void check_tree_tokens(const at::Tensor& t, const at::Tensor& parents, const char* name) {
  check_dtype(t, at::kLong, name);
  TORCH_CHECK(t.sizes() == parents.sizes(), name, " must have the shape of parents ", parents.sizes(),
              ", got ", t.sizes());
  check_contiguous(t, name);
  check_same_device(t, parents, name, "parents");
}

// Distribution rows [B, T, V] matching parents.
inline void check_tree_dists(const at::Tensor& t, const at::Tensor& parents, const char* name) {
  check_dim(t, 3, name, "[B, T, V]");
  TORCH_CHECK(t.size(0) == parents.size(0) && t.size(1) == parents.size(1), name, " must be [",
              parents.size(0), ", ", parents.size(1), ", V] to match parents, got ", t.sizes());
  TORCH_CHECK(t.size(2) >= 1, name, " must have a vocabulary of at least one token, got ", t.sizes());
  check_float_dtype(t, name, t.is_cuda());
  check_contiguous(t, name);
  check_same_device(t, parents, name, "parents");
}

// The outputs every verify op writes: accept_len [B] int32, accept_index [B, T] int32, bonus [B] int64.
inline void check_verify_outputs(const at::Tensor& accept_len, const at::Tensor& accept_index,
                                 const at::Tensor& bonus, const at::Tensor& parents) {
  const int64_t batch = parents.size(0);
  check_dtype(accept_len, at::kInt, "accept_len");
  check_dtype(accept_index, at::kInt, "accept_index");
  check_dtype(bonus, at::kLong, "bonus");
  TORCH_CHECK(accept_len.dim() == 1 && accept_len.size(0) == batch, "accept_len must be [", batch,
              "], got ", accept_len.sizes());
  TORCH_CHECK(accept_index.sizes() == parents.sizes(), "accept_index must have the shape of parents ",
              parents.sizes(), ", got ", accept_index.sizes());
  TORCH_CHECK(bonus.dim() == 1 && bonus.size(0) == batch, "bonus must be [", batch, "], got ",
              bonus.sizes());
  check_contiguous(accept_len, "accept_len");
  check_contiguous(accept_index, "accept_index");
  check_contiguous(bonus, "bonus");
  check_same_device(accept_len, parents, "accept_len", "parents");
  check_same_device(accept_index, parents, "accept_index", "parents");
  check_same_device(bonus, parents, "bonus", "parents");
}

// Values of CPU candidates: every present non-root node holds a token in [0, vocab).
inline void check_candidates_in_vocab(const at::Tensor& candidates, const at::Tensor& parents,
                                      int64_t vocab) {
  const int64_t batch = parents.size(0), num_nodes = parents.size(1);
  const int32_t* par = parents.data_ptr<int32_t>();
  const int64_t* cand = candidates.data_ptr<int64_t>();
  for (int64_t k = 0; k < batch * num_nodes; ++k) {
    if (k % num_nodes == 0 || par[k] == tree::kAbsentParent) continue;
    TORCH_CHECK(cand[k] >= 0 && cand[k] < vocab, "candidates[", k / num_nodes, "][", k % num_nodes,
                "] = ", cand[k], " is out of the vocabulary [0, ", vocab, ")");
  }
}

// build_tree: mask [B, T, T] bool and depth [B, T] int32 for parents [B, T].
inline void check_build_tree_args(const at::Tensor& mask, const at::Tensor& depth,
                                  const at::Tensor& parents) {
  check_tree_parents(parents);
  const int64_t batch = parents.size(0), num_nodes = parents.size(1);
  check_dtype(mask, at::kBool, "mask");
  check_dtype(depth, at::kInt, "depth");
  TORCH_CHECK(mask.dim() == 3 && mask.size(0) == batch && mask.size(1) == num_nodes &&
                  mask.size(2) == num_nodes,
              "mask must be [", batch, ", ", num_nodes, ", ", num_nodes, "], got ", mask.sizes());
  TORCH_CHECK(depth.sizes() == parents.sizes(), "depth must have the shape of parents ",
              parents.sizes(), ", got ", depth.sizes());
  check_contiguous(mask, "mask");
  check_contiguous(depth, "depth");
  check_same_device(mask, parents, "mask", "parents");
  check_same_device(depth, parents, "depth", "parents");
}

// verify_tree_greedy: everything but the tree values.
inline void check_verify_greedy_args(const at::Tensor& accept_len, const at::Tensor& accept_index,
                                     const at::Tensor& bonus, const at::Tensor& candidates,
                                     const at::Tensor& parents, const at::Tensor& target_tokens) {
  check_tree_parents(parents);
  check_tree_tokens(candidates, parents, "candidates");
  check_tree_tokens(target_tokens, parents, "target_tokens");
  check_verify_outputs(accept_len, accept_index, bonus, parents);
}

// verify_tree_typical: everything but the tree and token values.
inline void check_verify_typical_args(const at::Tensor& accept_len, const at::Tensor& accept_index,
                                      const at::Tensor& bonus, const at::Tensor& node_logprob,
                                      const at::Tensor& candidates, const at::Tensor& parents,
                                      const at::Tensor& target_logits, double temperature) {
  check_tree_parents(parents);
  check_tree_tokens(candidates, parents, "candidates");
  check_tree_dists(target_logits, parents, "target_logits");
  check_verify_outputs(accept_len, accept_index, bonus, parents);
  check_dtype(node_logprob, at::kFloat, "node_logprob");
  TORCH_CHECK(node_logprob.sizes() == parents.sizes(), "node_logprob must have the shape of parents ",
              parents.sizes(), ", got ", node_logprob.sizes());
  check_contiguous(node_logprob, "node_logprob");
  check_same_device(node_logprob, parents, "node_logprob", "parents");
  TORCH_CHECK(temperature > 0, "temperature must be > 0 for typical acceptance (use "
              "verify_tree_greedy at temperature 0), got ", temperature);
}

// verify_tree_sampling: everything but the tree, token and coin values. Returns the rule.
inline tree::DraftRule check_verify_sampling_args(
    const at::Tensor& accept_len, const at::Tensor& accept_index, const at::Tensor& bonus,
    const at::Tensor& candidates, const at::Tensor& parents,
    const std::optional<at::Tensor>& draft_probs, const at::Tensor& target_probs,
    const at::Tensor& coins, const std::string& draft_rule) {
  const tree::DraftRule rule = parse_draft_rule(draft_rule);
  check_tree_parents(parents);
  check_tree_tokens(candidates, parents, "candidates");
  check_tree_dists(target_probs, parents, "target_probs");
  if (rule != tree::DraftRule::kDeterministic) {
    TORCH_CHECK(draft_probs.has_value(), "draft_probs is required for draft_rule '", draft_rule, "'");
    check_tree_dists(*draft_probs, parents, "draft_probs");
    TORCH_CHECK(draft_probs->sizes() == target_probs.sizes(), "draft_probs must have the shape of "
                "target_probs ", target_probs.sizes(), ", got ", draft_probs->sizes());
    TORCH_CHECK(draft_probs->scalar_type() == target_probs.scalar_type(), "draft_probs must have the "
                "dtype of target_probs (", target_probs.scalar_type(), "), got ",
                draft_probs->scalar_type());
  }
  check_dtype(coins, at::kFloat, "coins");
  TORCH_CHECK(coins.sizes() == parents.sizes(), "coins must have the shape of parents ",
              parents.sizes(), ", got ", coins.sizes());
  check_contiguous(coins, "coins");
  check_same_device(coins, parents, "coins", "parents");
  check_verify_outputs(accept_len, accept_index, bonus, parents);
  return rule;
}

}  // namespace leapdec
