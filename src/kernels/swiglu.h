#pragma once

#include <cstdint>

namespace emo {

// out[n] = silu(gate[n]) * up[n], elementwise over n values; silu(x) = x * sigmoid(x).
void swiglu_forward(float* out, const float* gate, const float* up, int64_t n);

// dgate[n] += dout * up * silu'(gate);  dup[n] += dout * silu(gate).
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                     int64_t n);

}  // namespace emo
