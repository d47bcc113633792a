// The configuration of one training run, as data: read from a JSON file, overridden from the command line
// ("optimizer.lr=1e-3"), written beside every checkpoint so a run can be resumed and reproduced.
// Defaults follow docs/emo.md §4 (the released recipe).
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/model.h"

namespace emo {

struct ModelSize {
  int64_t d = 128;             // hidden size
  int64_t layers = 4;          // L
  int64_t heads = 4;           // H
  int64_t kv_heads = 4;        // Hkv (GQA when < heads)
  int64_t experts = 64;        // E per layer, shared included
  int64_t top_k = 4;           // K, shared included
  int64_t shared_experts = 1;  // n_s
  int64_t expert_width = 64;   // f (dense: the MLP width)
  int64_t vocab = 0;           // 0 = from the tokenizer (or dataset), rounded up to a multiple of 128
  int64_t max_position = 4096;
  double rope_theta = 500000.0;
};

struct RoutingConfig {
  std::string mode = "emo";  // emo | standard | dense
  int64_t pool_min = 0;      // d_min; 0 = K
  int64_t pool_max = 0;      // d_max; 0 = E
  int64_t pool_eval = 32;    // d_eval (validation)
  bool intra_document_attention = true;
};

struct LossConfig {
  double output_z = 1e-5;
  double lb = 0.1;                  // alpha
  double router_z = 0.001;          // beta
  std::string lb_scope = "global";  // global | micro_batch (the paper's instability ablation)
};

struct OptimizerConfig {
  double lr = 4e-3;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;  // none on embeddings and norms
  double grad_clip = 1.0;     // 0 = no clipping
};

struct ScheduleConfig {
  std::string kind = "cosine";  // cosine | wsd | anneal | constant
  int64_t warmup_steps = 2000;
  double final_lr_ratio = 0.1;  // floor of cosine and wsd, end of anneal, as a fraction of lr
  int64_t decay_steps = 0;      // wsd: length of the final linear decay (0 = 20% of the run)
  // anneal: linear from anneal_start_lr at anneal_start_step down to final_lr_ratio * lr at the last step.
  // `emo train --anneal-from CKPT` fills both from the checkpoint.
  int64_t anneal_start_step = 0;
  double anneal_start_lr = 0;  // 0 = lr
};

struct BatchConfig {
  int64_t micro_batch_rows = 4;
  int64_t global_batch_rows = 16;  // gradient accumulation: global / (micro * ranks) micro-batches per rank
  int64_t row_length = 256;
};

struct RunConfig {
  int64_t steps = 0;   // total optimizer steps (0 = derived from tokens)
  int64_t tokens = 0;  // total training tokens (used when steps = 0)
  uint64_t seed = 0;
  int64_t checkpoint_every = 500;
  int64_t keep_last = 3;
  int64_t validate_every = 500;  // 0 = only at the end
  int64_t validation_rows = 64;  // rows per domain per validation
  int64_t log_every = 1;         // metrics.jsonl line every N steps
};

struct DataConfig {
  // A dataset path the data packer reads, or "synthetic" (generated documents: tests and benchmarks).
  std::string train = "synthetic";
  std::map<std::string, std::string> validation;  // domain -> dataset path ("synthetic" allowed)
  std::string tokenizer;                          // tokenizer.json (vocab size, EOS); optional
  int64_t eos_id = -1;                            // -1 = from the tokenizer (synthetic data: vocab - 1)
};

struct TrainConfig {
  ModelSize model;
  RoutingConfig routing;
  LossConfig loss;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  BatchConfig batch;
  RunConfig run;
  DataConfig data;

  // Throws "[train-config] <source>: <problem>" for values that cannot work.
  void validate(const std::string& source = "config") const;
  // Total steps: run.steps, or run.tokens / tokens per step rounded up.
  int64_t total_steps() const;
  int64_t tokens_per_step() const { return batch.global_batch_rows * batch.row_length; }

  ModelConfig model_config() const;  // the Hugging Face config of the model to train (needs vocab, eos)
  LossWeights loss_weights() const;
  RoutingOptions routing_options(bool training) const;

  nlohmann::json to_json() const;
  // Unknown keys are errors naming the key (a typo must not silently train the wrong model).
  static TrainConfig from_json(const nlohmann::json& j, const std::string& source = "config");
  static TrainConfig load(const std::string& path);
};

// Applies "section.key=value" to a config JSON: the key must exist, the value is parsed as the existing
// value's type (number, bool, string; objects such as data.validation take "data.validation.DOMAIN=path").
void apply_override(nlohmann::json& config, const std::string& assignment);

// `train --resume`: the configuration of the resumed run (`now`: the checkpoint's own with the command line
// applied) against the checkpoint's. A change that would make it another run (model sizes, routing, losses,
// optimizer, schedule, batch, seed, training data, tokenizer) throws "[train] SOURCE: --resume: model.d is
// 128 in the checkpoint, 64 now; ..." naming the key and both values. Changes a run survives (run.steps /
// run.tokens to extend it, the checkpoint, validation and log intervals, the validation sets) are allowed
// and returned as "run.steps 2 -> 4" lines to say so. Values filled in at the start (model.vocab 0,
// data.eos_id -1) are taken from the checkpoint.
std::vector<std::string> check_resume_changes(const TrainConfig& checkpoint, TrainConfig& now,
                                              const std::string& source);

}  // namespace emo
