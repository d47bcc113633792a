// Causal multi-head attention with grouped key/value heads and optional intra-document masking.
#pragma once

#include <cstdint>

namespace emo {

struct AttentionShape {
  int64_t B, T, H, Hkv, hd;  // H % Hkv == 0; query head h reads kv head h / (H / Hkv)
};

// q[B,T,H,hd], k,v[B,T,Hkv,hd] (already rotated) -> out[B,T,H,hd]; probs[B,H,T,T] saved for backward
// (entries above the diagonal or across documents are 0). doc_ids[B,T] may be null: with it, t attends to
// s <= t only when doc_ids[b,s] == doc_ids[b,t]. Scale 1/sqrt(hd).
void attention_forward(float* out, float* probs, const float* q, const float* k, const float* v,
                       const int32_t* doc_ids, const AttentionShape& shape);

// dq[B,T,H,hd], dk, dv[B,T,Hkv,hd] += gradients from dout[B,T,H,hd].
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* probs,
                        const float* q, const float* k, const float* v, const AttentionShape& shape);

}  // namespace emo
