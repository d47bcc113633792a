// Legend: N = tokens, C = input width, R = rows per register block, T = tokens per block, nb = blocks per
// row.
#include "kernels/q4.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/vec_math.h"
#include "tensor/dtype.h"

namespace emo {
namespace {

constexpr int64_t QK = kQ4BlockWeights;

// The integer dot of one block: aw = |w - 8| (unsigned), sx = x with the sign of w - 8, so that
// aw * sx = (w - 8) * x; 8 int32 lanes, each the sum of 4 neighbouring products. maddubs cannot saturate here
// (|pair| <= 2 * 8 * 127), so both ways give the same integers.
struct Avx2Mul {
  static __m256i dot(__m256i aw, __m256i sx) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), _mm256_set1_epi16(1));
  }
};

struct VnniMul {
  __attribute__((target("avx512vnni,avx512vl"))) static __m256i dot(__m256i aw, __m256i sx) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, sx);
  }
};

// y[t * ldy + row0 + r] for R rows and T tokens: each block of weights unpacked once for all T tokens.
template <class Mul, int R, int T>
inline void dot_block(float* y, int64_t ldy, const BlockQ4_0* w, int64_t row0, const int8_t* xq,
                      const float* xd, int64_t C) {
  const int64_t nb = C / QK;
  const BlockQ4_0* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = w + (row0 + r) * nb;
  const __m256i low_nibbles = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8);
  __m256 acc[R][T];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const BlockQ4_0& block = rows[r][b];
      const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block.qs));
      // Elements 0..15 from the low nibbles into the low 16 bytes, 16..31 from the high ones above them.
      const __m256i q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), low_nibbles);
      const __m256i signed_w = _mm256_sub_epi8(q, eight);
      const __m256i abs_w = _mm256_sign_epi8(signed_w, signed_w);
      const float dw = _cvtsh_ss(block.d);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + t * C + b * QK));
        const __m256i sums = Mul::dot(abs_w, _mm256_sign_epi8(x, signed_w));
        const __m256 scale = _mm256_set1_ps(dw * xd[t * nb + b]);
        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc[r][t]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + row0 + r] = vec::hsum8(acc[r][t]);
}

// Rows [0, rows) for T tokens: blocks of R rows with the next block prefetched (the R interleaved row
// streams are too short for the hardware prefetcher, as for the other formats in quant.cpp), then single
// rows.
template <class Mul, int R, int T>
void dot_rows_t(float* y, int64_t ldy, const BlockQ4_0* w, int64_t rows, const int8_t* xq, const float* xd,
                int64_t C) {
  const char* bytes = reinterpret_cast<const char*>(w);
  const int64_t block = R * q4_row_bytes(C), total = rows * q4_row_bytes(C);
  int64_t r = 0;
  for (; r + R <= rows; r += R) {
    const int64_t ahead = (r / R + 1) * block;
    for (int64_t p = ahead; p < std::min(total, ahead + block); p += 64) _mm_prefetch(bytes + p, _MM_HINT_T0);
    dot_block<Mul, R, T>(y, ldy, w, r, xq, xd, C);
  }
  for (; r < rows; ++r) dot_block<Mul, 1, T>(y, ldy, w, r, xq, xd, C);
}

// All N tokens in blocks of 4 (2 rows x 4 tokens = 8 accumulators), then the rest; one token: 4 rows.
template <class Mul>
void dot_rows(float* y, int64_t ldy, const uint8_t* w_bytes, int64_t rows, int64_t C, const int8_t* xq,
              const float* xd, int64_t N) {
  const auto* w = reinterpret_cast<const BlockQ4_0*>(w_bytes);
  const int64_t nb = C / QK;
  int64_t n = 0;
  for (; n + 4 <= N; n += 4) dot_rows_t<Mul, 2, 4>(y + n * ldy, ldy, w, rows, xq + n * C, xd + n * nb, C);
  switch (N - n) {
    case 3:
      return dot_rows_t<Mul, 2, 3>(y + n * ldy, ldy, w, rows, xq + n * C, xd + n * nb, C);
    case 2:
      return dot_rows_t<Mul, 2, 2>(y + n * ldy, ldy, w, rows, xq + n * C, xd + n * nb, C);
    case 1:
      return dot_rows_t<Mul, 4, 1>(y + n * ldy, ldy, w, rows, xq + n * C, xd + n * nb, C);
    default:
      return;
  }
}

void dot_rows_avx2(float* y, int64_t ldy, const uint8_t* w, int64_t rows, int64_t C, const int8_t* xq,
                   const float* xd, int64_t N) {
  dot_rows<Avx2Mul>(y, ldy, w, rows, C, xq, xd, N);
}

// flatten: everything inlined here, so the whole kernel is compiled with VNNI and no call per block remains.
__attribute__((target("avx512vnni,avx512vl"), flatten)) void dot_rows_vnni(float* y, int64_t ldy,
                                                                           const uint8_t* w, int64_t rows,
                                                                           int64_t C, const int8_t* xq,
                                                                           const float* xd, int64_t N) {
  dot_rows<VnniMul>(y, ldy, w, rows, C, xq, xd, N);
}

// The reference: integer sums per block, exact; one fp32 multiply-add per block.
void dot_rows_scalar(float* y, int64_t ldy, const uint8_t* w_bytes, int64_t rows, int64_t C, const int8_t* xq,
                     const float* xd, int64_t N) {
  const auto* w = reinterpret_cast<const BlockQ4_0*>(w_bytes);
  const int64_t nb = C / QK;
  for (int64_t t = 0; t < N; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      float sum = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const BlockQ4_0& block = w[r * nb + b];
        const int8_t* x = xq + t * C + b * QK;
        int32_t isum = 0;
        for (int j = 0; j < QK / 2; ++j)
          isum += ((block.qs[j] & 0x0F) - 8) * x[j] + ((block.qs[j] >> 4) - 8) * x[j + QK / 2];
        sum += f16_to_f32(block.d) * xd[t * nb + b] * static_cast<float>(isum);
      }
      y[t * ldy + r] = sum;
    }
}

}  // namespace

void quantize_row_q4_0(const float* w, BlockQ4_0* out, int64_t cols) {
  for (int64_t b = 0; b < cols / QK; ++b) {
    const float* x = w + b * QK;
    float max_abs = 0.0f, extreme = 0.0f;
    for (int64_t j = 0; j < QK; ++j)
      if (std::fabs(x[j]) > max_abs) max_abs = std::fabs(x[j]), extreme = x[j];
    const float d = extreme / -8.0f;
    const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
    for (int64_t j = 0; j < QK / 2; ++j) {
      const int lo = std::min(15, static_cast<int>(static_cast<int8_t>(x[j] * inverse + 8.5f)));
      const int hi = std::min(15, static_cast<int>(static_cast<int8_t>(x[j + QK / 2] * inverse + 8.5f)));
      out[b].qs[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

namespace {

// q = clamp(round(w / d) + 8, 0, 15) for one block; returns the squared error of (q - 8) * d against w.
float round_block(const float* w, float d, int* q) {
  const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
  float error = 0.0f;
  for (int64_t j = 0; j < QK; ++j) {
    q[j] = std::clamp(static_cast<int>(std::nearbyint(w[j] * inverse)) + 8, 0, 15);
    const float diff = w[j] - static_cast<float>(q[j] - 8) * d;
    error += diff * diff;
  }
  return error;
}

// The scale minimising sum (w - (q - 8) d)^2 for fixed q: sum w (q - 8) / sum (q - 8)^2, rounded to fp16 as
// stored.
float least_squares_scale(const float* w, const int* q, float fallback) {
  float wq = 0.0f, qq = 0.0f;
  for (int64_t j = 0; j < QK; ++j) {
    const float level = static_cast<float>(q[j] - 8);
    wq += w[j] * level, qq += level * level;
  }
  return qq > 0.0f ? _cvtsh_ss(_cvtss_sh(wq / qq, _MM_FROUND_TO_NEAREST_INT)) : fallback;
}

}  // namespace

void quantize_row_q4_0_fitted(const float* w, BlockQ4_0* out, int64_t cols) {
  // Divisors of the extreme value: -8.5 ... -6 put it on the negative end (-8 steps, the longer side),
  // 6.5 ... 7.5 on the positive end (+7), where a block whose other side is nearly as large fits better.
  constexpr float kDivisors[] = {-8.5f, -8.25f, -8.0f, -7.75f, -7.5f, -7.25f, -7.0f, -6.75f,
                                 -6.5f, -6.25f, -6.0f, 6.5f,   6.75f, 7.0f,   7.25f, 7.5f};
  for (int64_t b = 0; b < cols / QK; ++b) {
    const float* x = w + b * QK;
    float max_abs = 0.0f, extreme = 0.0f;
    for (int64_t j = 0; j < QK; ++j)
      if (std::fabs(x[j]) > max_abs) max_abs = std::fabs(x[j]), extreme = x[j];
    int q[QK], best_q[QK];
    float best_d = 0.0f, best_error = INFINITY;
    for (const float divisor : kDivisors) {
      if (max_abs == 0.0f) break;
      float d = _cvtsh_ss(_cvtss_sh(extreme / divisor, _MM_FROUND_TO_NEAREST_INT));
      round_block(x, d, q);
      d = least_squares_scale(x, q, d);
      const float error = round_block(x, d, q);
      if (error < best_error) best_error = error, best_d = d, std::copy(q, q + QK, best_q);
    }
    if (max_abs == 0.0f) std::fill(best_q, best_q + QK, 8);
    out[b].d = _cvtss_sh(best_d, _MM_FROUND_TO_NEAREST_INT);
    for (int64_t j = 0; j < QK / 2; ++j)
      out[b].qs[j] = static_cast<uint8_t>(best_q[j] | (best_q[j + QK / 2] << 4));
  }
}

void quantize_rows_q4_0(uint8_t* out, const float* w, int64_t rows, int64_t cols, Q4Scale scale) {
  EMO_CHECK(cols % QK == 0, "quant", "q4 blocks of ", QK, " weights: ", cols,
            " columns are not a multiple of ", QK);
  parallel_for(rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      auto* blocks = reinterpret_cast<BlockQ4_0*>(out + r * q4_row_bytes(cols));
      if (scale == Q4Scale::kFitted)
        quantize_row_q4_0_fitted(w + r * cols, blocks, cols);
      else
        quantize_row_q4_0(w + r * cols, blocks, cols);
    }
  });
}

void dequantize_row_q4_0(const BlockQ4_0* in, float* out, int64_t cols) {
  convert_to_f32(DType::kQ4_0, in, out, static_cast<size_t>(cols));
}

void quantize_row_q8(const float* x, int8_t* q, float* d, int64_t cols) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < cols / QK; ++b) {
    const float* v = x + b * QK;
    __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8), v2 = _mm256_loadu_ps(v + 16),
           v3 = _mm256_loadu_ps(v + 24);
    __m256 max_abs = _mm256_andnot_ps(sign_bit, v0);
    max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign_bit, v1));
    max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign_bit, v2));
    max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign_bit, v3));
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(max_abs), _mm256_extractf128_ps(max_abs, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float amax = _mm_cvtss_f32(m);
    d[b] = amax > 0.0f ? amax / 127.0f : 1.0f;
    const __m256 inverse = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    // Rounded to nearest even (MXCSR default); |x| * 127 / amax <= 127, so no saturation.
    __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, inverse));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, inverse));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, inverse));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, inverse));
    // packs works within 128-bit lanes: 0-3 8-11 16-19 24-27 | 4-7 12-15 20-23 28-31; the permute restores
    // order.
    const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    const __m256i ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * QK), ordered);
  }
}

const char* q4_kernel_name(Q4Kernel kernel) {
  switch (kernel) {
    case Q4Kernel::kScalar:
      return "scalar";
    case Q4Kernel::kAvx2:
      return "avx2";
    case Q4Kernel::kAvx512Vnni:
      return "avx512vnni";
  }
  return "?";
}

void q4_dot_rows(Q4Kernel kernel, float* y, int64_t ldy, const uint8_t* w, int64_t rows, int64_t cols,
                 const int8_t* xq, const float* xd, int64_t N) {
  switch (kernel) {
    case Q4Kernel::kScalar:
      return dot_rows_scalar(y, ldy, w, rows, cols, xq, xd, N);
    case Q4Kernel::kAvx2:
      return dot_rows_avx2(y, ldy, w, rows, cols, xq, xd, N);
    case Q4Kernel::kAvx512Vnni:
      return dot_rows_vnni(y, ldy, w, rows, cols, xq, xd, N);
  }
}

}  // namespace emo
