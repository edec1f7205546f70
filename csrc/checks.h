// Argument validation shared by every backend. Each check names the argument and
// what was expected, so bad input is a clear TORCH_CHECK error, never a crash.
// Structural checks (dtype, device, rank, shape, contiguity) run on every call;
// value checks (slot and page ranges) run on CPU tensors here and, for CUDA
// tensors, in the Python wrapper (leapdec/ops/_checks.py) outside graph capture;
// the CUDA kernels themselves also skip out-of-range indices so memory is never
// corrupted.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace leapdec {

inline void check_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous (got strides ", t.strides(), ")");
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name, const char* layout) {
  TORCH_CHECK(t.dim() == dim, name, " must be ", dim, "-D ", layout, ", got shape ", t.sizes());
}

inline void check_dtype(const at::Tensor& t, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name,
                              const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, " must be on the same device as ", ref_name,
              " (", ref.device(), "), got ", t.device());
}

inline void check_index_tensor(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  check_dtype(t, at::kInt, name);
  check_dim(t, 1, name, "int32 vector");
  check_contiguous(t, name);
  check_same_device(t, ref, name, "the KV cache");
}

// The float dtypes a backend supports.
void check_float_dtype(const at::Tensor& t, const char* name, bool cuda);

// k_cache/v_cache: [num_pages, page_size, H_kv, D], same dtype/shape/device, contiguous.
void check_kv_cache(const at::Tensor& k_cache, const at::Tensor& v_cache);

// k/v rows [N, H_kv, D] matching the cache, slot_mapping [N] int32.
void check_append_args(const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache,
                       const at::Tensor& v_cache, const at::Tensor& slot_mapping);

// rope_append_paged_kv: the append arguments, q [N, H_q, D] in the cache dtype, positions int64
// [N], cos_sin_cache [max_positions, rotary_dim] (float32 or q's dtype). Returns rotary_dim.
int64_t check_rope_append_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& positions, const at::Tensor& cos_sin_cache,
                               const at::Tensor& k_cache, const at::Tensor& v_cache,
                               const at::Tensor& slot_mapping);

// linear: x [M, K], weight [N, K] or packed [ceil(N/8), ceil(K/8), 8, 8], out [M, N] in x's
// dtype, bias [N] or None; float dtypes, one device, contiguous. Returns N.
int64_t check_linear_args(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias);

// rms_norm / fused_add_rms_norm: input [..., D] (float dtype, contiguous), other [..., D] (out or
// residual) of the same shape, dtype and device, weight [D] (any float dtype). Returns D.
int64_t check_rms_norm_args(const at::Tensor& input, const at::Tensor& other, const char* other_name,
                            const at::Tensor& weight, double eps);
// fused_add_rms_norm: the above with other = residual, which must not be input itself. Returns D.
int64_t check_fused_add_rms_norm_args(const at::Tensor& input, const at::Tensor& residual,
                                      const at::Tensor& weight, double eps);

// silu_and_mul: input [..., 2D] (float dtype, contiguous), out [..., D] of input's dtype and device,
// contiguous. Returns D.
int64_t check_silu_and_mul_args(const at::Tensor& out, const at::Tensor& input);

// Everything about paged_attention that can be checked without reading index values.
// Returns the parsed mask mode (0 none, 1 causal, 2 custom).
int check_paged_attention_args(const at::Tensor& out, const std::optional<at::Tensor>& lse,
                               const at::Tensor& q, const at::Tensor& k_cache,
                               const at::Tensor& v_cache, const at::Tensor& qo_indptr,
                               const at::Tensor& kv_indptr, const at::Tensor& kv_indices,
                               const at::Tensor& kv_last_page_len, const std::string& mask_mode,
                               const std::optional<at::Tensor>& custom_mask,
                               const std::optional<at::Tensor>& mask_indptr);

// Value checks on host-readable (CPU) index tensors.
void check_slots_in_range(const at::Tensor& slots, int64_t num_slots, const char* name,
                          bool allow_negative);
void check_paged_indices_values(const at::Tensor& qo_indptr, const at::Tensor& kv_indptr,
                                const at::Tensor& kv_indices, const at::Tensor& kv_last_page_len,
                                int64_t num_pages, int64_t page_size, int64_t total_q,
                                const std::optional<at::Tensor>& custom_mask,
                                const std::optional<at::Tensor>& mask_indptr);

}  // namespace leapdec
