// Host driver for the CUDA ctc_prefix_score kernel's per-thread work: runs ctc::score_column
// for every (hypothesis, candidate) the way ctc_prefix_score_kernel does (clamped indices), on
// raw little-endian inputs written by tests/ops/test_ctc_prefix_score.py, and writes r_out, psi.
// usage: ctc_columns DIR B T V N C blank eos
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "leapdec/ctc_prefix_score.h"

template <typename X>
static std::vector<X> read(const std::string& path, size_t n) {
  std::vector<X> v(n);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f || std::fread(v.data(), sizeof(X), n, f) != n) { std::perror(path.c_str()); std::exit(1); }
  std::fclose(f);
  return v;
}

template <typename X>
static void write(const std::string& path, const std::vector<X>& v) {
  FILE* f = std::fopen(path.c_str(), "wb");
  std::fwrite(v.data(), sizeof(X), v.size(), f);
  std::fclose(f);
}

int main(int argc, char** argv) {
  if (argc != 9) return 2;
  const std::string dir = argv[1];
  const int B = std::atoi(argv[2]), T = std::atoi(argv[3]), V = std::atoi(argv[4]), N = std::atoi(argv[5]),
            C = std::atoi(argv[6]);
  const leapdec::ctc::Problem p{T, V, N, C, std::atoi(argv[7]), std::atoi(argv[8])};
  auto lp = read<float>(dir + "/log_probs", size_t(B) * T * V);
  auto lens = read<int>(dir + "/frame_lens", B);
  auto r_prev = read<float>(dir + "/r_prev", size_t(T) * 2 * N);
  auto plen = read<int>(dir + "/prefix_len", N);
  auto last = read<int>(dir + "/last_token", N);
  auto utt = read<int>(dir + "/hyp_utt", N);
  auto cand = read<int>(dir + "/cand", size_t(N) * C);
  std::vector<float> r_out(size_t(T) * 2 * N * C, 12345.0f), psi(size_t(N) * C, 12345.0f);
  for (int n = 0; n < N; ++n) {
    for (int j = 0; j < C; ++j) {  // as ctc_prefix_score_kernel's thread (n, j)
      const int b = std::min(std::max(utt[n], 0), B - 1);
      const int len = std::min(std::max(lens[b], 1), T);
      int c = cand[size_t(n) * C + j];
      if (c >= V) c = -1;
      const float* lpb = lp.data() + size_t(b) * T * V;
      leapdec::ctc::score_column(p, lpb, len, r_prev.data(), std::max(plen[n], 0), last[n], n, j, c,
                                 r_out.data(), psi.data());
    }
  }
  write(dir + "/r_out", r_out);
  write(dir + "/psi", psi);
  return 0;
}
