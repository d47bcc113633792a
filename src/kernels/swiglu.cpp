#include "kernels/swiglu.h"

#include <cmath>

#include "core/thread_pool.h"

namespace emo {
namespace {

constexpr int64_t kGrain = 4096;

inline float sigmoid(float x) {
  return 1.0f / (1.0f + std::exp(-x));
}

}  // namespace

void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = gate[i] * sigmoid(gate[i]) * up[i];
  });
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                     int64_t n) {
  parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float g = gate[i], sig = sigmoid(g);
      float silu = g * sig;
      float dsilu = sig * (1.0f + g * (1.0f - sig));
      if (dgate) dgate[i] += dout[i] * up[i] * dsilu;
      if (dup) dup[i] += dout[i] * silu;
    }
  });
}

}  // namespace emo
