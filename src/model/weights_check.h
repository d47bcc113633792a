// config.json against the safetensors headers of a model directory, before anything is sized by the config.
// Every tensor the config implies (docs/emo.md §2: embedding, per layer the attention projections, norms,
// router, each expert's gate/up/down, final norm, lm_head unless tied) must exist with the shape the config
// implies. The layer count is checked against the layers the weights hold before any per-layer work, and
// each layer's expert count against its router before any per-expert work, so no loop runs, and nothing is
// allocated, by a size the weights do not back. Every model loader opens a model directory through here.
#pragma once

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

}  // namespace emo
