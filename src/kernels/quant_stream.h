// The streaming products of kernels/quant.cpp (internal), generic over a kernel format: each weight row is
// read once for a block of tokens, R*T accumulators in registers. Included by quant.cpp (AVX2 formats) and
// quant_avx512.cpp (AVX-512 formats, instantiated inside functions compiled for AVX-512, which inline all
// of this). Legend: N = tokens, C = input width, R = rows per register block, T = tokens per block.
//
// A format Fmt provides: Elem (stored weight), X (prepared activation), Acc (accumulator), kStep (columns
// per step), kSegment (columns between flushes of the accumulators into fp32 sums), kXWidth (prepared
// elements per column), kRowsFor4 / kRowsFor1 (rows per register block for 4 tokens / 1 token), and
// prepare(x, C, out) -> factor, zero(), step(acc, w, x), reduce(acc), weight(w), input(x) (the last two for
// the column tail, in scalar fp32), and optionally reduce4(acc[4], sum[4]): sum[t] += the sum of acc[t].
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/quant.h"
#include "kernels/vec_math.h"
#include "tensor/dtype.h"

namespace emo {
namespace {

// x[C] -> out[C] int16, rounded to steps of max|x| / 32767 (error about 1.5e-5 of max|x|); returns the step.
inline float prepare_int16(const float* x, int64_t C, int16_t* out) {
  const float max_abs = vec::max_abs_of(x, C);
  const float scale = max_abs > 0.0f ? max_abs / 32767.0f : 1.0f;
  const float inverse_scale = 1.0f / scale;
  const __m256 inverse = _mm256_set1_ps(inverse_scale);
  int64_t c = 0;
  for (; c + 16 <= C; c += 16) {
    // Rounded to nearest (MXCSR default); packs saturates a product that rounds past 32767.
    const __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + c), inverse));
    const __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + c + 8), inverse));
    // packs interleaves 128-bit lanes (lo0-3 hi0-3 lo4-7 hi4-7): put them back in order.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c), packed);
  }
  for (; c < C; ++c)  // as the vector loop: x times the inverse, rounded to nearest even
    out[c] = static_cast<int16_t>(std::clamp(std::nearbyint(x[c] * inverse_scale), -32768.0f, 32767.0f));
  return scale;
}

// What the fp32 formats (AVX2, AVX-512F) share: x used as it is (copied), fp32 weights.
struct F32Common {
  using Elem = float;
  using X = float;
  static constexpr int64_t kSegment = INT64_MAX, kXWidth = 1;
  static float prepare(const float* x, int64_t C, float* out) {
    std::copy(x, x + C, out);
    return 1.0f;
  }
  static float weight(const float* w) { return *w; }
  static float input(const float* x) { return *x; }
};

// What the bf16 formats (AVX2 widening, AVX-512 vdpbf16ps) share: bf16 weights, one sum for the whole row.
struct BF16Common {
  using Elem = uint16_t;
  static constexpr int64_t kSegment = INT64_MAX;
  static float weight(const uint16_t* w) { return bf16_to_f32(*w); }
};

// What the int8 formats (AVX2, AVX-512 VNNI) share: x rounded to int16 once per call, 16 weights per step
// widened to int16, products summed in 8 int32 lanes that are flushed to fp32 every 4096 columns, before
// they could overflow (|w x| <= 127 * 32767 per product).
struct I8Common {
  using Elem = int8_t;
  using X = int16_t;
  using Acc = __m256i;
  static constexpr int64_t kStep = 16, kSegment = 4096, kXWidth = 1;
  static float prepare(const float* x, int64_t C, int16_t* out) { return prepare_int16(x, C, out); }
  static Acc zero() { return _mm256_setzero_si256(); }
  static __m256i widen(const int8_t* w) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
  }
  static float reduce(Acc acc) { return vec::hsum8(_mm256_cvtepi32_ps(acc)); }
  static float weight(const int8_t* w) { return static_cast<float>(*w); }
  static float input(const int16_t* x) { return static_cast<float>(*x); }
};

// y[t * ldy + r] = dot(W[r, :], x[t, :]) * scale[r] for R rows starting at row0 and T tokens (x prepared,
// factor[t] its scale): R*T independent accumulators, each weight vector loaded once for all T tokens.
template <class Fmt, int R, int T>
inline void dot_block(float* y, int64_t ldy, const typename Fmt::Elem* w, const float* scales, int64_t row0,
                      const typename Fmt::X* x, const float* factor, int64_t C) {
  const typename Fmt::Elem* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = w + (row0 + r) * C;
  const int64_t XC = C * Fmt::kXWidth;  // prepared elements per token
  float sum[R][T] = {};
  const int64_t body = C - C % Fmt::kStep;
  for (int64_t segment = 0, end = 0; segment < body; segment = end) {
    end = body - segment > Fmt::kSegment ? segment + Fmt::kSegment : body;
    // The r and t loops are unrolled so that the R*T accumulators live in registers (without it GCC -O2
    // kept them in a stack array: a load-FMA-store chain per step, 3-4x slower on cache-resident weights).
    typename Fmt::Acc acc[R][T];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) acc[r][t] = Fmt::zero();
    for (int64_t c = segment; c < end; c += Fmt::kStep)
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t)
          acc[r][t] = Fmt::step(acc[r][t], rows[r] + c, x + t * XC + c * Fmt::kXWidth);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      if constexpr (T == 4 && requires { Fmt::reduce4(acc[r], sum[r]); }) {
        Fmt::reduce4(acc[r], sum[r]);  // 4 sums at once: a third of the shuffles of 4 reductions
      } else {
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) sum[r][t] += Fmt::reduce(acc[r][t]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    const float scale = scales ? scales[row0 + r] : 1.0f;
    for (int t = 0; t < T; ++t) {
      for (int64_t k = body; k < C; ++k)
        sum[r][t] += Fmt::weight(rows[r] + k) * Fmt::input(x + t * XC + k * Fmt::kXWidth);
      y[t * ldy + row0 + r] = sum[r][t] * scale * factor[t];
    }
  }
}

// Rows [0, rows) of the block for T tokens: blocks of R rows, then single rows.
template <class Fmt, int R, int T>
inline void dot_rows(float* y, int64_t ldy, const MatrixView& w, const typename Fmt::X* x,
                     const float* factor) {
  const auto* data = static_cast<const typename Fmt::Elem*>(w.data);
  const char* bytes = static_cast<const char*>(w.data);
  const int64_t C = w.cols, block = R * C * static_cast<int64_t>(sizeof(typename Fmt::Elem));
  const int64_t total = w.rows * C * static_cast<int64_t>(sizeof(typename Fmt::Elem));
  int64_t r = 0;
  for (; r + R <= w.rows; r += R) {
    // The block's R rows are read as R interleaved streams, too short for the hardware prefetcher when rows
    // are short (512 columns of bf16 = 1 KiB): fetch the next block, in memory order, meanwhile. Measured on
    // the 1.6 GB model (bench_infer): bf16 decode 0.92-0.99 of the bandwidth bound with this, 0.47 without
    // software prefetch, 0.64 with one prefetch per row and step.
    const int64_t ahead = (r / R + 1) * block;
    for (int64_t b = ahead; b < std::min(total, ahead + block); b += 64) _mm_prefetch(bytes + b, _MM_HINT_T0);
    dot_block<Fmt, R, T>(y, ldy, data, w.scales, r, x, factor, C);
  }
  for (; r < w.rows; ++r) dot_block<Fmt, 1, T>(y, ldy, data, w.scales, r, x, factor, w.cols);
}

// All N tokens of one tile of rows, in blocks of 4 tokens, then the 1-3 left.
template <class Fmt>
inline void dot_tokens(float* y, int64_t ldy, const MatrixView& w, const typename Fmt::X* xp,
                       const float* factor, int64_t N) {
  const int64_t XC = w.cols * Fmt::kXWidth;
  int64_t n = 0;
  for (; n + 4 <= N; n += 4) dot_rows<Fmt, Fmt::kRowsFor4, 4>(y + n * ldy, ldy, w, xp + n * XC, factor + n);
  switch (N - n) {
    case 3:
      return dot_rows<Fmt, 2, 3>(y + n * ldy, ldy, w, xp + n * XC, factor + n);
    case 2:
      return dot_rows<Fmt, 2, 2>(y + n * ldy, ldy, w, xp + n * XC, factor + n);
    case 1:
      return dot_rows<Fmt, Fmt::kRowsFor1, 1>(y + n * ldy, ldy, w, xp + n * XC, factor + n);
    default:
      return;
  }
}

// Y[N, ldy] (columns = the view's rows) for N tokens. Beyond a few tokens the rows go in tiles of about
// 64 KiB, each read from the cache by every block of tokens instead of from memory. Every output is computed
// by the same sequence of operations whatever the tiling and blocking, so results do not depend on how rows
// are split over threads.
template <class Fmt>
void stream_tokens(float* y, int64_t ldy, const float* x, int64_t N, const MatrixView& w) {
  const int64_t C = w.cols, XC = C * Fmt::kXWidth;
  thread_local std::vector<typename Fmt::X> prepared;  // [N, XC]
  thread_local std::vector<float> factor;              // [N]
  prepared.resize(static_cast<size_t>(N * XC));
  factor.resize(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) factor[n] = Fmt::prepare(x + n * C, C, prepared.data() + n * XC);
  constexpr int64_t kTileBytes = 64 * 1024;
  const int64_t row_bytes = std::max<int64_t>(1, C * static_cast<int64_t>(sizeof(typename Fmt::Elem)));
  const int64_t tile = N <= 8 ? w.rows : std::max<int64_t>(8, kTileBytes / row_bytes);
  for (int64_t r = 0; r < w.rows; r += tile)
    dot_tokens<Fmt>(y + r, ldy, w.row_block(r, std::min(w.rows, r + tile)), prepared.data(), factor.data(),
                    N);
}

}  // namespace
}  // namespace emo
