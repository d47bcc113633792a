#include "train/usage.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "model/forward_state.h"

namespace emo {

namespace {

// Maximal runs of equal doc_ids in a row, as [begin, end).
std::vector<std::pair<int64_t, int64_t>> segments_of(const int32_t* doc_ids, int64_t T) {
  std::vector<std::pair<int64_t, int64_t>> out;
  int64_t begin = 0;
  for (int64_t t = 1; t <= T; ++t)
    if (t == T || doc_ids[t] != doc_ids[begin]) {
      out.emplace_back(begin, t);
      begin = t;
    }
  return out;
}

}  // namespace

std::string CollapseWatch::add(int64_t step, const std::vector<std::vector<double>>& load) {
  if (load.empty()) return "";  // a dense model
  if (used_.empty()) {
    for (const auto& layer : load) used_.emplace_back(layer.size(), false);
    reported_.assign(load.size(), false);
  }
  for (size_t l = 0; l < load.size() && l < used_.size(); ++l)
    for (size_t e = 0; e < load[l].size() && e < used_[l].size(); ++e)
      if (load[l][e] > 0) used_[l][e] = true;
  if (++steps_ < window_) return "";
  std::string collapsed;
  for (size_t l = 0; l < used_.size(); ++l) {
    const auto count = std::count(used_[l].begin(), used_[l].end(), true);
    const auto experts = static_cast<int64_t>(used_[l].size());
    const bool collapse = 2 * count < experts;
    if (collapse && !reported_[l])
      collapsed += cat(collapsed.empty() ? "" : ", ", "layer ", l, " used ", count, " of ", experts);
    reported_[l] = collapse;
    std::fill(used_[l].begin(), used_[l].end(), false);
  }
  steps_ = 0;
  if (collapsed.empty()) return "";
  return cat("router collapse over steps ", step - window_ + 1, "-", step, ": ", collapsed,
             " routed experts (fewer than half received a token); raise loss.lb (the load-balancing "
             "weight) or lower optimizer.lr");
}

void add_counts(std::vector<std::vector<double>>& a, const std::vector<std::vector<double>>& b) {
  if (a.empty()) {
    a = b;
    return;
  }
  EMO_CHECK(a.size() == b.size(), "train", "expert counts of ", b.size(), " layers added to ", a.size());
  for (size_t l = 0; l < a.size(); ++l)
    for (size_t e = 0; e < a[l].size(); ++e) a[l][e] += b[l][e];
}

ExpertUsage expert_usage(const std::vector<const ForwardState*>& states,
                         const std::vector<std::vector<double>>& counts) {
  ExpertUsage usage;
  if (counts.empty()) return usage;
  const double layers = static_cast<double>(counts.size());
  for (const auto& layer : counts) {
    double total = 0, peak = 0, used = 0;
    for (double c : layer) {
      total += c;
      peak = std::max(peak, c);
      used += c > 0 ? 1 : 0;
    }
    usage.distinct_experts += used / layers;
    if (total > 0) usage.load_max_over_mean += peak / (total / static_cast<double>(layer.size())) / layers;
    std::vector<double>& share = usage.load.emplace_back(layer.size(), 0.0);
    for (size_t e = 0; e < layer.size() && total > 0; ++e) share[e] = layer[e] / total;
  }
  // Entropy of each document's expert histogram, per layer; mean over (document, layer).
  double entropy_sum = 0, entropy_count = 0;
  std::vector<double> hist;
  for (const ForwardState* s : states) {
    const Batch& b = s->batch;
    for (size_t l = 0; l < s->layers.size(); ++l) {
      const LayerRouting& r = s->routing(static_cast<int64_t>(l));
      if (r.ids.empty()) continue;
      for (int64_t row = 0; row < b.B; ++row)
        for (auto [begin, end] : segments_of(b.doc_ids.data() + row * b.T, b.T)) {
          hist.assign(static_cast<size_t>(r.routed), 0.0);
          double n = 0;
          for (int64_t t = begin; t < end; ++t)
            for (int64_t k = 0; k < r.slots; ++k) {
              int32_t e = r.ids[(row * b.T + t) * r.slots + k];
              if (e >= 0) hist[e] += 1, n += 1;
            }
          if (n == 0) continue;
          double h = 0;
          for (double c : hist)
            if (c > 0) h -= c / n * std::log(c / n);
          entropy_sum += h;
          entropy_count += 1;
        }
    }
  }
  if (entropy_count > 0) usage.pool_entropy = entropy_sum / entropy_count;
  usage.documents = entropy_count;
  return usage;
}

}  // namespace emo
