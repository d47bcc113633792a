#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/gemm.h"

namespace emo {
namespace {

void check_shape(const AttentionShape& s) {
  EMO_CHECK(s.B >= 0 && s.T >= 0 && s.H > 0 && s.Hkv > 0 && s.hd > 0 && s.H % s.Hkv == 0, "attention",
            "bad shape B=", s.B, " T=", s.T, " H=", s.H, " Hkv=", s.Hkv, " hd=", s.hd);
}

// Turns the scaled scores of row t (in place, [T]) into probabilities over the keys s <= t of t's document;
// every other entry becomes 0.
void causal_softmax_row(float* row, int64_t t, int64_t T, const int32_t* docs) {
  float max = -std::numeric_limits<float>::infinity();
  for (int64_t s = 0; s <= t; ++s) {
    if (docs && docs[s] != docs[t]) continue;
    max = std::max(max, row[s]);
  }
  float sum = 0.0f;
  for (int64_t s = 0; s <= t; ++s) {
    if (docs && docs[s] != docs[t]) {
      row[s] = 0.0f;
      continue;
    }
    row[s] = std::exp(row[s] - max);
    sum += row[s];
  }
  float inv = 1.0f / sum;  // sum >= 1: s = t is always allowed and holds the max or more
  for (int64_t s = 0; s <= t; ++s) row[s] *= inv;
  std::fill(row + t + 1, row + T, 0.0f);
}

}  // namespace

void attention_forward(float* out, float* probs, const float* q, const float* k, const float* v,
                       const int32_t* doc_ids, const AttentionShape& shape) {
  check_shape(shape);
  const auto [B, T, H, Hkv, hd] = shape;
  const int64_t group = H / Hkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // One task per (batch row, query head): scores by one GEMM, masked softmax per row, then P @ V.
  parallel_tasks(B * H, [&](int64_t task) {
    const int64_t b = task / H, h = task % H, kvh = h / group;
    const float* q_bh = q + b * T * H * hd + h * hd;            // [T, hd] row stride H*hd
    const float* k_bh = k + b * T * Hkv * hd + kvh * hd;        // [T, hd] row stride Hkv*hd
    const float* v_bh = v + b * T * Hkv * hd + kvh * hd;        // [T, hd] row stride Hkv*hd
    float* out_bh = out + b * T * H * hd + h * hd;              // [T, hd] row stride H*hd
    float* p = probs + (b * H + h) * T * T;                     // [T, T]
    const int32_t* docs = doc_ids ? doc_ids + b * T : nullptr;  // [T]
    gemm_serial(false, true, T, T, hd, scale, q_bh, H * hd, k_bh, Hkv * hd, 0.0f, p, T);
    for (int64_t t = 0; t < T; ++t) causal_softmax_row(p + t * T, t, T, docs);
    gemm_serial(false, false, T, hd, T, 1.0f, p, T, v_bh, Hkv * hd, 0.0f, out_bh, H * hd);
  });
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* probs,
                        const float* q, const float* k, const float* v, const AttentionShape& shape) {
  check_shape(shape);
  const auto [B, T, H, Hkv, hd] = shape;
  const int64_t group = H / Hkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // One task per (batch row, kv head): the query heads of a group all write the same dk, dv, so they run
  // together on one thread, in order.
  parallel_tasks(B * Hkv, [&](int64_t task) {
    const int64_t b = task / Hkv, kvh = task % Hkv;
    const float* k_b = k + b * T * Hkv * hd + kvh * hd;  // [T, hd] row stride Hkv*hd
    const float* v_b = v + b * T * Hkv * hd + kvh * hd;  // [T, hd] row stride Hkv*hd
    float* dk_b = dk + b * T * Hkv * hd + kvh * hd;      // [T, hd] row stride Hkv*hd
    float* dv_b = dv + b * T * Hkv * hd + kvh * hd;      // [T, hd] row stride Hkv*hd
    std::vector<float> dscores(T * T);                   // [T, T]
    for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
      const float* q_bh = q + b * T * H * hd + h * hd;        // [T, hd] row stride H*hd
      const float* dout_bh = dout + b * T * H * hd + h * hd;  // [T, hd] row stride H*hd
      float* dq_bh = dq + b * T * H * hd + h * hd;            // [T, hd] row stride H*hd
      const float* p = probs + (b * H + h) * T * T;           // [T, T]
      // dv += P^T @ dout
      gemm_serial(true, false, T, hd, T, 1.0f, p, T, dout_bh, H * hd, 1.0f, dv_b, Hkv * hd);
      // dP = dout @ V^T, then the softmax backward (scaled): dS = scale * P * (dP - rowsum(P * dP)).
      float* ds = dscores.data();
      gemm_serial(false, true, T, T, hd, 1.0f, dout_bh, H * hd, v_b, Hkv * hd, 0.0f, ds, T);
      for (int64_t t = 0; t < T; ++t) {
        const float* p_row = p + t * T;
        float* ds_row = ds + t * T;
        float dot = 0.0f;
        for (int64_t s = 0; s <= t; ++s) dot += p_row[s] * ds_row[s];
        for (int64_t s = 0; s <= t; ++s) ds_row[s] = scale * p_row[s] * (ds_row[s] - dot);
        std::fill(ds_row + t + 1, ds_row + T, 0.0f);
      }
      // dq += dS @ K;  dk += dS^T @ Q
      gemm_serial(false, false, T, hd, T, 1.0f, ds, T, k_b, Hkv * hd, 1.0f, dq_bh, H * hd);
      gemm_serial(true, false, T, hd, T, 1.0f, ds, T, q_bh, H * hd, 1.0f, dk_b, Hkv * hd);
    }
  });
}

}  // namespace emo
