// CUDA launcher of linear (kernel: csrc/include/leapdec/linear.cuh). Same argument checks as
// the CPU op; x, weight and bias may each be float16, bfloat16 or float32; the weight plain
// [N, K] or packed [ceil(N/8), ceil(K/8), 8, 8]. No sync, no
// allocation: M > kLinearMaxRows runs as several launches over row blocks of x and out.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "checks.h"
#include "launch_utils.cuh"
#include "leapdec/linear.cuh"
#include "ops.h"

namespace leapdec {

void linear_cuda(at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                 const std::optional<at::Tensor>& bias) {
  const int64_t n = check_linear_args(out, x, weight, bias);
  TORCH_CHECK(x.is_cuda(), "linear (CUDA): x must be a CUDA tensor");
  const int64_t m = x.size(0), k = x.size(1);
  const bool packed = weight.dim() == 4;
  if (m == 0 || n == 0) return;
  TORCH_CHECK((n + kLinearWarps - 1) / kLinearWarps <= INT32_MAX, "linear (CUDA): weight has too many rows");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  const unsigned blocks = static_cast<unsigned>((n + kLinearWarps - 1) / kLinearWarps);
  LEAPDEC_DISPATCH_FLOAT(x.scalar_type(), "linear", TX, {
    LEAPDEC_DISPATCH_FLOAT(weight.scalar_type(), "linear", TW, {
      auto launch = [&](auto bias_tag) {
        using TB = decltype(bias_tag);
        const TB* bp = bias.has_value() ? static_cast<const TB*>(bias->data_ptr()) : nullptr;
        for (int64_t r0 = 0; r0 < m; r0 += kLinearMaxRows) {
          const int rows = static_cast<int>(std::min<int64_t>(kLinearMaxRows, m - r0));
          TX* o = static_cast<TX*>(out.data_ptr()) + r0 * n;
          const TX* xr = static_cast<const TX*>(x.data_ptr()) + r0 * k;
          const TW* w = static_cast<const TW*>(weight.data_ptr());
          if (packed) {
            linear_few_rows_kernel<TX, TW, TB, true><<<blocks, 32 * kLinearWarps, 0, stream>>>(o, xr, w, bp, rows, n, k);
          } else {
            linear_few_rows_kernel<TX, TW, TB, false><<<blocks, 32 * kLinearWarps, 0, stream>>>(o, xr, w, bp, rows, n, k);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      };
      if (!bias.has_value() || bias->scalar_type() == weight.scalar_type()) {
        launch(TW{});
      } else {
        LEAPDEC_DISPATCH_FLOAT(bias->scalar_type(), "linear", TBias, { launch(TBias{}); });
      }
    });
  });
}

}  // namespace leapdec
