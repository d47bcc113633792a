#include "analysis/metrics.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>

#include "core/error.h"

namespace emo::analysis {
namespace {

void check_labelings(const std::vector<int32_t>& a, const std::vector<int32_t>& b, const char* op) {
  EMO_CHECK(a.size() == b.size(), op, "labelings of different lengths: ", a.size(), " and ", b.size());
  EMO_CHECK(!a.empty(), op, "no items");
  for (size_t i = 0; i < a.size(); ++i) EMO_CHECK(a[i] >= 0 && b[i] >= 0, op, "negative label at item ", i);
}

double entropy(const std::map<int32_t, int64_t>& counts, double n) {
  double h = 0;
  for (const auto& [label, count] : counts) {
    const double p = static_cast<double>(count) / n;
    h -= p * std::log(p);
  }
  return h;
}

}  // namespace

double normalized_mutual_information(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  check_labelings(a, b, "nmi");
  const double n = static_cast<double>(a.size());
  std::map<int32_t, int64_t> count_a, count_b;
  std::map<std::pair<int32_t, int32_t>, int64_t> joint;
  for (size_t i = 0; i < a.size(); ++i) {
    ++count_a[a[i]];
    ++count_b[b[i]];
    ++joint[{a[i], b[i]}];
  }
  const double h_a = entropy(count_a, n), h_b = entropy(count_b, n);
  if (count_a.size() == 1 && count_b.size() == 1) return 1.0;
  if (h_a == 0 || h_b == 0) return 0.0;
  double mutual = 0;
  for (const auto& [pair, count] : joint) {
    const double p = static_cast<double>(count) / n;
    mutual += p * std::log(p * n * n / (static_cast<double>(count_a[pair.first]) * count_b[pair.second]));
  }
  return std::clamp(mutual / (0.5 * (h_a + h_b)), 0.0, 1.0);
}

double cluster_purity(const std::vector<int32_t>& clusters, const std::vector<int32_t>& classes) {
  check_labelings(clusters, classes, "purity");
  std::map<int32_t, std::map<int32_t, int64_t>> per_cluster;
  for (size_t i = 0; i < clusters.size(); ++i) ++per_cluster[clusters[i]][classes[i]];
  int64_t majority = 0;
  for (const auto& [cluster, counts] : per_cluster) {
    int64_t most = 0;
    for (const auto& [label, count] : counts) most = std::max(most, count);
    majority += most;
  }
  return static_cast<double>(majority) / static_cast<double>(clusters.size());
}

double cosine_similarity(const std::vector<double>& a, const std::vector<double>& b) {
  EMO_CHECK(a.size() == b.size(), "cosine", "vectors of different lengths: ", a.size(), " and ", b.size());
  double dot = 0, norm_a = 0, norm_b = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    dot += a[i] * b[i];
    norm_a += a[i] * a[i];
    norm_b += b[i] * b[i];
  }
  if (norm_a == 0 || norm_b == 0) return 0.0;
  return dot / std::sqrt(norm_a * norm_b);
}

int64_t expert_coverage(const std::vector<double>& mass, double fraction) {
  EMO_CHECK(fraction > 0 && fraction <= 1, "coverage", "fraction must be in (0, 1], got ", fraction);
  std::vector<double> sorted = mass;
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  double total = 0;
  for (double m : sorted) {
    EMO_CHECK(m >= 0, "coverage", "negative mass ", m);
    total += m;
  }
  if (total == 0) return 0;
  double running = 0;
  int64_t count = 0;
  // A relative tolerance so that, for example, 9 equal experts of 10 reach exactly 90%.
  while (count < static_cast<int64_t>(sorted.size()) && running < fraction * total * (1 - 1e-12))
    running += sorted[count++];
  return count;
}

}  // namespace emo::analysis
