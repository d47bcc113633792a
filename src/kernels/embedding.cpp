#include "kernels/embedding.h"

#include <cstring>

#include "core/error.h"
#include "core/thread_pool.h"

namespace emo {
namespace {

void check_tokens(const int32_t* tokens, int64_t N, int64_t V) {
  for (int64_t n = 0; n < N; ++n) {
    if (tokens[n] < 0 || tokens[n] >= V)
      fail("embedding",
           cat("token ", tokens[n], " at position ", n, " is outside the vocabulary [0, ", V, ")"));
  }
}

}  // namespace

void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t N, int64_t V,
                       int64_t C) {
  check_tokens(tokens, N, V);
  parallel_for(N, 64, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      std::memcpy(out + n * C, table + static_cast<int64_t>(tokens[n]) * C, sizeof(float) * C);
  });
}

void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t N, int64_t V,
                        int64_t C) {
  check_tokens(tokens, N, V);
  // Threads own disjoint column ranges and walk the tokens in order: no races, and every table row sums its
  // tokens in the same order whatever the thread count.
  parallel_for(C, 16, [&](int64_t c0, int64_t c1) {
    for (int64_t n = 0; n < N; ++n) {
      float* row = dtable + static_cast<int64_t>(tokens[n]) * C;  // [C]
      const float* grad = dout + n * C;                           // [C]
      for (int64_t c = c0; c < c1; ++c) row[c] += grad[c];
    }
  });
}

}  // namespace emo
