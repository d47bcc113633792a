// The analysis of `emo analyze` (docs/analysis.md): PCA against a matrix of known principal directions,
// spherical k-means on separable clusters, NMI / purity / cosine / coverage against hand-computed values, the
// routing trace against a forward of each document alone, and a whole run on a tiny random model producing a
// valid analysis.json, report.html and SVG figures.
#include "analysis/analysis.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>
#include <sstream>

#include "analysis/clustering.h"
#include "analysis/figures.h"
#include "analysis/metrics.h"
#include "analysis/report.h"
#include "analysis/routing_trace.h"
#include "core/error.h"
#include "core/rng.h"
#include "data/dataset.h"
#include "model/forward_state.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace emo::analysis {
namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------------------
// PCA

// X = 1 m^T + Z diag(s) Q^T with Z = four columns of the 8x8 Hadamard matrix (orthogonal, zero mean) and Q
// [6, 4] orthonormal: the covariance has eigenvalues s_i^2 * 8 / 7 along Q's columns and 0 elsewhere.
struct KnownPca {
  Tensor x{{8, 6}};
  std::vector<std::vector<double>> q;  // [4][6]
  std::vector<double> s = {5, 3, 2, 1};
};

KnownPca known_pca() {
  KnownPca k;
  const int hadamard_columns[4] = {1, 2, 4, 7};
  const auto hadamard = [](int r, int c) { return __builtin_popcount(r & c) % 2 ? -1.0 : 1.0; };
  Rng rng(3);
  for (int c = 0; c < 4; ++c) {  // Gram-Schmidt of random vectors
    std::vector<double> v(6);
    for (double& x : v) x = rng.normal();
    for (const auto& u : k.q) {
      const double dot = std::inner_product(v.begin(), v.end(), u.begin(), 0.0);
      for (int j = 0; j < 6; ++j) v[j] -= dot * u[j];
    }
    const double norm = std::sqrt(std::inner_product(v.begin(), v.end(), v.begin(), 0.0));
    for (double& x : v) x /= norm;
    k.q.push_back(v);
  }
  const double mean[6] = {1, -2, 0.5, 3, 0, 7};
  for (int r = 0; r < 8; ++r)
    for (int j = 0; j < 6; ++j) {
      double value = mean[j];
      for (int c = 0; c < 4; ++c) value += hadamard(r, hadamard_columns[c]) * k.s[c] * k.q[c][j];
      k.x[r * 6 + j] = static_cast<float>(value);
    }
  return k;
}

TEST(Pca, FindsTheKnownDirectionsAndVariances) {
  const KnownPca k = known_pca();
  const Pca pca = fit_pca(k.x, 1.0);
  ASSERT_EQ(pca.components_kept(), 4);  // the rest has no variance
  const double total = (25 + 9 + 4 + 1) * 8.0 / 7.0;
  EXPECT_NEAR(pca.total_variance, total, 1e-4);
  for (int c = 0; c < 4; ++c) {
    EXPECT_NEAR(pca.explained_variance[c], k.s[c] * k.s[c] * 8.0 / 7.0, 1e-4);
    double dot = 0;
    for (int j = 0; j < 6; ++j) dot += pca.components[c * 6 + j] * k.q[c][j];
    EXPECT_NEAR(std::abs(dot), 1.0, 1e-5) << "component " << c;
  }
  EXPECT_NEAR(pca.mean[5], 7.0, 1e-5);
}

TEST(Pca, KeepsTheFewestComponentsReachingTheVarianceShare) {
  const KnownPca k = known_pca();
  // Cumulative shares 25/39 = 0.64, 34/39 = 0.87, 38/39 = 0.97, 1.
  EXPECT_EQ(fit_pca(k.x, 0.95).components_kept(), 3);
  EXPECT_NEAR(fit_pca(k.x, 0.95).explained_ratio(), 38.0 / 39.0, 1e-5);
  EXPECT_EQ(fit_pca(k.x, 0.5).components_kept(), 1);
  EXPECT_EQ(fit_pca(k.x, 0.5, 2).components_kept(), 2);     // min_components
  EXPECT_EQ(fit_pca(k.x, 1.0, 1, 2).components_kept(), 2);  // max_components
}

TEST(Pca, ReconstructionErrorIsTheDroppedVariance) {
  const KnownPca k = known_pca();
  for (int kept = 1; kept <= 4; ++kept) {
    const Pca pca = fit_pca(k.x, 1.0, kept, kept);
    const Tensor y = pca_project(pca, k.x);  // [8, kept]
    ASSERT_EQ(y.dim(1), kept);
    double error = 0;
    for (int r = 0; r < 8; ++r)
      for (int j = 0; j < 6; ++j) {
        double back = pca.mean[j];
        for (int c = 0; c < kept; ++c) back += y[r * kept + c] * pca.components[c * 6 + j];
        error += (back - k.x[r * 6 + j]) * (back - k.x[r * 6 + j]);
      }
    double dropped = 0;
    for (int c = kept; c < 4; ++c) dropped += k.s[c] * k.s[c] * 8.0;  // squared norm of the dropped part
    EXPECT_NEAR(error, dropped, 1e-3) << kept << " components";
  }
}

TEST(Pca, RejectsTooFewRowsAndBadShares) {
  EXPECT_THROW(fit_pca(Tensor({1, 3}), 0.9), Error);
  EXPECT_THROW(fit_pca(Tensor({4, 3}), 0.0), Error);
  EXPECT_THROW(pca_project(fit_pca(known_pca().x, 1.0), Tensor({2, 5})), Error);
}

// ---------------------------------------------------------------------------------------------------------
// Spherical k-means

// n points around each of `centres` random unit directions in D dimensions (noise well below their spread).
Tensor separable_points(int centres, int per_centre, int D, std::vector<int32_t>& truth, uint64_t seed) {
  Rng rng(seed);
  std::vector<std::vector<float>> directions(centres, std::vector<float>(D));
  for (auto& d : directions)
    for (float& v : d) v = static_cast<float>(rng.normal());
  Tensor x({static_cast<int64_t>(centres) * per_centre, D});
  truth.clear();
  for (int c = 0; c < centres; ++c)
    for (int i = 0; i < per_centre; ++i) {
      const int64_t row = static_cast<int64_t>(truth.size());
      for (int j = 0; j < D; ++j)
        x[row * D + j] = directions[c][j] + 0.05f * static_cast<float>(rng.normal());
      truth.push_back(c);
    }
  normalize_rows(x);
  return x;
}

TEST(SphericalKMeans, RecoversSeparableClusters) {
  std::vector<int32_t> truth;
  const Tensor x = separable_points(5, 40, 12, truth, 7);
  const KMeansResult result = spherical_kmeans(x, {5, 1, 100, 4});
  EXPECT_DOUBLE_EQ(normalized_mutual_information(result.labels, truth), 1.0);
  for (int64_t c = 0; c < 5; ++c) {
    double norm = 0;
    for (int64_t j = 0; j < 12; ++j) norm += result.centroids[c * 12 + j] * result.centroids[c * 12 + j];
    EXPECT_NEAR(norm, 1.0, 1e-5);
  }
  EXPECT_GT(result.objective, 0.99 * 200);  // every point close to its centroid
}

TEST(SphericalKMeans, IsDeterministicForASeedAndClampsK) {
  std::vector<int32_t> truth;
  const Tensor x = separable_points(3, 10, 6, truth, 2);
  EXPECT_EQ(spherical_kmeans(x, {4, 9, 50, 2}).labels, spherical_kmeans(x, {4, 9, 50, 2}).labels);
  const KMeansResult all = spherical_kmeans(x, {100, 0, 50, 1});
  EXPECT_EQ(all.centroids.dim(0), 30);
  EXPECT_EQ(std::set<int32_t>(all.labels.begin(), all.labels.end()).size(), 30u);  // no empty cluster
}

TEST(SphericalKMeans, RowsAreNormalised) {
  Tensor x({3, 2}, {3, 4, 0, 0, -1, 0});
  normalize_rows(x);
  EXPECT_FLOAT_EQ(x[0], 0.6f);
  EXPECT_FLOAT_EQ(x[1], 0.8f);
  EXPECT_FLOAT_EQ(x[2], 0.0f);  // a zero row stays zero
  EXPECT_FLOAT_EQ(x[4], -1.0f);
}

// ---------------------------------------------------------------------------------------------------------
// Metrics

TEST(Metrics, NormalizedMutualInformationKnownValues) {
  EXPECT_DOUBLE_EQ(normalized_mutual_information({0, 0, 1, 1, 2}, {0, 0, 1, 1, 2}), 1.0);
  EXPECT_NEAR(normalized_mutual_information({0, 0, 1, 1, 2}, {5, 5, 3, 3, 9}), 1.0, 1e-12);  // renamed labels
  EXPECT_NEAR(normalized_mutual_information({0, 0, 1, 1}, {0, 1, 0, 1}), 0.0, 1e-12);        // independent
  // I = 2/3 ln 2, H = ln 2 and ln 3: NMI = (2/3 ln 2) / ((ln 2 + ln 3) / 2) = 0.51580 (scikit-learn agrees).
  const double expected = (2.0 / 3.0 * std::log(2.0)) / (0.5 * (std::log(2.0) + std::log(3.0)));
  EXPECT_NEAR(normalized_mutual_information({0, 0, 0, 1, 1, 1}, {0, 0, 1, 1, 2, 2}), expected, 1e-12);
  EXPECT_NEAR(expected, 0.515803, 1e-6);
  EXPECT_DOUBLE_EQ(normalized_mutual_information({0, 0, 0}, {1, 1, 1}), 1.0);
  EXPECT_DOUBLE_EQ(normalized_mutual_information({0, 0, 0}, {1, 2, 1}), 0.0);
  EXPECT_THROW(normalized_mutual_information({0, 1}, {0}), Error);
}

TEST(Metrics, ClusterPurity) {
  // Cluster 0: domains 0,0,1 -> 2 of 3; cluster 1: 1,1 -> 2 of 2.
  EXPECT_DOUBLE_EQ(cluster_purity({0, 0, 0, 1, 1}, {0, 0, 1, 1, 1}), 4.0 / 5.0);
}

TEST(Metrics, CosineSimilarity) {
  EXPECT_NEAR(cosine_similarity({1, 0}, {0, 1}), 0.0, 1e-15);
  EXPECT_NEAR(cosine_similarity({1, 2, 3}, {2, 4, 6}), 1.0, 1e-15);
  EXPECT_NEAR(cosine_similarity({1, 1}, {1, 0}), 1.0 / std::sqrt(2.0), 1e-15);
  EXPECT_DOUBLE_EQ(cosine_similarity({0, 0}, {1, 0}), 0.0);
}

TEST(Metrics, ExpertCoverage) {
  EXPECT_EQ(expert_coverage({0.1, 0.5, 0.1, 0.3}), 3);  // 0.5 + 0.3 + 0.1 reaches 0.9 exactly
  EXPECT_EQ(expert_coverage(std::vector<double>(10, 0.1)), 9);
  EXPECT_EQ(expert_coverage({0.95, 0.05}), 1);
  EXPECT_EQ(expert_coverage({2, 1, 1}, 0.5), 1);  // not normalised: a share of the total
  EXPECT_EQ(expert_coverage({0, 0}), 0);
  EXPECT_THROW(expert_coverage({1}, 0.0), Error);
}

TEST(Metrics, DomainUsageMassChosenCosineAndCoverage) {
  // Two layers of 3 routed experts (1 slot each); tokens 0,1 in domain 0, token 2 in domain 1.
  RoutingTrace trace;
  trace.layer_offset = {0, 3, 6};
  trace.slot_offset = {0, 1, 2};
  trace.vectors = Tensor({3, 6}, {0.8f, 0.2f, 0.0f, 1.0f, 0.0f, 0.0f,  //
                                  0.6f, 0.4f, 0.0f, 1.0f, 0.0f, 0.0f,  //
                                  0.0f, 0.0f, 1.0f, 0.0f, 0.5f, 0.5f});
  trace.chosen = {0, 0, 0, 0, 2, 1};
  const auto layers = domain_usage(trace, {0, 0, 1}, 3, 0.9);  // domain 2 has no token
  ASSERT_EQ(layers.size(), 2u);
  EXPECT_FLOAT_EQ(layers[0].mass[0], 0.7f);
  EXPECT_FLOAT_EQ(layers[0].mass[1], 0.3f);
  EXPECT_FLOAT_EQ(layers[0].chosen[0], 1.0f);
  EXPECT_FLOAT_EQ(layers[0].chosen[3 + 2], 1.0f);
  EXPECT_EQ(layers[0].coverage, (std::vector<int64_t>{2, 1, 0}));
  EXPECT_EQ(layers[1].coverage, (std::vector<int64_t>{1, 2, 0}));
  EXPECT_EQ(layers[0].coverage_chosen, (std::vector<int64_t>{1, 1, 0}));
  EXPECT_FLOAT_EQ(layers[0].cosine_mass[1], 0.0f);  // disjoint experts
  EXPECT_FLOAT_EQ(layers[0].cosine_mass[0], 1.0f);
  EXPECT_FLOAT_EQ(layers[0].cosine[1], 0.0f);
  EXPECT_DOUBLE_EQ(layers[0].mean_cosine, 0.0);  // over the one pair of domains with tokens
  EXPECT_DOUBLE_EQ(layers[1].mean_coverage, 1.5);
  EXPECT_DOUBLE_EQ(layers[1].mean_coverage_chosen, 1.0);
  // Layer 1: mass (1, 0, 0) against (0, .5, .5), chosen expert 0 against expert 1: orthogonal both ways.
  EXPECT_DOUBLE_EQ(layers[1].mean_cosine_mass, 0.0);
  EXPECT_DOUBLE_EQ(layers[1].mean_cosine, 0.0);
}

// ---------------------------------------------------------------------------------------------------------
// A tiny random model on a three-domain dataset

constexpr int32_t kEos = 256, kPad = 257;

ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab_size = 258;
  c.hidden_size = 16;
  c.intermediate_size = 12;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.max_position_embeddings = 128;
  c.rope_theta = 10000.0;
  c.eos_token_id = kEos;
  c.pad_token_id = kPad;
  c.num_experts = 10;
  c.num_experts_per_tok = 3;
  c.num_shared_experts = 1;
  return c;
}

// Weights scaled up so routing is far from uniform.
std::unique_ptr<Model> tiny_model(uint64_t seed) {
  auto model = std::make_unique<Model>(tiny_config());
  model->init_weights(seed);
  for (Param& p : model->params())
    if (p.value->ndim() > 1)
      for (float& w : p.value->vec()) w *= 12.0f;
  return model;
}

Tokenizer ascii_tokenizer() {
  std::vector<std::string> bytes;
  for (int b = 0; b < 256; ++b) bytes.push_back(std::string(1, static_cast<char>(b)));
  return Tokenizer::from_parts(bytes, {}, kCl100kPattern,
                               {AddedToken{kEos, "<|endoftext|>"}, AddedToken{kPad, "<|pad|>"}});
}

// Domains "letters" (a-m), "LETTERS" (A-M) and "digits" (0-9 and punctuation); 12 documents each of 5..40
// tokens.
std::string tiny_dataset(const fs::path& dir) {
  fs::create_directories(dir);
  data::DatasetWriter writer({"letters", "LETTERS", "digits"}, 258);
  Rng rng(5);
  for (int doc = 0; doc < 36; ++doc) {
    const int domain = doc % 3;
    std::vector<int32_t> tokens(rng.uniform_int(5, 40));
    for (int32_t& t : tokens) {
      if (domain == 0) t = static_cast<int32_t>('a' + rng.uniform_int(0, 12));
      if (domain == 1) t = static_cast<int32_t>('A' + rng.uniform_int(0, 12));
      if (domain == 2) t = static_cast<int32_t>(rng.uniform_int(0, 3) ? '0' + rng.uniform_int(0, 9) : '.');
    }
    writer.add(std::span<const int32_t>(tokens), domain);
  }
  const std::string path = (dir / "tiny.bin").string();
  writer.write(path);
  return path;
}

fs::path temp_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / cat("emo_analysis_test_", name, "_", ::getpid());
  fs::remove_all(dir);
  return dir;
}

TEST(Trace, SamplesDomainsInTurnUpToTheCap) {
  const fs::path dir = temp_dir("sample");
  const auto dataset = data::Dataset::open(tiny_dataset(dir));
  TraceOptions options;
  options.max_tokens = 200;
  options.max_document_tokens = 16;
  const TraceSample sample = sample_documents(dataset, options);
  EXPECT_EQ(sample.size(), 200);
  for (size_t d = 0; d < sample.documents.size(); ++d) {
    EXPECT_EQ(sample.documents[d].domain, static_cast<int32_t>(d % 3));  // round robin
    EXPECT_LE(sample.documents[d].length, 16);
  }
  EXPECT_EQ(sample_documents(dataset, options).tokens, sample.tokens);  // deterministic
  options.domains = {"digits"};
  for (int32_t d : sample_documents(dataset, options).domain) EXPECT_EQ(d, 2);
  options.domains = {"nope"};
  EXPECT_THROW(sample_documents(dataset, options), Error);
  fs::remove_all(dir);
}

TEST(Trace, EqualsAForwardOfEachDocumentAlone) {
  const fs::path dir = temp_dir("trace");
  const auto dataset = data::Dataset::open(tiny_dataset(dir));
  const auto model = tiny_model(3);
  TraceOptions options;
  options.max_tokens = 300;
  options.seq_len = 64;  // several documents per row
  options.batch_rows = 2;
  const TraceSample sample = sample_documents(dataset, options);
  const RoutingTrace trace = trace_routing(*model, sample, options);
  ASSERT_EQ(trace.layers(), 3);
  ASSERT_EQ(trace.vectors.dim(1), 27);
  RoutingOptions routing;
  routing.training = false;
  for (int64_t d : {0, 5, 11}) {
    const TracedDocument& doc = sample.documents[d];
    // Alone: without the EOS before it in the trace's rows, which ends the previous document (attention).
    std::vector<int32_t> tokens(sample.tokens.begin() + doc.first_token,
                                sample.tokens.begin() + doc.first_token + doc.length);
    const int64_t T = static_cast<int64_t>(tokens.size());
    auto state = model->infer(Batch::from_tokens(1, T, tokens, {}, kEos), routing);
    for (int64_t l = 0; l < 3; ++l)
      for (int64_t t = 0; t < doc.length; ++t) {
        for (int64_t e = 0; e < 9; ++e)
          ASSERT_NEAR(trace.vectors[(doc.first_token + t) * 27 + l * 9 + e],
                      state->routing(l).probs[t * 9 + e], 1e-5)
              << "document " << d << " layer " << l << " token " << t;
        for (int64_t s = 0; s < 2; ++s)
          EXPECT_EQ(trace.chosen[(doc.first_token + t) * 6 + l * 2 + s], state->routing(l).ids[t * 2 + s]);
      }
  }
  fs::remove_all(dir);
}

// The <script id="emo-data"> content of a report page.
std::string embedded_data(const std::string& html) {
  const std::string open = "<script id=\"emo-data\" type=\"application/json\">";
  const size_t begin = html.find(open) + open.size();
  return html.substr(begin, html.find("</script>", begin) - begin);
}

TEST(Analysis, TinyRandomModelsGiveAValidJsonReportAndFigures) {
  const fs::path dir = temp_dir("run");
  const auto dataset = data::Dataset::open(tiny_dataset(dir));
  const auto emo_model = tiny_model(3), other = tiny_model(4);
  const Tokenizer tokenizer = ascii_tokenizer();
  AnalysisOptions options;
  options.trace.max_tokens = 400;
  options.trace.seq_len = 128;
  options.clusters = 6;
  options.snippets = 3;
  const TraceSample sample = sample_documents(dataset, options.trace);
  std::vector<ModelAnalysis> models;
  models.push_back(analyze_model(*emo_model, "a", "dir/a", sample, 3, options));
  models.push_back(analyze_model(*other, "b", "dir/b", sample, 3, options));
  const nlohmann::json analysis = analysis_json(models, sample, dataset, &tokenizer, options);
  write_analysis((dir / "out").string(), analysis);

  std::ifstream json_file(dir / "out" / "analysis.json");
  const nlohmann::json reread = nlohmann::json::parse(json_file);
  EXPECT_EQ(reread, analysis);
  ASSERT_EQ(reread["models"].size(), 2u);
  for (const auto& m : reread["models"]) {
    ASSERT_EQ(m["clusters"].size(), 6u);
    int64_t total = 0;
    for (const auto& c : m["clusters"]) {
      total += c["size"].get<int64_t>();
      for (const auto& example : c["examples"]) {
        const int64_t token = example["token"];
        EXPECT_EQ(m["token_map"]["cluster"][token], c["id"]);  // a snippet's token belongs to its cluster
        EXPECT_EQ(example["text"], std::string(1, static_cast<char>(sample.tokens[token])));
      }
    }
    EXPECT_EQ(total, 400);
    EXPECT_EQ(m["usage"].size(), 3u);
    EXPECT_EQ(m["token_map"]["x"].size(), 400u);
    EXPECT_EQ(m["document_map"]["x"].size(), sample.documents.size());
    const double nmi = m["purity"]["nmi_domain"];
    EXPECT_GE(nmi, 0.0);
    EXPECT_LE(nmi, 1.0);
  }
  EXPECT_TRUE(reread.contains("comparison"));
  EXPECT_EQ(purity_line(reread)["analysis"].size(), 2u);
  EXPECT_NE(analysis_text(reread).find("NMI(cluster, domain)"), std::string::npos);

  std::stringstream html;
  html << std::ifstream(dir / "out" / "report.html").rdbuf();
  EXPECT_EQ(html.str().find("/*EMO_"), std::string::npos);  // every marker filled
  EXPECT_EQ(html.str().find("http://"), html.str().find("http://www.w3.org/2000/svg"));  // nothing fetched
  EXPECT_EQ(nlohmann::json::parse(embedded_data(html.str())), analysis);
  const fs::path figures = dir / "out" / "figures";
  for (const char* name : {"a_map_clusters.svg", "b_map_domains.svg", "a_usage_layer2.svg",
                           "b_cosine_layer0.svg", "layers_cosine.svg", "layers_coverage.svg"}) {
    std::stringstream svg;
    svg << std::ifstream(figures / name).rdbuf();
    EXPECT_EQ(svg.str().rfind("<svg", 0), 0u) << name;
    EXPECT_NE(svg.str().find("</svg>"), std::string::npos) << name;
  }
  fs::remove_all(dir);
}

TEST(Analysis, AModelComparedWithItselfAgreesCompletely) {
  const fs::path dir = temp_dir("self");
  const auto dataset = data::Dataset::open(tiny_dataset(dir));
  const auto model = tiny_model(3);
  AnalysisOptions options;
  options.trace.max_tokens = 300;
  options.clusters = 4;
  const TraceSample sample = sample_documents(dataset, options.trace);
  std::vector<ModelAnalysis> models;
  for (const char* name : {"x", "y"}) models.push_back(analyze_model(*model, name, "", sample, 3, options));
  const nlohmann::json analysis = analysis_json(models, sample, dataset, nullptr, options);
  EXPECT_DOUBLE_EQ(analysis["comparison"]["cluster_agreement_nmi"].get<double>(), 1.0);
  EXPECT_EQ(analysis["models"][0]["purity"], analysis["models"][1]["purity"]);
  // Without a tokenizer, token texts are ids.
  EXPECT_EQ(analysis["sample"]["vocab"].begin()->get<std::string>().rfind("#", 0), 0u);
  fs::remove_all(dir);
}

TEST(Analysis, RejectsADenseModel) {
  ModelConfig config = tiny_config();
  config.model_type = "olmo2_noqknorm_prenorm";
  Model dense(config);
  TraceSample sample;
  sample.documents.push_back({0, 0, 0, 2});
  sample.tokens = {1, 2};
  sample.document = {0, 0};
  sample.domain = {0, 0};
  EXPECT_THROW(trace_routing(dense, sample, TraceOptions{}), Error);
}

}  // namespace
}  // namespace emo::analysis
