// Argument checks of the diffusion-decoding ops (unmask_and_filter, topological_reorder),
// shared by the CPU kernels (csrc/cpu/diffusion.cpp) and the CUDA launchers
// (csrc/cuda/diffusion.cu). Each names the argument and what was expected.
#include "diffusion_checks.h"

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "checks.h"

namespace leapdec {

unmask::Policy parse_unmask_policy(const std::string& policy) {
  if (policy == "topk") return unmask::Policy::kTopK;
  if (policy == "threshold") return unmask::Policy::kThreshold;
  if (policy == "factor") return unmask::Policy::kFactor;
  if (policy == "learned") return unmask::Policy::kLearned;
  if (policy == "entropy") return unmask::Policy::kEntropy;
  TORCH_CHECK(false, "policy must be one of 'topk', 'threshold', 'factor', 'learned', 'entropy', got '",
              policy, "'");
}

namespace {

void check_rows(const at::Tensor& t, const at::Tensor& ref, int64_t batch, int64_t len,
                const char* name, const char* what) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == batch && t.size(1) == len, name, " must be [B, L] = [",
              batch, ", ", len, "] (", what, "), got shape ", t.sizes());
  check_contiguous(t, name);
  check_same_device(t, ref, name, "logits");
}

void check_vector(const at::Tensor& t, const at::Tensor& ref, int64_t batch, at::ScalarType dtype,
                  const char* name) {
  check_dtype(t, dtype, name);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == batch, name, " must be a [B] = [", batch,
              "] vector, got shape ", t.sizes());
  check_contiguous(t, name);
  check_same_device(t, ref, name, "logits");
}

void check_filter_tensor(const std::optional<at::Tensor>& t, const at::Tensor& ref,
                         std::initializer_list<int64_t> shape, const char* name,
                         const char* layout) {
  TORCH_CHECK(t.has_value(), "policy 'learned' needs the filter weights (", name, " missing)");
  check_dtype(*t, at::kFloat, name);
  TORCH_CHECK(t->sizes() == c10::IntArrayRef(shape), name, " must be ", layout, " = ",
              c10::IntArrayRef(shape), ", got ", t->sizes());
  check_contiguous(*t, name);
  check_same_device(*t, ref, name, "logits");
}

}  // namespace

unmask::Params check_unmask_and_filter_args(
    const at::Tensor& logits, const at::Tensor& tokens, const at::Tensor& masked,
    const at::Tensor& committed, const at::Tensor& confidence, const at::Tensor& eot_pos,
    const at::Tensor& predicted, const at::Tensor& entropy, const at::Tensor& block_start,
    const at::Tensor& block_end, const std::optional<at::Tensor>& k,
    const std::optional<at::Tensor>& seeds, const std::optional<at::Tensor>& filter_w1,
    const std::optional<at::Tensor>& filter_b1, const std::optional<at::Tensor>& filter_w2,
    const std::optional<at::Tensor>& filter_b2, const std::string& policy, double threshold,
    double factor, double position_penalty, double temperature, int64_t eos_id, int64_t pad_id,
    bool eotp, double eot_threshold, bool revise, double revise_topk, double accept_threshold) {
  unmask::Params p;
  p.policy = parse_unmask_policy(policy);
  check_dim(logits, 3, "logits", "[B, L, V]");
  check_float_dtype(logits, "logits", logits.is_cuda());
  check_contiguous(logits, "logits");
  const int64_t batch = logits.size(0), len = logits.size(1), vocab = logits.size(2);
  TORCH_CHECK(vocab >= 1 && vocab < (int64_t{1} << 31), "logits' vocabulary size must be in [1, 2^31), got ",
              vocab);
  TORCH_CHECK(len < (int64_t{1} << 31) && batch < (int64_t{1} << 31), "logits is too large: ",
              logits.sizes());
  check_rows(tokens, logits, batch, len, "tokens", "int64 or int32 token ids, updated in place");
  TORCH_CHECK(tokens.scalar_type() == at::kLong || tokens.scalar_type() == at::kInt,
              "tokens must be int64 or int32, got ", tokens.scalar_type());
  check_rows(masked, logits, batch, len, "masked", "bool, true where the token is still masked");
  check_dtype(masked, at::kBool, "masked");
  check_rows(confidence, logits, batch, len, "confidence", "float32 output");
  check_dtype(confidence, at::kFloat, "confidence");
  check_rows(predicted, logits, batch, len, "predicted", "int32 output");
  check_dtype(predicted, at::kInt, "predicted");
  check_rows(entropy, logits, batch, len, "entropy", "float32 output");
  check_dtype(entropy, at::kFloat, "entropy");
  check_vector(committed, logits, batch, at::kInt, "committed");
  check_vector(eot_pos, logits, batch, at::kInt, "eot_pos");
  check_vector(block_start, logits, batch, at::kInt, "block_start");
  check_vector(block_end, logits, batch, at::kInt, "block_end");
  if (k.has_value()) check_vector(*k, logits, batch, at::kInt, "k");
  TORCH_CHECK(p.policy != unmask::Policy::kTopK || k.has_value(),
              "policy 'topk' needs k (the number of tokens to commit per row)");
  TORCH_CHECK(std::isfinite(temperature) && temperature >= 0.0,
              "temperature must be finite and >= 0, got ", temperature);
  if (temperature > 0.0) {
    TORCH_CHECK(seeds.has_value(), "temperature > 0 needs seeds (an int64 [B] tensor of noise seeds)");
    check_vector(*seeds, logits, batch, at::kLong, "seeds");
  }
  if (p.policy == unmask::Policy::kFactor) {
    TORCH_CHECK(factor >= 0.0, "factor must be >= 0, got ", factor);
  }
  if (p.policy == unmask::Policy::kLearned) {
    TORCH_CHECK(filter_w1.has_value() && filter_w1->dim() == 2,
                "policy 'learned' needs filter_w1 as a 2-D [H, F] float32 tensor");
    const int64_t hidden = filter_w1->size(0), in = filter_w1->size(1);
    TORCH_CHECK(hidden >= 1 && in >= 1 && hidden <= 4096 && in <= 4096,
                "filter_w1 must be [H, F] with 1 <= H, F <= 4096, got ", filter_w1->sizes());
    check_filter_tensor(filter_w1, logits, {hidden, in}, "filter_w1", "[H, F]");
    check_filter_tensor(filter_b1, logits, {hidden}, "filter_b1", "[H]");
    check_filter_tensor(filter_w2, logits, {in, hidden}, "filter_w2", "[F, H]");
    check_filter_tensor(filter_b2, logits, {in}, "filter_b2", "[F]");
    p.filter_in = static_cast<int>(in);
    p.filter_hidden = static_cast<int>(hidden);
  }
  if (eotp) {
    TORCH_CHECK(eos_id >= 0, "eotp=True needs eos_id >= 0, got ", eos_id);
    TORCH_CHECK(pad_id >= 0, "eotp=True needs pad_id >= 0 (the token written after an EOS), got ", pad_id);
  }
  TORCH_CHECK(!std::isnan(threshold) && !std::isnan(factor) && !std::isnan(position_penalty) &&
                  !std::isnan(eot_threshold) && !std::isnan(revise_topk) && !std::isnan(accept_threshold),
              "the float options of unmask_and_filter must not be NaN");
  p.batch = static_cast<int>(batch);
  p.seq_len = static_cast<int>(len);
  p.vocab = static_cast<int>(vocab);
  p.threshold = threshold;
  p.factor = factor;
  p.position_penalty = static_cast<float>(position_penalty);
  p.temperature = static_cast<float>(temperature);
  p.eos_id = eos_id;
  p.pad_id = pad_id;
  p.eotp = eotp;
  p.eot_threshold = eot_threshold;
  p.revise = revise;
  p.revise_topk = revise_topk;
  if (accept_threshold >= 1.0) {
    p.accept_logit = std::numeric_limits<double>::infinity();
  } else if (accept_threshold <= 0.0) {
    p.accept_logit = -std::numeric_limits<double>::infinity();
  } else {
    p.accept_logit = std::log(accept_threshold / (1.0 - accept_threshold));
  }
  return p;
}

void check_topological_reorder_args(const at::Tensor& tokens, const at::Tensor& masked,
                                    const at::Tensor& positions, const at::Tensor& tokens_out,
                                    const at::Tensor& positions_out, const at::Tensor& perm,
                                    const at::Tensor& inv_perm) {
  check_dim(tokens, 2, "tokens", "[B, W]");
  TORCH_CHECK(tokens.scalar_type() == at::kLong || tokens.scalar_type() == at::kInt,
              "tokens must be int64 or int32, got ", tokens.scalar_type());
  check_contiguous(tokens, "tokens");
  TORCH_CHECK(tokens.size(1) < (int64_t{1} << 31), "tokens' window is too wide: ", tokens.sizes());
  const auto rows = tokens.sizes();
  auto same_rows = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.sizes() == rows, name, " must have the shape of tokens ", rows, ", got ", t.sizes());
    check_contiguous(t, name);
    TORCH_CHECK(t.device() == tokens.device(), name, " must be on the device of tokens (",
                tokens.device(), "), got ", t.device());
  };
  same_rows(masked, "masked");
  check_dtype(masked, at::kBool, "masked");
  same_rows(positions, "positions");
  TORCH_CHECK(positions.scalar_type() == at::kLong || positions.scalar_type() == at::kInt,
              "positions must be int64 or int32, got ", positions.scalar_type());
  same_rows(tokens_out, "tokens_out");
  check_dtype(tokens_out, tokens.scalar_type(), "tokens_out");
  same_rows(positions_out, "positions_out");
  check_dtype(positions_out, positions.scalar_type(), "positions_out");
  same_rows(perm, "perm");
  check_dtype(perm, at::kInt, "perm");
  same_rows(inv_perm, "inv_perm");
  check_dtype(inv_perm, at::kInt, "inv_perm");
}

}  // namespace leapdec
