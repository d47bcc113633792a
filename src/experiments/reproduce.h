// `emo reproduce`: the paper's headline at small scale. On the built-in corpus an EMO model, a
// standard MoE and a memory-matched dense model are trained on identical data, data order, seed and token
// count; then for every domain experts are selected from ONE validation document (and from eight) at several
// keep-k, with the layerwise method and the random control, and each subset is scored on the domain's test
// documents (held-out loss, built-in multiple-choice). Stages and where they write (every stage is reused
// when its output exists, so a rerun continues where the last one stopped):
//   data_dir/corpus/                        the corpus (emo corpus build)
//   data_dir/tokenizer-V/tokenizer.json     a BPE of V tokens trained on the train split
//   data_dir/tokenizer-V/{train,validation,test}.bin   the tokenised splits
//   out_dir/budget.json                     the sizes of this run
//   out_dir/models/{emo,standard,dense}/    training runs (checkpoints/, metrics.jsonl, loss_curve.svg)
//   out_dir/cells.json                      every scored cell (model, method, examples, domain, keep-k)
//   out_dir/results.{json,md}, quality.svg  the report (report.h)
#pragma once

#include <string>

#include "experiments/budget.h"

namespace emo {

struct ReproduceOptions {
  ReproduceBudget budget;
  std::string out_dir;            // default: runs/reproduce-<budget>
  std::string data_dir = "data";  // corpus, tokenizer and tokenised splits (shared between runs)
  std::string cache_dir;          // download cache of the corpus sources ("" = the corpus default)
  bool show_progress = true;
};

// Paths of the shared data a budget uses.
struct ReproduceData {
  std::string corpus_dir, tokenizer, train, validation, test;
};
ReproduceData reproduce_data_paths(const ReproduceOptions& options);

// Builds what is missing of the corpus, tokenizer and tokenised splits.
ReproduceData prepare_data(const ReproduceOptions& options);

// Trains (or resumes, or reuses) the three models; returns their run directories.
struct ReproduceModels {
  std::string emo, standard, dense;
};
ReproduceModels train_models(const ReproduceOptions& options, const ReproduceData& data);

// Scores every cell of the grid not yet in out_dir/cells.json, saving after each one.
void score_cells(const ReproduceOptions& options, const ReproduceData& data, const ReproduceModels& models);

// The whole pipeline; writes the report and returns its summary (the command prints it as one JSON line).
nlohmann::json run_reproduce(const ReproduceOptions& options);

}  // namespace emo
