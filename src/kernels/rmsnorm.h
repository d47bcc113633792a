#pragma once

#include <cstdint>

namespace emo {

// out[N,C] = weight[C] * inp / sqrt(mean(inp^2) + eps); rstd[N] = 1 / sqrt(mean(inp^2) + eps) is saved.
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t N, int64_t C,
                     float eps);

// dinp[N,C] += ..., dweight[C] += ... (dweight may be null).
void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, int64_t N, int64_t C);

}  // namespace emo
