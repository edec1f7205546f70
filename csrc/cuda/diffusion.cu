// CUDA launchers of the diffusion-decoding ops (kernels: csrc/include/leapdec/unmask.cuh,
// reorder.cuh; meaning: python/leapdec/reference.py).
//
// unmask_and_filter = two kernels on the current stream:
//   1. statistics: grid (num_splits, L, B); one CTA reads one split of one position's logits
//      with 16-byte streaming loads and writes a partial online-softmax state to the workspace
//      (num_splits > 1 when B * L alone would leave SMs idle; the wrapper picks it).
//   2. commit: grid (B); one CTA merges the row's partials, writes predicted / confidence /
//      entropy and applies the policy (bitonic sort of the window in shared memory), the
//      ReDiff revision and End-of-Text Prediction.
// No host sync, no allocation (the workspace comes from the wrapper): graph-capturable.
// Invalid logits (NaN, +inf, no finite value) cannot raise an error without a sync: such a
// position gets predicted -1, confidence and entropy NaN, and is never committed, revised or
// chosen as the End-of-Text position. Windows are clamped to [0, L]; a learned filter sees
// only the first F positions of a longer window (the wrapper checks both on the host unless
// leapdec.ops.set_index_checks(False)).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>

#include "checks.h"
#include "diffusion_checks.h"
#include "launch_utils.cuh"
#include "leapdec/reorder.cuh"
#include "leapdec/unmask.cuh"
#include "ops.h"

namespace leapdec {

namespace {

constexpr int kStatsThreads = 256;
constexpr int kStatsUnroll = 2;     // 16-byte loads in flight per thread
constexpr int kCommitThreads = 512;
constexpr int kReorderThreads = 256;
constexpr int kMaxSeqLen = 16384;   // the commit kernel sorts a row's window in shared memory
constexpr int kMaxSplits = 1024;

template <typename T>
const T* data_as(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}

const float* optional_float(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<float>() : nullptr;
}

template <typename T, typename TokT>
void launch_unmask(const at::Tensor& logits, at::Tensor& tokens, at::Tensor& masked,
                   at::Tensor& committed, at::Tensor& confidence, at::Tensor& eot_pos,
                   at::Tensor& predicted, at::Tensor& entropy, const at::Tensor& block_start,
                   const at::Tensor& block_end, const std::optional<at::Tensor>& k,
                   const std::optional<at::Tensor>& seeds, const std::optional<at::Tensor>& w1,
                   const std::optional<at::Tensor>& b1, const std::optional<at::Tensor>& w2,
                   const std::optional<at::Tensor>& b2, at::Tensor& workspace,
                   const unmask::Params& p, int num_splits, cudaStream_t stream) {
  const int device = logits.get_device();
  const T* lg = data_as<T>(logits);
  constexpr int kVec = 16 / sizeof(T);
  const bool vec_ok = p.vocab % kVec == 0 && cuda_util::aligned(lg, 16);
  const int num_vecs = vec_ok ? p.vocab / kVec : p.vocab;
  const int vecs_per_split = (num_vecs + num_splits - 1) / num_splits;
  const int splits = (num_vecs + vecs_per_split - 1) / vecs_per_split;
  float* partials = workspace.data_ptr<float>();
  const int64_t* sd = seeds.has_value() ? seeds->data_ptr<int64_t>() : nullptr;
  const int* bs = block_start.data_ptr<int>();
  const int* be = block_end.data_ptr<int>();
  bool* mk = masked.data_ptr<bool>();

  const dim3 stats_grid(splits, p.seq_len, p.batch);
  if (vec_ok) {
    unmask::unmask_stats_kernel<T, kVec, kStatsThreads, kStatsUnroll>
        <<<stats_grid, kStatsThreads, 0, stream>>>(lg, mk, bs, be, sd, partials, p, splits, vecs_per_split);
  } else {
    unmask::unmask_stats_kernel<T, 1, kStatsThreads, 4>
        <<<stats_grid, kStatsThreads, 0, stream>>>(lg, mk, bs, be, sd, partials, p, splits, vecs_per_split);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  int capacity = 1;
  while (capacity < p.seq_len) capacity <<= 1;
  const size_t smem = static_cast<size_t>(capacity) * sizeof(uint64_t) +
                      static_cast<size_t>(p.filter_in + p.filter_hidden) * sizeof(float) +
                      static_cast<size_t>(p.seq_len + p.filter_in);
  TORCH_CHECK(smem <= static_cast<size_t>(cuda_util::max_smem_optin(device)),
              "unmask_and_filter: L = ", p.seq_len, " with a filter of F = ", p.filter_in, ", H = ",
              p.filter_hidden, " needs ", smem, " bytes of shared memory, more than this GPU has (",
              cuda_util::max_smem_optin(device), ")");
  auto commit = unmask::unmask_commit_kernel<T, TokT, kCommitThreads>;
  cuda_util::set_dynamic_smem(commit, smem);
  commit<<<p.batch, kCommitThreads, smem, stream>>>(
      partials, splits, lg, reinterpret_cast<TokT*>(tokens.data_ptr()), mk, committed.data_ptr<int>(),
      confidence.data_ptr<float>(), eot_pos.data_ptr<int>(), predicted.data_ptr<int>(),
      entropy.data_ptr<float>(), bs, be, k.has_value() ? k->data_ptr<int>() : nullptr,
      optional_float(w1), optional_float(b1), optional_float(w2),
      optional_float(b2), p, capacity);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename TokT, typename PosT>
void launch_reorder(const at::Tensor& tokens, const at::Tensor& masked, const at::Tensor& positions,
                    at::Tensor& tokens_out, at::Tensor& positions_out, at::Tensor& perm,
                    at::Tensor& inv_perm, cudaStream_t stream) {
  const int64_t batch = tokens.size(0);
  const int w = static_cast<int>(tokens.size(1));
  reorder::topological_reorder_kernel<TokT, PosT, kReorderThreads>
      <<<static_cast<unsigned>(batch), kReorderThreads, 0, stream>>>(
          data_as<TokT>(tokens), masked.data_ptr<bool>(), data_as<PosT>(positions),
          reinterpret_cast<TokT*>(tokens_out.data_ptr()), reinterpret_cast<PosT*>(positions_out.data_ptr()),
          perm.data_ptr<int32_t>(), inv_perm.data_ptr<int32_t>(), w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void unmask_and_filter_cuda(const at::Tensor& logits, at::Tensor& tokens, at::Tensor& masked,
                            at::Tensor& committed, at::Tensor& confidence, at::Tensor& eot_pos,
                            at::Tensor& predicted, at::Tensor& entropy, const at::Tensor& block_start,
                            const at::Tensor& block_end, const std::optional<at::Tensor>& k,
                            const std::optional<at::Tensor>& seeds,
                            const std::optional<at::Tensor>& filter_w1,
                            const std::optional<at::Tensor>& filter_b1,
                            const std::optional<at::Tensor>& filter_w2,
                            const std::optional<at::Tensor>& filter_b2,
                            const std::optional<at::Tensor>& workspace, const std::string& policy,
                            double threshold, double factor, double position_penalty,
                            double temperature, int64_t eos_id, int64_t pad_id, bool eotp,
                            double eot_threshold, bool revise, double revise_topk,
                            double accept_threshold, int64_t num_splits) {
  const unmask::Params p = check_unmask_and_filter_args(
      logits, tokens, masked, committed, confidence, eot_pos, predicted, entropy, block_start,
      block_end, k, seeds, filter_w1, filter_b1, filter_w2, filter_b2, policy, threshold, factor,
      position_penalty, temperature, eos_id, pad_id, eotp, eot_threshold, revise, revise_topk,
      accept_threshold);
  TORCH_CHECK(logits.is_cuda(), "unmask_and_filter_cuda: logits must be a CUDA tensor");
  TORCH_CHECK(num_splits >= 1 && num_splits <= kMaxSplits, "num_splits must be in [1, ", kMaxSplits,
              "], got ", num_splits);
  TORCH_CHECK(p.seq_len <= kMaxSeqLen, "unmask_and_filter on CUDA supports L <= ", kMaxSeqLen,
              " positions per row, got ", p.seq_len);
  TORCH_CHECK(workspace.has_value(),
              "unmask_and_filter on CUDA needs a float32 workspace of B * L * num_splits * 8 floats");
  const at::Tensor& ws = *workspace;
  check_dtype(ws, at::kFloat, "workspace");
  check_contiguous(ws, "workspace");
  check_same_device(ws, logits, "workspace", "logits");
  const int64_t need = static_cast<int64_t>(p.batch) * p.seq_len * num_splits * unmask::kPartialWords;
  TORCH_CHECK(ws.numel() >= need, "workspace must hold B * L * num_splits * 8 = ", need,
              " floats, got ", ws.numel());
  TORCH_CHECK(cuda_util::aligned(ws.data_ptr(), 16), "workspace must start on a 16-byte boundary");

  const c10::cuda::CUDAGuard guard(logits.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (p.batch == 0) return;
  if (p.seq_len == 0) {
    committed.zero_();
    eot_pos.fill_(-1);
    return;
  }
  at::Tensor ws_mut = ws;
  LEAPDEC_DISPATCH_FLOAT(logits.scalar_type(), "unmask_and_filter", T, {
    if (tokens.scalar_type() == at::kLong) {
      launch_unmask<T, int64_t>(logits, tokens, masked, committed, confidence, eot_pos, predicted, entropy,
                                block_start, block_end, k, seeds, filter_w1, filter_b1, filter_w2,
                                filter_b2, ws_mut, p, static_cast<int>(num_splits), stream);
    } else {
      launch_unmask<T, int32_t>(logits, tokens, masked, committed, confidence, eot_pos, predicted, entropy,
                                block_start, block_end, k, seeds, filter_w1, filter_b1, filter_w2,
                                filter_b2, ws_mut, p, static_cast<int>(num_splits), stream);
    }
  });
}

void topological_reorder_cuda(const at::Tensor& tokens, const at::Tensor& masked,
                              const at::Tensor& positions, at::Tensor& tokens_out,
                              at::Tensor& positions_out, at::Tensor& perm, at::Tensor& inv_perm) {
  check_topological_reorder_args(tokens, masked, positions, tokens_out, positions_out, perm, inv_perm);
  TORCH_CHECK(tokens.is_cuda(), "topological_reorder_cuda: tokens must be a CUDA tensor");
  TORCH_CHECK(tokens.size(0) < (int64_t{1} << 31), "topological_reorder: too many rows ", tokens.size(0));
  if (tokens.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(tokens.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool tok64 = tokens.scalar_type() == at::kLong, pos64 = positions.scalar_type() == at::kLong;
  if (tok64 && pos64) {
    launch_reorder<int64_t, int64_t>(tokens, masked, positions, tokens_out, positions_out, perm, inv_perm, stream);
  } else if (tok64) {
    launch_reorder<int64_t, int32_t>(tokens, masked, positions, tokens_out, positions_out, perm, inv_perm, stream);
  } else if (pos64) {
    launch_reorder<int32_t, int64_t>(tokens, masked, positions, tokens_out, positions_out, perm, inv_perm, stream);
  } else {
    launch_reorder<int32_t, int32_t>(tokens, masked, positions, tokens_out, positions_out, perm, inv_perm, stream);
  }
}

}  // namespace leapdec
