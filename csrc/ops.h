// Declarations of every op implementation, one block per dispatch key.
// The schemas (the contract) live in torch_bindings.cpp; the meaning of each op
// is python/leapdec/reference.py.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>

namespace leapdec {

// mask_mode values shared by every backend ("none", "causal", "custom").
enum class MaskMode : int { kNone = 0, kCausal = 1, kCustom = 2 };
MaskMode parse_mask_mode(const std::string& mode);  // TORCH_CHECKs the name

// ---------------------------------------------------------------- CPU
void append_paged_kv_cpu(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
                         at::Tensor& v_cache, const at::Tensor& slot_mapping);
void move_kv_slots_cpu(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& src_slots,
                       const at::Tensor& dst_slots);
void paged_attention_cpu(at::Tensor& out, const std::optional<at::Tensor>& lse, const at::Tensor& q,
                         const at::Tensor& k_cache, const at::Tensor& v_cache,
                         const at::Tensor& qo_indptr, const at::Tensor& kv_indptr,
                         const at::Tensor& kv_indices, const at::Tensor& kv_last_page_len,
                         const std::string& mask_mode, const std::optional<at::Tensor>& custom_mask,
                         const std::optional<at::Tensor>& mask_indptr, double sm_scale,
                         int64_t max_qo_len, int64_t max_kv_len,
                         const std::optional<at::Tensor>& workspace);
void rope_append_paged_kv_cpu(at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& positions, const at::Tensor& cos_sin_cache,
                              at::Tensor& k_cache, at::Tensor& v_cache,
                              const at::Tensor& slot_mapping, bool is_neox);

void build_tree_cpu(at::Tensor& mask, at::Tensor& depth, const at::Tensor& parents);
void verify_tree_greedy_cpu(at::Tensor& accept_len, at::Tensor& accept_index, at::Tensor& bonus,
                            const at::Tensor& candidates, const at::Tensor& parents,
                            const at::Tensor& target_tokens);
void verify_tree_typical_cpu(at::Tensor& accept_len, at::Tensor& accept_index, at::Tensor& bonus,
                             at::Tensor& node_logprob, const at::Tensor& candidates,
                             const at::Tensor& parents, const at::Tensor& target_logits,
                             double posterior_threshold, double posterior_alpha, double temperature);
void verify_tree_sampling_cpu(at::Tensor& accept_len, at::Tensor& accept_index, at::Tensor& bonus,
                              const at::Tensor& candidates, const at::Tensor& parents,
                              const std::optional<at::Tensor>& draft_probs,
                              const at::Tensor& target_probs, const at::Tensor& coins,
                              const std::string& draft_rule,
                              const std::optional<at::Tensor>& workspace);
void unmask_and_filter_cpu(const at::Tensor& logits, at::Tensor& tokens, at::Tensor& masked,
                           at::Tensor& committed, at::Tensor& confidence, at::Tensor& eot_pos,
                           at::Tensor& predicted, at::Tensor& entropy, const at::Tensor& block_start,
                           const at::Tensor& block_end, const std::optional<at::Tensor>& k,
                           const std::optional<at::Tensor>& seeds, const std::optional<at::Tensor>& filter_w1,
                           const std::optional<at::Tensor>& filter_b1, const std::optional<at::Tensor>& filter_w2,
                           const std::optional<at::Tensor>& filter_b2, const std::optional<at::Tensor>& workspace,
                           const std::string& policy, double threshold, double factor, double position_penalty,
                           double temperature, int64_t eos_id, int64_t pad_id, bool eotp, double eot_threshold,
                           bool revise, double revise_topk, double accept_threshold, int64_t num_splits);
void topological_reorder_cpu(const at::Tensor& tokens, const at::Tensor& masked,
                             const at::Tensor& positions, at::Tensor& tokens_out, at::Tensor& positions_out,
                             at::Tensor& perm, at::Tensor& inv_perm);

void ctc_prefix_score_cpu(at::Tensor& r_out, at::Tensor& psi, const at::Tensor& log_probs,
                          const at::Tensor& frame_lens, const at::Tensor& r_prev,
                          const at::Tensor& prefix_len, const at::Tensor& last_token,
                          const at::Tensor& hyp_utt, const at::Tensor& cand, int64_t blank,
                          int64_t eos);
void linear_cpu(at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                const std::optional<at::Tensor>& bias);
void rms_norm_cpu(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight, double eps);
void fused_add_rms_norm_cpu(at::Tensor& input, at::Tensor& residual, const at::Tensor& weight, double eps);
void silu_and_mul_cpu(at::Tensor& out, const at::Tensor& input);

// ---------------------------------------------------------------- CUDA
#ifdef LEAPDEC_WITH_CUDA
void append_paged_kv_cuda(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
                          at::Tensor& v_cache, const at::Tensor& slot_mapping);
void move_kv_slots_cuda(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& src_slots,
                        const at::Tensor& dst_slots);
void paged_attention_cuda(at::Tensor& out, const std::optional<at::Tensor>& lse, const at::Tensor& q,
                          const at::Tensor& k_cache, const at::Tensor& v_cache,
                          const at::Tensor& qo_indptr, const at::Tensor& kv_indptr,
                          const at::Tensor& kv_indices, const at::Tensor& kv_last_page_len,
                          const std::string& mask_mode, const std::optional<at::Tensor>& custom_mask,
                          const std::optional<at::Tensor>& mask_indptr, double sm_scale,
                          int64_t max_qo_len, int64_t max_kv_len,
                          const std::optional<at::Tensor>& workspace);
void rope_append_paged_kv_cuda(at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& positions, const at::Tensor& cos_sin_cache,
                               at::Tensor& k_cache, at::Tensor& v_cache,
                               const at::Tensor& slot_mapping, bool is_neox);
void build_tree_cuda(at::Tensor& mask, at::Tensor& depth, const at::Tensor& parents);
void verify_tree_greedy_cuda(at::Tensor& accept_len, at::Tensor& accept_index, at::Tensor& bonus,
                             const at::Tensor& candidates, const at::Tensor& parents,
                             const at::Tensor& target_tokens);
void verify_tree_typical_cuda(at::Tensor& accept_len, at::Tensor& accept_index, at::Tensor& bonus,
                              at::Tensor& node_logprob, const at::Tensor& candidates,
                              const at::Tensor& parents, const at::Tensor& target_logits,
                              double posterior_threshold, double posterior_alpha, double temperature);
void verify_tree_sampling_cuda(at::Tensor& accept_len, at::Tensor& accept_index, at::Tensor& bonus,
                               const at::Tensor& candidates, const at::Tensor& parents,
                               const std::optional<at::Tensor>& draft_probs,
                               const at::Tensor& target_probs, const at::Tensor& coins,
                               const std::string& draft_rule,
                               const std::optional<at::Tensor>& workspace);
void unmask_and_filter_cuda(const at::Tensor& logits, at::Tensor& tokens, at::Tensor& masked,
                            at::Tensor& committed, at::Tensor& confidence, at::Tensor& eot_pos,
                            at::Tensor& predicted, at::Tensor& entropy, const at::Tensor& block_start,
                            const at::Tensor& block_end, const std::optional<at::Tensor>& k,
                            const std::optional<at::Tensor>& seeds, const std::optional<at::Tensor>& filter_w1,
                            const std::optional<at::Tensor>& filter_b1, const std::optional<at::Tensor>& filter_w2,
                            const std::optional<at::Tensor>& filter_b2, const std::optional<at::Tensor>& workspace,
                            const std::string& policy, double threshold, double factor, double position_penalty,
                            double temperature, int64_t eos_id, int64_t pad_id, bool eotp, double eot_threshold,
                            bool revise, double revise_topk, double accept_threshold, int64_t num_splits);
void topological_reorder_cuda(const at::Tensor& tokens, const at::Tensor& masked,
                              const at::Tensor& positions, at::Tensor& tokens_out, at::Tensor& positions_out,
                              at::Tensor& perm, at::Tensor& inv_perm);
void ctc_prefix_score_cuda(at::Tensor& r_out, at::Tensor& psi, const at::Tensor& log_probs,
                           const at::Tensor& frame_lens, const at::Tensor& r_prev,
                           const at::Tensor& prefix_len, const at::Tensor& last_token,
                           const at::Tensor& hyp_utt, const at::Tensor& cand, int64_t blank,
                           int64_t eos);
void linear_cuda(at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                 const std::optional<at::Tensor>& bias);
void rms_norm_cuda(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight, double eps);
void fused_add_rms_norm_cuda(at::Tensor& input, at::Tensor& residual, const at::Tensor& weight, double eps);
void silu_and_mul_cuda(at::Tensor& out, const at::Tensor& input);
#endif

}  // namespace leapdec
