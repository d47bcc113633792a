#include "kernels/attention.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/gemm.h"
#include "kernels/vec_math.h"

namespace emo {
namespace {

void check_shape(const AttentionShape& s) {
  EMO_CHECK(s.B >= 0 && s.T >= 0 && s.H > 0 && s.Hkv > 0 && s.hd > 0 && s.H % s.Hkv == 0, "attention",
            "bad shape B=", s.B, " T=", s.T, " H=", s.H, " Hkv=", s.Hkv, " hd=", s.hd);
}

// Query rows are processed in blocks of this many: a block's keys stop at its last row, so the causal
// products skip most of the upper triangle (about (1 + 1/blocks)/2 of the full T x T work remains).
constexpr int64_t kRowBlock = 64;

// Turns the scaled scores of row t (in place, [T]; only keys [begin, t] computed, begin <= the start of t's
// document) into probabilities over the keys s <= t of t's document; every other entry becomes 0.
void causal_softmax_row(float* row, int64_t begin, int64_t t, int64_t T, const int32_t* docs) {
  const int64_t n = t + 1 - begin;
  float* keys = row + begin;  // [n]
  if (docs) {
    for (int64_t s = begin; s < t; ++s)
      if (docs[s] != docs[t]) row[s] = -std::numeric_limits<float>::infinity();  // exp gives exactly 0
  }
  float max = vec::max_of(keys, n);  // finite: s = t is always allowed
  float sum = vec::exp_shifted_sum(keys, keys, max, n);
  vec::scale_inplace(keys, 1.0f / sum, n);
  std::fill(row, row + begin, 0.0f);
  std::fill(row + t + 1, row + T, 0.0f);
}

// First key any query of [t0, t1) may see: the start of t0's document (positions hold nondecreasing
// document indices), or 0 without a document mask. Keys before it get probability exactly 0.
int64_t first_key(const int32_t* docs, int64_t t0) {
  if (!docs) return 0;
  int64_t s = t0;
  while (s > 0 && docs[s - 1] == docs[t0]) --s;
  return s;
}

// First key with a nonzero probability in rows [t0, t1) of p ([T, T]); keys before it contribute exactly
// nothing to the backward (every dS and P^T dout term there is a product with P = 0).
int64_t first_used_key(const float* p, int64_t t0, int64_t t1, int64_t T) {
  int64_t first = t0;
  for (int64_t t = t0; t < t1; ++t) {
    const float* row = p + t * T;
    int64_t s = 0;
    while (s < first && row[s] == 0.0f) ++s;
    first = std::min(first, s);
    if (first == 0) break;
  }
  return first;
}

// Softmax backward of row t in place, scaled: ds[s] = scale * p[s] * (ds[s] - sum_s' p[s'] ds[s']), s <= t;
// zero above the diagonal.
void softmax_backward_row(float* ds, const float* p, int64_t t, int64_t T, float scale) {
  const int64_t n = t + 1;
  __m256 acc = _mm256_setzero_ps();
  int64_t s = 0;
  for (; s + 8 <= n; s += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(p + s), _mm256_loadu_ps(ds + s), acc);
  float dot = vec::hsum8(acc);
  for (; s < n; ++s) dot += p[s] * ds[s];
  const __m256 dot8 = _mm256_set1_ps(dot), scale8 = _mm256_set1_ps(scale);
  for (s = 0; s + 8 <= n; s += 8) {
    __m256 diff = _mm256_sub_ps(_mm256_loadu_ps(ds + s), dot8);
    _mm256_storeu_ps(ds + s, _mm256_mul_ps(_mm256_mul_ps(scale8, _mm256_loadu_ps(p + s)), diff));
  }
  for (; s < n; ++s) ds[s] = scale * p[s] * (ds[s] - dot);
  std::fill(ds + n, ds + T, 0.0f);
}

}  // namespace

void attention_forward(float* out, float* probs, const float* q, const float* k, const float* v,
                       const int32_t* doc_ids, const AttentionShape& shape) {
  check_shape(shape);
  // Plain copies, not a structured binding: the lambda below captures them (clang 14 cannot capture
  // bindings).
  const int64_t B = shape.B, T = shape.T, H = shape.H, Hkv = shape.Hkv, hd = shape.hd;
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
    for (int64_t t0 = 0; t0 < T; t0 += kRowBlock) {
      // Queries [t0,t1) see keys [s0,t1): causal, and with a document mask nothing before t0's document.
      const int64_t t1 = std::min(T, t0 + kRowBlock), rows = t1 - t0, s0 = first_key(docs, t0);
      float* p_blk = p + t0 * T;  // [rows, T]
      gemm_serial(false, true, rows, t1 - s0, hd, scale, q_bh + t0 * H * hd, H * hd, k_bh + s0 * Hkv * hd,
                  Hkv * hd, 0.0f, p_blk + s0, T);
      for (int64_t t = t0; t < t1; ++t) causal_softmax_row(p + t * T, s0, t, T, docs);
      gemm_serial(false, false, rows, hd, t1 - s0, 1.0f, p_blk + s0, T, v_bh + s0 * Hkv * hd, Hkv * hd, 0.0f,
                  out_bh + t0 * H * hd, H * hd);
    }
  });
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* probs,
                        const float* q, const float* k, const float* v, const AttentionShape& shape) {
  check_shape(shape);
  // Plain copies, not a structured binding: the lambda below captures them (clang 14 cannot capture
  // bindings).
  const int64_t B = shape.B, T = shape.T, H = shape.H, Hkv = shape.Hkv, hd = shape.hd;
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
    std::vector<float> dscores(kRowBlock * T);           // [kRowBlock, T]
    for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
      const float* q_bh = q + b * T * H * hd + h * hd;        // [T, hd] row stride H*hd
      const float* dout_bh = dout + b * T * H * hd + h * hd;  // [T, hd] row stride H*hd
      float* dq_bh = dq + b * T * H * hd + h * hd;            // [T, hd] row stride H*hd
      const float* p = probs + (b * H + h) * T * T;           // [T, T]
      for (int64_t t0 = 0; t0 < T; t0 += kRowBlock) {
        // Queries [t0,t1), keys [s0,t1): those before s0 have P = 0 in every row of the block.
        const int64_t t1 = std::min(T, t0 + kRowBlock), rows = t1 - t0, s0 = first_used_key(p, t0, t1, T);
        const int64_t keys = t1 - s0;
        const float* p_blk = p + t0 * T + s0;           // [rows, keys] row stride T
        const float* dout_blk = dout_bh + t0 * H * hd;  // [rows, hd] row stride H*hd
        float* ds = dscores.data();                     // [rows, T], columns [s0, t1) used
        // dv[s0:t1] += P_blk^T @ dout_blk
        gemm_serial(true, false, keys, hd, rows, 1.0f, p_blk, T, dout_blk, H * hd, 1.0f, dv_b + s0 * Hkv * hd,
                    Hkv * hd);
        // dP = dout_blk @ V[s0:t1]^T, then the softmax backward (scaled): dS = scale * P * (dP - rowsum(P *
        // dP)).
        gemm_serial(false, true, rows, keys, hd, 1.0f, dout_blk, H * hd, v_b + s0 * Hkv * hd, Hkv * hd, 0.0f,
                    ds + s0, T);
        for (int64_t t = t0; t < t1; ++t)
          softmax_backward_row(ds + (t - t0) * T + s0, p + t * T + s0, t - s0, T - s0, scale);
        // dq_blk += dS @ K[s0:t1];  dk[s0:t1] += dS^T @ Q_blk
        gemm_serial(false, false, rows, hd, keys, 1.0f, ds + s0, T, k_b + s0 * Hkv * hd, Hkv * hd, 1.0f,
                    dq_bh + t0 * H * hd, H * hd);
        gemm_serial(true, false, keys, hd, rows, 1.0f, ds + s0, T, q_bh + t0 * H * hd, H * hd, 1.0f,
                    dk_b + s0 * Hkv * hd, Hkv * hd);
      }
    }
  });
}

}  // namespace emo
