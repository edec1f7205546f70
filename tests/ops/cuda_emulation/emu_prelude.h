// Host emulation of the CUDA execution model, force-included before the kernel headers
// (csrc/include/leapdec/*.cuh) so the kernels run unchanged on the CPU:
//   - every CUDA thread of a block is a std::thread; blocks run one after another, so the
//     kernels' __shared__ arrays can be plain statics (the test rewrites `__shared__`);
//   - __syncthreads is a barrier of the block's threads;
//   - warp collectives (shuffles, ballot, ldmatrix, mma) publish each lane's operand in a
//     per-warp buffer between two warp barriers. A lane that skips a collective its warp
//     executes deadlocks here (the test's timeout reports it), as it would misbehave on a GPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace emu {

struct Warp {
  std::barrier<> bar{32};
  alignas(16) unsigned char buf[32][64];  // one operand slot per lane
};

struct Block {
  std::unique_ptr<std::barrier<>> bar;
  std::vector<std::unique_ptr<Warp>> warps;
};

inline thread_local dim3 thread_idx, block_idx;
inline dim3 grid_dim, block_dim;
inline Block* block = nullptr;

inline int lane() { return thread_idx.x % 32; }
inline Warp& warp() { return *block->warps[thread_idx.x / 32]; }
inline void warp_sync() { warp().bar.arrive_and_wait(); }

template <typename V>
inline void publish(const V& v) {
  static_assert(sizeof(V) <= sizeof(Warp::buf[0]), "operand too large");
  std::memcpy(warp().buf[lane()], &v, sizeof(V));
}

template <typename V>
inline V read_lane(int l) {
  V v;
  std::memcpy(&v, warp().buf[l], sizeof(V));
  return v;
}

// Runs kernel() for every thread of every block of the grid (x fastest), one block at a time.
template <typename F>
void launch(dim3 grid, dim3 blk, F&& kernel) {
  grid_dim = grid;
  block_dim = blk;
  const int nthreads = blk.x * blk.y * blk.z;
  if (nthreads % 32 != 0) {
    std::fprintf(stderr, "emulated launch: block size %d is not a multiple of 32\n", nthreads);
    std::abort();
  }
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        Block b;
        b.bar = std::make_unique<std::barrier<>>(nthreads);
        for (int w = 0; w < nthreads / 32; ++w) b.warps.push_back(std::make_unique<Warp>());
        block = &b;
        std::vector<std::thread> threads;
        threads.reserve(nthreads);
        for (int t = 0; t < nthreads; ++t) {
          threads.emplace_back([&, t] {
            thread_idx = dim3(t, 0, 0);
            block_idx = dim3(x, y, z);
            kernel();
          });
        }
        for (auto& th : threads) th.join();
        block = nullptr;
      }
    }
  }
}

}  // namespace emu

#define threadIdx emu::thread_idx
#define blockIdx emu::block_idx
#define gridDim emu::grid_dim
#define blockDim emu::block_dim

inline void __syncthreads() { emu::block->bar->arrive_and_wait(); }

template <typename V>
inline V __shfl_xor_sync(unsigned, V v, int lane_mask) {
  emu::publish(v);
  emu::warp_sync();
  const V r = emu::read_lane<V>(emu::lane() ^ lane_mask);
  emu::warp_sync();
  return r;
}

template <typename V>
inline V __shfl_sync(unsigned, V v, int src_lane) {
  emu::publish(v);
  emu::warp_sync();
  const V r = emu::read_lane<V>(src_lane & 31);
  emu::warp_sync();
  return r;
}

inline unsigned __ballot_sync(unsigned, bool pred) {
  emu::publish(static_cast<int>(pred));
  emu::warp_sync();
  unsigned r = 0;
  for (int l = 0; l < 32; ++l) r |= static_cast<unsigned>(emu::read_lane<int>(l) != 0) << l;
  emu::warp_sync();
  return r;
}

inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Device-side min/max on ints (CUDA provides them as overloads in the global namespace).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// The kernels' dynamic shared memory (extern __shared__ arrays).
namespace leapdec {
alignas(16) inline uint4 prefill_smem[8192];  // 128 KiB
alignas(16) inline uint4 move_smem[16384];    // 256 KiB
alignas(16) inline float simt_smem[32768];    // 128 KiB
}  // namespace leapdec
