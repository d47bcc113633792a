#include "kernels/linear.h"

#include "kernels/gemm.h"

namespace emo {

void linear_forward(float* out, const float* inp, const float* weight, int64_t N, int64_t C, int64_t OC) {
  // out[N,OC] = inp[N,C] @ weight[OC,C]^T
  gemm(false, true, N, OC, C, 1.0f, inp, C, weight, C, 0.0f, out, OC);
}

void linear_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                     int64_t N, int64_t C, int64_t OC) {
  // dinp[N,C] += dout[N,OC] @ weight[OC,C]
  if (dinp) gemm(false, false, N, C, OC, 1.0f, dout, OC, weight, C, 1.0f, dinp, C);
  // dweight[OC,C] += dout[N,OC]^T @ inp[N,C]
  if (dweight) gemm(true, false, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
}

}  // namespace emo
