// The expert subset file: which experts of each MoE layer a task keeps (docs/emo.md §5), made by
// `emo select`, read by `emo prune`, `emo eval --subset` and subset routing. JSON (docs/formats):
//   {
//     "format": "emo-expert-subset", "version": 1,
//     "model": {"num_hidden_layers": 16, "num_experts": 128, "num_shared_experts": 1},
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
  // The model the subset was made for.
  int64_t num_layers = 0;
  int64_t num_experts = 0;  // E per layer, shared included
  int64_t num_shared = 1;   // n_s per layer
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

  // Subset routing of the full model with this subset (RoutingMode::kSubset).
  RoutingOptions routing_options() const;
};

}  // namespace emo
