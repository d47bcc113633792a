#include "kernels/rmsnorm.h"

#include <cmath>

#include "core/thread_pool.h"

namespace emo {

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t N, int64_t C,
                     float eps) {
  parallel_for(N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const float* x = inp + n * C;  // [C]
      float* y = out + n * C;        // [C]
      float sum_sq = 0.0f;
      for (int64_t c = 0; c < C; ++c) sum_sq += x[c] * x[c];
      float r = 1.0f / std::sqrt(sum_sq / static_cast<float>(C) + eps);
      for (int64_t c = 0; c < C; ++c) y[c] = weight[c] * (x[c] * r);
      rstd[n] = r;
    }
  });
}

void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, int64_t N, int64_t C) {
  // y = w * x * r with r = (mean(x^2) + eps)^(-1/2), so dx = r * (w*dy) - x * r^3 / C * sum(w*dy*x).
  parallel_for(N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const float* x = inp + n * C;    // [C]
      const float* dy = dout + n * C;  // [C]
      float* dx = dinp + n * C;        // [C]
      float r = rstd[n];
      float dot = 0.0f;
      for (int64_t c = 0; c < C; ++c) dot += weight[c] * dy[c] * x[c];
      float coef = dot * r * r * r / static_cast<float>(C);
      for (int64_t c = 0; c < C; ++c) dx[c] += r * weight[c] * dy[c] - coef * x[c];
    }
  });
  if (!dweight) return;
  // dweight sums over rows: threads own column ranges so the row order (and result) is fixed.
  parallel_for(C, 16, [&](int64_t c0, int64_t c1) {
    for (int64_t n = 0; n < N; ++n) {
      const float* x = inp + n * C;
      const float* dy = dout + n * C;
      float r = rstd[n];
      for (int64_t c = c0; c < c1; ++c) dweight[c] += dy[c] * x[c] * r;
    }
  });
}

}  // namespace emo
