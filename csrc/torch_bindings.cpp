// The op catalog: every leapdec op schema, one comment line above each, and its
// implementation per dispatch key. Meaning of each op: python/leapdec/reference.py.
// Outputs are allocated by the Python wrappers (python/leapdec/ops) and passed in
// as mutated arguments, so every op here is allocation-free and graph-capturable.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(leapdec, m) {
  // Write k/v rows [N, H_kv, D] into the paged cache at slot_mapping[N] (slot = page*page_size+offset; < 0 skipped).
  m.def("append_paged_kv(Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slot_mapping) -> ()");
  // Copy cache rows src_slots[M] -> dst_slots[M]; all reads happen before any write.
  m.def("move_kv_slots(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor src_slots, Tensor dst_slots) -> ()");
  // Attention of ragged queries q[total_q, H_q, D] over a paged KV cache; mask_mode none|causal|custom; writes out (and lse).
  m.def(
      "paged_attention(Tensor(a!) out, Tensor(b!)? lse, Tensor q, Tensor k_cache, Tensor v_cache, "
      "Tensor qo_indptr, Tensor kv_indptr, Tensor kv_indices, Tensor kv_last_page_len, str mask_mode, "
      "Tensor? custom_mask, Tensor? mask_indptr, float sm_scale, int max_qo_len, int max_kv_len, "
      "Tensor(c!)? workspace) -> ()");
  // Rotate q (in place) and k by RoPE at logical positions[N], then write k/v into the cache at slot_mapping[N].
  m.def(
      "rope_append_paged_kv(Tensor(a!) q, Tensor k, Tensor v, Tensor positions, Tensor cos_sin_cache, "
      "Tensor(b!) k_cache, Tensor(c!) v_cache, Tensor slot_mapping, bool is_neox) -> ()");
  // @@ more schemas (later issues) go above this line
}

TORCH_LIBRARY_IMPL(leapdec, CPU, m) {
  m.impl("append_paged_kv", &leapdec::append_paged_kv_cpu);
  m.impl("move_kv_slots", &leapdec::move_kv_slots_cpu);
  m.impl("paged_attention", &leapdec::paged_attention_cpu);
  m.impl("rope_append_paged_kv", &leapdec::rope_append_paged_kv_cpu);
  // @@ more CPU impls go above this line
}

#ifdef LEAPDEC_WITH_CUDA
TORCH_LIBRARY_IMPL(leapdec, CUDA, m) {
  m.impl("append_paged_kv", &leapdec::append_paged_kv_cuda);
  m.impl("move_kv_slots", &leapdec::move_kv_slots_cuda);
  m.impl("paged_attention", &leapdec::paged_attention_cuda);
  m.impl("rope_append_paged_kv", &leapdec::rope_append_paged_kv_cuda);
  // @@ more CUDA impls go above this line
}
#endif
