#include "analysis/analysis.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "analysis/metrics.h"
#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"

namespace emo::analysis {
namespace {

std::vector<double> row_of(const Tensor& m, int64_t row) {
  const int64_t cols = m.dim(1);
  return std::vector<double>(m.data() + row * cols, m.data() + (row + 1) * cols);
}

// Mean token vector of each document: [D, F].
Tensor document_means(const RoutingTrace& trace, const TraceSample& sample) {
  const int64_t D = static_cast<int64_t>(sample.documents.size()), F = trace.vectors.dim(1);
  Tensor means({D, F});
  for (int64_t d = 0; d < D; ++d) {
    const TracedDocument& doc = sample.documents[d];
    float* out = means.data() + d * F;
    for (int64_t t = doc.first_token; t < doc.first_token + doc.length; ++t)
      for (int64_t j = 0; j < F; ++j) out[j] += trace.vectors[t * F + j];
    for (int64_t j = 0; j < F; ++j) out[j] /= static_cast<float>(doc.length);
  }
  return means;
}

// The first two principal components of the rows (zeros when there are fewer than two rows).
Tensor map_2d(const Tensor& x) {
  const int64_t n = x.dim(0);
  Tensor map({n, 2});
  if (n < 2) return map;
  const Pca pca = fit_pca(x, 1.0, 2, 2);
  const Tensor projected = pca_project(pca, x, 2);  // [n, <=2]
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < projected.dim(1); ++c) map[i * 2 + c] = projected[i * projected.dim(1) + c];
  return map;
}

std::vector<int32_t> majority_cluster(const std::vector<int32_t>& labels, const TraceSample& sample,
                                      int64_t k) {
  std::vector<int32_t> out;
  for (const TracedDocument& doc : sample.documents) {
    std::vector<int64_t> counts(k, 0);
    for (int64_t t = doc.first_token; t < doc.first_token + doc.length; ++t) ++counts[labels[t]];
    out.push_back(static_cast<int32_t>(std::max_element(counts.begin(), counts.end()) - counts.begin()));
  }
  return out;
}

// Up to `count` members, a seeded random choice preferring members of distinct documents.
std::vector<int64_t> pick_examples(std::vector<int64_t> members, const TraceSample& sample, int64_t count,
                                   Rng& rng) {
  for (int64_t i = static_cast<int64_t>(members.size()) - 1; i > 0; --i)
    std::swap(members[i], members[rng.uniform_int(0, i)]);
  std::vector<int64_t> picked, rest;
  std::vector<bool> document_used(sample.documents.size(), false);
  for (int64_t m : members) {
    if (static_cast<int64_t>(picked.size()) >= count) break;
    if (document_used[sample.document[m]]) {
      rest.push_back(m);
      continue;
    }
    document_used[sample.document[m]] = true;
    picked.push_back(m);
  }
  for (size_t i = 0; i < rest.size() && static_cast<int64_t>(picked.size()) < count; ++i)
    picked.push_back(rest[i]);
  std::sort(picked.begin(), picked.end());
  return picked;
}

std::vector<ClusterSummary> summarize_clusters(const std::vector<int32_t>& labels, int64_t k,
                                               const TraceSample& sample, int64_t num_domains,
                                               const AnalysisOptions& options) {
  std::vector<ClusterSummary> clusters(k);
  std::vector<std::vector<int64_t>> members(k);
  std::vector<std::map<int32_t, int64_t>> token_counts(k);
  for (auto& c : clusters) c.domain_counts.assign(num_domains, 0);
  for (int64_t i = 0; i < sample.size(); ++i) {
    ClusterSummary& c = clusters[labels[i]];
    ++c.size;
    ++c.domain_counts[sample.domain[i]];
    ++token_counts[labels[i]][sample.tokens[i]];
    members[labels[i]].push_back(i);
  }
  Rng rng(options.seed, 0x736e6970ULL);
  for (int64_t j = 0; j < k; ++j) {
    std::vector<std::pair<int32_t, int64_t>> top(token_counts[j].begin(), token_counts[j].end());
    std::stable_sort(top.begin(), top.end(),
                     [](const auto& a, const auto& b) { return a.second > b.second; });
    top.resize(std::min<size_t>(top.size(), options.top_tokens));
    clusters[j].top_tokens = std::move(top);
    clusters[j].examples = pick_examples(std::move(members[j]), sample, options.snippets, rng);
  }
  return clusters;
}

// Cosine similarity of every pair of domains' usage rows into cosine [M, M]; returns the mean over pairs of
// distinct domains that have tokens.
double domain_cosines(const Tensor& usage, const std::vector<int64_t>& tokens, Tensor& cosine) {
  const int64_t M = usage.dim(0);
  cosine = Tensor({M, M});
  double sum = 0;
  int64_t pairs = 0;
  for (int64_t a = 0; a < M; ++a)
    for (int64_t b = 0; b < M; ++b) {
      const double cos = cosine_similarity(row_of(usage, a), row_of(usage, b));
      cosine[a * M + b] = static_cast<float>(cos);
      if (a != b && tokens[a] > 0 && tokens[b] > 0) {
        sum += cos;
        ++pairs;
      }
    }
  return pairs > 0 ? sum / static_cast<double>(pairs) : 0.0;
}

double mean_over_present(const std::vector<int64_t>& values, const std::vector<int64_t>& tokens) {
  double sum = 0;
  int64_t present = 0;
  for (size_t d = 0; d < values.size(); ++d)
    if (tokens[d] > 0) {
      sum += static_cast<double>(values[d]);
      ++present;
    }
  return present > 0 ? sum / static_cast<double>(present) : 0.0;
}

LayerUsage layer_usage(const RoutingTrace& trace, int64_t layer, const std::vector<int32_t>& token_domain,
                       int64_t M, double coverage_fraction) {
  const int64_t E = trace.experts(layer), F = trace.vectors.dim(1), S = trace.slots(layer);
  const int64_t all_slots = trace.slot_offset.back(), n = trace.vectors.dim(0);
  LayerUsage usage;
  usage.mass = Tensor({M, E});
  usage.chosen = Tensor({M, E});
  std::vector<int64_t> tokens(M, 0);
  for (int64_t t = 0; t < n; ++t) {
    const int32_t d = token_domain[t];
    ++tokens[d];
    const float* probs = trace.vectors.data() + t * F + trace.layer_offset[layer];
    for (int64_t e = 0; e < E; ++e) usage.mass[d * E + e] += probs[e];
    for (int64_t s = 0; s < S; ++s) {
      const int32_t e = trace.chosen[t * all_slots + trace.slot_offset[layer] + s];
      if (e >= 0) usage.chosen[d * E + e] += 1.0f;
    }
  }
  for (int64_t d = 0; d < M; ++d)
    for (int64_t e = 0; e < E && tokens[d] > 0; ++e) {
      usage.mass[d * E + e] /= static_cast<float>(tokens[d]);
      usage.chosen[d * E + e] /= static_cast<float>(tokens[d]);
    }
  for (int64_t a = 0; a < M; ++a) {
    usage.coverage.push_back(expert_coverage(row_of(usage.mass, a), coverage_fraction));
    usage.coverage_chosen.push_back(expert_coverage(row_of(usage.chosen, a), coverage_fraction));
  }
  usage.mean_coverage = mean_over_present(usage.coverage, tokens);
  usage.mean_coverage_chosen = mean_over_present(usage.coverage_chosen, tokens);
  usage.mean_cosine = domain_cosines(usage.chosen, tokens, usage.cosine);
  usage.mean_cosine_mass = domain_cosines(usage.mass, tokens, usage.cosine_mass);
  return usage;
}

Purity purity_of(const ModelAnalysis& a, const TraceSample& sample) {
  Purity p;
  p.nmi_domain = normalized_mutual_information(a.clusters.labels, sample.domain);
  p.nmi_token = normalized_mutual_information(a.clusters.labels, sample.tokens);
  p.purity = cluster_purity(a.clusters.labels, sample.domain);
  std::vector<int32_t> document_domain;
  for (const TracedDocument& doc : sample.documents) document_domain.push_back(doc.domain);
  p.document_nmi = normalized_mutual_information(a.document_cluster, document_domain);
  const double L = static_cast<double>(a.layers.size());
  for (size_t l = 0; l < a.layers.size(); ++l) {
    p.mean_cosine += a.layers[l].mean_cosine / L;
    p.mean_cosine_mass += a.layers[l].mean_cosine_mass / L;
    p.mean_coverage += a.layers[l].mean_coverage / L;
    p.mean_coverage_chosen += a.layers[l].mean_coverage_chosen / L;
    p.experts += static_cast<double>(a.trace.experts(static_cast<int64_t>(l))) / L;
  }
  if (!a.layers.empty()) p.mean_cosine_last = a.layers.back().mean_cosine;
  return p;
}

}  // namespace

std::vector<LayerUsage> domain_usage(const RoutingTrace& trace, const std::vector<int32_t>& token_domain,
                                     int64_t num_domains, double coverage_fraction) {
  EMO_CHECK(static_cast<int64_t>(token_domain.size()) == trace.vectors.dim(0), "analyze", "domains of ",
            token_domain.size(), " tokens for a trace of ", trace.vectors.dim(0));
  std::vector<LayerUsage> layers;
  for (int64_t l = 0; l < trace.layers(); ++l)
    layers.push_back(layer_usage(trace, l, token_domain, num_domains, coverage_fraction));
  return layers;
}

ModelAnalysis analyze_model(const Model& model, const std::string& name, const std::string& path,
                            const TraceSample& sample, int64_t num_domains, const AnalysisOptions& options) {
  EMO_CHECK(sample.size() >= 2, "analyze", "needs at least 2 tokens, the sample has ", sample.size());
  ModelAnalysis a;
  a.name = name;
  a.path = path;
  a.trace = trace_routing(model, sample, options.trace);
  Timer timer;
  a.pca = fit_pca(a.trace.vectors, options.pca_variance, 2);
  Tensor reduced = pca_project(a.pca, a.trace.vectors);  // [n, k]
  const int64_t n = sample.size(), k = reduced.dim(1);
  a.token_map = Tensor({n, 2});
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < std::min<int64_t>(2, k); ++c) a.token_map[i * 2 + c] = reduced[i * k + c];
  normalize_rows(reduced);
  KMeansOptions kmeans{options.clusters, options.seed, options.max_iterations, options.kmeans_restarts};
  a.clusters = spherical_kmeans(reduced, kmeans);
  const int64_t clusters = a.clusters.centroids.dim(0);
  a.document_vectors = document_means(a.trace, sample);
  a.document_map = map_2d(a.document_vectors);
  a.document_cluster = majority_cluster(a.clusters.labels, sample, clusters);
  a.cluster_summaries = summarize_clusters(a.clusters.labels, clusters, sample, num_domains, options);
  a.layers = domain_usage(a.trace, sample.domain, num_domains, options.coverage_fraction);
  a.purity = purity_of(a, sample);
  log_info(cat(name, ": PCA ", a.pca.components_kept(), " of ", a.trace.vectors.dim(1), " components (",
               a.pca.explained_ratio() * 100, "% of the variance), k-means ", a.clusters.iterations,
               " iterations, ", human_duration(timer.seconds())));
  return a;
}

}  // namespace emo::analysis
