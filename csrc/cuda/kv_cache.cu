// CUDA launchers of the paged KV cache writes: append_paged_kv and move_kv_slots
// (kernels: csrc/include/leapdec/paged_kv.cuh). Both copy whole slot rows in the widest unit
// (16, 8, 4 or 2 bytes) that the row size and the pointers allow. No sync, no allocation.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <initializer_list>

#include "checks.h"
#include "launch_utils.cuh"
#include "leapdec/paged_kv.cuh"
#include "ops.h"

namespace leapdec {
namespace {

// Widest unit (bytes) that divides row_bytes and the address of every pointer, at most max_unit.
int copy_unit(int64_t row_bytes, std::initializer_list<const void*> ptrs, int max_unit = 16) {
  for (int unit = max_unit; unit > 1; unit /= 2) {
    bool ok = row_bytes % unit == 0;
    for (const void* p : ptrs) ok = ok && cuda_util::aligned(p, unit);
    if (ok) return unit;
  }
  return 1;
}

template <typename F>
void dispatch_unit(int unit, F&& f) {
  switch (unit) {
    case 16: f(uint4{}); break;
    case 8: f(uint2{}); break;
    case 4: f(uint32_t{}); break;
    case 2: f(uint16_t{}); break;
    default: f(uint8_t{}); break;
  }
}

}  // namespace

void append_paged_kv_cuda(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
                          at::Tensor& v_cache, const at::Tensor& slot_mapping) {
  check_append_args(k, v, k_cache, v_cache, slot_mapping);
  TORCH_CHECK(k_cache.is_cuda(), "append_paged_kv (CUDA): k_cache must be a CUDA tensor");
  const int64_t n = k.size(0);
  if (n == 0) return;
  TORCH_CHECK(n <= INT32_MAX, "append_paged_kv (CUDA): too many rows (", n, ")");
  const int64_t num_slots = k_cache.size(0) * k_cache.size(1);
  const int64_t row_bytes = k_cache.size(2) * k_cache.size(3) * k_cache.element_size();
  const int unit = copy_unit(row_bytes, {k.data_ptr(), v.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr()});
  const int64_t row_units = row_bytes / unit;
  TORCH_CHECK(row_units <= INT32_MAX, "append_paged_kv (CUDA): rows too large");
  const int threads = static_cast<int>(std::min<int64_t>(256, (row_units + 31) / 32 * 32));

  const c10::cuda::CUDAGuard device_guard(k_cache.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(k_cache.get_device()).stream();
  dispatch_unit(unit, [&](auto tag) {
    using Unit = decltype(tag);
    append_paged_kv_kernel<Unit><<<static_cast<unsigned>(n), threads, 0, stream>>>(
        static_cast<const Unit*>(k.data_ptr()), static_cast<const Unit*>(v.data_ptr()),
        static_cast<Unit*>(k_cache.data_ptr()), static_cast<Unit*>(v_cache.data_ptr()),
        slot_mapping.data_ptr<int>(), num_slots, static_cast<int>(row_units));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void move_kv_slots_cuda(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& src_slots,
                        const at::Tensor& dst_slots) {
  check_kv_cache(k_cache, v_cache);
  check_index_tensor(src_slots, k_cache, "src_slots");
  check_index_tensor(dst_slots, k_cache, "dst_slots");
  TORCH_CHECK(src_slots.size(0) == dst_slots.size(0),
              "src_slots and dst_slots must have the same length, got ", src_slots.size(0), " and ",
              dst_slots.size(0));
  TORCH_CHECK(k_cache.is_cuda(), "move_kv_slots (CUDA): k_cache must be a CUDA tensor");
  const int64_t m = src_slots.size(0);
  if (m == 0) return;
  const int64_t num_slots = k_cache.size(0) * k_cache.size(1);
  const int64_t row_bytes = k_cache.size(2) * k_cache.size(3) * k_cache.element_size();

  const c10::cuda::CUDAGuard device_guard(k_cache.device());
  const int device = k_cache.get_device();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  const int64_t smem_max = cuda_util::max_smem_optin(device);
  constexpr int64_t kSmemDefault = 48 * 1024;

  // Every CTA stages one column slice of all M source rows, so the unit must fit M times.
  int unit = copy_unit(row_bytes, {k_cache.data_ptr(), v_cache.data_ptr()});
  while (unit > 1 && m * unit > smem_max) unit /= 2;
  TORCH_CHECK(m * unit <= smem_max, "move_kv_slots (CUDA): ", m,
              " slots per call is more than one shared-memory stage holds (", smem_max / unit,
              "); split the move into calls whose sources and destinations do not overlap");
  const int64_t row_units = row_bytes / unit;
  TORCH_CHECK(row_units <= INT32_MAX && m <= INT32_MAX, "move_kv_slots (CUDA): too large");
  const int num_sms = cuda_util::num_sms(device);
  const int64_t fit = std::max<int64_t>(1, kSmemDefault / (m * unit));
  const int64_t spread = std::max<int64_t>(1, (row_units + num_sms - 1) / num_sms);
  const int64_t cols = std::min({fit, spread, row_units});
  const int64_t smem = m * cols * unit;
  const dim3 grid(static_cast<unsigned>((row_units + cols - 1) / cols), 2);

  dispatch_unit(unit, [&](auto tag) {
    using Unit = decltype(tag);
    auto kernel = move_kv_slots_kernel<Unit>;
    cuda_util::set_dynamic_smem(kernel, static_cast<size_t>(smem));
    kernel<<<grid, 256, static_cast<size_t>(smem), stream>>>(
        static_cast<Unit*>(k_cache.data_ptr()), static_cast<Unit*>(v_cache.data_ptr()),
        src_slots.data_ptr<int>(), dst_slots.data_ptr<int>(), static_cast<int>(m), num_slots,
        static_cast<int>(row_units), static_cast<int>(cols));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace leapdec
