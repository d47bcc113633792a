#pragma once

#include <cstdint>

namespace emo {

// out[N,C] = table[tokens[n], :]; a token outside [0, V) throws "[embedding] token X at position n ...".
void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t N, int64_t V,
                       int64_t C);

// dtable[V,C] += scatter of dout[N,C] by token (deterministic order).
void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t N, int64_t V,
                        int64_t C);

}  // namespace emo
