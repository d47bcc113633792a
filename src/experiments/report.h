// The report of `emo reproduce`: the scored cells of the grid turned into results.json, results.md (the
// table: rows model x method, columns keep-k, cells mean held-out loss over domains and its increase over
// the model's full version; a per-domain breakdown at 12.5%; multiple-choice accuracy; memory; targets) and
// quality.svg (mean held-out loss against the fraction of experts kept).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "experiments/budget.h"

namespace emo {

// One scored cell. method: "full" (all experts, standard routing), "layerwise", "random" or "dense";
// examples: validation documents the subset was selected from (0 for full, random and dense).
// metric: "loss" (mean held-out cross-entropy, nats/token), "mc_acc", "mc_acc_norm".
struct Cell {
  std::string model, method;
  int64_t examples = 0;
  std::string domain;
  int64_t keep_k = 0;
  double fraction = 1.0;  // keep_k / E (the dense model: the fraction its memory matches)
  std::string metric = "loss";
  double value = 0;
  int64_t count = 0;  // tokens scored, or questions asked

  std::string key() const;
  nlohmann::json to_json() const;
  static Cell from_json(const nlohmann::json& j);
};

struct ReportInputs {
  ReproduceBudget budget;
  std::vector<Cell> cells;
  std::vector<std::string> domains;
  nlohmann::json models;  // per model: parameters, active parameters, final training loss, tokens, time
  nlohmann::json memory;  // per keep-k: parameters and bytes (fp32, bf16) of the pruned model
  nlohmann::json setup;   // machine, data, intra-document attention, timings
};

// Mean over domains of a (model, method, examples, keep_k) "loss" series; NaN when a domain is missing.
double mean_loss(const std::vector<Cell>& cells, const std::vector<std::string>& domains,
                 const std::string& model, const std::string& method, int64_t examples, int64_t keep_k);

// Writes results.json, results.md and quality.svg into out_dir; returns the summary (headline figures and
// the reproduction targets with whether each is met).
nlohmann::json write_report(const std::string& out_dir, const ReportInputs& inputs);

}  // namespace emo
