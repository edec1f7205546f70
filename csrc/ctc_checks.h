// Argument checks of ctc_prefix_score shared by every backend (defined in csrc/cpu/ctc.cpp).
// Structural checks only (shapes, dtypes, devices, contiguity, blank/eos); index values
// (frame_lens, hyp_utt, prefix_len, cand) are checked by the CPU kernel and, for CUDA tensors,
// by the Python wrapper; the CUDA kernel clamps them so memory is never read out of range.
#pragma once

#include <ATen/core/Tensor.h>

#include "leapdec/ctc_prefix_score.h"

namespace leapdec {

// log_probs [B, T, V] float, frame_lens [B] int32, r_prev [T, 2, N] float32, prefix_len /
// last_token / hyp_utt [N] int32, cand [N, C] int32, r_out [T, 2, N, C] float32, psi [N, C]
// float32, 0 <= blank < V, eos != blank. Returns the problem sizes.
ctc::Problem check_ctc_prefix_score_args(const at::Tensor& r_out, const at::Tensor& psi,
                                         const at::Tensor& log_probs, const at::Tensor& frame_lens,
                                         const at::Tensor& r_prev, const at::Tensor& prefix_len,
                                         const at::Tensor& last_token, const at::Tensor& hyp_utt,
                                         const at::Tensor& cand, int64_t blank, int64_t eos);

}  // namespace leapdec
