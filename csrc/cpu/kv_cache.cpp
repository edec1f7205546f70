// CPU paged KV cache writes: append_paged_kv and move_kv_slots (reference.py).
// A cache row is one slot's [H_kv, D] block, contiguous in [num_pages, page_size, H_kv, D],
// so both ops are row copies; slot = page * page_size + offset is the row index.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

#include "checks.h"
#include "ops.h"

namespace leapdec {
namespace {

constexpr int64_t kParallelBytes = 1 << 20;  // copy on one thread below this many bytes

// Grain (rows per task) so that each task copies at least kParallelBytes.
inline int64_t row_grain(int64_t row_bytes) {
  return std::max<int64_t>(1, kParallelBytes / std::max<int64_t>(row_bytes, 1));
}

}  // namespace

// k, v: [N, H_kv, D] -> k_cache, v_cache: [num_pages, page_size, H_kv, D] at slot_mapping[N].
void append_paged_kv_cpu(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
                         at::Tensor& v_cache, const at::Tensor& slot_mapping) {
  check_append_args(k, v, k_cache, v_cache, slot_mapping);
  const int64_t num_slots = k_cache.size(0) * k_cache.size(1);
  check_slots_in_range(slot_mapping, num_slots, "slot_mapping", /*allow_negative=*/true);
  const int64_t n = k.size(0);
  const int64_t row_bytes = k_cache.size(2) * k_cache.size(3) * k_cache.element_size();
  const char* k_src = static_cast<const char*>(k.data_ptr());
  const char* v_src = static_cast<const char*>(v.data_ptr());
  char* k_dst = static_cast<char*>(k_cache.data_ptr());
  char* v_dst = static_cast<char*>(v_cache.data_ptr());
  const int* slots = slot_mapping.data_ptr<int>();
  at::parallel_for(0, n, row_grain(2 * row_bytes), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t slot = slots[i];
      if (slot < 0) continue;
      std::memcpy(k_dst + slot * row_bytes, k_src + i * row_bytes, row_bytes);
      std::memcpy(v_dst + slot * row_bytes, v_src + i * row_bytes, row_bytes);
    }
  });
}

// Cache rows src_slots[M] -> dst_slots[M]: gather every source row first, then scatter, so a
// destination that is also a source (compaction, rollback) reads the old contents.
void move_kv_slots_cpu(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& src_slots,
                       const at::Tensor& dst_slots) {
  check_kv_cache(k_cache, v_cache);
  check_index_tensor(src_slots, k_cache, "src_slots");
  check_index_tensor(dst_slots, k_cache, "dst_slots");
  TORCH_CHECK(src_slots.size(0) == dst_slots.size(0),
              "src_slots and dst_slots must have the same length, got ", src_slots.size(0),
              " and ", dst_slots.size(0));
  const int64_t num_slots = k_cache.size(0) * k_cache.size(1);
  check_slots_in_range(src_slots, num_slots, "src_slots", /*allow_negative=*/false);
  check_slots_in_range(dst_slots, num_slots, "dst_slots", /*allow_negative=*/false);
  const int64_t m = src_slots.size(0);
  if (m == 0) return;
  const int64_t row_bytes = k_cache.size(2) * k_cache.size(3) * k_cache.element_size();
  char* k_data = static_cast<char*>(k_cache.data_ptr());
  char* v_data = static_cast<char*>(v_cache.data_ptr());
  const int* src = src_slots.data_ptr<int>();
  const int* dst = dst_slots.data_ptr<int>();
  // staging: [M] k rows then [M] v rows (left uninitialized: every byte is written first)
  std::unique_ptr<char[]> staging(new char[static_cast<size_t>(2 * m * row_bytes)]);
  char* k_tmp = staging.get();
  char* v_tmp = k_tmp + m * row_bytes;
  const int64_t grain = row_grain(2 * row_bytes);
  at::parallel_for(0, m, grain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      std::memcpy(k_tmp + j * row_bytes, k_data + src[j] * row_bytes, row_bytes);
      std::memcpy(v_tmp + j * row_bytes, v_data + src[j] * row_bytes, row_bytes);
    }
  });
  // Sequential scatter keeps "last write wins" for repeated destinations.
  for (int64_t j = 0; j < m; ++j) {
    std::memcpy(k_data + dst[j] * row_bytes, k_tmp + j * row_bytes, row_bytes);
    std::memcpy(v_data + dst[j] * row_bytes, v_tmp + j * row_bytes, row_bytes);
  }
}

}  // namespace leapdec
