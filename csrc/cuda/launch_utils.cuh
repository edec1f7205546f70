// Helpers shared by the CUDA launchers: dtype / head-dim dispatch to kernel template
// arguments, device attributes (cached, no sync), and pointer checks.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <cstdint>

// Run __VA_ARGS__ with `T` bound to the CUDA element type of `dtype` (fp16, bf16, fp32).
#define LEAPDEC_DISPATCH_FLOAT(dtype, name, T, ...)                                      \
  switch (dtype) {                                                                        \
    case at::kHalf: {                                                                     \
      using T = __half;                                                                   \
      __VA_ARGS__;                                                                        \
      break;                                                                              \
    }                                                                                     \
    case at::kBFloat16: {                                                                 \
      using T = __nv_bfloat16;                                                            \
      __VA_ARGS__;                                                                        \
      break;                                                                              \
    }                                                                                     \
    case at::kFloat: {                                                                    \
      using T = float;                                                                    \
      __VA_ARGS__;                                                                        \
      break;                                                                              \
    }                                                                                     \
    default:                                                                              \
      TORCH_CHECK(false, name, ": CUDA kernels support float16, bfloat16 and float32, got ", \
                  dtype);                                                                 \
  }

// Run __VA_ARGS__ with `HEAD_DIM` a constexpr int equal to head_dim (64 or 128).
#define LEAPDEC_DISPATCH_HEAD_DIM(head_dim, name, HEAD_DIM, ...)                           \
  switch (head_dim) {                                                                      \
    case 64: {                                                                             \
      constexpr int HEAD_DIM = 64;                                                         \
      __VA_ARGS__;                                                                         \
      break;                                                                               \
    }                                                                                      \
    case 128: {                                                                            \
      constexpr int HEAD_DIM = 128;                                                        \
      __VA_ARGS__;                                                                         \
      break;                                                                               \
    }                                                                                      \
    default:                                                                               \
      TORCH_CHECK(false, name, ": the CUDA kernels support head_dim 64 and 128, got ", head_dim); \
  }

namespace leapdec {
namespace cuda_util {

inline void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, ": ", cudaGetErrorString(err));
}

// Device attribute, read once per device (a host query, no sync; safe during graph capture).
inline int device_attribute(cudaDeviceAttr attr, int device, std::atomic<int>* cache) {
  int v = cache[device].load(std::memory_order_relaxed);
  if (v == 0) {
    check_cuda(cudaDeviceGetAttribute(&v, attr, device), "cudaDeviceGetAttribute");
    cache[device].store(v, std::memory_order_relaxed);
  }
  return v;
}

constexpr int kMaxDevices = 64;

inline int num_sms(int device) {
  static std::atomic<int> cache[kMaxDevices];
  TORCH_CHECK(device >= 0 && device < kMaxDevices, "device index ", device, " out of range");
  return device_attribute(cudaDevAttrMultiProcessorCount, device, cache);
}

inline int max_smem_optin(int device) {
  static std::atomic<int> cache[kMaxDevices];
  TORCH_CHECK(device >= 0 && device < kMaxDevices, "device index ", device, " out of range");
  return device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device, cache);
}

// Allow `kernel` to use `bytes` of dynamic shared memory (needed above 48 KiB).
template <typename Kernel>
inline void set_dynamic_smem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(bytes)),
               "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  }
}

inline bool aligned(const void* ptr, size_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

inline void check_aligned16(const at::Tensor& t, const char* name) {
  TORCH_CHECK(aligned(t.data_ptr(), 16), name,
              " must start on a 16-byte boundary for the CUDA kernels (it is a view at an odd "
              "offset; pass .clone())");
}

}  // namespace cuda_util
}  // namespace leapdec
