// Linear map without bias, weight in the PyTorch layout [OC, C].
#pragma once

#include <cstdint>

namespace emo {

// out[N,OC] = inp[N,C] @ weight[OC,C]^T
void linear_forward(float* out, const float* inp, const float* weight, int64_t N, int64_t C, int64_t OC);

// dinp[N,C] += dout[N,OC] @ weight[OC,C];  dweight[OC,C] += dout^T @ inp.  Either output may be null.
void linear_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                     int64_t N, int64_t C, int64_t OC);

}  // namespace emo
