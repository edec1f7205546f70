// CUDA paged_attention launcher (kernels: csrc/include/leapdec/attention_*.cuh).
//
// Path (head dims 64 / 128): every request has at most one query (max_qo_len <= 1) -> split-KV
// decode kernel; otherwise the tensor-core multi-query kernel (fp16/bf16) or the CUDA-core one
// (fp32). Other head dims (up to 256) take the CUDA-core kernel with a run-time head dim.
// When the (request, head, query tile) grid alone would leave SMs idle, the KV range is cut
// into splits whose partials go to the workspace and are merged by a second kernel.
// Graph-safe when max_qo_len and max_kv_len are given: no host sync, no allocation (the
// workspace is passed in), everything on the current stream. Without them the lengths are
// read back from the index tensors once (a sync). max_qo_len must not under-state the longest
// request (<= 1 selects the decode kernel); max_kv_len only sizes the KV splits (the last split
// always runs to the end of each request, so any value is correct).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "checks.h"
#include "launch_utils.cuh"
#include "leapdec/attention_decode.cuh"
#include "leapdec/attention_prefill.cuh"
#include "ops.h"

namespace leapdec {
namespace {

// max qo_len and max kv_len over the batch, read on the host (one sync per tensor).
void lengths_on_host(const at::Tensor& qo_indptr, const at::Tensor& kv_indptr,
                     const at::Tensor& kv_last_page_len, int64_t page_size, int64_t* max_qo,
                     int64_t* max_kv) {
  const at::Tensor qo = qo_indptr.cpu(), kvp = kv_indptr.cpu(), last = kv_last_page_len.cpu();
  const int* qo_p = qo.data_ptr<int>();
  const int* kv_p = kvp.data_ptr<int>();
  const int* last_p = last.data_ptr<int>();
  int64_t mq = 0, mk = 0;
  for (int64_t b = 0; b < last.size(0); ++b) {
    mq = std::max<int64_t>(mq, qo_p[b + 1] - qo_p[b]);
    const int64_t n = kv_p[b + 1] - kv_p[b];
    const int64_t l = std::min<int64_t>(std::max<int64_t>(last_p[b], 1), page_size);
    if (n > 0) mk = std::max<int64_t>(mk, (n - 1) * page_size + l);
  }
  *max_qo = mq;
  *max_kv = mk;
}

// How many KV splits: as many as keep the grid within one wave of `target_ctas` (resident
// CTAs), each split at least `min_chunk` positions, the chunk a multiple of `multiple`, and
// the partials fitting the workspace.
int pick_num_splits(int64_t base_ctas, int64_t target_ctas, int64_t max_kv_len, int64_t min_chunk,
                    int64_t multiple, int64_t max_by_workspace, int* chunk) {
  *chunk = static_cast<int>(multiple);
  if (2 * base_ctas > target_ctas || max_kv_len < 2 * min_chunk || max_by_workspace < 2) return 1;
  int64_t splits = target_ctas / base_ctas;
  splits = std::min({splits, max_kv_len / min_chunk, max_by_workspace, int64_t{1024}});
  if (splits < 2) return 1;
  int64_t c = (max_kv_len + splits - 1) / splits;
  c = (c + multiple - 1) / multiple * multiple;
  splits = (max_kv_len + c - 1) / c;
  if (splits < 2) return 1;
  *chunk = static_cast<int>(c);
  return static_cast<int>(splits);
}

// The split partials live in the workspace: o [num_splits, total_q * H_q, D], then lse.
template <typename T>
void place_partials(AttentionParams<T>& p, int head_dim) {
  if (p.num_splits > 1) {
    p.partial_lse = p.partial_o + static_cast<int64_t>(p.num_splits) * p.total_q * p.num_qo_heads * head_dim;
  }
}

template <typename T, int HEAD_DIM>
void launch_merge(const AttentionParams<T>& p, cudaStream_t stream) {
  const int64_t num_pairs = static_cast<int64_t>(p.total_q) * p.num_qo_heads;
  constexpr int kPairsPerBlock = 128 / (HEAD_DIM / 4);
  const int64_t blocks = (num_pairs + kPairsPerBlock - 1) / kPairsPerBlock;
  merge_splits_kernel<T, HEAD_DIM><<<static_cast<unsigned>(blocks), 128, 0, stream>>>(
      p.partial_o, p.partial_lse, p.o, p.lse, num_pairs, p.num_splits);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int HEAD_DIM, int GROUP_TILE>
void launch_decode_tile(const AttentionParams<T>& p, int head_tiles, cudaStream_t stream) {
  using Tr = DecodeTraits<T, HEAD_DIM, GROUP_TILE>;
  const dim3 grid(p.batch, p.num_kv_heads * head_tiles, p.num_splits);
  decode_attention_kernel<T, HEAD_DIM, GROUP_TILE><<<grid, Tr::kThreads, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int HEAD_DIM>
void launch_decode(AttentionParams<T> p, int64_t max_kv_len, int64_t max_splits_ws, int num_sms,
                   cudaStream_t stream) {
  const int group_tile = p.group_size <= 1 ? 1 : p.group_size <= 2 ? 2 : p.group_size <= 4 ? 4 : 8;
  const int head_tiles = (p.group_size + group_tile - 1) / group_tile;
  TORCH_CHECK(static_cast<int64_t>(p.num_kv_heads) * head_tiles <= 65535,
              "paged_attention (CUDA): too many KV heads (", p.num_kv_heads, ")");
  const int64_t base = static_cast<int64_t>(p.batch) * p.num_kv_heads * head_tiles;
  p.num_splits = pick_num_splits(base, 4LL * num_sms, max_kv_len, 256, 64, max_splits_ws, &p.split_chunk);
  place_partials(p, HEAD_DIM);
  switch (group_tile) {
    case 1: launch_decode_tile<T, HEAD_DIM, 1>(p, head_tiles, stream); break;
    case 2: launch_decode_tile<T, HEAD_DIM, 2>(p, head_tiles, stream); break;
    case 4: launch_decode_tile<T, HEAD_DIM, 4>(p, head_tiles, stream); break;
    default: launch_decode_tile<T, HEAD_DIM, 8>(p, head_tiles, stream); break;
  }
  if (p.num_splits > 1) launch_merge<T, HEAD_DIM>(p, stream);
}

template <typename T, int HEAD_DIM>
void launch_prefill(AttentionParams<T> p, int64_t max_qo_len, int64_t max_kv_len,
                    int64_t max_splits_ws, int num_sms, cudaStream_t stream) {
  constexpr bool kTensorCores = sizeof(T) == 2;
  constexpr int kTileQ = kTensorCores ? PrefillMmaTraits<T, HEAD_DIM>::kTileQ
                                      : PrefillSimtTraits<HEAD_DIM>::kTileQ;
  const int64_t q_tiles = (max_qo_len * p.group_size + kTileQ - 1) / kTileQ;
  const int64_t base = static_cast<int64_t>(p.batch) * p.num_kv_heads * q_tiles;
  p.num_splits = pick_num_splits(base, 2LL * num_sms, max_kv_len, 128, 64, max_splits_ws, &p.split_chunk);
  place_partials(p, HEAD_DIM);
  TORCH_CHECK(static_cast<int64_t>(p.batch) * p.num_splits <= INT32_MAX && p.num_kv_heads <= 65535,
              "paged_attention (CUDA): grid too large (batch ", p.batch, ", KV heads ", p.num_kv_heads, ")");
  const dim3 grid(p.batch * p.num_splits, p.num_kv_heads,
                  static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(q_tiles, 1), 65535)));
  if constexpr (kTensorCores) {
    using Tr = PrefillMmaTraits<T, HEAD_DIM>;
    auto kernel = prefill_mma_kernel<T, HEAD_DIM>;
    cuda_util::set_dynamic_smem(kernel, Tr::kSmemBytes);
    kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(p);
  } else {
    using Tr = PrefillSimtTraits<HEAD_DIM>;
    prefill_simt_kernel<T, HEAD_DIM><<<grid, Tr::kThreads, Tr::smem_bytes(HEAD_DIM), stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (p.num_splits > 1) launch_merge<T, HEAD_DIM>(p, stream);
}

// Head dims other than 64 / 128: the CUDA-core kernel with the head dim read at run time, for
// every request shape, without KV splits.
template <typename T>
void launch_generic(AttentionParams<T> p, int64_t max_qo_len, cudaStream_t stream) {
  using Tr = PrefillSimtTraits<0>;
  const int64_t q_tiles = (max_qo_len * p.group_size + Tr::kTileQ - 1) / Tr::kTileQ;
  TORCH_CHECK(p.batch <= INT32_MAX && p.num_kv_heads <= 65535,
              "paged_attention (CUDA): grid too large (batch ", p.batch, ", KV heads ", p.num_kv_heads, ")");
  const dim3 grid(p.batch, p.num_kv_heads,
                  static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(q_tiles, 1), 65535)));
  const size_t smem = Tr::smem_bytes(p.head_dim);
  auto kernel = prefill_simt_kernel<T, 0>;
  cuda_util::set_dynamic_smem(kernel, smem);
  kernel<<<grid, Tr::kThreads, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void paged_attention_cuda(at::Tensor& out, const std::optional<at::Tensor>& lse, const at::Tensor& q,
                          const at::Tensor& k_cache, const at::Tensor& v_cache,
                          const at::Tensor& qo_indptr, const at::Tensor& kv_indptr,
                          const at::Tensor& kv_indices, const at::Tensor& kv_last_page_len,
                          const std::string& mask_mode, const std::optional<at::Tensor>& custom_mask,
                          const std::optional<at::Tensor>& mask_indptr, double sm_scale,
                          int64_t max_qo_len, int64_t max_kv_len,
                          const std::optional<at::Tensor>& workspace) {
  const int mode = check_paged_attention_args(out, lse, q, k_cache, v_cache, qo_indptr, kv_indptr,
                                               kv_indices, kv_last_page_len, mask_mode, custom_mask,
                                               mask_indptr);
  TORCH_CHECK(q.is_cuda(), "paged_attention (CUDA): q must be a CUDA tensor, got ", q.device());
  const int64_t total_q = q.size(0), h_q = q.size(1), head_dim = q.size(2);
  const int64_t num_pages = k_cache.size(0), page_size = k_cache.size(1), h_kv = k_cache.size(2);
  const int64_t batch = kv_last_page_len.size(0);
  constexpr int64_t kMaxHeadDim = PrefillSimtTraits<0>::kMaxRuntimeDim;
  TORCH_CHECK(head_dim >= 1 && head_dim <= kMaxHeadDim, "paged_attention (CUDA): head_dim must be in [1, ",
              kMaxHeadDim, "] (64 and 128 take the fast kernels), got ", head_dim);
  TORCH_CHECK(total_q * h_q < INT32_MAX, "paged_attention (CUDA): total_q * H_q = ", total_q * h_q,
              " exceeds int32");
  TORCH_CHECK(num_pages * page_size < INT32_MAX, "paged_attention (CUDA): the cache holds ",
              num_pages * page_size, " slots, more than int32 positions allow");
  TORCH_CHECK(batch < INT32_MAX && kv_indices.size(0) < INT32_MAX,
              "paged_attention (CUDA): index tensors too long for int32");
  if (total_q == 0 || batch == 0) return;
  const bool fast_head_dim = head_dim == 64 || head_dim == 128;
  if (fast_head_dim) {  // the fast kernels use 16-byte vectors
    cuda_util::check_aligned16(q, "q");
    cuda_util::check_aligned16(out, "out");
    cuda_util::check_aligned16(k_cache, "k_cache");
    cuda_util::check_aligned16(v_cache, "v_cache");
  }
  if (workspace.has_value()) {
    check_dtype(*workspace, at::kFloat, "workspace");
    check_contiguous(*workspace, "workspace");
    check_same_device(*workspace, q, "workspace", "q");
    cuda_util::check_aligned16(*workspace, "workspace");
  }

  const c10::cuda::CUDAGuard device_guard(q.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(q.get_device()).stream();
  if (max_qo_len < 0 || max_kv_len < 0) {
    int64_t mq = 0, mk = 0;
    lengths_on_host(qo_indptr, kv_indptr, kv_last_page_len, page_size, &mq, &mk);
    if (max_qo_len < 0) max_qo_len = mq;
    if (max_kv_len < 0) max_kv_len = mk;
  }
  if (max_qo_len == 0) return;  // no request has a query

  const int64_t per_split = total_q * h_q * (head_dim + 1);
  const int64_t max_splits_ws = workspace.has_value() ? workspace->numel() / per_split : 0;
  const int num_sms = cuda_util::num_sms(q.get_device());

  LEAPDEC_DISPATCH_FLOAT(q.scalar_type(), "paged_attention", T, {
    AttentionParams<T> p;
    p.q = static_cast<const T*>(q.data_ptr());
    p.o = static_cast<T*>(out.data_ptr());
    p.lse = lse.has_value() ? lse->data_ptr<float>() : nullptr;
    p.k_cache = static_cast<const T*>(k_cache.data_ptr());
    p.v_cache = static_cast<const T*>(v_cache.data_ptr());
    p.qo_indptr = qo_indptr.data_ptr<int>();
    p.kv_indptr = kv_indptr.data_ptr<int>();
    p.kv_indices = kv_indices.data_ptr<int>();
    p.kv_last_page_len = kv_last_page_len.data_ptr<int>();
    const bool custom = mode == kMaskCustom;
    p.custom_mask = custom ? static_cast<const uint8_t*>(custom_mask->data_ptr()) : nullptr;
    p.mask_indptr = custom ? mask_indptr->data_ptr<int>() : nullptr;
    p.mask_numel = custom ? custom_mask->numel() : 0;
    p.partial_o = workspace.has_value() ? workspace->data_ptr<float>() : nullptr;
    p.partial_lse = nullptr;  // set below once the split count is known
    p.page_div = math::FastDiv(static_cast<uint32_t>(page_size));
    p.batch = static_cast<int>(batch);
    p.total_q = static_cast<int>(total_q);
    p.num_qo_heads = static_cast<int>(h_q);
    p.num_kv_heads = static_cast<int>(h_kv);
    p.head_dim = static_cast<int>(head_dim);
    p.group_size = static_cast<int>(h_q / h_kv);
    p.num_pages = static_cast<int>(num_pages);
    p.num_kv_indices = static_cast<int>(kv_indices.size(0));
    p.mask_mode = mode;
    p.sm_scale_log2 = static_cast<float>(sm_scale) * math::kLog2e;
    p.num_splits = 1;
    p.split_chunk = 64;
    if (!fast_head_dim) {
      launch_generic<T>(p, max_qo_len, stream);
    } else {
      LEAPDEC_DISPATCH_HEAD_DIM(head_dim, "paged_attention", HEAD_DIM, {
        if (max_qo_len <= 1) {
          launch_decode<T, HEAD_DIM>(p, max_kv_len, max_splits_ws, num_sms, stream);
        } else {
          launch_prefill<T, HEAD_DIM>(p, max_qo_len, max_kv_len, max_splits_ws, num_sms, stream);
        }
      });
    }
  });
}

}  // namespace leapdec
