// `emo analyze MODEL --data SPLIT [--compare MODEL2] -o DIR`: topic clusters inside the experts
// (docs/analysis.md).
#include <cstdio>
#include <filesystem>
#include <memory>

#include "analysis/analysis.h"
#include "analysis/report.h"
#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "data/dataset.h"
#include "infer/model_files.h"
#include "infer/quantize.h"
#include "io/output_dir.h"
#include "train/checkpoint.h"

namespace {

namespace fs = std::filesystem;

// The tokenizer for snippets: --tokenizer, else MODEL/tokenizer.json, else none (token ids shown).
std::unique_ptr<emo::Tokenizer> load_tokenizer(const std::string& option, const std::string& model) {
  const std::string path = option.empty() ? (fs::path(model) / "tokenizer.json").string() : option;
  if (option.empty() && !fs::exists(path)) {
    emo::log_warn(emo::cat("no ", path, " (give --tokenizer): snippets show token ids"));
    return nullptr;
  }
  return std::make_unique<emo::Tokenizer>(emo::Tokenizer::load(path));
}

std::function<int()> setup_analyze(CLI::App& app) {
  struct Options {
    std::string model, compare, data, out, tokenizer, name, compare_name;
    std::vector<std::string> names;
    bool force = false;
    emo::analysis::AnalysisOptions analysis;
  };
  auto o = std::make_shared<Options>();
  auto& a = o->analysis;
  emo::cli::add_model_argument(app, o->model)->required();
  app.add_option("--data", o->data, "Tokenised split with domains, e.g. data/corpus/validation.bin")
      ->required();
  app.add_option("--compare", o->compare,
                 "A second model analysed on the same tokens (e.g. the standard MoE)");
  app.add_option("-o,--out", o->out, "Output directory: analysis.json, report.html, figures/")->required();
  app.add_flag("--force", o->force, "Replace a previous output of emo analyze at -o");
  emo::cli::add_tokenizer_option(app, o->tokenizer, " for snippets");
  CLI::Option* name = app.add_option("--name", o->name,
                                     "Name of the model in the report (default: its run's directory name)");
  CLI::Option* compare_name = app.add_option("--compare-name", o->compare_name, "Name of the second model");
  app.add_option("--names", o->names, "Names of the model and of --compare, comma-separated (as emo sweep)")
      ->delimiter(',')
      ->excludes(name)
      ->excludes(compare_name);
  app.add_option("--max-tokens", a.trace.max_tokens, "Tokens sampled (domains in turn)")
      ->capture_default_str()
      ->check(emo::cli::in_range(1, emo::cli::kManyTokens));
  app.add_option("--doc-tokens", a.trace.max_document_tokens, "First tokens taken of each document")
      ->capture_default_str()
      ->check(emo::cli::in_range(1, emo::cli::kManyTokens));
  app.add_option("--domains", a.trace.domains, "Only these domains (default: all)")->delimiter(',');
  app.add_option("--clusters", a.clusters, "k of the spherical k-means")
      ->capture_default_str()
      ->check(emo::cli::in_range(1, emo::cli::kManyItems));
  app.add_option("--pca-variance", a.pca_variance, "Share of the variance the PCA keeps")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, 1, true));
  app.add_option("--restarts", a.kmeans_restarts, "k-means++ restarts (the best is kept)")
      ->capture_default_str()
      ->check(emo::cli::in_range(1, emo::cli::kManyItems));
  app.add_option("--coverage", a.coverage_fraction, "Coverage: experts holding this share of a domain's mass")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, 1, true));
  app.add_option("--snippets", a.snippets, "Example snippets per cluster")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, emo::cli::kManyItems));
  app.add_option("--snippet-context", a.snippet_context, "Tokens shown on each side of a snippet's token")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, emo::cli::kManyTokens));
  app.add_option("--seed", a.seed, "Seed of the document sample, k-means and snippets")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, emo::cli::kMaxSeed));
  app.add_option("--batch-rows", a.trace.batch_rows, "Rows per forward")
      ->capture_default_str()
      ->check(emo::cli::in_range(1, 4096));
  return [o] {
    emo::Timer timer;
    // Checked before the long work, written into a temporary sibling, renamed into place when complete.
    emo::OutputDirectory out(o->out, {"analyze", {o->model, o->compare, o->data, o->tokenizer}, o->force});
    o->analysis.trace.seed = o->analysis.seed;
    const auto dataset = emo::data::Dataset::open(o->data);
    const auto sample = emo::analysis::sample_documents(dataset, o->analysis.trace);
    emo::log_info(emo::cat("sample: ", sample.size(), " tokens of ", sample.documents.size(), " documents"));
    const size_t given = o->compare.empty() ? 1 : 2;
    if (!o->names.empty() && o->names.size() != given)
      emo::fail("analyze", emo::cat("--names lists ", o->names.size(), " names for ", given, " model(s)"));
    if (!o->names.empty()) o->name = o->names[0];
    if (o->names.size() == 2) o->compare_name = o->names[1];
    const std::string model_dir = emo::resolve_model_dir(o->model, "analyze");
    const auto tokenizer = load_tokenizer(o->tokenizer, model_dir);
    std::vector<emo::analysis::ModelAnalysis> models;
    const int64_t domains = static_cast<int64_t>(dataset.domain_names().size());
    for (const auto& [path, name] : {std::pair{o->model, o->name}, std::pair{o->compare, o->compare_name}}) {
      if (path.empty()) continue;
      const std::string dir = emo::resolve_model_dir(path, "analyze");
      const auto model = emo::load_model_dequantized(dir);
      models.push_back(emo::analysis::analyze_model(*model, name.empty() ? emo::short_model_name(dir) : name,
                                                    dir, sample, domains, o->analysis));
    }
    if (models.size() == 2 && models[0].name == models[1].name) models[1].name += " (2)";
    const auto analysis = emo::analysis::analysis_json(models, sample, dataset, tokenizer.get(), o->analysis);
    emo::analysis::write_analysis(out.temp_path(), analysis);
    out.commit();
    std::printf("%s", emo::analysis::analysis_text(analysis).c_str());
    emo::log_info(emo::cat("wrote ", o->out, "/analysis.json, report.html, figures/ in ",
                           emo::human_duration(timer.seconds())));
    std::printf("%s\n", emo::analysis::purity_line(analysis).dump().c_str());
    return 0;
  };
}

EMO_COMMAND("analyze", "Topic clusters inside the experts: clustering, usage heatmaps, report.html",
            setup_analyze);

}  // namespace
