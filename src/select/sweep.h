// `emo sweep`: the keep-k x domain x method grid of selective expert use in one run. For every model, domain
// and method, the experts are selected from the first `examples` documents of the domain in the calibration
// split and the model is scored on the domain's held-out documents with subset routing (the exact behaviour
// of the pruned model, without writing checkpoints); keep-k = E is the full model. Results: a table (markdown
// and CSV) and an SVG figure of held-out loss against the fraction of experts kept, one line per model and
// method.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "eval/perplexity.h"
#include "model/model.h"

namespace emo {

struct SweepOptions {
  std::vector<std::string> models;   // model directories
  std::vector<std::string> names;    // their names in tables and legends ("" = short_model_name)
  std::string eval_data;             // held-out tokenised split
  std::string calib_data;            // split the examples come from ("" = eval_data)
  std::vector<std::string> domains;  // "" = every domain of eval_data
  std::vector<std::string> methods = {"layerwise"};
  std::vector<int64_t> keep_k;  // values above a model's E are skipped; E itself is always scored
  int64_t examples = 1;         // documents per domain used to select
  uint64_t seed = 0;
  PerplexityOptions perplexity;  // row length, rows, max tokens per domain
  // How a model directory is loaded (default Model::load; `emo sweep` passes the inference engine's loader,
  // which also reads int8 checkpoints).
  std::function<std::unique_ptr<Model>(const std::string&)> load_model;
};

struct SweepRow {
  std::string model, method, domain;
  int64_t keep_k = 0, num_experts = 0;
  double fraction = 0;  // keep_k / num_experts
  double loss = 0, perplexity = 0;
  int64_t tokens = 0;
};

std::vector<SweepRow> run_sweep(const SweepOptions& options);

// Loss with keep-k in columns: a row per model, method and domain, then the mean over the domains of each
// model and method.
std::string sweep_markdown(const std::vector<SweepRow>& rows);
std::string sweep_csv(const std::vector<SweepRow>& rows);
// Mean loss over the domains against the fraction kept, one polyline per (model, method).
std::string sweep_svg(const std::vector<SweepRow>& rows);

// Writes results.md, results.csv and quality.svg into dir (created if needed).
void write_sweep(const std::string& dir, const std::vector<SweepRow>& rows);

}  // namespace emo
