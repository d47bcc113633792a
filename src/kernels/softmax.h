// Row softmax (the router's), cross-entropy with the output z-loss, and top-k.
#pragma once

#include <cstdint>

namespace emo {

// out[N,C] = softmax(inp[N,C]) per row, computed stably; -inf entries get probability 0.
// lse[N] (may be null) = logsumexp of each row.
void softmax_forward(float* out, float* lse, const float* inp, int64_t N, int64_t C);

// dinp[N,C] += out * (dout - sum(dout * out)) per row.
void softmax_backward(float* dinp, const float* dout, const float* out, int64_t N, int64_t C);

struct CrossEntropySums {
  double ce = 0;      // sum over counted tokens of -log softmax(logits)[target]
  double z = 0;       // sum over counted tokens of logsumexp(logits)^2
  int64_t count = 0;  // tokens whose target is >= 0 (target -1 = ignored)
};

// logits[N,V], targets[N] -> sums; lse[N] saved for backward.
CrossEntropySums cross_entropy_forward(float* lse, const float* logits, const int32_t* targets, int64_t N,
                                       int64_t V);

// For the loss ce_scale * sum(ce) + z_scale * sum(lse^2) over counted tokens:
// dlogits[N,V] += ce_scale * (softmax - onehot) + z_scale * 2 * lse * softmax. Ignored rows get nothing.
void cross_entropy_backward(float* dlogits, const float* logits, const float* lse, const int32_t* targets,
                            int64_t N, int64_t V, float ce_scale, float z_scale);

// The k largest entries of each row of x[N,C], descending; ties keep the lower index first.
// idx[N,k], val[N,k] (val may be null).
void topk(int32_t* idx, float* val, const float* x, int64_t N, int64_t C, int64_t k);

}  // namespace emo
