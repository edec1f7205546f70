// Host stand-in for csrc/include/leapdec/mma.cuh (same API), written from the PTX ISA tables
// independently of the kernels' index arithmetic:
//   mma.m16n8k16 (lane t, group g = t / 4, tig = t % 4):
//     A a0: (g, 2tig..+1)  a1: (g+8, 2tig..+1)  a2: (g, 2tig+8..+9)  a3: (g+8, 2tig+8..+9)
//     B b0: (k = 2tig..+1, n = g)  b1: (k = 2tig+8..+9, n = g)
//     C c0, c1: (g, 2tig..+1)  c2, c3: (g+8, 2tig..+1); low 16 bits = lower index
//   ldmatrix.x4: lanes 8i..8i+7 address the rows of matrix i; lane t gets row t/4, cols
//     2(t%4)..+1 of each matrix, or with .trans rows 2(t%4)..+1 of col t/4.
// Shared-memory addresses are byte offsets into leapdec::prefill_smem.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

namespace leapdec {
namespace mma {

inline uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(static_cast<const char*>(p) - reinterpret_cast<const char*>(prefill_smem));
}

inline const char* smem_at(uint32_t addr) { return reinterpret_cast<const char*>(prefill_smem) + addr; }

inline uint16_t load_b16(uint32_t addr) {
  uint16_t v;
  std::memcpy(&v, smem_at(addr), 2);
  return v;
}

inline void ldmatrix_x4(uint32_t* r, uint32_t addr) {
  emu::publish(addr);
  emu::warp_sync();
  const int t = emu::lane();
  for (int i = 0; i < 4; ++i) {
    const uint32_t row = emu::read_lane<uint32_t>(8 * i + t / 4);
    std::memcpy(&r[i], smem_at(row + 4 * (t % 4)), 4);
  }
  emu::warp_sync();
}

inline void ldmatrix_x4_trans(uint32_t* r, uint32_t addr) {
  emu::publish(addr);
  emu::warp_sync();
  const int t = emu::lane();
  for (int i = 0; i < 4; ++i) {
    const uint32_t row0 = emu::read_lane<uint32_t>(8 * i + 2 * (t % 4));
    const uint32_t row1 = emu::read_lane<uint32_t>(8 * i + 2 * (t % 4) + 1);
    r[i] = uint32_t(load_b16(row0 + 2 * (t / 4))) | (uint32_t(load_b16(row1 + 2 * (t / 4))) << 16);
  }
  emu::warp_sync();
}

inline float b16_to_float(uint16_t v, __half) {
  __half h;
  std::memcpy(&h, &v, 2);
  return __half2float(h);
}

inline float b16_to_float(uint16_t v, __nv_bfloat16) {
  __nv_bfloat16 h;
  std::memcpy(&h, &v, 2);
  return __bfloat162float(h);
}

struct Operands {
  uint32_t a[4];
  uint32_t b[2];
};

template <typename T>
inline void mma_m16n8k16(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  Operands mine;
  std::memcpy(mine.a, a, sizeof(mine.a));
  mine.b[0] = b0;
  mine.b[1] = b1;
  emu::publish(mine);
  emu::warp_sync();
  float A[16][16], B[16][8];
  for (int t = 0; t < 32; ++t) {
    const Operands o = emu::read_lane<Operands>(t);
    const int g = t >> 2, tig = t & 3;
    const int rows[4] = {g, g + 8, g, g + 8};
    const int cols[4] = {2 * tig, 2 * tig, 2 * tig + 8, 2 * tig + 8};
    for (int i = 0; i < 4; ++i) {
      A[rows[i]][cols[i]] = b16_to_float(uint16_t(o.a[i] & 0xffff), T{});
      A[rows[i]][cols[i] + 1] = b16_to_float(uint16_t(o.a[i] >> 16), T{});
    }
    B[2 * tig][g] = b16_to_float(uint16_t(o.b[0] & 0xffff), T{});
    B[2 * tig + 1][g] = b16_to_float(uint16_t(o.b[0] >> 16), T{});
    B[2 * tig + 8][g] = b16_to_float(uint16_t(o.b[1] & 0xffff), T{});
    B[2 * tig + 9][g] = b16_to_float(uint16_t(o.b[1] >> 16), T{});
  }
  emu::warp_sync();
  const int t = emu::lane(), g = t >> 2, tig = t & 3;
  const int rows[4] = {g, g, g + 8, g + 8};
  const int cols[4] = {2 * tig, 2 * tig + 1, 2 * tig, 2 * tig + 1};
  for (int i = 0; i < 4; ++i) {
    float s = 0.f;
    for (int k = 0; k < 16; ++k) s += A[rows[i]][k] * B[k][cols[i]];
    c[i] += s;
  }
}

// cp.async copies synchronously here (the wait is then a no-op).
inline void cp_async_16(uint32_t smem_addr, const void* gmem, bool valid) {
  char* dst = reinterpret_cast<char*>(prefill_smem) + smem_addr;
  if (valid) {
    std::memcpy(dst, gmem, 16);
  } else {
    std::memset(dst, 0, 16);
  }
}

inline void cp_async_commit() {}

template <int N>
inline void cp_async_wait() {}

}  // namespace mma
}  // namespace leapdec
