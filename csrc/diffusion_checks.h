// Argument checks of unmask_and_filter and topological_reorder, shared by every backend
// (defined in csrc/diffusion_checks.cpp). Structural checks only: shapes, dtypes, devices,
// contiguity and scalar options; per-row values (block bounds) are checked by each backend.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

#include "leapdec/unmask.cuh"

namespace leapdec {

unmask::Policy parse_unmask_policy(const std::string& policy);

// Every unmask_and_filter argument; returns the kernel parameters (sizes, policy, options).
unmask::Params check_unmask_and_filter_args(
    const at::Tensor& logits, const at::Tensor& tokens, const at::Tensor& masked,
    const at::Tensor& committed, const at::Tensor& confidence, const at::Tensor& eot_pos,
    const at::Tensor& predicted, const at::Tensor& entropy, const at::Tensor& block_start,
    const at::Tensor& block_end, const std::optional<at::Tensor>& k,
    const std::optional<at::Tensor>& seeds, const std::optional<at::Tensor>& filter_w1,
    const std::optional<at::Tensor>& filter_b1, const std::optional<at::Tensor>& filter_w2,
    const std::optional<at::Tensor>& filter_b2, const std::string& policy, double threshold,
    double factor, double position_penalty, double temperature, int64_t eos_id, int64_t pad_id,
    bool eotp, double eot_threshold, bool revise, double revise_topk, double accept_threshold);

// tokens [B, W] (int64/int32), masked [B, W] bool, positions [B, W] (int64/int32) and the
// outputs of their shapes and dtypes (perm / inv_perm int32), all on tokens' device.
void check_topological_reorder_args(const at::Tensor& tokens, const at::Tensor& masked,
                                    const at::Tensor& positions, const at::Tensor& tokens_out,
                                    const at::Tensor& positions_out, const at::Tensor& perm,
                                    const at::Tensor& inv_perm);

}  // namespace leapdec
