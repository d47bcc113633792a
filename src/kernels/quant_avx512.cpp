// The fp32, bf16 and int8 kernel formats on AVX-512 (see kernels/quant_stream.h for what a format provides).
// Each entry point is compiled for exactly the instructions its availability check asks of the CPU, and
// flattened: the generic streaming templates are inlined into it and compiled with those instructions too.
#include "kernels/quant_avx512.h"

// GCC 12 reports its own AVX-512 intrinsics (a vector made with `__Y = __Y` as "undefined"), and the AVX-512
// vector returns of the format structs' functions, which are inlined into the AVX-512 entry points and so
// never cross a call between code built with different vector ABIs.
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#pragma GCC diagnostic ignored "-Wpsabi"

#include <immintrin.h>

#include <algorithm>
#include <climits>

#include "core/error.h"
#include "core/machine.h"
#include "tensor/dtype.h"

// Clang checks the vector ABI in every function it emits, so the generic streaming templates, instantiated
// here with AVX-512 accumulators, need the AVX-512 features themselves, not only once inlined: the whole
// rest of the file is built with them (clang only: GCC takes each entry point's target, flattened). The entry
// points still run only where the CPU has their format's instructions.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni"))), \
                             apply_to = function)
#endif
#include "kernels/quant_stream.h"

#define EMO_TARGET_F32 "avx512f"
#define EMO_TARGET_BF16 "avx512f,avx512bw,avx512vl,avx512bf16"
#define EMO_TARGET_I8 "avx512f,avx512vl,avx512vnni"

namespace emo {
namespace {

// fp32: 16 weights per FMA; summed in another order than the AVX2 kernel (16 lanes, not 8), so results
// differ from it by rounding only.
struct F32Avx512 : F32Common {
  using Acc = __m512;
  static constexpr int64_t kStep = 16;
  static constexpr int kRowsFor4 = 4, kRowsFor1 = 8;
  __attribute__((target(EMO_TARGET_F32))) static Acc zero() { return _mm512_setzero_ps(); }
  __attribute__((target(EMO_TARGET_F32))) static Acc step(Acc acc, const float* w, const float* x) {
    return _mm512_fmadd_ps(_mm512_loadu_ps(w), _mm512_loadu_ps(x), acc);
  }
  __attribute__((target(EMO_TARGET_F32))) static float reduce(Acc acc) { return _mm512_reduce_add_ps(acc); }
};

// bf16 by vdpbf16ps (32 products of bf16 pairs per instruction, exact, summed in fp32). The activation is
// not bf16: it is split once per call into x = hi + lo, both bf16 (hi = x rounded to bf16, lo = the rest
// rounded), which keeps x to about 2^-17 of itself; x rounded to bf16 alone (as llama.cpp does) keeps 2^-9,
// more than the 2e-5 by which the engine's bf16 logits must match the training engine's. Prepared layout: per
// step of 32 columns, their 32 hi then their 32 lo; a tail column k holds hi at 2k and lo at 2k + 1.
struct BF16Avx512 : BF16Common {
  using X = uint16_t;
  struct Acc {
    __m512 hi, lo;  // separate chains: two products per step without waiting on each other
  };
  static constexpr int64_t kStep = 32, kXWidth = 2;
  static constexpr int kRowsFor4 = 2, kRowsFor1 = 4;

  // 16 bf16 (the low or high half of a vector of 32) widened to fp32.
  __attribute__((target(EMO_TARGET_BF16))) static __m512 widen(__m256i bf16) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf16), 16));
  }
  __attribute__((target(EMO_TARGET_BF16))) static float prepare(const float* x, int64_t C, uint16_t* out) {
    int64_t c = 0;
    for (; c + 32 <= C; c += 32) {
      const __m512 a = _mm512_loadu_ps(x + c), b = _mm512_loadu_ps(x + c + 16);
      const __m512i hi = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a));    // rounded to nearest even
      const __m512 rest_a = _mm512_sub_ps(a, widen(_mm512_castsi512_si256(hi)));  // exact
      const __m512 rest_b = _mm512_sub_ps(b, widen(_mm512_extracti64x4_epi64(hi, 1)));
      _mm512_storeu_si512(out + 2 * c, hi);
      _mm512_storeu_si512(out + 2 * c + 32, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(rest_b, rest_a)));
    }
    for (; c < C; ++c) {
      out[2 * c] = f32_to_bf16(x[c]);
      out[2 * c + 1] = f32_to_bf16(x[c] - bf16_to_f32(out[2 * c]));
    }
    return 1.0f;
  }
  __attribute__((target(EMO_TARGET_BF16))) static Acc zero() {
    return {_mm512_setzero_ps(), _mm512_setzero_ps()};
  }
  __attribute__((target(EMO_TARGET_BF16))) static Acc step(Acc acc, const uint16_t* w, const uint16_t* x) {
    const __m512bh weights = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w));
    acc.hi = _mm512_dpbf16_ps(acc.hi, weights, reinterpret_cast<__m512bh>(_mm512_loadu_si512(x)));
    acc.lo = _mm512_dpbf16_ps(acc.lo, weights, reinterpret_cast<__m512bh>(_mm512_loadu_si512(x + 32)));
    return acc;
  }
  __attribute__((target(EMO_TARGET_BF16))) static float reduce(Acc acc) {
    return _mm512_reduce_add_ps(_mm512_add_ps(acc.hi, acc.lo));
  }
  static float input(const uint16_t* x) { return bf16_to_f32(x[0]) + bf16_to_f32(x[1]); }
};

// bf16 for prompts: x rounded to bf16 once (as llama.cpp, and Hugging Face running a bf16 model, do), one
// vdpbf16ps per 32 weights, 4 rows x 4 tokens of accumulators (8 loads per 16 products). x keeps 2^-9 of
// itself; docs/inference.md gives the held-out perplexity change of a trained model.
struct BF16RoundedAvx512 : BF16Common {
  using X = uint16_t;
  using Acc = __m512;
  static constexpr int64_t kStep = 32, kXWidth = 1;
  static constexpr int kRowsFor4 = 4, kRowsFor1 = 4;
  __attribute__((target(EMO_TARGET_BF16))) static float prepare(const float* x, int64_t C, uint16_t* out) {
    int64_t c = 0;
    for (; c + 32 <= C; c += 32) {
      const __m512 a = _mm512_loadu_ps(x + c), b = _mm512_loadu_ps(x + c + 16);
      _mm512_storeu_si512(out + c, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a)));  // nearest even
    }
    for (; c < C; ++c) out[c] = f32_to_bf16(x[c]);
    return 1.0f;
  }
  __attribute__((target(EMO_TARGET_BF16))) static Acc zero() { return _mm512_setzero_ps(); }
  __attribute__((target(EMO_TARGET_BF16))) static Acc step(Acc acc, const uint16_t* w, const uint16_t* x) {
    return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(_mm512_loadu_si512(w)),
                            reinterpret_cast<__m512bh>(_mm512_loadu_si512(x)));
  }
  __attribute__((target(EMO_TARGET_BF16))) static float reduce(Acc acc) { return _mm512_reduce_add_ps(acc); }
  // The 16 lanes of 4 accumulators summed together: halves added, then three horizontal adds of pairs.
  __attribute__((target(EMO_TARGET_BF16))) static void reduce4(const Acc* acc, float* sum) {
    __m256 half[4];
    for (int t = 0; t < 4; ++t)
      half[t] = _mm256_add_ps(_mm512_castps512_ps256(acc[t]),
                              _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[t]), 1)));
    // [t0 t0 t1 t1 | t0 t0 t1 t1] and [t2 t2 t3 t3 | ...], then [t0 t1 t2 t3 | t0 t1 t2 t3].
    const __m256 sums = _mm256_hadd_ps(_mm256_hadd_ps(half[0], half[1]), _mm256_hadd_ps(half[2], half[3]));
    const __m128 four = _mm_add_ps(_mm256_castps256_ps128(sums), _mm256_extractf128_ps(sums, 1));
    _mm_storeu_ps(sum, _mm_add_ps(_mm_loadu_ps(sum), four));
  }
  static float input(const uint16_t* x) { return bf16_to_f32(*x); }
};

// int8 by vpdpwssd: the AVX2 kernel's integer products (weights widened to int16 against x rounded to int16,
// pairs summed into int32 lanes) in one instruction instead of two, on the same 8 lanes of 256 bits, so the
// integer sums, their flushes and their fp32 reduction are the AVX2 kernel's: results are bit-identical.
// (vpdpbusd would multiply 4x more per instruction but needs x in int8, 256x coarser steps than int16.)
struct I8Vnni : I8Common {
  // 8 rows for one token: vpdpwssd puts its multiply's latency into each accumulator's chain (AVX2's madd
  // does not), so one token needs more independent chains; with 4, decode ran at 0.8x of AVX2.
  static constexpr int kRowsFor4 = 4, kRowsFor1 = 8;
  __attribute__((target(EMO_TARGET_I8))) static Acc step(Acc acc, const int8_t* w, const int16_t* x) {
    return _mm256_dpwssd_epi32(acc, widen(w), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
  }
};

__attribute__((target(EMO_TARGET_F32), flatten)) void stream_f32(float* y, int64_t ldy, const float* x,
                                                                 int64_t N, const MatrixView& w) {
  stream_tokens<F32Avx512>(y, ldy, x, N, w);
}

__attribute__((target(EMO_TARGET_BF16), flatten)) void stream_bf16(float* y, int64_t ldy, const float* x,
                                                                   int64_t N, const MatrixView& w) {
  stream_tokens<BF16Avx512>(y, ldy, x, N, w);
}

__attribute__((target(EMO_TARGET_BF16), flatten)) void stream_bf16_rounded(float* y, int64_t ldy,
                                                                           const float* x, int64_t N,
                                                                           const MatrixView& w) {
  stream_tokens<BF16RoundedAvx512>(y, ldy, x, N, w);
}

__attribute__((target(EMO_TARGET_I8), flatten)) void stream_i8(float* y, int64_t ldy, const float* x,
                                                               int64_t N, const MatrixView& w) {
  stream_tokens<I8Vnni>(y, ldy, x, N, w);
}

}  // namespace

bool avx512_format_available(DType dtype) {
  const CpuFeatures& cpu = cpu_features();
  switch (dtype) {
    case DType::kF32:
      return cpu.avx512f;
    case DType::kBF16:
      return cpu.avx512f && cpu.avx512bw && cpu.avx512vl && cpu.avx512bf16;
    case DType::kI8:
      return cpu.avx512f && cpu.avx512vl && cpu.avx512vnni;
    case DType::kQ4_0:  // kernels/q4.cpp: vpdpbusd on 256-bit vectors
      return cpu.avx512vl && cpu.avx512vnni;
    default:
      return false;
  }
}

void prompt_bf16_avx512(float* y, int64_t ldy, const float* x, int64_t N, const MatrixView& w) {
  EMO_CHECK(w.dtype == DType::kBF16, "quant", "the bf16 prompt kernel got weights of dtype ",
            dtype_name(w.dtype));
  stream_bf16_rounded(y, ldy, x, N, w);
}

void stream_tokens_avx512(float* y, int64_t ldy, const float* x, int64_t N, const MatrixView& w) {
  switch (w.dtype) {
    case DType::kF32:
      return stream_f32(y, ldy, x, N, w);
    case DType::kBF16:
      return stream_bf16(y, ldy, x, N, w);
    case DType::kI8:
      return stream_i8(y, ldy, x, N, w);
    default:
      fail("quant", cat("no AVX-512 kernel for weights of dtype ", dtype_name(w.dtype)));
  }
}

}  // namespace emo

#if defined(__clang__)
#pragma clang attribute pop
#endif
