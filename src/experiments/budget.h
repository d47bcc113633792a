// The sizes of one `emo reproduce` run: model, training tokens and evaluation effort, by budget.
//   quick     the README's main job: about 10 minutes on a 2-core machine, shows the direction of the effect
//   standard  about an hour on 2 cores: ~1M active parameters, 64 experts with 4 active (shared included),
//             as the release's 8 of 128
//   full      the same pipeline for bigger machines; sizes from a JSON file (--config) on top of `standard`
// Every field can be overridden from JSON, so a run is fully described by its budget.json.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace emo {

struct ReproduceBudget {
  std::string name = "quick";
  // Tokenizer trained on the corpus's train split.
  int64_t vocab_size = 4096;
  // The MoE models (EMO and standard share every field; only routing.mode differs).
  int64_t d = 128, layers = 4, heads = 4, experts = 64, top_k = 4, expert_width = 128;
  // Training: identical data, data order, seed and token count for every model.
  int64_t row_length = 256, micro_batch_rows = 4, global_batch_rows = 16;
  int64_t train_tokens = 2'000'000;
  int64_t warmup_steps = 50;
  double lr = 4e-3;
  int64_t pool_min = 0, pool_max = 0;  // EMO pool range; 0 = the defaults K .. E
  uint64_t seed = 1;
  // Evaluation: held-out (test split) tokens scored per domain and cell; questions per domain of the
  // built-in multiple-choice task.
  int64_t eval_tokens_per_domain = 4096;
  int64_t mc_questions = 32;
  std::vector<double> keep_fractions = {0.0625, 0.125, 0.25, 0.5, 1.0};
  std::vector<int64_t> example_counts = {1, 8};  // validation documents the experts are selected from
  std::vector<std::string> domains;              // empty = every domain of the corpus

  int64_t train_steps() const;  // train_tokens / tokens per step, rounded up
  // Experts kept per layer at a fraction (shared included; at least top_k's shared + 1 routed).
  int64_t keep_k(double fraction) const;
  // The dense model's MLP width: the experts of the 12.5% subset side by side (the paper's memory-matched
  // comparison).
  int64_t dense_width() const;

  nlohmann::json to_json() const;
  // `base` fields overridden by the keys of `j`; unknown keys are errors naming the key.
  static ReproduceBudget from_json(const nlohmann::json& j, const ReproduceBudget& base,
                                   const std::string& source);
  static ReproduceBudget preset(const std::string& name);  // quick | standard | full
};

}  // namespace emo
