// Float32 SIMD for the CPU kernels on GCC/Clang vector extensions, generic in the vector
// width W (floats per vector): a kernel is written once as an always-inline template on W
// and instantiated inside thin wrappers compiled for AVX-512 (W = 16), AVX2+FMA (W = 8) and
// the baseline ISA (W = 4: SSE2 on x86-64, NEON on AArch64); best_isa() picks one at run
// time. Each width gets native vector types, so no vector is ever split by the compiler.
// No torch dependency.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>


#if !defined(__GNUC__)
#error "leapdec's CPU kernels need GCC or Clang (vector extensions)"
#endif

#define LEAPDEC_SIMD_INLINE __attribute__((always_inline)) inline

#if defined(__x86_64__)
#define LEAPDEC_SIMD_X86 1
#define LEAPDEC_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define LEAPDEC_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))
#endif

// The helpers are always inlined into their (ISA-specific) callers, so the vector-return
// ABI note GCC gives for wide vectors does not apply. Templates are instantiated at the end
// of the including file, so the note stays off for the rest of it.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace leapdec::simd {

enum class Isa { kBase = 0, kAvx2 = 1, kAvx512 = 2 };

// The widest ISA this CPU runs, optionally lowered by LEAPDEC_CPU_ISA=base|avx2 (to test or
// compare the narrower paths). Decided once per process.
inline Isa best_isa() {
  static const Isa isa = [] {
    Isa best = Isa::kBase;
#ifdef LEAPDEC_SIMD_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
      best = Isa::kAvx2;
    }
    if (best == Isa::kAvx2 && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl")) {
      best = Isa::kAvx512;
    }
#endif
    const char* cap = std::getenv("LEAPDEC_CPU_ISA");
    if (cap != nullptr && std::strcmp(cap, "base") == 0) best = Isa::kBase;
    if (cap != nullptr && std::strcmp(cap, "avx2") == 0 && best == Isa::kAvx512) best = Isa::kAvx2;
    return best;
  }();
  return isa;
}

template <int W>
struct VecTypes;
template <>
struct VecTypes<4> {
  typedef float f __attribute__((vector_size(16)));
  typedef int32_t i __attribute__((vector_size(16)));
  typedef uint32_t u32 __attribute__((vector_size(16)));
  typedef uint16_t u16 __attribute__((vector_size(8)));
};
template <>
struct VecTypes<8> {
  typedef float f __attribute__((vector_size(32)));
  typedef int32_t i __attribute__((vector_size(32)));
  typedef uint32_t u32 __attribute__((vector_size(32)));
  typedef uint16_t u16 __attribute__((vector_size(16)));
};
template <>
struct VecTypes<16> {
  typedef float f __attribute__((vector_size(64)));
  typedef int32_t i __attribute__((vector_size(64)));
  typedef uint32_t u32 __attribute__((vector_size(64)));
  typedef uint16_t u16 __attribute__((vector_size(32)));
};

template <int W>
using vf = typename VecTypes<W>::f;  // W floats
template <int W>
using vi = typename VecTypes<W>::i;  // W int32

template <int W>
LEAPDEC_SIMD_INLINE vf<W> load(const float* p) {
  vf<W> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <int W>
LEAPDEC_SIMD_INLINE void store(float* p, vf<W> v) {
  std::memcpy(p, &v, sizeof(v));
}

template <int W>
LEAPDEC_SIMD_INLINE vf<W> splat(float x) {
  return vf<W>{} + x;
}

// W bf16 values (the high halves of float32s) widened to float32.
template <int W>
LEAPDEC_SIMD_INLINE vf<W> load_bf16(const uint16_t* p) {
  typename VecTypes<W>::u16 h;
  std::memcpy(&h, p, sizeof(h));
  const typename VecTypes<W>::u32 w = __builtin_convertvector(h, typename VecTypes<W>::u32) << 16;
  vf<W> f;
  std::memcpy(&f, &w, sizeof(f));
  return f;
}

#ifdef LEAPDEC_SIMD_X86
// x86, W = 8 and 16: one zero-extending load and one shift. (The generic form compiles to two
// half-width extensions and an insert, which made bf16 weight streaming compute bound.) Inline
// asm, because an intrinsic's target would have to match every generic always-inline caller;
// these widths are only instantiated inside the AVX2 and AVX-512 kernels.
template <>
LEAPDEC_SIMD_INLINE vf<8> load_bf16<8>(const uint16_t* p) {
  vi<8> r;
  asm("vpmovzxwd %1, %0\n\tvpslld $16, %0, %0" : "=x"(r) : "m"(*reinterpret_cast<const uint16_t(*)[8]>(p)));
  return reinterpret_cast<vf<8>>(r);
}
template <>
LEAPDEC_SIMD_INLINE vf<16> load_bf16<16>(const uint16_t* p) {
  vi<16> r;
  asm("vpmovzxwd %1, %0\n\tvpslld $16, %0, %0" : "=v"(r) : "m"(*reinterpret_cast<const uint16_t(*)[16]>(p)));
  return reinterpret_cast<vf<16>>(r);
}
// W float16 values widened to float32 (F16C: every AVX2 CPU has it).
LEAPDEC_SIMD_INLINE vf<8> load_f16x8(const uint16_t* p) {
  vf<8> r;
  asm("vcvtph2ps %1, %0" : "=x"(r) : "m"(*reinterpret_cast<const uint16_t(*)[8]>(p)));
  return r;
}
LEAPDEC_SIMD_INLINE vf<16> load_f16x16(const uint16_t* p) {
  vf<16> r;
  asm("vcvtph2ps %1, %0" : "=v"(r) : "m"(*reinterpret_cast<const uint16_t(*)[16]>(p)));
  return r;
}
#endif

template <int W>
LEAPDEC_SIMD_INLINE vf<W> vmax(vf<W> a, vf<W> b) {
  return a > b ? a : b;
}

// The low and high halves of a vector.
template <int W>
LEAPDEC_SIMD_INLINE vf<W / 2> low_half(vf<W> v) {
  vf<W / 2> h;
  std::memcpy(&h, &v, sizeof(h));
  return h;
}
template <int W>
LEAPDEC_SIMD_INLINE vf<W / 2> high_half(vf<W> v) {
  vf<W / 2> h;
  std::memcpy(&h, reinterpret_cast<const char*>(&v) + sizeof(h), sizeof(h));
  return h;
}

template <int W>
LEAPDEC_SIMD_INLINE float hsum(vf<W> v) {
  if constexpr (W == 4) {
    return (v[0] + v[2]) + (v[1] + v[3]);
  } else {
    return hsum<W / 2>(low_half<W>(v) + high_half<W>(v));
  }
}

template <int W>
LEAPDEC_SIMD_INLINE float hmax(vf<W> v) {
  if constexpr (W == 4) {
    const float a = v[0] > v[1] ? v[0] : v[1], b = v[2] > v[3] ? v[2] : v[3];
    return a > b ? a : b;
  } else {
    return hmax<W / 2>(vmax<W / 2>(low_half<W>(v), high_half<W>(v)));
  }
}

// ---------------------------------------------------------------- many horizontal sums

// Lane L of merge_pick<W, S, Hi>(x, y): the inputs hold W/S groups of S partial sums each;
// the output takes the low (Hi = false) or high half of every group, x's groups then y's.
template <int W, int S, bool Hi>
constexpr int merge_lane(int lane) {
  const int half = S / 2;
  const int input = lane / (W / 2), within = lane % (W / 2);
  return input * W + (within / half) * S + (Hi ? half : 0) + within % half;
}

template <int W, int S, bool Hi, size_t... L>
LEAPDEC_SIMD_INLINE vf<W> merge_pick(vf<W> x, vf<W> y, std::index_sequence<L...>) {
#if defined(__clang__) || __GNUC__ >= 12
  return __builtin_shufflevector(x, y, merge_lane<W, S, Hi>(L)...);
#else
  return __builtin_shuffle(x, y, vi<W>{merge_lane<W, S, Hi>(L)...});
#endif
}

// Halves the partial sums per dot product: x's and y's groups of S become groups of S/2.
template <int W, int S>
LEAPDEC_SIMD_INLINE vf<W> merge(vf<W> x, vf<W> y) {
  return merge_pick<W, S, false>(x, y, std::make_index_sequence<W>{}) +
         merge_pick<W, S, true>(x, y, std::make_index_sequence<W>{});
}

// Lane k of the result is the sum of a[k]'s lanes: W horizontal sums as a tree of W-1
// pairwise merges instead of W separate reductions.
template <int W, int S = W>
LEAPDEC_SIMD_INLINE vf<W> hsum_many(const vf<W>* a) {
  if constexpr (S == 1) {
    return a[0];
  } else {
    vf<W> merged[S / 2];  // S vectors in, S/2 out
    for (int k = 0; k < S / 2; ++k) merged[k] = merge<W, S>(a[2 * k], a[2 * k + 1]);
    return hsum_many<W, S / 2>(merged);
  }
}

// ---------------------------------------------------------------- exp

// exp(x) for x <= 0 (a score minus its running max); x < -87 (including -inf) gives 0.
// Cephes expf: x = n*ln2 + r with |r| <= ln2/2, exp(r) by a degree-6 polynomial, 2^n built
// in the exponent bits. Relative error ~1e-7, branch-free.
template <int W>
LEAPDEC_SIMD_INLINE vf<W> exp_nonpos(vf<W> x) {
  const vf<W> lo = splat<W>(-87.0f);
  const vf<W> xc = x < lo ? lo : x;
  const vf<W> z = xc * 1.44269504088896341f + 0.5f;                   // [-125, 0.5]
  const vi<W> n = __builtin_convertvector(z + 128.0f, vi<W>) - 128;   // floor(z)
  const vf<W> fn = __builtin_convertvector(n, vf<W>);
  vf<W> r = xc - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  vf<W> y = splat<W>(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const vi<W> bits = (n + 127) << 23;
  vf<W> two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return x < lo ? vf<W>{} : y * two_n;
}

}  // namespace leapdec::simd

