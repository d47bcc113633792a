// AVX2 helpers shared by the kernels (internal; not part of the kernel interface).
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

namespace emo::vec {

// exp of 8 floats, relative error about 2 ulp (Cephes expf: 2^n * polynomial on [-ln2/2, ln2/2]).
// Inputs below -87.3 (including -inf) give exactly 0, so masked logits drop out of sums; above 88.7, +inf.
inline __m256 exp8(__m256 x) {
  const __m256 max_x = _mm256_set1_ps(88.7228f), min_x = _mm256_set1_ps(-87.3365f);
  const __m256 underflow = _mm256_cmp_ps(x, min_x, _CMP_LT_OQ);
  // Operand order matters: max/min return their second operand on NaN, so a NaN input stays NaN.
  x = _mm256_min_ps(max_x, _mm256_max_ps(min_x, x));
  // n = round(x / ln2); r = x - n*ln2 in two steps (Cody-Waite) for accuracy.
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n built in the exponent field; n in [-126, 128] after the clamp. 2^128 overflows to +inf as it should.
  __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  __m256 result = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
  return _mm256_andnot_ps(underflow, result);
}

// Horizontal sum of 8 floats.
inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Scalar exp with the same clamps, for loop tails.
inline float exp1(float x) {
  return x < -87.3365f ? 0.0f : std::exp(x);
}

// y[i] = exp(x[i] - shift) for i < n; returns the sum of the y (8 partial sums, then the tail).
inline float exp_shifted_sum(float* y, const float* x, float shift, int64_t n) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
    _mm256_storeu_ps(y + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = hsum8(acc);
  for (; i < n; ++i) sum += (y[i] = exp1(x[i] - shift));
  return sum;
}

// Sum of exp(x[i] - shift) for i < n, without storing the values.
inline float sum_exp_shifted(const float* x, float shift, int64_t n) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_add_ps(acc, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s)));
  float sum = hsum8(acc);
  for (; i < n; ++i) sum += exp1(x[i] - shift);
  return sum;
}

// x[i] *= scale for i < n.
inline void scale_inplace(float* x, float scale, int64_t n) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), s));
  for (; i < n; ++i) x[i] *= scale;
}

// Maximum of x[0..n) (-inf for n = 0).
inline float max_of(const float* x, int64_t n) {
  __m256 m = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  float result = _mm_cvtss_f32(h);
  for (; i < n; ++i) result = x[i] > result ? x[i] : result;
  return result;
}

// Maximum of |x[0..n)| (0 for n = 0).
inline float max_abs_of(const float* x, int64_t n) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  float result = _mm_cvtss_f32(h);
  for (; i < n; ++i) result = std::fabs(x[i]) > result ? std::fabs(x[i]) : result;
  return result;
}

}  // namespace emo::vec
