#include "checks.h"

#include <cmath>
#include <vector>

#include "ops.h"

namespace leapdec {

MaskMode parse_mask_mode(const std::string& mode) {
  if (mode == "none") return MaskMode::kNone;
  if (mode == "causal") return MaskMode::kCausal;
  if (mode == "custom") return MaskMode::kCustom;
  TORCH_CHECK(false, "mask_mode must be one of 'none', 'causal', 'custom', got '", mode, "'");
}

void check_float_dtype(const at::Tensor& t, const char* name, bool cuda) {
  auto st = t.scalar_type();
  bool ok = st == at::kFloat || st == at::kBFloat16 || st == at::kHalf;
  TORCH_CHECK(ok, name, " must be float32, bfloat16 or float16", cuda ? "" : " (float16 is slow on CPU)",
              ", got ", st);
}

void check_kv_cache(const at::Tensor& k_cache, const at::Tensor& v_cache) {
  check_dim(k_cache, 4, "k_cache", "[num_pages, page_size, H_kv, D]");
  check_dim(v_cache, 4, "v_cache", "[num_pages, page_size, H_kv, D]");
  TORCH_CHECK(k_cache.sizes() == v_cache.sizes(), "v_cache must have the shape of k_cache ",
              k_cache.sizes(), ", got ", v_cache.sizes());
  TORCH_CHECK(k_cache.scalar_type() == v_cache.scalar_type(), "v_cache must have the dtype of k_cache (",
              k_cache.scalar_type(), "), got ", v_cache.scalar_type());
  check_same_device(v_cache, k_cache, "v_cache", "k_cache");
  check_float_dtype(k_cache, "k_cache", k_cache.is_cuda());
  check_contiguous(k_cache, "k_cache");
  check_contiguous(v_cache, "v_cache");
  // Zero-sized dimensions would divide by zero in the kernels (slot -> page, GQA group size).
  TORCH_CHECK(k_cache.size(1) > 0, "k_cache page_size (dim 1) must be positive, got ", k_cache.size(1));
  TORCH_CHECK(k_cache.size(2) > 0, "k_cache H_kv (number of KV heads, dim 2) must be positive, got ",
              k_cache.size(2));
  TORCH_CHECK(k_cache.size(3) > 0, "k_cache head dim D (dim 3) must be positive, got ", k_cache.size(3));
}

void check_append_args(const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache,
                       const at::Tensor& v_cache, const at::Tensor& slot_mapping) {
  check_kv_cache(k_cache, v_cache);
  check_dim(k, 3, "k", "[N, H_kv, D]");
  check_dim(v, 3, "v", "[N, H_kv, D]");
  TORCH_CHECK(k.size(1) == k_cache.size(2) && k.size(2) == k_cache.size(3), "k must be [N, ",
              k_cache.size(2), ", ", k_cache.size(3), "] to match the cache, got ", k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), "v must have the shape of k ", k.sizes(), ", got ", v.sizes());
  TORCH_CHECK(k.scalar_type() == k_cache.scalar_type(), "k must have the cache dtype ",
              k_cache.scalar_type(), ", got ", k.scalar_type());
  TORCH_CHECK(v.scalar_type() == k_cache.scalar_type(), "v must have the cache dtype ",
              k_cache.scalar_type(), ", got ", v.scalar_type());
  check_same_device(k, k_cache, "k", "k_cache");
  check_same_device(v, k_cache, "v", "k_cache");
  check_contiguous(k, "k");
  check_contiguous(v, "v");
  check_index_tensor(slot_mapping, k_cache, "slot_mapping");
  TORCH_CHECK(slot_mapping.size(0) == k.size(0), "slot_mapping must have one slot per row of k (",
              k.size(0), "), got ", slot_mapping.size(0));
}

int check_paged_attention_args(const at::Tensor& out, const std::optional<at::Tensor>& lse,
                               const at::Tensor& q, const at::Tensor& k_cache,
                               const at::Tensor& v_cache, const at::Tensor& qo_indptr,
                               const at::Tensor& kv_indptr, const at::Tensor& kv_indices,
                               const at::Tensor& kv_last_page_len, const std::string& mask_mode,
                               const std::optional<at::Tensor>& custom_mask,
                               const std::optional<at::Tensor>& mask_indptr) {
  MaskMode mode = parse_mask_mode(mask_mode);
  check_kv_cache(k_cache, v_cache);
  check_dim(q, 3, "q", "[total_q, H_q, D]");
  check_contiguous(q, "q");
  check_same_device(q, k_cache, "q", "k_cache");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type(), "q must have the cache dtype ",
              k_cache.scalar_type(), ", got ", q.scalar_type());
  const int64_t h_kv = k_cache.size(2), d = k_cache.size(3);
  TORCH_CHECK(q.size(2) == d, "q head dim must equal the cache head dim ", d, ", got ", q.size(2));
  TORCH_CHECK(q.size(1) > 0, "q must have at least one head (H_q > 0), got shape ", q.sizes());
  TORCH_CHECK(q.size(1) % h_kv == 0, "q heads (", q.size(1), ") must be a multiple of the KV heads (",
              h_kv, ")");
  TORCH_CHECK(out.sizes() == q.sizes(), "out must have the shape of q ", q.sizes(), ", got ", out.sizes());
  TORCH_CHECK(out.scalar_type() == q.scalar_type(), "out must have the dtype of q");
  check_same_device(out, q, "out", "q");
  check_contiguous(out, "out");
  if (lse.has_value()) {
    const auto& l = *lse;
    TORCH_CHECK(l.dim() == 2 && l.size(0) == q.size(0) && l.size(1) == q.size(1),
                "lse must be [total_q, H_q] = [", q.size(0), ", ", q.size(1), "], got ", l.sizes());
    check_dtype(l, at::kFloat, "lse");
    check_same_device(l, q, "lse", "q");
    check_contiguous(l, "lse");
  }
  check_index_tensor(qo_indptr, k_cache, "qo_indptr");
  check_index_tensor(kv_indptr, k_cache, "kv_indptr");
  check_index_tensor(kv_indices, k_cache, "kv_indices");
  check_index_tensor(kv_last_page_len, k_cache, "kv_last_page_len");
  const int64_t batch = kv_last_page_len.size(0);
  TORCH_CHECK(qo_indptr.size(0) == batch + 1, "qo_indptr must have B+1 = ", batch + 1,
              " entries (B from kv_last_page_len), got ", qo_indptr.size(0));
  TORCH_CHECK(kv_indptr.size(0) == batch + 1, "kv_indptr must have B+1 = ", batch + 1,
              " entries (B from kv_last_page_len), got ", kv_indptr.size(0));
  if (mode == MaskMode::kCustom) {
    TORCH_CHECK(custom_mask.has_value() && mask_indptr.has_value(),
                "mask_mode='custom' needs custom_mask and mask_indptr");
    check_dtype(*custom_mask, at::kBool, "custom_mask");
    check_dim(*custom_mask, 1, "custom_mask", "flat bool vector (each request's [qo_len, qo_len] row-major)");
    check_contiguous(*custom_mask, "custom_mask");
    check_same_device(*custom_mask, q, "custom_mask", "q");
    check_index_tensor(*mask_indptr, k_cache, "mask_indptr");
    TORCH_CHECK(mask_indptr->size(0) == batch + 1, "mask_indptr must have B+1 = ", batch + 1,
                " entries, got ", mask_indptr->size(0));
  }
  return static_cast<int>(mode);
}

void check_slots_in_range(const at::Tensor& slots, int64_t num_slots, const char* name,
                          bool allow_negative) {
  const int* s = slots.data_ptr<int>();
  for (int64_t i = 0; i < slots.numel(); ++i) {
    if (allow_negative && s[i] < 0) continue;
    TORCH_CHECK(s[i] >= 0 && s[i] < num_slots, name, "[", i, "] = ", s[i], " is out of range [",
                allow_negative ? "-inf" : "0", ", ", num_slots, ") (num_pages * page_size)");
  }
}

void check_paged_indices_values(const at::Tensor& qo_indptr, const at::Tensor& kv_indptr,
                                const at::Tensor& kv_indices, const at::Tensor& kv_last_page_len,
                                int64_t num_pages, int64_t page_size, int64_t total_q,
                                const std::optional<at::Tensor>& custom_mask,
                                const std::optional<at::Tensor>& mask_indptr) {
  const int* qo = qo_indptr.data_ptr<int>();
  const int* kvp = kv_indptr.data_ptr<int>();
  const int* idx = kv_indices.data_ptr<int>();
  const int* last = kv_last_page_len.data_ptr<int>();
  const int64_t batch = kv_last_page_len.size(0);
  TORCH_CHECK(qo[0] == 0, "qo_indptr[0] must be 0, got ", qo[0]);
  TORCH_CHECK(kvp[0] == 0, "kv_indptr[0] must be 0, got ", kvp[0]);
  TORCH_CHECK(qo[batch] == total_q, "qo_indptr[B] must equal the number of query rows ", total_q,
              ", got ", qo[batch]);
  TORCH_CHECK(kvp[batch] <= kv_indices.size(0), "kv_indptr[B] = ", kvp[batch],
              " exceeds the length of kv_indices (", kv_indices.size(0), ")");
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t qo_len = qo[b + 1] - qo[b];
    const int64_t n_pages = kvp[b + 1] - kvp[b];
    TORCH_CHECK(qo_len >= 0, "qo_indptr must be non-decreasing (request ", b, ")");
    TORCH_CHECK(n_pages >= 0, "kv_indptr must be non-decreasing (request ", b, ")");
    const int64_t kv_len = n_pages == 0 ? 0 : page_size * (n_pages - 1) + last[b];
    if (n_pages > 0) {
      TORCH_CHECK(last[b] >= 1 && last[b] <= page_size, "kv_last_page_len[", b, "] = ", last[b],
                  " must be in 1..page_size (", page_size, ")");
    }
    TORCH_CHECK(qo_len <= kv_len, "request ", b, " has qo_len ", qo_len, " > kv_len ", kv_len,
                ": queries must be the last qo_len positions of their KV sequence (append first)");
    for (int64_t p = kvp[b]; p < kvp[b + 1]; ++p) {
      TORCH_CHECK(idx[p] >= 0 && idx[p] < num_pages, "kv_indices[", p, "] = ", idx[p],
                  " is out of range [0, ", num_pages, ")");
    }
  }
  if (custom_mask.has_value() && mask_indptr.has_value()) {
    const int* mi = mask_indptr->data_ptr<int>();
    TORCH_CHECK(mi[0] == 0, "mask_indptr[0] must be 0, got ", mi[0]);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t qo_len = qo[b + 1] - qo[b];
      TORCH_CHECK(mi[b + 1] - mi[b] == qo_len * qo_len, "mask_indptr: request ", b, " must hold qo_len^2 = ",
                  qo_len * qo_len, " mask entries, got ", mi[b + 1] - mi[b]);
    }
    TORCH_CHECK(mi[batch] <= custom_mask->numel(), "mask_indptr[B] = ", mi[batch],
                " exceeds custom_mask's length ", custom_mask->numel());
  }
}

int64_t check_rope_append_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& positions, const at::Tensor& cos_sin_cache,
                               const at::Tensor& k_cache, const at::Tensor& v_cache,
                               const at::Tensor& slot_mapping) {
  check_append_args(k, v, k_cache, v_cache, slot_mapping);
  const int64_t n = k.size(0), d = k.size(2);
  check_dim(q, 3, "q", "[N, H_q, D]");
  TORCH_CHECK(q.size(0) == n && q.size(2) == d, "q must be [", n, ", H_q, ", d,
              "] (one row per row of k, the head dim of k), got ", q.sizes());
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type(), "q must have the cache dtype ",
              k_cache.scalar_type(), ", got ", q.scalar_type());
  check_same_device(q, k_cache, "q", "k_cache");
  check_contiguous(q, "q");
  TORCH_CHECK(q.size(1) > 0, "q must have at least one head (H_q > 0), got shape ", q.sizes());
  check_dtype(positions, at::kLong, "positions");
  check_dim(positions, 1, "positions", "int64 vector [N]");
  TORCH_CHECK(positions.size(0) == n, "positions must have one entry per row of k (", n, "), got ",
              positions.size(0));
  check_same_device(positions, k_cache, "positions", "k_cache");
  check_contiguous(positions, "positions");
  check_dim(cos_sin_cache, 2, "cos_sin_cache", "[max_positions, rotary_dim]");
  TORCH_CHECK(cos_sin_cache.scalar_type() == at::kFloat ||
                  cos_sin_cache.scalar_type() == q.scalar_type(),
              "cos_sin_cache must be float32 or the dtype of q (", q.scalar_type(), "), got ",
              cos_sin_cache.scalar_type());
  const int64_t rot = cos_sin_cache.size(1);
  TORCH_CHECK(rot >= 2 && rot % 2 == 0 && rot <= d, "cos_sin_cache's rotary_dim must be even and in [2, ",
              d, "] (the head dim), got ", rot);
  check_same_device(cos_sin_cache, k_cache, "cos_sin_cache", "k_cache");
  check_contiguous(cos_sin_cache, "cos_sin_cache");
  return rot;
}

int64_t check_rms_norm_args(const at::Tensor& input, const at::Tensor& other, const char* other_name,
                            const at::Tensor& weight, double eps) {
  TORCH_CHECK(input.dim() >= 1, "input must have at least one dimension [..., D], got shape ", input.sizes());
  const bool cuda = input.is_cuda();
  check_float_dtype(input, "input", cuda);
  check_float_dtype(weight, "weight", cuda);
  const int64_t d = input.size(-1);
  check_dim(weight, 1, "weight", "[D]");
  TORCH_CHECK(weight.size(0) == d, "weight must be [", d, "] (D = the last dim of input), got ", weight.sizes());
  TORCH_CHECK(other.sizes() == input.sizes(), other_name, " must have input's shape ", input.sizes(), ", got ",
              other.sizes());
  TORCH_CHECK(other.scalar_type() == input.scalar_type(), other_name, " must have the dtype of input (",
              input.scalar_type(), "), got ", other.scalar_type());
  TORCH_CHECK(std::isfinite(eps) && eps >= 0.0, "eps must be finite and >= 0, got ", eps);
  check_same_device(weight, input, "weight", "input");
  check_same_device(other, input, other_name, "input");
  check_contiguous(input, "input");
  check_contiguous(other, other_name);
  check_contiguous(weight, "weight");
  return d;
}

int64_t check_fused_add_rms_norm_args(const at::Tensor& input, const at::Tensor& residual,
                                      const at::Tensor& weight, double eps) {
  const int64_t d = check_rms_norm_args(input, residual, "residual", weight, eps);
  TORCH_CHECK(input.numel() == 0 || input.data_ptr() != residual.data_ptr(),
              "input and residual must be different tensors (residual += input, then input = the norm)");
  return d;
}

int64_t check_silu_and_mul_args(const at::Tensor& out, const at::Tensor& input) {
  TORCH_CHECK(input.dim() >= 1, "input must have at least one dimension [..., 2D], got shape ", input.sizes());
  check_float_dtype(input, "input", input.is_cuda());
  const int64_t two_d = input.size(-1);
  TORCH_CHECK(two_d % 2 == 0, "input's last dim must be even (gate then up halves), got ", two_d);
  std::vector<int64_t> want(input.sizes().begin(), input.sizes().end());
  want.back() = two_d / 2;
  TORCH_CHECK(out.sizes() == at::IntArrayRef(want), "out must be ", at::IntArrayRef(want),
              " (input's shape with the last dim halved), got ", out.sizes());
  TORCH_CHECK(out.scalar_type() == input.scalar_type(), "out must have the dtype of input (",
              input.scalar_type(), "), got ", out.scalar_type());
  check_same_device(out, input, "out", "input");
  check_contiguous(input, "input");
  check_contiguous(out, "out");
  return two_d / 2;
}

int64_t check_linear_args(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias) {
  check_dim(x, 2, "x", "[M, K]");
  check_dim(out, 2, "out", "[M, N]");
  TORCH_CHECK(weight.dim() == 2 || weight.dim() == 4, "weight must be 2-D [N, K] or 4-D packed ",
              "[ceil(N/8), ceil(K/8), 8, 8] (ops.pack_linear_weight), got shape ", weight.sizes());
  const bool cuda = x.is_cuda();
  check_float_dtype(x, "x", cuda);
  check_float_dtype(weight, "weight", cuda);
  const int64_t k = x.size(1);
  int64_t n = weight.size(0);
  if (weight.dim() == 4) {
    n = out.size(1);
    TORCH_CHECK(weight.size(0) == (n + 7) / 8 && weight.size(1) == (k + 7) / 8 && weight.size(2) == 8 &&
                    weight.size(3) == 8,
                "packed weight must be [", (n + 7) / 8, ", ", (k + 7) / 8, ", 8, 8] for N = ", n,
                " (out's last dim) and K = ", k, " (x's last dim), got ", weight.sizes());
  } else {
    TORCH_CHECK(weight.size(1) == k, "weight must be [N, ", k, "] (K = the last dim of x), got ",
                weight.sizes());
  }
  TORCH_CHECK(out.size(0) == x.size(0) && out.size(1) == n, "out must be [", x.size(0), ", ", n,
              "] ([M, N]), got ", out.sizes());
  TORCH_CHECK(out.scalar_type() == x.scalar_type(), "out must have the dtype of x (",
              x.scalar_type(), "), got ", out.scalar_type());
  check_same_device(weight, x, "weight", "x");
  check_same_device(out, x, "out", "x");
  check_contiguous(x, "x");
  check_contiguous(weight, "weight");
  check_contiguous(out, "out");
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    check_dim(b, 1, "bias", "[N]");
    TORCH_CHECK(b.size(0) == n, "bias must be [", n, "] (N), got ", b.sizes());
    check_float_dtype(b, "bias", cuda);
    check_same_device(b, x, "bias", "x");
    check_contiguous(b, "bias");
  }
  return n;
}

}  // namespace leapdec
