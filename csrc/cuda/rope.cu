// CUDA launcher of rope_append_paged_kv (kernel: csrc/include/leapdec/rope.cuh).
// Same argument checks as the CPU op; index values are range-checked by the Python wrapper
// (outside graph capture) and skipped by the kernel. No sync, no allocation.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <climits>
#include <cstdint>

#include "checks.h"
#include "launch_utils.cuh"
#include "leapdec/rope.cuh"
#include "ops.h"

namespace leapdec {

void rope_append_paged_kv_cuda(at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& positions, const at::Tensor& cos_sin_cache,
                               at::Tensor& k_cache, at::Tensor& v_cache,
                               const at::Tensor& slot_mapping, bool is_neox) {
  const int64_t rot =
      check_rope_append_args(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping);
  const int64_t n = k.size(0), d = k.size(2);
  TORCH_CHECK(k_cache.is_cuda(), "rope_append_paged_kv (CUDA): k_cache must be a CUDA tensor");
  if (n == 0) return;
  TORCH_CHECK(n <= INT32_MAX && q.size(1) * d <= INT32_MAX && k.size(1) * d <= INT32_MAX,
              "rope_append_paged_kv (CUDA): tensors too large");

  const int64_t num_slots = k_cache.size(0) * k_cache.size(1);
  const int h_q = static_cast<int>(q.size(1)), h_kv = static_cast<int>(k.size(1));
  const c10::cuda::CUDAGuard device_guard(q.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(q.get_device()).stream();
  const bool cs_float = cos_sin_cache.scalar_type() == at::kFloat;
  LEAPDEC_DISPATCH_FLOAT(q.scalar_type(), "rope_append_paged_kv", T, {
    auto launch = [&](auto cs_tag) {
      using C = decltype(cs_tag);
      rope_append_paged_kv_kernel<T, C><<<static_cast<unsigned>(n), 128, 0, stream>>>(
          static_cast<T*>(q.data_ptr()), static_cast<const T*>(k.data_ptr()),
          static_cast<const T*>(v.data_ptr()), positions.data_ptr<int64_t>(),
          static_cast<const C*>(cos_sin_cache.data_ptr()), static_cast<T*>(k_cache.data_ptr()),
          static_cast<T*>(v_cache.data_ptr()), slot_mapping.data_ptr<int>(),
          cos_sin_cache.size(0), num_slots, h_q, h_kv, static_cast<int>(d), static_cast<int>(rot),
          is_neox);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (cs_float) {
      launch(float{});
    } else {
      launch(T{});
    }
  });
}

}  // namespace leapdec
