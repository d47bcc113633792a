#include "model/routing.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/softmax.h"

namespace emo {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

class StandardPolicy : public RoutingPolicy {
 public:
  void restrict(LayerRouting&, const RoutingContext&) const override {}
};

// EMO document pool (emo.md §3 steps 2-4).
class EmoPoolPolicy : public RoutingPolicy {
 public:
  void restrict(LayerRouting& r, const RoutingContext& context) const override {
    const Batch& batch = *context.batch;
    EMO_CHECK(static_cast<int64_t>(batch.doc_ids.size()) == batch.B * batch.T, "routing",
              "EMO pool routing needs doc_ids for every position (", batch.B * batch.T, "), got ",
              batch.doc_ids.size());
    r.allowed.assign(r.N * r.routed, 0);
    r.pools.clear();
    for (int64_t b = 0; b < batch.B; ++b) {
      auto segments = row_segments(&batch.doc_ids[b * batch.T], batch.T);
      for (size_t s = 0; s < segments.size(); ++s) {
        PoolSegment pool;
        pool.row = static_cast<int32_t>(b);
        pool.begin = segments[s].first;
        pool.end = segments[s].second;
        pool.pool_size = static_cast<int32_t>(pool_size(context, b, static_cast<int64_t>(s), r.routed));
        pool.members = top_by_mass(r, b * batch.T + pool.begin, b * batch.T + pool.end, pool.pool_size);
        for (int64_t t = b * batch.T + pool.begin; t < b * batch.T + pool.end; ++t)
          for (int32_t e : pool.members) r.allowed[t * r.routed + e] = 1;
        r.pools.push_back(std::move(pool));
      }
    }
  }

 private:
  // d: explicit pool_sizes[layer][row][segment], else pool_eval in evaluation, else drawn uniformly from
  // [pool_min, pool_max] (defaults K and E). Clamped to [1, Er]: with E = 128, d = 128 means every routed
  // expert.
  static int64_t pool_size(const RoutingContext& context, int64_t row, int64_t segment, int64_t routed) {
    const RoutingOptions& options = *context.options;
    int64_t d;
    if (!options.pool_sizes.empty()) {
      EMO_CHECK(context.layer < static_cast<int64_t>(options.pool_sizes.size()) &&
                    row < static_cast<int64_t>(options.pool_sizes[context.layer].size()) &&
                    segment < static_cast<int64_t>(options.pool_sizes[context.layer][row].size()),
                "routing", "pool_sizes has no entry for layer ", context.layer, " row ", row, " segment ",
                segment);
      d = options.pool_sizes[context.layer][row][segment];
    } else if (!options.training) {
      d = options.pool_eval;
    } else {
      EMO_CHECK(context.rng != nullptr, "routing",
                "EMO pool routing in training needs an Rng to draw pool sizes");
      int64_t lo = options.pool_min > 0 ? options.pool_min : context.experts_per_token;
      int64_t hi = options.pool_max > 0 ? options.pool_max : context.experts;
      EMO_CHECK(lo <= hi, "routing", "pool_min ", lo, " exceeds pool_max ", hi);
      d = context.rng->uniform_int(lo, hi);
    }
    return std::clamp<int64_t>(d, 1, routed);
  }

  // The d routed experts with the largest summed probability over tokens [begin, end) (ties: lower index).
  static std::vector<int32_t> top_by_mass(const LayerRouting& r, int64_t begin, int64_t end, int64_t d) {
    std::vector<double> mass(r.routed, 0.0);
    for (int64_t t = begin; t < end; ++t) {
      const float* p = r.probs.data() + t * r.routed;  // [Er]
      for (int64_t e = 0; e < r.routed; ++e) mass[e] += p[e];
    }
    std::vector<int32_t> order(r.routed);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return mass[a] > mass[b]; });
    order.resize(d);
    return order;
  }
};

// Subset (pruned-model) routing: only the kept routed experts of the layer.
class SubsetPolicy : public RoutingPolicy {
 public:
  void restrict(LayerRouting& r, const RoutingContext& context) const override {
    const auto& subset = context.options->subset;
    EMO_CHECK(context.layer < static_cast<int64_t>(subset.size()), "routing", "subset routing has ",
              subset.size(), " kept lists, none for layer ", context.layer);
    std::vector<uint8_t> kept(r.routed, 0);
    for (int32_t e : subset[context.layer]) {
      EMO_CHECK(e >= 0 && e < r.routed, "routing", "kept expert ", e, " of layer ", context.layer,
                " is not a routed expert (0..", r.routed - 1, ")");
      kept[e] = 1;
    }
    r.allowed.resize(r.N * r.routed);
    for (int64_t n = 0; n < r.N; ++n) std::memcpy(&r.allowed[n * r.routed], kept.data(), r.routed);
  }
};

}  // namespace

std::unique_ptr<RoutingPolicy> make_routing_policy(const RoutingOptions& options) {
  switch (options.mode) {
    case RoutingMode::kStandard:
      return std::make_unique<StandardPolicy>();
    case RoutingMode::kEmoPool:
      return std::make_unique<EmoPoolPolicy>();
    case RoutingMode::kSubset:
      return std::make_unique<SubsetPolicy>();
  }
  fail("routing", "unknown routing mode");
}

std::vector<std::pair<int32_t, int32_t>> row_segments(const int32_t* doc_ids, int64_t T) {
  std::vector<std::pair<int32_t, int32_t>> segments;
  int32_t begin = 0;
  for (int32_t t = 1; t <= T; ++t) {
    if (t == T || doc_ids[t] != doc_ids[t - 1]) {
      segments.emplace_back(begin, t);
      begin = t;
    }
  }
  return segments;
}

void route_forward(LayerRouting& r, const float* logits, int64_t N, int64_t routed, int64_t slots,
                   bool norm_topk_prob, const RoutingPolicy& policy, const RoutingContext& context) {
  EMO_CHECK(slots >= 1 && routed >= 1, "routing", "need at least one routed expert and slot, got ", routed,
            " experts and ", slots, " slots");
  r.N = N, r.routed = routed, r.slots = slots, r.norm_topk_prob = norm_topk_prob;
  r.allowed.clear();
  r.pools.clear();
  r.probs.resize({N, routed});
  softmax_forward(r.probs.data(), nullptr, logits, N, routed);
  policy.restrict(r, context);

  // scores = softmax(masked logits); the disallowed logits are -inf.
  Tensor masked({N, routed});  // [N, Er]
  std::memcpy(masked.data(), logits, sizeof(float) * N * routed);
  if (!r.allowed.empty())
    for (int64_t i = 0; i < N * routed; ++i)
      if (!r.allowed[i]) masked[i] = kNegInf;
  r.scores.resize({N, routed});
  r.lse.resize({N});
  softmax_forward(r.scores.data(), r.lse.data(), masked.data(), N, routed);

  // Top Kr among the allowed experts: disallowed entries rank below every allowed score (>= 0); slots past
  // the number of allowed experts stay unused.
  Tensor ranked({N, routed});  // [N, Er]
  for (int64_t i = 0; i < N * routed; ++i)
    ranked[i] = r.is_allowed(i / routed, i % routed) ? r.scores[i] : -1.0f;
  r.ids.assign(N * slots, -1);
  r.weights.resize({N, slots});
  std::vector<int32_t> top(N * slots);  // [N, Kr]
  topk(top.data(), nullptr, ranked.data(), N, routed, slots);
  for (int64_t n = 0; n < N; ++n) {
    float sum = 0.0f;
    for (int64_t k = 0; k < slots; ++k) {
      int32_t e = top[n * slots + k];
      if (!r.is_allowed(n, e)) continue;
      r.ids[n * slots + k] = e;
      r.weights[n * slots + k] = r.scores[n * routed + e];
      sum += r.weights[n * slots + k];
    }
    if (norm_topk_prob && sum > 0.0f)
      for (int64_t k = 0; k < slots; ++k) r.weights[n * slots + k] /= sum;
  }
}

void route_backward(float* dlogits, const LayerRouting& r, const float* dweights, const float* dscores,
                    const float* dlse) {
  const int64_t N = r.N, Er = r.routed, Kr = r.slots;
  Tensor grad({N, Er});  // [N, Er] d loss / d scores
  if (dscores) std::memcpy(grad.data(), dscores, sizeof(float) * N * Er);
  for (int64_t n = 0; n < N; ++n) {
    const int32_t* ids = &r.ids[n * Kr];  // [Kr]
    const float* dw = dweights + n * Kr;  // [Kr]
    float* g = grad.data() + n * Er;      // [Er]
    if (!r.norm_topk_prob) {
      for (int64_t k = 0; k < Kr; ++k)
        if (ids[k] >= 0) g[ids[k]] += dw[k];
      continue;
    }
    // w_k = s_k / S with S = sum of the chosen scores: ds_j = (dw_j - sum_k dw_k w_k) / S.
    float sum = 0.0f, dot = 0.0f;
    for (int64_t k = 0; k < Kr; ++k) {
      if (ids[k] < 0) continue;
      sum += r.scores[n * Er + ids[k]];
      dot += dw[k] * r.weights[n * Kr + k];
    }
    if (sum <= 0.0f) continue;
    for (int64_t k = 0; k < Kr; ++k)
      if (ids[k] >= 0) g[ids[k]] += (dw[k] - dot) / sum;
  }
  softmax_backward(dlogits, grad.data(), r.scores.data(), N, Er);
  // d lse / d logits = scores
  if (dlse)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t e = 0; e < Er; ++e) dlogits[n * Er + e] += dlse[n] * r.scores[n * Er + e];
}

}  // namespace emo
