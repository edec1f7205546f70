// topological_reorder (WeDLM): per row of a window, a stable partition that puts the observed
// (unmasked) tokens first and the masked ones after, each group in logical order, so that a
// causal mask over the physical order lets every masked position see every observed token.
//   perm[i]     = the logical index of the token placed at physical slot i
//   inv_perm[j] = the physical slot of logical index j
// tokens and positions are gathered through perm (positions stay logical: RoPE uses them).
// The CPU kernel (csrc/cpu/diffusion.cpp) uses reorder_row; the CUDA kernel below computes
// the same slots with a block-wide prefix count. Torch-free; spec: python/leapdec/reference.py.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define LEAPDEC_REORDER_FN __host__ __device__ __forceinline__
#else
#define LEAPDEC_REORDER_FN inline
#endif

namespace leapdec {
namespace reorder {

// The physical slot of logical index i: observed_before observed tokens precede it; an
// observed token goes to observed_before, a masked one after all num_observed observed tokens.
LEAPDEC_REORDER_FN int slot_of(int i, bool is_masked, int observed_before, int num_observed) {
  return is_masked ? num_observed + (i - observed_before) : observed_before;
}

// One row of width w, sequentially.
template <typename TokT, typename PosT>
LEAPDEC_REORDER_FN void reorder_row(const TokT* tokens, const bool* masked, const PosT* positions,
                                    TokT* tokens_out, PosT* positions_out, int32_t* perm,
                                    int32_t* inv_perm, int w) {
  int num_observed = 0;
  for (int i = 0; i < w; ++i) num_observed += masked[i] ? 0 : 1;
  int observed_before = 0;
  for (int i = 0; i < w; ++i) {
    const int slot = slot_of(i, masked[i], observed_before, num_observed);
    observed_before += masked[i] ? 0 : 1;
    perm[slot] = i;
    inv_perm[i] = slot;
    tokens_out[slot] = tokens[i];
    positions_out[slot] = positions[i];
  }
}

}  // namespace reorder
}  // namespace leapdec

// ====================================================================== CUDA kernel
#if defined(__CUDACC__)

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

namespace leapdec {
namespace reorder {

// grid (B), kThreads threads. tokens, masked, positions [B, W] -> tokens_out, positions_out,
// perm, inv_perm [B, W]. Pass 1 counts the row's observed tokens; pass 2 walks the row in
// tiles of kThreads with an exclusive prefix count of observed tokens carried across tiles.
template <typename TokT, typename PosT, int kThreads>
__global__ void __launch_bounds__(kThreads)
    topological_reorder_kernel(const TokT* __restrict__ tokens, const bool* __restrict__ masked,
                               const PosT* __restrict__ positions, TokT* __restrict__ tokens_out,
                               PosT* __restrict__ positions_out, int32_t* __restrict__ perm,
                               int32_t* __restrict__ inv_perm, int w) {
  using BlockReduce = cub::BlockReduce<int, kThreads>;
  using BlockScan = cub::BlockScan<int, kThreads>;
  __shared__ union {
    typename BlockReduce::TempStorage reduce;
    typename BlockScan::TempStorage scan;
  } temp;
  __shared__ int s_num_observed;

  const int64_t row = static_cast<int64_t>(blockIdx.x) * w;
  const bool* m = masked + row;

  int local = 0;
  for (int i = threadIdx.x; i < w; i += kThreads) local += m[i] ? 0 : 1;
  const int total = BlockReduce(temp.reduce).Sum(local);
  if (threadIdx.x == 0) s_num_observed = total;
  __syncthreads();
  const int num_observed = s_num_observed;

  int carry = 0;  // observed tokens in the tiles before this one
  for (int base = 0; base < w; base += kThreads) {
    const int i = base + static_cast<int>(threadIdx.x);
    const bool inside = i < w;
    const bool is_masked = inside ? m[i] : true;
    const int observed = (inside && !is_masked) ? 1 : 0;
    int before = 0, tile_observed = 0;
    BlockScan(temp.scan).ExclusiveSum(observed, before, tile_observed);
    if (inside) {
      const int slot = slot_of(i, is_masked, carry + before, num_observed);
      perm[row + slot] = i;
      inv_perm[row + i] = slot;
      tokens_out[row + slot] = tokens[row + i];
      positions_out[row + slot] = positions[row + i];
    }
    carry += tile_observed;
    __syncthreads();  // temp.scan is reused by the next tile
  }
}

}  // namespace reorder
}  // namespace leapdec

#endif  // __CUDACC__
