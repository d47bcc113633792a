// `emo info MODEL`: what a checkpoint is, read from its headers only (config.json, the safetensors headers,
// tokenizer.json, pruning_metadata.json; no weight byte is read): the architecture, the parameter count in
// all and per token, the stored dtypes, the experts of each layer, the tokenizer beside it, whether it is a
// pruned subset and of what, and the memory a run needs (the weights kept resident plus the KV cache).
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"

namespace emo {

struct StoredDtype {
  int64_t tensors = 0, params = 0, bytes = 0;
};

struct TokenizerFacts {
  std::string path;
  int64_t vocab_size = 0;
  std::optional<int32_t> eos_id, pad_id;
  std::string problem;  // why the file could not be used ("" when it could), e.g. a parse error
};

// The resident memory of a run keeping `keep_k` experts per layer (shared included; all of them for 0): the
// size of the checkpoint `emo prune` (or `emo pull --keep-k`) writes, whose routers keep the kept rows only.
struct MemoryNeed {
  int64_t keep_k = 0;         // 0: every expert of the checkpoint
  int64_t weight_bytes = 0;   // every non-expert tensor + the kept experts
  int64_t weight_params = 0;  // the parameters of those weights
  int64_t kv_bytes_per_token = 0;
  int64_t context = 0;  // max_position_embeddings
  int64_t total_at_context() const { return weight_bytes + kv_bytes_per_token * context; }
};

struct ModelInfo {
  std::string dir;
  ModelConfig config;
  std::string weights_layout;  // "model.safetensors" or "model.safetensors.index.json (N shards)"
  int64_t files = 0, tensors = 0;
  int64_t params = 0;            // every parameter (int8 row scales not counted)
  int64_t active_params = 0;     // used per token: non-expert + K experts per layer
  int64_t embedding_params = 0;  // embed_tokens + lm_head (once when tied)
  int64_t weight_bytes = 0;      // every tensor byte (scales included)
  int64_t non_expert_bytes = 0, non_expert_params = 0;
  std::map<std::string, StoredDtype> dtypes;  // by safetensors dtype name
  std::vector<int64_t> experts_per_layer;     // E of each MoE layer (shared included)
  std::vector<int64_t> shared_per_layer;      // n_s of each layer
  std::vector<int64_t> expert_bytes_per_layer, expert_params_per_layer;  // of one expert (the layer's mean)
  std::vector<int64_t> router_bytes_per_layer,
      router_params_per_layer;  // the whole router (one row per expert)
  std::optional<TokenizerFacts> tokenizer;
  std::vector<std::string> tokenizer_looked_at;
  std::optional<nlohmann::json> pruning;  // pruning_metadata.json
  std::string quantization;               // config.json's quantization_config, dumped ("" when none)

  bool uniform_experts() const;
  // Memory of a run keeping keep_k experts per layer (0: all). Throws for keep_k outside [n_s + 1, E].
  MemoryNeed memory(int64_t keep_k) const;
  // The runs worth showing: every expert, and for a model with 8 or more experts per layer 1/8, 1/4 and 1/2
  // of them, plus `extra_keep_k` when not 0.
  std::vector<MemoryNeed> memory_table(int64_t extra_keep_k = 0) const;

  static constexpr const char* kFormat = "emo-model-info";  // "format" of to_json (emo info --json)
  nlohmann::json to_json(int64_t extra_keep_k = 0) const;
  std::string text(int64_t extra_keep_k = 0) const;
};

// Reads the headers of the model in `dir` (a model directory, see resolve_model_dir). Throws emo::Error for a
// missing or malformed config.json or safetensors header, naming the file; a tokenizer.json that cannot be
// read is reported in `tokenizer.problem`, not thrown.
ModelInfo inspect_model(const std::string& dir);

}  // namespace emo
