// One evaluation run of `emo eval` (docs/tasks.md): per-domain perplexity on a tokenised split, user
// multiple-choice tasks, built-in tasks per domain (next segment; definition for dictionary domains); a
// terminal table and a JSON report.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "eval/multiple_choice.h"
#include "eval/perplexity.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace emo {

struct EvalRequest {
  std::string data_path;  // tokenised split for perplexity and built-in tasks; "" = none
  PerplexityOptions perplexity;
  std::vector<std::string> task_paths;  // multiple-choice JSONL files (need a tokenizer)
  int64_t builtin_mc = 0;  // questions per domain of each built-in task (next segment, definition); 0 = none
  // Corpus split JSONL of the dictionary task ("" = the .jsonl beside data_path, if there is one).
  std::string corpus_split_path;
  std::string save_tasks_dir;  // "" = none; else the generated text tasks are written there as task files
  int64_t builtin_prompt_len = 48, builtin_choice_len = 16, builtin_choices = 4;
  uint64_t seed = 0;
  int64_t limit = 0;  // questions per task; 0 = all
};

struct EvalReport {
  std::vector<DomainLoss> perplexity;
  std::vector<McResult> tasks;
  static constexpr const char* kFormat = "emo-eval";  // "format" of to_json (emo eval --json)
  nlohmann::json to_json() const;
  std::string table() const;
};

// routing: standard (full or pruned model) or subset routing. tokenizer may be null when no task file is
// given (the dictionary task, which needs one, is then skipped with a warning).
EvalReport run_eval(const Model& model, const RoutingOptions& routing, const Tokenizer* tokenizer,
                    const EvalRequest& request);

}  // namespace emo
