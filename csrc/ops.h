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
#endif

}  // namespace leapdec
