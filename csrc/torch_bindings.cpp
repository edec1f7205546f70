// The op catalog: every leapdec op schema, one comment line above each, and its
// implementation per dispatch key. Meaning of each op: python/leapdec/reference.py.
// Outputs are allocated by the Python wrappers (python/leapdec/ops) and passed in
// as mutated arguments, so every op here is allocation-free and graph-capturable.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(leapdec, m) {
  // Write k/v rows [N, H_kv, D] into the paged cache at slot_mapping[N] (slot = page*page_size+offset; < 0 skipped).
  m.def("append_paged_kv(Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slot_mapping) -> ()");
  // Copy cache rows src_slots[M] -> dst_slots[M]; all reads happen before any write.
  m.def("move_kv_slots(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor src_slots, Tensor dst_slots) -> ()");
  // Attention of ragged queries q[total_q, H_q, D] over a paged KV cache; mask_mode none|causal|custom; writes out (and lse).
  m.def(
      "paged_attention(Tensor(a!) out, Tensor(b!)? lse, Tensor q, Tensor k_cache, Tensor v_cache, "
      "Tensor qo_indptr, Tensor kv_indptr, Tensor kv_indices, Tensor kv_last_page_len, str mask_mode, "
      "Tensor? custom_mask, Tensor? mask_indptr, float sm_scale, int max_qo_len, int max_kv_len, "
      "Tensor(c!)? workspace) -> ()");
  // Rotate q (in place) and k by RoPE at logical positions[N], then write k/v into the cache at slot_mapping[N].
  m.def(
      "rope_append_paged_kv(Tensor(a!) q, Tensor k, Tensor v, Tensor positions, Tensor cos_sin_cache, "
      "Tensor(b!) k_cache, Tensor(c!) v_cache, Tensor slot_mapping, bool is_neox) -> ()");
  // Ancestor mask [B,T,T] (j is i or an ancestor of i) and depth [B,T] of trees parents[B,T] (-1 root, -2 absent).
  m.def("build_tree(Tensor(a!) mask, Tensor(b!) depth, Tensor parents) -> ()");
  // Greedy tree verification: from the root, accept child c of u while candidates[c] == target_tokens[u].
  m.def(
      "verify_tree_greedy(Tensor(a!) accept_len, Tensor(b!) accept_index, Tensor(c!) bonus, "
      "Tensor candidates, Tensor parents, Tensor target_tokens) -> ()");
  // Medusa typical acceptance over a tree: longest passing root path (ties: summed log-prob), greedy bonus.
  m.def(
      "verify_tree_typical(Tensor(a!) accept_len, Tensor(b!) accept_index, Tensor(c!) bonus, "
      "Tensor(d!) node_logprob, Tensor candidates, Tensor parents, Tensor target_logits, "
      "float posterior_threshold, float posterior_alpha, float temperature) -> ()");
  // Lossless tree speculative sampling (recursive rejection, residual max(0, p-q)); randomness from coins[B,T].
  m.def(
      "verify_tree_sampling(Tensor(a!) accept_len, Tensor(b!) accept_index, Tensor(c!) bonus, "
      "Tensor candidates, Tensor parents, Tensor? draft_probs, Tensor target_probs, Tensor coins, "
      "str draft_rule, Tensor(d!)? workspace) -> ()");
  // Diffusion-LM unmasking: per-position top-1/confidence/entropy of logits[B,L,V] in one pass, then commit masked positions by policy (topk|threshold|factor|learned|entropy), ReDiff revise, End-of-Text Prediction.
  m.def(
      "unmask_and_filter(Tensor logits, Tensor(a!) tokens, Tensor(b!) masked, Tensor(c!) committed, "
      "Tensor(d!) confidence, Tensor(e!) eot_pos, Tensor(f!) predicted, Tensor(g!) entropy, "
      "Tensor block_start, Tensor block_end, Tensor? k, Tensor? seeds, Tensor? filter_w1, "
      "Tensor? filter_b1, Tensor? filter_w2, Tensor? filter_b2, Tensor(h!)? workspace, str policy, "
      "float threshold, float factor, float position_penalty, float temperature, int eos_id, "
      "int pad_id, bool eotp, float eot_threshold, bool revise, float revise_topk, "
      "float accept_threshold, int num_splits) -> ()");
  // WeDLM window reorder: per row observed tokens first, masked after (stable); perm[i] = logical index at slot i.
  m.def(
      "topological_reorder(Tensor tokens, Tensor masked, Tensor positions, Tensor(a!) tokens_out, "
      "Tensor(b!) positions_out, Tensor(c!) perm, Tensor(d!) inv_perm) -> ()");
  // One CTC prefix-scoring step (ESPnet CTCPrefixScoreTH): hypotheses n (forward vars r_prev[T,2,N] over utterance hyp_utt[n] of log_probs[B,T,V], frame_lens[B]; prefix_len/last_token[N]) extended by cand[N,C] (-1 pads); writes r_out[T,2,N,C] and prefix scores psi[N,C] (eos: end score, blank: log-zero -1e10).
  m.def(
      "ctc_prefix_score(Tensor(a!) r_out, Tensor(b!) psi, Tensor log_probs, Tensor frame_lens, "
      "Tensor r_prev, Tensor prefix_len, Tensor last_token, Tensor hyp_utt, Tensor cand, int blank, "
      "int eos) -> ()");
  // out[M, N] = x[M, K] @ weight[N, K]^T (+ bias[N]) for few rows: weights streamed once, 16-bit weights widened in registers, float32 accumulation.
  m.def("linear(Tensor(a!) out, Tensor x, Tensor weight, Tensor? bias) -> ()");
  // out[..., D] = input / sqrt(mean(input^2) + eps) * weight[D], per row, in float32 (rounded to input's dtype before the weight, like Hugging Face).
  m.def("rms_norm(Tensor(a!) out, Tensor input, Tensor weight, float eps) -> ()");
  // The residual add before a norm, in place (vLLM's fused_add_rms_norm): residual += input, then input = rms_norm(residual) * weight.
  m.def("fused_add_rms_norm(Tensor(a!) input, Tensor(b!) residual, Tensor weight, float eps) -> ()");
  // SwiGLU's gate: out[..., D] = silu(input[..., :D]) * input[..., D:] (vLLM's silu_and_mul), rounded like Hugging Face's act_fn(gate) * up.
  m.def("silu_and_mul(Tensor(a!) out, Tensor input) -> ()");
  // @@ more schemas (later issues) go above this line
}

TORCH_LIBRARY_IMPL(leapdec, CPU, m) {
  m.impl("append_paged_kv", &leapdec::append_paged_kv_cpu);
  m.impl("move_kv_slots", &leapdec::move_kv_slots_cpu);
  m.impl("paged_attention", &leapdec::paged_attention_cpu);
  m.impl("rope_append_paged_kv", &leapdec::rope_append_paged_kv_cpu);
  m.impl("build_tree", &leapdec::build_tree_cpu);
  m.impl("verify_tree_greedy", &leapdec::verify_tree_greedy_cpu);
  m.impl("verify_tree_typical", &leapdec::verify_tree_typical_cpu);
  m.impl("verify_tree_sampling", &leapdec::verify_tree_sampling_cpu);
  m.impl("unmask_and_filter", &leapdec::unmask_and_filter_cpu);
  m.impl("topological_reorder", &leapdec::topological_reorder_cpu);
  m.impl("ctc_prefix_score", &leapdec::ctc_prefix_score_cpu);
  m.impl("linear", &leapdec::linear_cpu);
  m.impl("rms_norm", &leapdec::rms_norm_cpu);
  m.impl("fused_add_rms_norm", &leapdec::fused_add_rms_norm_cpu);
  m.impl("silu_and_mul", &leapdec::silu_and_mul_cpu);
  // @@ more CPU impls go above this line
}

#ifdef LEAPDEC_WITH_CUDA
TORCH_LIBRARY_IMPL(leapdec, CUDA, m) {
  m.impl("append_paged_kv", &leapdec::append_paged_kv_cuda);
  m.impl("move_kv_slots", &leapdec::move_kv_slots_cuda);
  m.impl("paged_attention", &leapdec::paged_attention_cuda);
  m.impl("rope_append_paged_kv", &leapdec::rope_append_paged_kv_cuda);
  m.impl("build_tree", &leapdec::build_tree_cuda);
  m.impl("verify_tree_greedy", &leapdec::verify_tree_greedy_cuda);
  m.impl("verify_tree_typical", &leapdec::verify_tree_typical_cuda);
  m.impl("verify_tree_sampling", &leapdec::verify_tree_sampling_cuda);
  m.impl("unmask_and_filter", &leapdec::unmask_and_filter_cuda);
  m.impl("topological_reorder", &leapdec::topological_reorder_cuda);
  m.impl("ctc_prefix_score", &leapdec::ctc_prefix_score_cuda);
  m.impl("linear", &leapdec::linear_cuda);
  m.impl("rms_norm", &leapdec::rms_norm_cuda);
  m.impl("fused_add_rms_norm", &leapdec::fused_add_rms_norm_cuda);
  m.impl("silu_and_mul", &leapdec::silu_and_mul_cuda);
  // @@ more CUDA impls go above this line
}
#endif
