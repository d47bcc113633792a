#include "kernels/softmax.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/vec_math.h"

namespace emo {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// logsumexp of row[C]; -inf when every entry is -inf.
float row_logsumexp(const float* row, int64_t C) {
  float max = vec::max_of(row, C);
  if (max == kNegInf) return kNegInf;
  return max + std::log(vec::sum_exp_shifted(row, max, C));
}

// Rows per parallel chunk so a chunk holds at least ~16k values.
int64_t row_grain(int64_t C) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
}

}  // namespace

void softmax_forward(float* out, float* lse, const float* inp, int64_t N, int64_t C) {
  parallel_for(N, row_grain(C), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const float* x = inp + n * C;  // [C]
      float* p = out + n * C;        // [C]
      float max = vec::max_of(x, C);
      if (max == kNegInf) {  // nothing allowed: an all-zero row rather than NaN
        std::fill(p, p + C, 0.0f);
        if (lse) lse[n] = kNegInf;
        continue;
      }
      float sum = vec::exp_shifted_sum(p, x, max, C);
      vec::scale_inplace(p, 1.0f / sum, C);
      if (lse) lse[n] = max + std::log(sum);
    }
  });
}

void softmax_backward(float* dinp, const float* dout, const float* out, int64_t N, int64_t C) {
  parallel_for(N, row_grain(C), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const float* dy = dout + n * C;  // [C]
      const float* p = out + n * C;    // [C]
      float* dx = dinp + n * C;        // [C]
      float dot = 0.0f;
      for (int64_t c = 0; c < C; ++c) dot += dy[c] * p[c];
      for (int64_t c = 0; c < C; ++c) dx[c] += p[c] * (dy[c] - dot);
    }
  });
}

CrossEntropySums cross_entropy_forward(float* lse, const float* logits, const int32_t* targets, int64_t N,
                                       int64_t V) {
  for (int64_t n = 0; n < N; ++n) {
    if (targets[n] < -1 || targets[n] >= V)
      fail("cross_entropy", cat("target ", targets[n], " at position ", n, " is outside [-1, ", V, ")"));
  }
  std::vector<double> ce(N, 0.0);  // [N] per-row loss, summed in row order below for a thread-free result
  parallel_for(N, row_grain(V), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const float* row = logits + n * V;  // [V]
      lse[n] = row_logsumexp(row, V);
      if (targets[n] >= 0) ce[n] = static_cast<double>(lse[n]) - static_cast<double>(row[targets[n]]);
    }
  });
  CrossEntropySums sums;
  for (int64_t n = 0; n < N; ++n) {
    if (targets[n] < 0) continue;
    sums.ce += ce[n];
    sums.z += static_cast<double>(lse[n]) * static_cast<double>(lse[n]);
    ++sums.count;
  }
  return sums;
}

void cross_entropy_backward(float* dlogits, const float* logits, const float* lse, const int32_t* targets,
                            int64_t N, int64_t V, float ce_scale, float z_scale) {
  parallel_for(N, row_grain(V), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      if (targets[n] < 0) continue;
      const float* row = logits + n * V;  // [V]
      float* drow = dlogits + n * V;      // [V]
      // d/dlogit of ce_scale*ce + z_scale*lse^2 = (ce_scale + 2*z_scale*lse) * softmax - ce_scale * onehot
      const __m256 coef = _mm256_set1_ps(ce_scale + 2.0f * z_scale * lse[n]), shift = _mm256_set1_ps(lse[n]);
      int64_t v = 0;
      for (; v + 8 <= V; v += 8) {
        __m256 p = vec::exp8(_mm256_sub_ps(_mm256_loadu_ps(row + v), shift));
        _mm256_storeu_ps(drow + v, _mm256_fmadd_ps(coef, p, _mm256_loadu_ps(drow + v)));
      }
      for (; v < V; ++v) drow[v] += (ce_scale + 2.0f * z_scale * lse[n]) * vec::exp1(row[v] - lse[n]);
      drow[targets[n]] -= ce_scale;
    }
  });
}

void topk(int32_t* idx, float* val, const float* x, int64_t N, int64_t C, int64_t k) {
  EMO_CHECK(k >= 0 && k <= C, "topk", "k = ", k, " must lie in [0, ", C, "]");
  parallel_for(N, row_grain(C), [&](int64_t begin, int64_t end) {
    std::vector<int32_t> order(C);
    for (int64_t n = begin; n < end; ++n) {
      const float* row = x + n * C;  // [C]
      std::iota(order.begin(), order.end(), 0);
      // Larger value first; equal values keep the lower index first.
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [row](int32_t a, int32_t b) {
        return row[a] > row[b] || (row[a] == row[b] && a < b);
      });
      for (int64_t j = 0; j < k; ++j) {
        idx[n * k + j] = order[j];
        if (val) val[n * k + j] = row[order[j]];
      }
    }
  });
}

}  // namespace emo
