// 16-byte vectors of half / bfloat16 / float and their conversion to and from float32.
// Every kernel loads K/V/Q rows as uint4 (8 halves, 8 bf16 or 4 floats) and computes in
// float32. Only explicit intrinsics are used, so the code also compiles with the
// __CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_HALF_OPERATORS__ flags that torch builds pass.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace leapdec {

template <typename T>
struct Vec16 {
  static constexpr int kSize = 16 / sizeof(T);  // elements per 16-byte vector
};

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Two floats packed as two 16-bit values in one 32-bit word (the lower index in the low half),
// the operand layout of mma.sync.
template <typename T>
__device__ __forceinline__ uint32_t pack_float2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack_float2<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack_float2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

__device__ __forceinline__ float2 unpack_word(uint32_t w, __half) {
  return __half22float2(*reinterpret_cast<const __half2*>(&w));
}
__device__ __forceinline__ float2 unpack_word(uint32_t w, __nv_bfloat16) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w));
}

// uint4 -> Vec16<T>::kSize floats.
template <typename T>
__device__ __forceinline__ void unpack16(const uint4& v, float* out) {
  if constexpr (sizeof(T) == 4) {
    out[0] = __uint_as_float(v.x);
    out[1] = __uint_as_float(v.y);
    out[2] = __uint_as_float(v.z);
    out[3] = __uint_as_float(v.w);
  } else {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = unpack_word(w[i], T{});
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
}

// Read-only 16-byte global load that does not allocate in L1 (K/V rows are read once).
// (The host branches only serve host-side emulation of the kernels in tests.)
__device__ __forceinline__ uint4 ld_stream16(const void* ptr) {
#ifdef __CUDA_ARCH__
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(ptr));
  return v;
#else
  return *reinterpret_cast<const uint4*>(ptr);
#endif
}

__device__ __forceinline__ uint4 ld16(const void* ptr) {
#ifdef __CUDA_ARCH__
  return __ldg(reinterpret_cast<const uint4*>(ptr));
#else
  return *reinterpret_cast<const uint4*>(ptr);
#endif
}

// Store n (1, 2 or 4) consecutive floats of x as T.
template <typename T>
__device__ __forceinline__ void store_floats(T* dst, const float* x, int n) {
  for (int i = 0; i < n; ++i) dst[i] = from_float<T>(x[i]);
}

// Store four floats as T (dst aligned to 4 elements).
template <typename T>
__device__ __forceinline__ void store4(T* dst, float4 x) {
  if constexpr (sizeof(T) == 4) {
    *reinterpret_cast<float4*>(dst) = x;
  } else {
    uint2 w;
    w.x = pack_float2<T>(x.x, x.y);
    w.y = pack_float2<T>(x.z, x.w);
    *reinterpret_cast<uint2*>(dst) = w;
  }
}

// Store two floats as T (dst aligned to 2 elements).
template <typename T>
__device__ __forceinline__ void store2(T* dst, float a, float b) {
  if constexpr (sizeof(T) == 4) {
    *reinterpret_cast<float2*>(dst) = make_float2(a, b);
  } else {
    *reinterpret_cast<uint32_t*>(dst) = pack_float2<T>(a, b);
  }
}

}  // namespace leapdec
