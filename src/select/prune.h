// Pruning (docs/emo.md §5): a smaller model that keeps only a subset's experts, in the same Hugging
// Face layout. Per MoE layer the router rows and the experts are taken in the reference's order: the kept
// routed experts ascending by original index, then the shared expert(s) last; num_experts = keep_k and
// num_experts_per_tok = min(K, keep_k). Routing the pruned model is then exactly subset routing of the full
// one (softmax over the kept routed experts only, same top-k, same raw weights).
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "io/output_dir.h"
#include "model/config.h"
#include "model/model.h"
#include "select/subset.h"

namespace emo {

// Config of the pruned model.
ModelConfig pruned_config(const ModelConfig& full, const ExpertSubset& subset);

// Original expert index of each expert of the pruned layer l: subset.routed[l] then subset.shared[l].
std::vector<int32_t> kept_experts(const ExpertSubset& subset, int64_t layer);

// One tensor of the pruned model: where it comes from and, for a router, which rows it takes.
struct PrunedTensor {
  std::string name;           // in the pruned model
  std::string source;         // in the full model
  std::vector<int32_t> rows;  // rows of the source, in order; empty = the whole tensor
};

// Every tensor of the pruned model, in the pruned model's checkpoint order. `full_names` are the full model's
// tensor names; names not about experts are copied unchanged, dropped experts are left out.
std::vector<PrunedTensor> prune_plan(const ExpertSubset& subset, const std::vector<std::string>& full_names);

// (layer, expert) of a tensor "model.layers.L.mlp.experts.E.*", nullopt for any other tensor.
std::optional<std::pair<int64_t, int64_t>> expert_of_tensor(const std::string& name);

// The pruned model built in memory from a full one (the subset is checked against it).
std::unique_ptr<Model> prune_model(const Model& full, const ExpertSubset& subset);

// pruning_metadata.json: kept original indices per layer, method, keep_k, calibration, the parent's shape.
nlohmann::json pruning_metadata(const ExpertSubset& subset, const ModelConfig& full);

struct PruneSummary {
  int64_t tensors = 0;
  int64_t params_in = 0, params_out = 0;
  int64_t bytes_in = 0, bytes_out = 0;  // tensor files
  double seconds = 0;
};

// `emo prune`: reads the checkpoint in model_dir tensor by tensor (safetensors, any stored dtype, kept as
// stored) and writes the pruned checkpoint to out_dir: config.json, model.safetensors, pruning_metadata.json,
// and the companion files (kCompanionFiles: the tokenizer's, generation_config.json) copied when present.
// `source`, when not null, is recorded as pruning_metadata.json's "source" (where the parent came from:
// `emo pull` names the Hub repository, revision, commit and file hashes). out_dir is written through
// io/output_dir under `rules` (model_dir is added to its inputs): checked before any work, refused when it
// is not a new output or a previous one of the same command with rules.force.
PruneSummary prune_checkpoint(const std::string& model_dir, const ExpertSubset& subset,
                              const std::string& out_dir, const nlohmann::json& source = nullptr,
                              OutputRules rules = {"prune", {}, false});

// The files beside the weights that a derived checkpoint (pruned, quantised) takes over unchanged.
inline constexpr const char* kCompanionFiles[] = {"tokenizer.json", "tokenizer_config.json",
                                                  "special_tokens_map.json", "generation_config.json"};

}  // namespace emo
