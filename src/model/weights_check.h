// config.json against the safetensors headers of a model directory, before anything is sized by the config.
// Every tensor the config implies (docs/emo.md §2: embedding, per layer the attention projections, norms,
// router, each expert's gate/up/down, final norm, lm_head unless tied) must exist with the shape the config
// implies. The layer count is checked against the layers the weights hold before any per-layer work, and
// each layer's expert count against its router before any per-expert work, so no loop runs, and nothing is
// allocated, by a size the weights do not back. Every model loader opens a model directory through here.
#pragma once

#include <functional>
#include <string>

#include "io/safetensors.h"
#include "model/config.h"

namespace emo {

struct CheckedCheckpoint {
  ModelConfig config;
  SafetensorsCheckpoint weights;
};

// Reads DIR/config.json (ModelConfig::load), opens the weights of DIR and checks one against the other.
// Throws "[model] DIR/config.json: hidden_size 1048576 but tensor 'model.embed_tokens.weight' has shape
// [32768, 256] in DIR/model.safetensors (the config implies [32768, 1048576])", or "... no tensor 'NAME'".
CheckedCheckpoint open_checked_checkpoint(const std::string& dir);

// The check alone; config_path names config.json in the messages.
void check_config_matches_weights(const ModelConfig& config, const SafetensorsCheckpoint& weights,
                                  const std::string& config_path);

// Non-finite weights (NaN, infinity) are refused where a loader first reads a tensor's values: each model
// loader calls check_finite on every tensor it uses, as it uses it (inference: the kept experts when they
// are loaded, never the others). `emo --allow-nonfinite` turns the check off for the process.
void set_allow_nonfinite_weights(bool allow);
bool nonfinite_weights_allowed();

// Throws "[model] FILE: tensor 'NAME' [64, 32] holds nan at index 1234 (element [38, 18]); ..." naming the
// first bad element, unless non-finite weights are allowed. `file` is the file the tensor lives in.
void check_finite(const TensorInfo& tensor, const std::string& file);
// The same piece by piece (kCheckPieceBytes), calling after_piece(begin, bytes) on each piece checked.
constexpr int64_t kCheckPieceBytes = int64_t{16} << 20;
void check_finite(const TensorInfo& tensor, const std::string& file,
                  const std::function<void(const void* begin, int64_t bytes)>& after_piece);
// The same for the tensor `name` of a checkpoint (the message names its shard).
void check_finite(const SafetensorsCheckpoint& weights, const std::string& name);

}  // namespace emo
