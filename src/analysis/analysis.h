// `emo analyze` (docs/analysis.md): the evidence that EMO's experts organise by topic, for any model.
// Per model: the routing trace of a token sample (analysis/routing_trace.h); token clustering as the paper
// (concatenated per-layer routed softmax -> PCA to 95% variance -> L2 normalisation -> spherical k-means,
// k = 32); per cluster its size, top tokens, domains and example snippets; per layer the domain x expert
// usage, the domain-to-domain cosine similarity of usage and the expert coverage of each domain; the purity
// figures (NMI between clusters and domains). Two models analysed on the same sample are compared side by
// side. Legend: n = traced tokens, M = domains, E_l = routed experts of layer l, k = clusters.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "analysis/clustering.h"
#include "analysis/routing_trace.h"
#include "data/dataset.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace emo::analysis {

struct AnalysisOptions {
  TraceOptions trace;
  int64_t clusters = 32;
  double pca_variance = 0.95;
  int64_t kmeans_restarts = 4;
  int64_t max_iterations = 100;
  uint64_t seed = 0;               // k-means and the choice of snippets
  int64_t top_tokens = 12;         // per cluster
  int64_t snippets = 8;            // per cluster
  int64_t snippet_context = 12;    // tokens on each side of the highlighted one
  double coverage_fraction = 0.9;  // expert coverage: experts holding this share of a domain's mass
};

// Usage of one MoE layer's routed experts by each domain.
struct LayerUsage {
  Tensor mass;    // [M, E_l] mean routed softmax probability over the domain's tokens
  Tensor chosen;  // [M, E_l] share of the domain's tokens that chose the expert
  // Domain-domain cosine similarity of usage: of the `chosen` vectors (which experts the domain's tokens go
  // to, the paper's usage) and of the `mass` vectors (which stay close to uniform while a router is unsure).
  Tensor cosine;                         // [M, M] of the chosen vectors
  Tensor cosine_mass;                    // [M, M] of the mass vectors
  std::vector<int64_t> coverage;         // [M] experts holding coverage_fraction of the domain's mass
  std::vector<int64_t> coverage_chosen;  // [M] the same for the chosen-expert shares
  double mean_cosine = 0;                // of `cosine` over pairs of distinct domains (with tokens)
  double mean_cosine_mass = 0;           // of `cosine_mass`, the same pairs
  double mean_coverage = 0;              // of `coverage` over domains with tokens
  double mean_coverage_chosen = 0;       // of `coverage_chosen`
};

struct ClusterSummary {
  int64_t size = 0;
  std::vector<std::pair<int32_t, int64_t>> top_tokens;  // (token id, count), most frequent first
  std::vector<int64_t> domain_counts;                   // [M]
  std::vector<int64_t> examples;                        // trace token indices, snippets of the cluster
};

// The purity and similarity figures of one model.
struct Purity {
  double nmi_domain = 0;        // NMI(token cluster, token domain)
  double nmi_token = 0;         // NMI(token cluster, token id): high when clusters are lexical
  double purity = 0;            // share of tokens whose cluster's majority domain is theirs
  double document_nmi = 0;      // NMI(document cluster, document domain); document cluster = majority token
  double mean_cosine = 0;       // mean over layers of LayerUsage::mean_cosine (chosen experts)
  double mean_cosine_last = 0;  // the last layer's
  double mean_cosine_mass = 0;  // mean over layers of LayerUsage::mean_cosine_mass
  double mean_coverage = 0;     // mean over layers of LayerUsage::mean_coverage (routing mass)
  double mean_coverage_chosen = 0;
  double experts = 0;  // mean routed experts per layer (to read the coverage against)
};

struct ModelAnalysis {
  std::string name, path;
  RoutingTrace trace;
  Pca pca;                                // of the token vectors, to pca_variance
  Tensor token_map;                       // [n, 2] first two principal components of the token vectors
  Tensor document_map;                    // [D, 2] first two principal components of the document means
  Tensor document_vectors;                // [D, F] mean token vector of each document
  KMeansResult clusters;                  // of the PCA-reduced, normalised token vectors
  std::vector<int32_t> document_cluster;  // [D] the most frequent cluster of the document's tokens
  std::vector<ClusterSummary> cluster_summaries;
  std::vector<LayerUsage> layers;
  Purity purity;
};

// Everything about one model on a sample (sample_documents of the same options gives the same sample for
// every model).
ModelAnalysis analyze_model(const Model& model, const std::string& name, const std::string& path,
                            const TraceSample& sample, int64_t num_domains, const AnalysisOptions& options);

// Domain x expert usage of every layer, cosine similarities and coverage (apart for tests).
std::vector<LayerUsage> domain_usage(const RoutingTrace& trace, const std::vector<int32_t>& token_domain,
                                     int64_t num_domains, double coverage_fraction);

// The whole result as JSON (analysis.json, and the data of the HTML report): the options, the dataset's
// domains, per model its figures, clusters (with decoded snippets), usage per layer, the 2-D maps, and a
// comparison section when there are two models. tokenizer may be null (token texts become "#id").
nlohmann::json analysis_json(const std::vector<ModelAnalysis>& models, const TraceSample& sample,
                             const data::Dataset& dataset, const Tokenizer* tokenizer,
                             const AnalysisOptions& options);

// The terminal summary: per model the purity figures, the clusters and the per-layer similarity/coverage.
std::string analysis_text(const nlohmann::json& analysis);

// One JSON line of the purity figures of every model (the last line `emo analyze` prints).
nlohmann::json purity_line(const nlohmann::json& analysis);

}  // namespace emo::analysis
