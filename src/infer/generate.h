// Text generation with the inference decoder, and expert selection done by the inference engine itself
// (layerwise, docs/emo.md §5): a layer's experts are chosen from the routing probabilities of the
// calibration tokens at that layer (earlier layers already restricted), and only the chosen experts are
// ever loaded.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "infer/decoder.h"
#include "infer/sampler.h"
#include "select/subset.h"

namespace emo {

// Restricts every MoE layer of `weights` to the subset (checked against the model first).
void apply_subset(InferWeights& weights, const ExpertSubset& subset);

// Layerwise selection over `sequences` (each cut to the model's context): runs them layer by layer, one
// decoder each (decoders[i] must be empty and hold sequences[i]); at MoE layer l takes a_{l,e} = the mean
// over all tokens of the routed softmax probability, keeps the top keep_k - n_s routed experts (ties: lower
// index) plus the shared one(s), restricts layer l of `weights` to them, and runs the layer's experts. The
// decoders end holding their sequence in the cache, with the last token's logits in pass().logits.
// `chosen`, when set, is called with each layer's routed choice before any of its experts is read (so a
// caller can fetch just those experts first: `emo pull`).
using LayerChosen = std::function<void(int64_t layer, const std::vector<int32_t>& routed)>;
ExpertSubset select_layerwise(InferWeights& weights, const std::vector<Decoder*>& decoders,
                              const std::vector<std::vector<int32_t>>& sequences, int64_t keep_k,
                              const std::string& description, const LayerChosen& chosen = {});

// The same from calibration examples, with decoders of its own that are released afterwards.
ExpertSubset select_layerwise(InferWeights& weights, const std::vector<std::vector<int32_t>>& sequences,
                              int64_t keep_k, const std::string& description, const LayerChosen& chosen = {});

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  SamplingOptions sampling;
  std::optional<int32_t> eos_id;  // stop after generating it
  int64_t auto_experts = 0;       // > 0: keep this many experts per layer chosen from the prompt (layerwise)
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated, the EOS included when it stopped the run
  int64_t prompt_tokens = 0;
  int64_t decode_steps = 0;  // single-token forwards (every generated token after the first)
  double prompt_seconds = 0, decode_seconds = 0;
  std::string stop_reason;             // "eos", "length", "context" or "stop" (on_token said so)
  std::optional<ExpertSubset> chosen;  // with auto_experts

  double prompt_tokens_per_second() const;
  double decode_tokens_per_second() const;
  static constexpr const char* kFormat = "emo-generate";  // "format" of to_json (emo generate --json)
  nlohmann::json to_json() const;
};

// Called with each generated token as soon as it is chosen; returning false ends the run (a stop string).
using TokenSink = std::function<bool(int32_t)>;

// Generates after `prompt` with `decoder` (which must be empty; its capacity bounds prompt + generated).
// The repetition penalty counts the prompt's tokens and the generated ones as seen. Throws emo::Error when
// the prompt is empty or longer than the decoder's capacity.
GenerateResult generate(Decoder& decoder, const std::vector<int32_t>& prompt, const GenerateOptions& options,
                        const TokenSink& on_token = {});

}  // namespace emo
