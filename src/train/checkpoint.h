// Training checkpoints. A checkpoint is a directory RUN/checkpoints/step-NNNNNNNN holding
//   config.json + model.safetensors   the model in the Hugging Face layout (Model::save): loadable on its own
//   optimizer.safetensors             AdamW moments "<param>.exp_avg" / "<param>.exp_avg_sq"
//   train_state.json                  step, tokens, data position, RNG state, the full TrainConfig
//   train_config.json                 the TrainConfig alone (to read or edit for a new run)
//   tokenizer.json                    a copy of data.tokenizer, when the run names one
// It is written under a temporary name and renamed into place, then RUN/checkpoints/latest (a one-line file)
// is replaced atomically: a crash at any moment leaves the previous checkpoint intact and `latest` pointing
// at a complete one. Only the last K are kept.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "model/model.h"
#include "train/adamw.h"
#include "train/config.h"

namespace emo {

// The most steps a run may have (a state or checkpoint name beyond it is damaged, not a run).
inline constexpr int64_t kMaxSteps = 1'000'000'000'000;

struct TrainState {
  int64_t step = 0;     // optimizer steps completed
  int64_t tokens = 0;   // training tokens consumed
  nlohmann::json data;  // RowSource::state()
  uint64_t rng_state = 0, rng_inc = 0;
  double elapsed_seconds = 0;
  int world_size = 1;

  nlohmann::json to_json(const TrainConfig& config) const;
  static TrainState from_json(const nlohmann::json& j, const std::string& source);
};

// "step-00000100"
std::string checkpoint_name(int64_t step);

// Test hook: called between the files of a checkpoint being written ("model", "optimizer", "state"); a
// throwing hook simulates a crash mid-write.
using CheckpointFault = std::function<void(const std::string& stage)>;

// Writes the checkpoint of `state.step` under `checkpoints_dir` atomically, updates `latest`, removes all but
// the newest `keep_last`. Returns the checkpoint's path.
std::string save_checkpoint(const std::string& checkpoints_dir, const Model& model, AdamW& optimizer,
                            const std::vector<Param>& params, const TrainState& state,
                            const TrainConfig& config, int64_t keep_last,
                            const CheckpointFault& fault = nullptr);

// The checkpoint a path names: a checkpoint directory itself, a checkpoints directory or a run directory
// (their `latest`, or the newest complete step-* when `latest` is missing). "" when there is none.
std::string resolve_checkpoint(const std::string& path);

// A short name for a model directory, for legends and tables: its last path component, or the run's name
// for a checkpoint of a run (run/checkpoints/step-00000100 -> "run").
std::string short_model_name(const std::string& model_dir);

struct LoadedCheckpoint {
  std::string path;
  TrainConfig config;
  TrainState state;
  std::unique_ptr<Model> model;
};

// Reads only a checkpoint's TrainConfig and state (train_state.json).
TrainConfig read_checkpoint_config(const std::string& checkpoint_dir, TrainState* state = nullptr);
// Reads a checkpoint's model, config and state (not the optimizer: see load_optimizer).
LoadedCheckpoint load_checkpoint(const std::string& checkpoint_dir);
// Restores the AdamW moments and step count of a checkpoint into `optimizer`.
void load_optimizer(const std::string& checkpoint_dir, AdamW& optimizer, const std::vector<Param>& params,
                    int64_t steps_taken);

}  // namespace emo
