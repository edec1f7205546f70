// CUDA launchers of rms_norm, fused_add_rms_norm and silu_and_mul (kernel: csrc/include/leapdec/norm.cuh). Same
// argument checks as the CPU ops; input float16 / bfloat16 / float32, weight any of the three. No
// sync, no allocation (graph-capturable).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "checks.h"
#include "launch_utils.cuh"
#include "leapdec/norm.cuh"
#include "ops.h"

namespace leapdec {
namespace {

template <bool ADD>
void launch_norm(at::Tensor& out, const at::Tensor& x, at::Tensor* residual, const at::Tensor& weight, int64_t d,
                 double eps) {
  TORCH_CHECK(x.is_cuda(), "rms_norm (CUDA): input must be a CUDA tensor");
  const int64_t rows = d == 0 ? 0 : x.numel() / d;
  if (rows == 0) return;
  TORCH_CHECK((rows + kNormWarps - 1) / kNormWarps <= INT32_MAX, "rms_norm (CUDA): input has too many rows");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  const unsigned blocks = static_cast<unsigned>((rows + kNormWarps - 1) / kNormWarps);
  LEAPDEC_DISPATCH_FLOAT(x.scalar_type(), "rms_norm", T, {
    LEAPDEC_DISPATCH_FLOAT(weight.scalar_type(), "rms_norm", TW, {
      rms_norm_kernel<T, TW, ADD><<<blocks, 32 * kNormWarps, 0, stream>>>(
          static_cast<T*>(out.data_ptr()), static_cast<const T*>(x.data_ptr()),
          ADD ? static_cast<T*>(residual->data_ptr()) : nullptr, static_cast<const TW*>(weight.data_ptr()), rows,
          d, static_cast<float>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace

void rms_norm_cuda(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight, double eps) {
  const int64_t d = check_rms_norm_args(input, out, "out", weight, eps);
  launch_norm<false>(out, input, nullptr, weight, d, eps);
}

void fused_add_rms_norm_cuda(at::Tensor& input, at::Tensor& residual, const at::Tensor& weight, double eps) {
  const int64_t d = check_fused_add_rms_norm_args(input, residual, weight, eps);
  launch_norm<true>(input, input, &residual, weight, d, eps);
}

void silu_and_mul_cuda(at::Tensor& out, const at::Tensor& input) {
  const int64_t d = check_silu_and_mul_args(out, input);
  TORCH_CHECK(input.is_cuda(), "silu_and_mul (CUDA): input must be a CUDA tensor");
  const int64_t rows = d == 0 ? 0 : out.numel() / d;
  if (rows == 0) return;
  const c10::cuda::CUDAGuard device_guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(input.get_device()).stream();
  const int64_t total = rows * d;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 65535));
  LEAPDEC_DISPATCH_FLOAT(input.scalar_type(), "silu_and_mul", T, {
    silu_and_mul_kernel<T><<<blocks, 256, 0, stream>>>(static_cast<T*>(out.data_ptr()),
                                                       static_cast<const T*>(input.data_ptr()), rows, d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace leapdec
