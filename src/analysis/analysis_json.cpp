// analysis.json: the result of `emo analyze` as data (its layout is documented in docs/analysis.md), the
// terminal summary and the one-line purity figures, all read from that JSON so they cannot disagree.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "analysis/analysis.h"
#include "analysis/metrics.h"
#include "core/error.h"
#include "data/text_clean.h"

namespace emo::analysis {
namespace {

using nlohmann::json;

// Figures rounded for a compact file (4 significant decimals are far below what a reader can see).
double rounded(double x, double scale = 1e4) {
  return std::round(x * scale) / scale;
}

json rounded_matrix(const Tensor& m, double scale = 1e4) {
  json rows = json::array();
  for (int64_t r = 0; r < m.dim(0); ++r) {
    json row = json::array();
    for (int64_t c = 0; c < m.dim(1); ++c) row.push_back(rounded(m[r * m.dim(1) + c], scale));
    rows.push_back(std::move(row));
  }
  return rows;
}

// Text of token ids; "#id" for ids the tokenizer does not know (or without a tokenizer).
class TokenText {
 public:
  explicit TokenText(const Tokenizer* tokenizer) : tokenizer_(tokenizer) {}
  std::string operator()(const std::vector<int32_t>& ids) const {
    if (tokenizer_ != nullptr) {
      try {
        return data::to_valid_utf8(tokenizer_->decode(ids));
      } catch (const Error&) {
      }
    }
    std::string text;
    for (int32_t id : ids) text += cat("#", id, " ");
    return text;
  }

 private:
  const Tokenizer* tokenizer_;
};

json snippet_json(int64_t token, const TraceSample& sample, int64_t context, const TokenText& text) {
  const int32_t d = sample.document[token];
  const TracedDocument& doc = sample.documents[d];
  const int64_t begin = std::max(doc.first_token, token - context);
  const int64_t end = std::min(doc.first_token + doc.length, token + 1 + context);
  const auto ids = [&](int64_t a, int64_t b) {
    return std::vector<int32_t>(sample.tokens.begin() + a, sample.tokens.begin() + b);
  };
  return {{"token", token},
          {"document", d},
          {"position", token - doc.first_token},
          {"domain", doc.domain},
          {"left", (begin > doc.first_token ? "…" : "") + text(ids(begin, token))},
          {"text", text(ids(token, token + 1))},
          {"right", text(ids(token + 1, end)) + (end < doc.first_token + doc.length ? "…" : "")}};
}

json clusters_json(const ModelAnalysis& a, const TraceSample& sample, const AnalysisOptions& options,
                   const TokenText& text) {
  json clusters = json::array();
  for (size_t j = 0; j < a.cluster_summaries.size(); ++j) {
    const ClusterSummary& c = a.cluster_summaries[j];
    json top = json::array(), examples = json::array();
    for (const auto& [id, count] : c.top_tokens)
      top.push_back({{"id", id}, {"text", text({id})}, {"count", count}});
    for (int64_t token : c.examples)
      examples.push_back(snippet_json(token, sample, options.snippet_context, text));
    const auto majority = std::max_element(c.domain_counts.begin(), c.domain_counts.end());
    clusters.push_back(
        {{"id", j},
         {"size", c.size},
         {"top_tokens", top},
         {"domain_counts", c.domain_counts},
         {"majority_domain", majority - c.domain_counts.begin()},
         {"majority_share", c.size > 0 ? rounded(static_cast<double>(*majority) / c.size) : 0.0},
         {"examples", examples}});
  }
  return clusters;
}

json layers_json(const ModelAnalysis& a) {
  json layers = json::array();
  for (const LayerUsage& u : a.layers)
    layers.push_back({{"mass", rounded_matrix(u.mass, 1e5)},
                      {"chosen", rounded_matrix(u.chosen, 1e4)},
                      {"cosine", rounded_matrix(u.cosine)},
                      {"cosine_mass", rounded_matrix(u.cosine_mass)},
                      {"coverage", u.coverage},
                      {"coverage_chosen", u.coverage_chosen},
                      {"mean_cosine", rounded(u.mean_cosine)},
                      {"mean_cosine_mass", rounded(u.mean_cosine_mass)},
                      {"mean_coverage", rounded(u.mean_coverage)},
                      {"mean_coverage_chosen", rounded(u.mean_coverage_chosen)}});
  return layers;
}

json map_json(const Tensor& map, const std::vector<int32_t>& clusters) {
  json x = json::array(), y = json::array();
  for (int64_t i = 0; i < map.dim(0); ++i) {
    x.push_back(rounded(map[i * 2]));
    y.push_back(rounded(map[i * 2 + 1]));
  }
  return {{"x", x}, {"y", y}, {"cluster", clusters}};
}

json purity_json(const Purity& p) {
  return {{"nmi_domain", rounded(p.nmi_domain)},
          {"nmi_token", rounded(p.nmi_token)},
          {"purity", rounded(p.purity)},
          {"document_nmi", rounded(p.document_nmi)},
          {"mean_cosine", rounded(p.mean_cosine)},
          {"mean_cosine_last_layer", rounded(p.mean_cosine_last)},
          {"mean_cosine_mass", rounded(p.mean_cosine_mass)},
          {"mean_coverage", rounded(p.mean_coverage)},
          {"mean_coverage_chosen", rounded(p.mean_coverage_chosen)},
          {"experts", rounded(p.experts)}};
}

json model_json(const ModelAnalysis& a, const TraceSample& sample, const AnalysisOptions& options,
                const TokenText& text) {
  json experts = json::array(), slots = json::array(), explained = json::array();
  for (int64_t l = 0; l < a.trace.layers(); ++l) {
    experts.push_back(a.trace.experts(l));
    slots.push_back(a.trace.slots(l));
  }
  for (double v : a.pca.explained_variance) explained.push_back(rounded(v / a.pca.total_variance, 1e6));
  return {{"name", a.name},
          {"path", a.path},
          {"layers", a.trace.layers()},
          {"experts", experts},
          {"slots", slots},
          {"features", a.trace.vectors.dim(1)},
          {"pca",
           {{"components", a.pca.components_kept()},
            {"explained", rounded(a.pca.explained_ratio())},
            {"explained_per_component", explained}}},
          {"kmeans",
           {{"k", a.clusters.centroids.dim(0)},
            {"iterations", a.clusters.iterations},
            {"objective", rounded(a.clusters.objective)}}},
          {"purity", purity_json(a.purity)},
          {"clusters", clusters_json(a, sample, options, text)},
          {"usage", layers_json(a)},
          {"token_map", map_json(a.token_map, a.clusters.labels)},
          {"document_map", map_json(a.document_map, a.document_cluster)}};
}

json comparison_json(const std::vector<ModelAnalysis>& models) {
  json names = json::array();
  for (const ModelAnalysis& a : models) names.push_back(a.name);
  json figures = json::object();
  for (const char* key :
       {"nmi_domain", "nmi_token", "purity", "document_nmi", "mean_cosine", "mean_cosine_last_layer",
        "mean_cosine_mass", "mean_coverage", "mean_coverage_chosen", "experts"}) {
    json values = json::array();
    for (const ModelAnalysis& a : models) values.push_back(purity_json(a.purity)[key]);
    figures[key] = values;
  }
  json per_layer_cosine = json::array(), per_layer_coverage = json::array();
  for (const ModelAnalysis& a : models) {
    json cosines = json::array(), coverages = json::array();
    for (const LayerUsage& u : a.layers) {
      cosines.push_back(rounded(u.mean_cosine));
      coverages.push_back(rounded(u.mean_coverage));
    }
    per_layer_cosine.push_back(cosines);
    per_layer_coverage.push_back(coverages);
  }
  return {{"models", names},
          {"figures", figures},
          {"mean_cosine_per_layer", per_layer_cosine},
          {"mean_coverage_per_layer", per_layer_coverage},
          // How much the two models' token clusterings agree (same tokens in both traces).
          {"cluster_agreement_nmi",
           rounded(normalized_mutual_information(models[0].clusters.labels, models[1].clusters.labels))}};
}

json options_json(const AnalysisOptions& o) {
  return {{"max_tokens", o.trace.max_tokens},
          {"max_document_tokens", o.trace.max_document_tokens},
          {"seq_len", o.trace.seq_len},
          {"seed", o.seed},
          {"sample_seed", o.trace.seed},
          {"clusters", o.clusters},
          {"pca_variance", o.pca_variance},
          {"kmeans_restarts", o.kmeans_restarts},
          {"coverage_fraction", o.coverage_fraction},
          {"snippet_context", o.snippet_context}};
}

// Tokens of the sample (shared by every model: the maps index into these) and the text of each distinct id.
json tokens_json(const TraceSample& sample, const TokenText& text) {
  json vocab = json::object();
  for (int32_t id : std::set<int32_t>(sample.tokens.begin(), sample.tokens.end()))
    vocab[std::to_string(id)] = text({id});
  json documents = json::array();
  for (const TracedDocument& doc : sample.documents)
    documents.push_back({{"index", doc.index},
                         {"domain", doc.domain},
                         {"first_token", doc.first_token},
                         {"length", doc.length}});
  return {{"ids", sample.tokens},
          {"domain", sample.domain},
          {"document", sample.document},
          {"documents", documents},
          {"vocab", vocab}};
}

}  // namespace

json analysis_json(const std::vector<ModelAnalysis>& models, const TraceSample& sample,
                   const data::Dataset& dataset, const Tokenizer* tokenizer, const AnalysisOptions& options) {
  EMO_CHECK(!models.empty(), "analyze", "no model analysed");
  const TokenText text(tokenizer);
  std::vector<int64_t> domain_tokens(dataset.domain_names().size(), 0);
  for (int32_t d : sample.domain) ++domain_tokens[d];
  json out = {{"format", "emo-analysis"},           {"version", 1},
              {"dataset", dataset.path()},          {"domains", dataset.domain_names()},
              {"domain_tokens", domain_tokens},     {"options", options_json(options)},
              {"sample", tokens_json(sample, text)}};
  out["models"] = json::array();
  for (const ModelAnalysis& a : models) out["models"].push_back(model_json(a, sample, options, text));
  if (models.size() == 2) out["comparison"] = comparison_json(models);
  return out;
}

std::string analysis_text(const json& analysis) {
  const auto& domains = analysis["domains"];
  std::string text;
  char line[512];
  for (const json& m : analysis["models"]) {
    const json& p = m["purity"];
    text +=
        cat("model ", m["name"].get<std::string>(), " (", m["path"].get<std::string>(),
            "): ", analysis["sample"]["ids"].size(), " tokens, ", analysis["sample"]["documents"].size(),
            " documents; PCA ", m["pca"]["components"].get<int64_t>(), " of ", m["features"].get<int64_t>(),
            " components (", m["pca"]["explained"].get<double>() * 100, "% of the variance)\n");
    std::snprintf(
        line, sizeof line,
        "  NMI(cluster, domain) %.4f  NMI(cluster, token) %.4f  purity %.4f  document NMI %.4f\n"
        "  mean domain-domain cosine of chosen experts %.4f (last layer %.4f), of routing mass %.4f\n"
        "  mean coverage %.2f (routing mass), %.2f (chosen) of %.0f experts\n",
        p["nmi_domain"].get<double>(), p["nmi_token"].get<double>(), p["purity"].get<double>(),
        p["document_nmi"].get<double>(), p["mean_cosine"].get<double>(),
        p["mean_cosine_last_layer"].get<double>(), p["mean_cosine_mass"].get<double>(),
        p["mean_coverage"].get<double>(), p["mean_coverage_chosen"].get<double>(),
        p["experts"].get<double>());
    text += line;
    text += "  layer  cosine (chosen)  cosine (mass)  coverage (mass)  coverage (chosen)\n";
    for (size_t l = 0; l < m["usage"].size(); ++l) {
      const json& u = m["usage"][l];
      std::snprintf(line, sizeof line, "  %5zu  %15.4f  %13.4f  %15.2f  %17.2f\n", l,
                    u["mean_cosine"].get<double>(), u["mean_cosine_mass"].get<double>(),
                    u["mean_coverage"].get<double>(), u["mean_coverage_chosen"].get<double>());
      text += line;
    }
    text += "  cluster   size  majority domain (share)     top tokens\n";
    for (const json& c : m["clusters"]) {
      std::string top;
      for (size_t t = 0; t < std::min<size_t>(6, c["top_tokens"].size()); ++t)
        top += json(c["top_tokens"][t]["text"].get<std::string>()).dump() + " ";
      std::snprintf(line, sizeof line, "  %7lld %6lld  %-18s (%4.2f)  %s\n", c["id"].get<long long>(),
                    c["size"].get<long long>(),
                    domains[c["majority_domain"].get<size_t>()].get<std::string>().c_str(),
                    c["majority_share"].get<double>(), top.c_str());
      text += line;
    }
  }
  if (analysis.contains("comparison")) {
    const json& cmp = analysis["comparison"];
    std::snprintf(line, sizeof line, "comparison %-24s %12s %12s\n", "",
                  cmp["models"][0].get<std::string>().c_str(), cmp["models"][1].get<std::string>().c_str());
    text += line;
    for (const auto& [key, values] : cmp["figures"].items()) {
      std::snprintf(line, sizeof line, "  %-33s %12.4f %12.4f\n", key.c_str(), values[0].get<double>(),
                    values[1].get<double>());
      text += line;
    }
    text +=
        cat("  agreement of the two clusterings (NMI): ", cmp["cluster_agreement_nmi"].get<double>(), "\n");
  }
  return text;
}

json purity_line(const json& analysis) {
  json models = json::array();
  for (const json& m : analysis["models"]) {
    json entry = m["purity"];
    entry["model"] = m["name"];
    entry["clusters"] = m["kmeans"]["k"];
    entry["tokens"] = analysis["sample"]["ids"].size();
    models.push_back(entry);
  }
  return {{"analysis", models}};
}

}  // namespace emo::analysis
