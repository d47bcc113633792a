#include "kernels/swiglu.h"

#include <immintrin.h>

#include "core/thread_pool.h"
#include "kernels/vec_math.h"

namespace emo {
namespace {

constexpr int64_t kGrain = 4096;

// Lanes [0, count) of a mask for maskload/maskstore; count in [0, 8].
inline __m256i lane_mask(int64_t count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// sigmoid of 8 floats: 1 / (1 + exp(-x)).
inline __m256 sigmoid8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, vec::exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

// Runs step(i, mask) over [begin, end) in blocks of 8; the last block is masked. Every element goes through
// the same vector instructions wherever a block starts, so results do not depend on how the range is split.
template <typename Step>
void for_blocks(int64_t begin, int64_t end, Step step) {
  const __m256i all = _mm256_set1_epi32(-1);
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) step(i, all);
  if (i < end) step(i, lane_mask(end - i));
}

}  // namespace

void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
    for_blocks(begin, end, [&](int64_t i, __m256i mask) {
      __m256 g = _mm256_maskload_ps(gate + i, mask), u = _mm256_maskload_ps(up + i, mask);
      _mm256_maskstore_ps(out + i, mask, _mm256_mul_ps(_mm256_mul_ps(g, sigmoid8(g)), u));
    });
  });
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                     int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
    for_blocks(begin, end, [&](int64_t i, __m256i mask) {
      __m256 g = _mm256_maskload_ps(gate + i, mask), u = _mm256_maskload_ps(up + i, mask);
      __m256 dy = _mm256_maskload_ps(dout + i, mask), sig = sigmoid8(g);
      if (dgate) {
        // silu'(g) = sig * (1 + g * (1 - sig))
        __m256 dsilu = _mm256_mul_ps(sig, _mm256_fmadd_ps(g, _mm256_sub_ps(one, sig), one));
        __m256 acc = _mm256_maskload_ps(dgate + i, mask);
        _mm256_maskstore_ps(dgate + i, mask, _mm256_fmadd_ps(_mm256_mul_ps(dy, u), dsilu, acc));
      }
      if (dup) {
        __m256 acc = _mm256_maskload_ps(dup + i, mask);
        _mm256_maskstore_ps(dup + i, mask, _mm256_fmadd_ps(dy, _mm256_mul_ps(g, sig), acc));
      }
    });
  });
}

}  // namespace emo
