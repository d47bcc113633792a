#include "infer/generate.h"

#include <algorithm>

#include "core/error.h"
#include "core/log.h"
#include "select/selection.h"

namespace emo {
namespace {

constexpr const char* kOp = "generate";

void check_keep_k(const ModelConfig& config, int64_t keep_k) {
  EMO_CHECK(config.is_moe(), kOp, "the model is dense: there are no experts to select");
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    EMO_CHECK(keep_k <= config.experts_in_layer(l), kOp, "keep-k ", keep_k, " exceeds the ",
              config.experts_in_layer(l), " experts of layer ", l);
    EMO_CHECK(keep_k > config.shared_in_layer(l), kOp, "keep-k ", keep_k, " keeps no routed expert of layer ",
              l);
  }
}

}  // namespace

void apply_subset(InferWeights& weights, const ExpertSubset& subset) {
  subset.check(weights.config());
  for (int64_t l = 0; l < weights.config().num_hidden_layers; ++l) weights.keep_experts(l, subset.routed[l]);
}

ExpertSubset select_layerwise(InferWeights& weights, const std::vector<Decoder*>& decoders,
                              const std::vector<std::vector<int32_t>>& sequences, int64_t keep_k,
                              const std::string& description, const LayerChosen& chosen) {
  const ModelConfig& config = weights.config();
  check_keep_k(config, keep_k);
  EMO_CHECK(!sequences.empty() && decoders.size() == sequences.size(), kOp,
            "selection needs one decoder per ", "sequence and at least one sequence");
  ExpertSubset subset = ExpertSubset::for_model(config, keep_k, "layerwise");
  subset.calibration.description = description;
  subset.calibration.examples = static_cast<int64_t>(sequences.size());
  for (size_t i = 0; i < sequences.size(); ++i) {
    decoders[i]->begin(sequences[i]);
    subset.calibration.tokens += static_cast<int64_t>(sequences[i].size());
  }
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const int64_t Er = config.routed_in_layer(l);
    std::vector<double> usage(static_cast<size_t>(Er), 0.0);  // a_{l,e} summed over tokens
    for (Decoder* d : decoders) {
      d->attention(l);
      d->router(l);
      const Tensor& probs = d->pass().routing.probs;  // [N, Er]
      for (int64_t n = 0; n < d->pass().N; ++n)
        for (int64_t e = 0; e < Er; ++e) usage[e] += probs[n * Er + e];
    }
    // The mean ranks as the sum; top_experts breaks ties toward the lower index, as `emo select`.
    subset.routed[l] = top_experts(usage, keep_k - config.shared_in_layer(l));
    if (chosen) chosen(l, subset.routed[l]);
    weights.keep_experts(l, subset.routed[l]);
    for (Decoder* d : decoders) d->experts(l);
  }
  for (Decoder* d : decoders) d->finish();
  subset.finish();
  return subset;
}

ExpertSubset select_layerwise(InferWeights& weights, const std::vector<std::vector<int32_t>>& sequences,
                              int64_t keep_k, const std::string& description, const LayerChosen& chosen) {
  const int64_t context = weights.config().max_position_embeddings;
  std::vector<std::vector<int32_t>> cut;
  std::vector<std::unique_ptr<Decoder>> owned;
  std::vector<Decoder*> decoders;
  for (const auto& s : sequences) {
    if (s.empty()) continue;
    cut.emplace_back(s.begin(), s.begin() + std::min<int64_t>(context, static_cast<int64_t>(s.size())));
    owned.push_back(std::make_unique<Decoder>(weights, static_cast<int64_t>(cut.back().size())));
    decoders.push_back(owned.back().get());
  }
  return select_layerwise(weights, decoders, cut, keep_k, description, chosen);
}

double GenerateResult::prompt_tokens_per_second() const {
  return prompt_seconds > 0 ? static_cast<double>(prompt_tokens) / prompt_seconds : 0.0;
}

double GenerateResult::decode_tokens_per_second() const {
  return decode_seconds > 0 ? static_cast<double>(decode_steps) / decode_seconds : 0.0;
}

nlohmann::json GenerateResult::to_json() const {
  nlohmann::json j = {{"format", kFormat},
                      {"prompt_tokens", prompt_tokens},
                      {"generated_tokens", static_cast<int64_t>(tokens.size())},
                      {"prompt_seconds", prompt_seconds},
                      {"prompt_tokens_per_second", prompt_tokens_per_second()},
                      {"decode_steps", decode_steps},
                      {"decode_seconds", decode_seconds},
                      {"decode_tokens_per_second", decode_tokens_per_second()},
                      {"stop", stop_reason}};
  if (chosen) j["auto_experts"] = chosen->to_json();
  return j;
}

GenerateResult generate(Decoder& decoder, const std::vector<int32_t>& prompt, const GenerateOptions& options,
                        const TokenSink& on_token) {
  const ModelConfig& config = decoder.weights().config();
  EMO_CHECK(!prompt.empty(), kOp, "the prompt is empty");
  EMO_CHECK(static_cast<int64_t>(prompt.size()) <= config.max_position_embeddings, kOp, "the prompt has ",
            prompt.size(), " tokens, more than the model's context of ", config.max_position_embeddings);
  EMO_CHECK(decoder.length() == 0, kOp, "the decoder already holds ", decoder.length(), " tokens");
  EMO_CHECK(options.max_new_tokens >= 1, kOp, "max_new_tokens must be at least 1");
  Sampler sampler(options.sampling);
  GenerateResult result;
  result.prompt_tokens = static_cast<int64_t>(prompt.size());

  Timer prompt_timer;
  const Tensor* logits;
  if (options.auto_experts > 0) {
    result.chosen = select_layerwise(decoder.weights(), {&decoder}, {prompt}, options.auto_experts, "prompt");
    logits = &decoder.pass().logits;
  } else {
    logits = &decoder.forward(prompt);
  }
  result.prompt_seconds = prompt_timer.seconds();

  const int64_t V = config.vocab_size;
  const double penalty = options.sampling.repetition_penalty;
  std::vector<int32_t> seen = prompt;
  std::vector<float> penalised;  // [V] the logits after the repetition penalty
  Timer decode_timer;
  while (true) {
    const float* scores = logits->data();
    if (penalty != 1.0) {
      penalised.assign(scores, scores + V);
      apply_repetition_penalty(penalised.data(), V, seen, penalty);
      scores = penalised.data();
    }
    const int32_t token = sampler.next(scores, V);
    result.tokens.push_back(token);
    seen.push_back(token);
    if (on_token && !on_token(token)) {
      result.stop_reason = "stop";
      break;
    }
    if (options.eos_id && token == *options.eos_id) {
      result.stop_reason = "eos";
      break;
    }
    if (static_cast<int64_t>(result.tokens.size()) >= options.max_new_tokens) {
      result.stop_reason = "length";
      break;
    }
    if (decoder.length() >= decoder.capacity()) {
      result.stop_reason = "context";
      break;
    }
    logits = &decoder.forward({token});
    ++result.decode_steps;
  }
  result.decode_seconds = result.decode_steps > 0 ? decode_timer.seconds() : 0.0;
  return result;
}

}  // namespace emo
