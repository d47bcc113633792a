#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "kernels/vec_math.h"

namespace emo {

Sampler::Sampler(const SamplingOptions& options) : options_(options), rng_(options.seed) {
  EMO_CHECK(options.temperature >= 0.0, "sample", "temperature ", options.temperature, " is negative");
  EMO_CHECK(options.top_k >= 0, "sample", "top-k ", options.top_k, " is negative");
  EMO_CHECK(options.top_p > 0.0 && options.top_p <= 1.0, "sample", "top-p ", options.top_p,
            " is outside (0, 1]");
  EMO_CHECK(options.repetition_penalty > 0.0, "sample", "repetition penalty ", options.repetition_penalty,
            " is not positive");
}

void apply_repetition_penalty(float* logits, int64_t V, const std::vector<int32_t>& seen, double penalty) {
  if (penalty == 1.0) return;
  std::vector<bool> done(static_cast<size_t>(V), false);
  const float p = static_cast<float>(penalty);
  for (int32_t id : seen) {
    if (id < 0 || id >= V || done[id]) continue;
    done[id] = true;
    logits[id] = logits[id] > 0 ? logits[id] / p : logits[id] * p;
  }
}

std::vector<std::pair<int32_t, double>> Sampler::distribution(const float* logits, int64_t V) const {
  std::vector<int32_t> ids(static_cast<size_t>(V));
  std::iota(ids.begin(), ids.end(), 0);
  auto before = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  const int64_t keep = options_.top_k > 0 ? std::min(options_.top_k, V) : V;
  std::partial_sort(ids.begin(), ids.begin() + keep, ids.end(), before);
  ids.resize(static_cast<size_t>(keep));
  if (options_.temperature == 0.0) return {{ids.front(), 1.0}};

  std::vector<std::pair<int32_t, double>> out;
  const double max = logits[ids.front()];
  double total = 0.0;
  for (int32_t id : ids) {
    const double p = std::exp((logits[id] - max) / options_.temperature);
    out.emplace_back(id, p);
    total += p;
  }
  // Nucleus: the shortest prefix whose probability reaches top_p (at least one token).
  double cumulative = 0.0;
  size_t cut = out.size();
  for (size_t i = 0; i < out.size(); ++i) {
    cumulative += out[i].second / total;
    if (cumulative >= options_.top_p) {
      cut = i + 1;
      break;
    }
  }
  out.resize(cut);
  double kept = 0.0;
  for (const auto& [id, p] : out) kept += p;
  for (auto& entry : out) entry.second /= kept;
  return out;
}

int32_t Sampler::next(const float* logits, int64_t V) {
  if (options_.temperature == 0.0) {
    // The first id holding the maximum (ties to the lower id); two vectorised passes beat one branchy one.
    const float* best = std::find(logits, logits + V, vec::max_of(logits, V));
    return best == logits + V ? 0 : static_cast<int32_t>(best - logits);  // not found: NaN logits
  }
  const auto candidates = distribution(logits, V);
  double u = rng_.uniform();
  for (const auto& [id, p] : candidates) {
    if (u < p) return id;
    u -= p;
  }
  return candidates.back().first;  // rounding left u just above the total
}

}  // namespace emo
