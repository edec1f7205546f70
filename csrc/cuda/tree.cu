// CUDA launchers of the tree speculative decoding ops (kernels: include/leapdec/tree.cuh).
// Value checks of the tree, tokens and coins run in the Python wrapper on the host (outside
// graph capture); the kernels range-check every index they read, so bad values never touch
// memory out of bounds. Everything runs on the current stream without allocating.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

#include "launch_utils.cuh"
#include "leapdec/tree.cuh"
#include "ops.h"
#include "tree_checks.h"

namespace leapdec {
namespace {

constexpr int kBuildTreeThreads = 128;
constexpr int kGreedyThreads = 128;
constexpr int kTypicalThreads = 256;
constexpr int kSamplingThreads = 512;
constexpr int64_t kMaxNodes = 4096;  // TypicalSelectKernel keeps 8 bytes per node in shared memory

void check_sizes(const at::Tensor& parents, int64_t vocab) {
  TORCH_CHECK(parents.size(1) <= kMaxNodes, "trees of at most ", kMaxNodes,
              " nodes are supported on CUDA, got parents of shape ", parents.sizes());
  TORCH_CHECK(vocab < (int64_t{1} << 31), "the vocabulary must be < 2^31, got ", vocab);
}

}  // namespace

// parents [B, T] -> mask [B, T, T], depth [B, T]
void build_tree_cuda(at::Tensor& mask, at::Tensor& depth, const at::Tensor& parents) {
  check_build_tree_args(mask, depth, parents);
  check_sizes(parents, 1);
  const int64_t rows = parents.numel();
  if (rows == 0) return;
  const c10::cuda::CUDAGuard guard(parents.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(parents.get_device()).stream();
  const int num_nodes = static_cast<int>(parents.size(1));
  tree::BuildTreeKernel<bool><<<rows, kBuildTreeThreads, num_nodes, stream>>>(
      parents.data_ptr<int32_t>(), mask.data_ptr<bool>(), depth.data_ptr<int32_t>(), num_nodes);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// candidates, target_tokens [B, T] -> accept_len [B], accept_index [B, T], bonus [B]
void verify_tree_greedy_cuda(at::Tensor& accept_len, at::Tensor& accept_index, at::Tensor& bonus,
                             const at::Tensor& candidates, const at::Tensor& parents,
                             const at::Tensor& target_tokens) {
  check_verify_greedy_args(accept_len, accept_index, bonus, candidates, parents, target_tokens);
  check_sizes(parents, 1);
  const int batch = static_cast<int>(parents.size(0));
  if (batch == 0) return;
  const c10::cuda::CUDAGuard guard(parents.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(parents.get_device()).stream();
  const int blocks = (batch + kGreedyThreads - 1) / kGreedyThreads;
  tree::VerifyTreeGreedyKernel<int64_t><<<blocks, kGreedyThreads, 0, stream>>>(
      candidates.data_ptr<int64_t>(), parents.data_ptr<int32_t>(), target_tokens.data_ptr<int64_t>(),
      accept_len.data_ptr<int32_t>(), accept_index.data_ptr<int32_t>(), bonus.data_ptr<int64_t>(),
      batch, static_cast<int>(parents.size(1)));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// target_logits [B, T, V] -> accept_len [B], accept_index [B, T], bonus [B], node_logprob [B, T]
void verify_tree_typical_cuda(at::Tensor& accept_len, at::Tensor& accept_index, at::Tensor& bonus,
                              at::Tensor& node_logprob, const at::Tensor& candidates,
                              const at::Tensor& parents, const at::Tensor& target_logits,
                              double posterior_threshold, double posterior_alpha, double temperature) {
  check_verify_typical_args(accept_len, accept_index, bonus, node_logprob, candidates, parents,
                            target_logits, temperature);
  const int64_t vocab = target_logits.size(2);
  check_sizes(parents, vocab);
  const int64_t nodes = parents.numel();
  if (nodes == 0) return;
  const c10::cuda::CUDAGuard guard(parents.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(parents.get_device()).stream();
  const int num_nodes = static_cast<int>(parents.size(1));
  LEAPDEC_DISPATCH_FLOAT(target_logits.scalar_type(), "target_logits", T, {
    const T* logits = reinterpret_cast<const T*>(target_logits.data_ptr());
    tree::TypicalNodeLogprobKernel<T, kTypicalThreads><<<nodes, kTypicalThreads, 0, stream>>>(
        candidates.data_ptr<int64_t>(), parents.data_ptr<int32_t>(), logits,
        node_logprob.data_ptr<float>(), num_nodes, static_cast<int>(vocab),
        static_cast<float>(posterior_threshold), static_cast<float>(posterior_alpha),
        static_cast<float>(temperature));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const size_t smem = static_cast<size_t>(num_nodes) * (sizeof(float) + sizeof(int32_t));
    tree::TypicalSelectKernel<T, kTypicalThreads><<<parents.size(0), kTypicalThreads, smem, stream>>>(
        parents.data_ptr<int32_t>(), node_logprob.data_ptr<float>(), logits,
        accept_len.data_ptr<int32_t>(), accept_index.data_ptr<int32_t>(), bonus.data_ptr<int64_t>(),
        num_nodes, static_cast<int>(vocab));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// draft_probs, target_probs [B, T, V], coins [B, T] -> accept_len [B], accept_index [B, T], bonus [B]
void verify_tree_sampling_cuda(at::Tensor& accept_len, at::Tensor& accept_index, at::Tensor& bonus,
                               const at::Tensor& candidates, const at::Tensor& parents,
                               const std::optional<at::Tensor>& draft_probs,
                               const at::Tensor& target_probs, const at::Tensor& coins,
                               const std::string& draft_rule,
                               const std::optional<at::Tensor>& workspace) {
  const tree::DraftRule rule = check_verify_sampling_args(
      accept_len, accept_index, bonus, candidates, parents, draft_probs, target_probs, coins, draft_rule);
  const int64_t batch = parents.size(0), vocab = target_probs.size(2);
  check_sizes(parents, vocab);
  TORCH_CHECK(workspace.has_value(), "workspace (float32, at least 2 * B * V elements) is required on CUDA");
  check_dtype(*workspace, at::kFloat, "workspace");
  check_contiguous(*workspace, "workspace");
  check_same_device(*workspace, parents, "workspace", "parents");
  TORCH_CHECK(workspace->numel() >= 2 * batch * vocab, "workspace must hold at least 2 * B * V = ",
              2 * batch * vocab, " floats, got ", workspace->numel());
  if (batch == 0) return;
  const c10::cuda::CUDAGuard guard(parents.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(parents.get_device()).stream();
  const bool deterministic = rule == tree::DraftRule::kDeterministic;
  LEAPDEC_DISPATCH_FLOAT(target_probs.scalar_type(), "target_probs", T, {
    const T* draft = deterministic ? nullptr : reinterpret_cast<const T*>(draft_probs->data_ptr());
    tree::VerifyTreeSamplingKernel<T, kSamplingThreads><<<batch, kSamplingThreads, 0, stream>>>(
        candidates.data_ptr<int64_t>(), parents.data_ptr<int32_t>(), draft,
        reinterpret_cast<const T*>(target_probs.data_ptr()), coins.data_ptr<float>(),
        workspace->data_ptr<float>(), accept_len.data_ptr<int32_t>(), accept_index.data_ptr<int32_t>(),
        bonus.data_ptr<int64_t>(), static_cast<int>(parents.size(1)), static_cast<int>(vocab), rule);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace leapdec
