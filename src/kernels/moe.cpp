#include "kernels/moe.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <optional>

#include "core/error.h"
#include "core/profile.h"
#include "core/thread_pool.h"
#include "kernels/gemm.h"
#include "kernels/swiglu.h"

namespace emo {
namespace {

constexpr const char* kDispatchLabel = "experts: sort, gather, scatter";  // core/profile.h

// Counting sort of the assignments by expert; within an expert, rows keep (token, slot) order.
void sort_assignments(MoeCache& cache, const int32_t* ids) {
  const int64_t NK = cache.N * cache.K, E = cache.E;
  std::vector<int64_t> counts(E, 0);
  for (int64_t i = 0; i < NK; ++i) {
    if (ids[i] < -1 || ids[i] >= E)
      fail("moe", cat("expert id ", ids[i], " at token ", i / cache.K, " slot ", i % cache.K,
                      " is outside [-1, ", E, ")"));
    if (ids[i] >= 0) ++counts[ids[i]];
  }
  cache.expert_offsets.assign(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) cache.expert_offsets[e + 1] = cache.expert_offsets[e] + counts[e];
  cache.rows.resize(cache.expert_offsets[E]);
  cache.position.assign(NK, -1);
  std::vector<int64_t> next(cache.expert_offsets.begin(), cache.expert_offsets.end() - 1);
  for (int64_t i = 0; i < NK; ++i) {
    if (ids[i] < 0) continue;
    int64_t pos = next[ids[i]]++;
    cache.rows[pos] = static_cast<int32_t>(i);
    cache.position[i] = static_cast<int32_t>(pos);
  }
}

// Experts ordered by decreasing token count, so the dynamic task queue starts with the longest jobs.
std::vector<int64_t> experts_by_load(const MoeCache& cache) {
  std::vector<int64_t> order(cache.E);
  std::iota(order.begin(), order.end(), 0);
  auto count = [&](int64_t e) { return cache.expert_offsets[e + 1] - cache.expert_offsets[e]; };
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return count(a) > count(b); });
  while (!order.empty() && count(order.back()) == 0) order.pop_back();
  return order;
}

}  // namespace

void moe_forward(float* out, MoeCache& cache, const float* x, const int32_t* ids, const float* weights,
                 int64_t N, int64_t K, int64_t C, int64_t F, const std::vector<ExpertWeights>& experts) {
  const int64_t E = static_cast<int64_t>(experts.size());
  cache.N = N, cache.K = K, cache.E = E, cache.C = C, cache.F = F;
  std::optional<profile::Scope> dispatch(std::in_place, kDispatchLabel);
  sort_assignments(cache, ids);
  const int64_t A = static_cast<int64_t>(cache.rows.size());
  cache.x_sorted.resize(A * C);
  cache.gate_act.resize(A * F);
  cache.up_act.resize(A * F);
  cache.hidden.resize(A * F);
  cache.expert_out.resize(A * C);

  // Gather: x_sorted[a] = x[token of a].
  parallel_for(A, 64, [&](int64_t begin, int64_t end) {
    for (int64_t a = begin; a < end; ++a)
      std::memcpy(&cache.x_sorted[a * C], x + (cache.rows[a] / K) * C, sizeof(float) * C);
  });
  dispatch.reset();

  std::vector<int64_t> order = experts_by_load(cache);
  parallel_tasks(static_cast<int64_t>(order.size()), [&](int64_t task) {
    const int64_t e = order[task], start = cache.expert_offsets[e];
    const int64_t m = cache.expert_offsets[e + 1] - start;
    const ExpertWeights& w = experts[e];
    const float* xs = &cache.x_sorted[start * C];  // [m, C]
    float* gate = &cache.gate_act[start * F];      // [m, F]
    float* up = &cache.up_act[start * F];          // [m, F]
    float* hidden = &cache.hidden[start * F];      // [m, F]
    float* eo = &cache.expert_out[start * C];      // [m, C]
    gemm_serial(false, true, m, F, C, 1.0f, xs, C, w.gate, C, 0.0f, gate, F);
    gemm_serial(false, true, m, F, C, 1.0f, xs, C, w.up, C, 0.0f, up, F);
    swiglu_forward(hidden, gate, up, m * F);  // serial: nested inside a task
    gemm_serial(false, true, m, C, F, 1.0f, hidden, F, w.down, F, 0.0f, eo, C);
  });

  // Scatter: out[n] = sum over used slots k (in slot order) of weights[n,k] * expert_out[position(n,k)].
  EMO_PROFILE_SCOPE(kDispatchLabel);
  parallel_for(N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      float* y = out + n * C;  // [C]
      std::fill(y, y + C, 0.0f);
      for (int64_t k = 0; k < K; ++k) {
        int32_t pos = cache.position[n * K + k];
        if (pos < 0) continue;
        const float* eo = &cache.expert_out[pos * C];  // [C]
        float wk = weights[n * K + k];
        for (int64_t c = 0; c < C; ++c) y[c] += wk * eo[c];
      }
    }
  });
}

void moe_backward(float* dx, float* dweights, const std::vector<ExpertGrads>& grads, const float* dout,
                  const int32_t* ids, const float* weights, const MoeCache& cache,
                  const std::vector<ExpertWeights>& experts) {
  MoeScratch scratch;
  moe_backward(dx, dweights, grads, dout, ids, weights, cache, experts, scratch);
}

void moe_backward(float* dx, float* dweights, const std::vector<ExpertGrads>& grads, const float* dout,
                  const int32_t* ids, const float* weights, const MoeCache& cache,
                  const std::vector<ExpertWeights>& experts, MoeScratch& scratch) {
  const int64_t N = cache.N, K = cache.K, C = cache.C, F = cache.F;
  const int64_t A = static_cast<int64_t>(cache.rows.size());
  EMO_CHECK(static_cast<int64_t>(experts.size()) == cache.E && static_cast<int64_t>(grads.size()) == cache.E,
            "moe", "backward got ", experts.size(), " experts and ", grads.size(), " gradients for ",
            cache.E);
  (void)ids;  // the cache's sorted order already holds the assignment

  // dweights[n,k] += dout[n] . expert_out[k];  d_eo[a] = weights[n,k] * dout[n]   ([A, C])
  std::optional<profile::Scope> dispatch(std::in_place, kDispatchLabel);
  std::vector<float>& d_eo = scratch.d_eo;
  d_eo.resize(A * C);
  parallel_for(A, 64, [&](int64_t begin, int64_t end) {
    for (int64_t a = begin; a < end; ++a) {
      const int64_t slot = cache.rows[a], n = slot / K;
      const float* dy = dout + n * C;              // [C]
      const float* eo = &cache.expert_out[a * C];  // [C]
      float wk = weights[slot];
      float dot = 0.0f;
      for (int64_t c = 0; c < C; ++c) {
        d_eo[a * C + c] = wk * dy[c];
        dot += dy[c] * eo[c];
      }
      if (dweights) dweights[slot] += dot;
    }
  });

  dispatch.reset();
  std::vector<float>& d_gate = scratch.d_gate;  // accumulated into by swiglu_backward: zeroed first
  std::vector<float>& d_up = scratch.d_up;
  d_gate.assign(A * F, 0.0f);
  d_up.assign(A * F, 0.0f);
  scratch.d_hidden.resize(A * F);
  scratch.dx_sorted.resize(A * C);
  float* const d_hidden_all = scratch.d_hidden.data();
  float* const dx_sorted = scratch.dx_sorted.data();
  std::vector<int64_t> order = experts_by_load(cache);
  parallel_tasks(static_cast<int64_t>(order.size()), [&](int64_t task) {
    const int64_t e = order[task], start = cache.expert_offsets[e];
    const int64_t m = cache.expert_offsets[e + 1] - start;
    const ExpertWeights& w = experts[e];
    const ExpertGrads& g = grads[e];
    const float* xs = &cache.x_sorted[start * C];    // [m, C]
    const float* gate = &cache.gate_act[start * F];  // [m, F]
    const float* up = &cache.up_act[start * F];      // [m, F]
    const float* hidden = &cache.hidden[start * F];  // [m, F]
    const float* deo = &d_eo[start * C];             // [m, C]
    float* dgate = &d_gate[start * F];               // [m, F]
    float* dup = &d_up[start * F];                   // [m, F]
    float* dxs = dx_sorted + start * C;              // [m, C]
    float* dhidden = d_hidden_all + start * F;       // [m, F]
    // d_hidden[m,F] = d_eo[m,C] @ down[C,F]
    gemm_serial(false, false, m, F, C, 1.0f, deo, C, w.down, F, 0.0f, dhidden, F);
    if (g.down) gemm_serial(true, false, C, F, m, 1.0f, deo, C, hidden, F, 1.0f, g.down, F);
    swiglu_backward(dgate, dup, dhidden, gate, up, m * F);
    if (g.gate) gemm_serial(true, false, F, C, m, 1.0f, dgate, F, xs, C, 1.0f, g.gate, C);
    if (g.up) gemm_serial(true, false, F, C, m, 1.0f, dup, F, xs, C, 1.0f, g.up, C);
    // dx_sorted[m,C] = d_gate @ gate_w[F,C] + d_up @ up_w[F,C]
    gemm_serial(false, false, m, C, F, 1.0f, dgate, F, w.gate, C, 0.0f, dxs, C);
    gemm_serial(false, false, m, C, F, 1.0f, dup, F, w.up, C, 1.0f, dxs, C);
  });

  // Scatter-add back to tokens, slots in order.
  EMO_PROFILE_SCOPE(kDispatchLabel);
  parallel_for(N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      float* d = dx + n * C;  // [C]
      for (int64_t k = 0; k < K; ++k) {
        int32_t pos = cache.position[n * K + k];
        if (pos < 0) continue;
        const float* src = dx_sorted + pos * C;  // [C]
        for (int64_t c = 0; c < C; ++c) d[c] += src[c];
      }
    }
  });
}

}  // namespace emo
