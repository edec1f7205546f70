// CUDA ctc_prefix_score (csrc/include/leapdec/ctc_prefix_score.h, reference.py): one thread per
// (hypothesis n, candidate slot j) runs ctc::score_column over all frames; a block covers a tile
// of consecutive (n, j), so a frame's writes r_out[t, k, n, j] are coalesced. Index values are
// clamped (the Python wrapper checks them on the host unless leapdec.ops.set_index_checks(False)),
// so bad indices never read out of range. No host sync, no allocation: graph-capturable.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

#include "ctc_checks.h"
#include "launch_utils.cuh"
#include "leapdec/ctc_prefix_score.h"
#include "leapdec/vec_dtypes.cuh"
#include "ops.h"

namespace leapdec {
namespace {

constexpr int kThreads = 128;

// A view of log_probs that converts to float on load (score_column reads lp[i]).
template <typename T>
struct FloatView {
  const T* p;
  __device__ __forceinline__ float operator[](int64_t i) const { return to_float(p[i]); }
};

// grid: ceil(N * C / kThreads) blocks of kThreads; thread i handles (n, j) = (i / C, i % C).
template <typename T>
__global__ void ctc_prefix_score_kernel(ctc::Problem p, int batch, const T* __restrict__ log_probs,
                                        const int* __restrict__ frame_lens,
                                        const float* __restrict__ r_prev,
                                        const int* __restrict__ prefix_len,
                                        const int* __restrict__ last_token,
                                        const int* __restrict__ hyp_utt,
                                        const int* __restrict__ cand, float* __restrict__ r_out,
                                        float* __restrict__ psi) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= static_cast<int64_t>(p.num_hyps) * p.num_cands) return;
  const int n = static_cast<int>(i / p.num_cands), j = static_cast<int>(i % p.num_cands);
  const int b = min(max(hyp_utt[n], 0), batch - 1);
  const int len = min(max(frame_lens[b], 1), p.frames);
  int c = cand[i];
  if (c >= p.vocab) c = -1;
  const int plen = max(prefix_len[n], 0);
  FloatView<T> lp{log_probs + static_cast<int64_t>(b) * p.frames * p.vocab};
  ctc::score_column(p, lp, len, r_prev, plen, last_token[n], n, j, c, r_out, psi);
}

template <typename T>
void launch(const ctc::Problem& p, int batch, const at::Tensor& log_probs, const at::Tensor& frame_lens,
            const at::Tensor& r_prev, const at::Tensor& prefix_len, const at::Tensor& last_token,
            const at::Tensor& hyp_utt, const at::Tensor& cand, at::Tensor& r_out, at::Tensor& psi,
            cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(p.num_hyps) * p.num_cands;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks < (int64_t{1} << 31), "ctc_prefix_score: too many hypotheses x candidates ", total);
  ctc_prefix_score_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      p, batch, reinterpret_cast<const T*>(log_probs.data_ptr()), frame_lens.data_ptr<int>(),
      r_prev.data_ptr<float>(), prefix_len.data_ptr<int>(), last_token.data_ptr<int>(),
      hyp_utt.data_ptr<int>(), cand.data_ptr<int>(), r_out.data_ptr<float>(), psi.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void ctc_prefix_score_cuda(at::Tensor& r_out, at::Tensor& psi, const at::Tensor& log_probs,
                           const at::Tensor& frame_lens, const at::Tensor& r_prev,
                           const at::Tensor& prefix_len, const at::Tensor& last_token,
                           const at::Tensor& hyp_utt, const at::Tensor& cand, int64_t blank,
                           int64_t eos) {
  const ctc::Problem p = check_ctc_prefix_score_args(r_out, psi, log_probs, frame_lens, r_prev,
                                                     prefix_len, last_token, hyp_utt, cand, blank, eos);
  TORCH_CHECK(log_probs.is_cuda(), "ctc_prefix_score_cuda: log_probs must be a CUDA tensor");
  if (p.num_hyps == 0 || p.num_cands == 0) return;
  const c10::cuda::CUDAGuard guard(log_probs.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int batch = static_cast<int>(log_probs.size(0));
  TORCH_CHECK(batch > 0, "ctc_prefix_score: hypotheses need an utterance, log_probs has B = 0");
  LEAPDEC_DISPATCH_FLOAT(log_probs.scalar_type(), "ctc_prefix_score", T,
                         launch<T>(p, batch, log_probs, frame_lens, r_prev, prefix_len, last_token,
                                   hyp_utt, cand, r_out, psi, stream));
}

}  // namespace leapdec
