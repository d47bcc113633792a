// The expert subset file: which experts of each MoE layer a task keeps (docs/emo.md §5), made by
// `emo select`, read by `emo prune`, `emo eval --subset` and subset routing. JSON (docs/formats):
//   {
//     "format": "emo-expert-subset", "version": 1,
//     "model": {"num_hidden_layers": 16, "num_experts": 128, "num_shared_experts": 1, "hidden_size": 2048,
//               "fingerprint": "3f0c..."},   the checkpoint it was chosen on (checkpoint_fingerprint)
//     "keep_k": 16,                      experts kept per layer, the shared expert(s) counted
//     "method": "layerwise",
//     "calibration": {"description": "...", "examples": 1, "tokens": 412, "seed": 0},
//     "layers": [{"layer": 0, "routed": [3, 17, ...], "shared": [127]}, ...]
//   }
// "routed" holds the kept ORIGINAL routed expert indices, ascending (keep_k - num_shared of them); "shared"
// the shared experts' original indices (always kept, the last num_shared indices of the layer).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/model.h"

namespace emo {

// How the examples that chose a subset were described (recorded, not interpreted).
struct CalibrationInfo {
  std::string description;  // "examples.txt", "4 documents of domain law from validation.bin", ...
  int64_t examples = 0;     // number of example sequences
  int64_t tokens = 0;       // tokens they hold
  uint64_t seed = 0;
};

struct ExpertSubset {
  static constexpr const char* kFormat = "emo-expert-subset";  // the file's "format"

  // The model the subset was made for.
  int64_t num_layers = 0;
  int64_t num_experts = 0;  // E per layer, shared included
  int64_t num_shared = 1;   // n_s per layer
  int64_t hidden_size = 0;  // 0: not recorded (a file of an older emo)
  std::string fingerprint;  // checkpoint_fingerprint of the model it was chosen on; "": not recorded
  int64_t keep_k = 0;       // experts kept per layer, shared included
  std::string method;
  CalibrationInfo calibration;
  std::vector<std::vector<int32_t>> routed;  // [L][keep_k - n_s] kept original routed indices, ascending
  std::vector<std::vector<int32_t>> shared;  // [L][n_s] the shared experts' original indices

  // An empty subset for `config` (layers sized, lists empty): fill routed[l], then call finish().
  static ExpertSubset for_model(const ModelConfig& config, int64_t keep_k, std::string method);
  // Sorts every routed list ascending.
  void finish();

  nlohmann::json to_json() const;
  // Parses the JSON; `source` names the file in error messages. Structural checks only (see check()).
  static ExpertSubset from_json(const nlohmann::json& j, const std::string& source);
  // Writes the file atomically (path.tmp, then rename).
  void save(const std::string& path) const;
  // Reads and checks the file against the model it is to be used with.
  static ExpertSubset load(const std::string& path, const ModelConfig& config);

  // Throws emo::Error "[subset] <source>: layer L: <problem>" when the subset does not fit `config`: wrong
  // layer count, a different number of experts, keep_k above the layer's experts or not above its shared
  // count, an index out of range or not routed, a duplicate, a list of the wrong length.
  void check(const ModelConfig& config, const std::string& source = "subset") const;

  // Throws emo::Error "[op] <source>: chosen on another checkpoint ..." when the model in model_dir is not
  // the one the subset was chosen on (another hidden size or fingerprint); with `force` a warning instead.
  // Nothing is checked of what the file does not record.
  void check_source(const std::string& model_dir, const ModelConfig& config, const std::string& source,
                    bool force, const std::string& op) const;

  // Subset routing of the full model with this subset (RoutingMode::kSubset).
  RoutingOptions routing_options() const;
};

// What identifies a checkpoint for its subsets: the first 16 hex digits of the sha256 of every MoE layer's
// router weights rounded to bf16, so an fp32, bf16 or int8 copy of one model shares it (int8 keeps the
// routers unquantised) while another training run or another shape does not. "" for a dense model.
std::string checkpoint_fingerprint(const std::string& model_dir, const ModelConfig& config);

}  // namespace emo
