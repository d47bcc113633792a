// The training loop of docs/emo.md §3-4. One optimizer step:
//   1. each rank takes its contiguous share of the global batch, splits it into micro-batches and runs
//      the forward of each, keeping every state;
//   2. load-balancing counts: summed over the step's micro-batches and all-reduced over ranks ("global", the
//      reference), or each micro-batch's own ("micro_batch", the paper's unstable ablation);
//   3. loss and backward of each micro-batch with grad_scale 1 / (micro-batches in the global batch);
//   4. gradients all-reduced over ranks, clipped to a global norm, AdamW with the scheduled learning rate.
// Around it: checkpoints (train/checkpoint.h), validation loss per domain, metrics.jsonl, a progress bar, a
// loss-curve SVG at the end, and a clean stop on a NaN/Inf loss or SIGINT/SIGTERM.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/model.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/row_source.h"
#include "train/run_directory.h"
#include "train/usage.h"

namespace emo {

struct StepMetrics {
  int64_t step = 0;  // 1-based: the number of optimizer steps done after this one
  double loss = 0, ce = 0, output_z = 0, lb = 0, router_z = 0;
  double lr = 0, grad_norm = 0;
  double tokens_per_second = 0, step_seconds = 0;
  int64_t tokens = 0;  // cumulative training tokens
  ExpertUsage usage;
  nlohmann::json to_json() const;
};

struct TrainOptions {
  std::string out_dir;              // claimed and locked for the run (train/run_directory.h)
  std::vector<std::string> inputs;  // paths read beyond the config's own (the --config file)
  bool resume = false;    // continue from out_dir's latest checkpoint (fresh start when there is none)
  std::string init_from;  // start from this checkpoint's weights, optimizer, data position and step
  int64_t stop_after =
      0;  // stop with a checkpoint after this many steps in this process (0 = run to the end)
  bool show_progress = true;
  std::function<void(const StepMetrics&)> on_step;  // after each step (tests, benchmarks)
  CheckpointFault checkpoint_fault;                 // tests: simulate a crash mid-checkpoint
};

struct TrainTiming {
  double step_seconds = 0;  // forward/backward/all-reduce/optimizer (the bare step)
  double data_seconds = 0;  // reading rows
  double checkpoint_seconds = 0;
  double validation_seconds = 0;
  double total_seconds = 0;  // the whole loop
};

class Trainer {
 public:
  Trainer(TrainConfig config, TrainOptions options);
  ~Trainer();

  // Runs from the current step to the end (or options.stop_after); returns the final step. A SIGINT or
  // SIGTERM stops it after the step in progress and a checkpoint: stop_signal() then names the signal.
  int64_t run();
  // The signal that stopped the last run() (SIGINT, SIGTERM), 0 when it ran to its end.
  int stop_signal() const { return stop_signal_; }

  // One optimizer step on the given micro-batches of this rank (the bare step; exposed for the benchmark).
  StepMetrics train_step(const std::vector<Batch>& micro_batches, int64_t micro_batches_in_global_batch);
  // Mean cross-entropy per domain on the validation rows.
  std::map<std::string, double> validate();

  Model& model() { return *model_; }
  const TrainConfig& config() const { return config_; }
  int64_t step() const { return state_.step; }
  const std::vector<StepMetrics>& history() const { return history_; }
  const TrainTiming& timing() const { return timing_; }
  std::string last_checkpoint() const { return last_checkpoint_; }
  std::string checkpoint();  // writes one now (rank 0) and returns its path

 private:
  void setup();
  std::vector<std::string> read_paths() const;
  RowSourceOptions source_options(int64_t global_rows, bool single_pass) const;
  std::vector<Batch> next_micro_batches(int64_t* micro_batches_in_global_batch);
  void append_metrics(const nlohmann::json& line) const;
  void truncate_metrics_after(int64_t step) const;
  void write_loss_curve() const;

  TrainConfig config_;
  TrainOptions options_;
  std::unique_ptr<RunDirectory> run_directory_;  // held for the whole run: the lock is released last
  std::unique_ptr<Model> model_;
  std::vector<Param> params_;
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<RowSource> source_;
  std::map<std::string, std::vector<Batch>> validation_;  // domain -> this rank's micro-batches
  Rng rng_;  // draws one seed per step for the EMO pool sizes of its micro-batches
  TrainState state_;
  int stop_signal_ = 0;
  TrainTiming timing_;
  std::vector<StepMetrics> history_;
  CollapseWatch collapse_watch_;
  std::string last_checkpoint_;
};

}  // namespace emo
