// Legend: L = MoE layers, N = tokens of one example, C = width, E = experts of a layer, Er = routed experts,
// K = slots per token (routed + shared).
#include "select/selection.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"
#include "model/forward_state.h"

namespace emo {
namespace {

Batch example_batch(const std::vector<int32_t>& tokens, const ModelConfig& config) {
  const int32_t eos = static_cast<int32_t>(config.eos_token_id.value_or(-1));
  return Batch::from_tokens(1, static_cast<int64_t>(tokens.size()), tokens, {}, eos);
}

void check_keep_k(const ModelConfig& config, int64_t keep_k) {
  EMO_CHECK(config.is_moe(), "select", "the model is dense: there are no experts to select");
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const int64_t E = config.experts_in_layer(l), ns = config.shared_in_layer(l);
    EMO_CHECK(keep_k <= E, "select", "keep-k ", keep_k, " exceeds the ", E, " experts of layer ", l);
    EMO_CHECK(keep_k > ns, "select", "keep-k ", keep_k, " keeps no routed expert of layer ", l, " (", ns,
              " shared expert(s) are counted)");
  }
}

// Every routed expert of every layer: subset routing that restricts nothing yet.
std::vector<std::vector<int32_t>> all_routed(const ModelConfig& config) {
  std::vector<std::vector<int32_t>> lists(config.num_hidden_layers);
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    lists[l].resize(config.routed_in_layer(l));
    std::iota(lists[l].begin(), lists[l].end(), 0);
  }
  return lists;
}

std::vector<int32_t> random_experts(Rng& rng, int64_t routed, int64_t count) {
  std::vector<int32_t> order(routed);
  std::iota(order.begin(), order.end(), 0);
  for (int64_t i = 0; i < count; ++i) std::swap(order[i], order[rng.uniform_int(i, routed - 1)]);
  order.resize(count);
  std::sort(order.begin(), order.end());
  return order;
}

// usage[e] += the routed softmax probability of expert e, summed over the tokens of r.
void add_probabilities(std::vector<double>& usage, const LayerRouting& r) {
  for (int64_t n = 0; n < r.N; ++n)
    for (int64_t e = 0; e < r.routed; ++e) usage[e] += r.probs[n * r.routed + e];
}

// s_t = max(0, 1 - cos(h_t, h_t + moe_out_t)) for one token; h and next are [C].
double token_contribution(const float* h, const float* next, int64_t C) {
  double dot = 0, hh = 0, nn = 0;
  for (int64_t c = 0; c < C; ++c) {
    dot += static_cast<double>(h[c]) * next[c];
    hh += static_cast<double>(h[c]) * h[c];
    nn += static_cast<double>(next[c]) * next[c];
  }
  if (hh <= 0 || nn <= 0) return 0.0;
  return std::max(0.0, 1.0 - dot / std::sqrt(hh * nn));
}

// Adds one example's EASY-EP contributions of layer l to score [Er].
void add_easy_ep_layer(std::vector<double>& score, const ForwardState& state, int64_t l, int64_t C) {
  const LayerState& s = state.layers[l];
  const Tensor& next = l + 1 < static_cast<int64_t>(state.layers.size()) ? state.layers[l + 1].input
                                                                         : state.final_input;  // [N, C]
  const int64_t N = s.mid.dim(0), Er = s.routing.routed;
  std::vector<double> contribution(N);  // [N] s_t
  for (int64_t n = 0; n < N; ++n)
    contribution[n] = token_contribution(s.mid.data() + n * C, next.data() + n * C, C);
  const MoeCache& cache = s.moe;  // assignments sorted by expert; expert_out [A, C] unweighted
  for (int64_t e = 0; e < Er; ++e) {
    for (int64_t p = cache.expert_offsets[e]; p < cache.expert_offsets[e + 1]; ++p) {
      const int32_t row = cache.rows[p];  // token * K + slot
      const float* out = cache.expert_out.data() + p * C;
      double norm = 0;
      for (int64_t c = 0; c < C; ++c) norm += static_cast<double>(out[c]) * out[c];
      score[e] += s.moe_weights[row] * std::sqrt(norm) * contribution[row / cache.K];
    }
  }
}

}  // namespace

SelectionMethod parse_selection_method(const std::string& name) {
  if (name == "layerwise") return SelectionMethod::kLayerwise;
  if (name == "global") return SelectionMethod::kGlobal;
  if (name == "easy_ep" || name == "easy-ep") return SelectionMethod::kEasyEp;
  if (name == "random") return SelectionMethod::kRandom;
  fail("select", cat("unknown method '", name, "' (layerwise, global, easy_ep, random)"));
}

std::string selection_method_name(SelectionMethod method) {
  switch (method) {
    case SelectionMethod::kLayerwise:
      return "layerwise";
    case SelectionMethod::kGlobal:
      return "global";
    case SelectionMethod::kEasyEp:
      return "easy_ep";
    case SelectionMethod::kRandom:
      return "random";
  }
  return "unknown";
}

std::vector<int32_t> top_experts(const std::vector<double>& scores, int64_t count) {
  std::vector<int32_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return scores[a] > scores[b]; });
  order.resize(std::min<size_t>(order.size(), static_cast<size_t>(count)));
  std::sort(order.begin(), order.end());
  return order;
}

std::vector<std::vector<double>> routed_usage(const Model& model, const Examples& examples,
                                              const RoutingOptions& routing) {
  const ModelConfig& config = model.config();
  const int64_t L = config.num_hidden_layers;
  std::vector<std::vector<double>> usage(L);
  for (int64_t l = 0; l < L; ++l) usage[l].assign(config.routed_in_layer(l), 0.0);
  int64_t tokens = 0;
  for (const auto& sequence : examples.sequences) {
    auto state = model.infer(example_batch(sequence, config), routing);
    for (int64_t l = 0; l < L; ++l) add_probabilities(usage[l], state->routing(l));
    tokens += static_cast<int64_t>(sequence.size());
  }
  EMO_CHECK(tokens > 0, "select", "the examples hold no token");
  for (auto& layer : usage)
    for (double& a : layer) a /= static_cast<double>(tokens);
  return usage;
}

std::vector<std::vector<double>> easy_ep_scores(Model& model, const Examples& examples) {
  const ModelConfig& config = model.config();
  const int64_t L = config.num_hidden_layers;
  std::vector<std::vector<double>> scores(L);
  for (int64_t l = 0; l < L; ++l) scores[l].assign(config.routed_in_layer(l), 0.0);
  RoutingOptions standard;
  standard.training = false;
  for (const auto& sequence : examples.sequences) {
    // Model::forward keeps the per-expert outputs (MoeCache) and the residual stream EASY-EP needs.
    auto state = model.forward(example_batch(sequence, config), standard);
    for (int64_t l = 0; l < L; ++l) add_easy_ep_layer(scores[l], *state, l, config.hidden_size);
  }
  return scores;
}

LayerwiseSelection layerwise_selection(const Model& model, const Examples& examples, int64_t keep_k) {
  const ModelConfig& config = model.config();
  const int64_t L = config.num_hidden_layers;
  RoutingOptions routing;
  routing.mode = RoutingMode::kSubset;
  routing.training = false;
  routing.subset = all_routed(config);  // layers not chosen yet route over every expert
  // Every example advances one layer at a time, so layer l is measured with layers 0..l-1 already restricted
  // and the whole selection costs about one forward of the examples.
  std::vector<std::unique_ptr<ForwardState>> states;
  for (const auto& sequence : examples.sequences)
    states.push_back(model.begin_layers(example_batch(sequence, config), routing));
  LayerwiseSelection result;
  result.usage.resize(L);
  result.routed.resize(L);
  Progress progress("select", L, "layers");
  for (int64_t l = 0; l < L; ++l) {
    std::vector<double>& usage = result.usage[l];
    usage.assign(config.routed_in_layer(l), 0.0);
    int64_t tokens = 0;
    for (auto& state : states) {
      const LayerRouting& r = model.layer_router(*state, l, routing);
      add_probabilities(usage, r);
      tokens += r.N;
    }
    EMO_CHECK(tokens > 0, "select", "the examples hold no token");
    for (double& a : usage) a /= static_cast<double>(tokens);
    result.routed[l] = top_experts(usage, keep_k - config.shared_in_layer(l));
    routing.subset[l] = result.routed[l];
    for (auto& state : states) {
      model.layer_experts(*state, l, routing);
      state->layers[l].routing = LayerRouting();  // only the usage was needed
    }
    progress.update(l + 1);
  }
  progress.finish();
  return result;
}

ExpertSubset select_experts(Model& model, const Examples& input, const SelectionOptions& options) {
  const ModelConfig& config = model.config();
  check_keep_k(config, options.keep_k);
  Examples examples = input;
  truncate_examples(examples, config.max_position_embeddings);
  EMO_CHECK(examples.num_tokens() > 0, "select", "the examples hold no token");
  const int64_t L = config.num_hidden_layers;
  ExpertSubset subset =
      ExpertSubset::for_model(config, options.keep_k, selection_method_name(options.method));
  subset.calibration = {examples.description, static_cast<int64_t>(examples.sequences.size()),
                        examples.num_tokens(), options.seed};
  auto keep = [&](int64_t l) { return options.keep_k - config.shared_in_layer(l); };

  switch (options.method) {
    case SelectionMethod::kLayerwise: {
      subset.routed = layerwise_selection(model, examples, options.keep_k).routed;
      break;
    }
    case SelectionMethod::kGlobal: {
      RoutingOptions standard;
      standard.training = false;
      auto usage = routed_usage(model, examples, standard);
      for (int64_t l = 0; l < L; ++l) subset.routed[l] = top_experts(usage[l], keep(l));
      break;
    }
    case SelectionMethod::kEasyEp: {
      auto scores = easy_ep_scores(model, examples);
      for (int64_t l = 0; l < L; ++l) subset.routed[l] = top_experts(scores[l], keep(l));
      break;
    }
    case SelectionMethod::kRandom: {
      Rng rng(options.seed);
      for (int64_t l = 0; l < L; ++l)
        subset.routed[l] = random_experts(rng, config.routed_in_layer(l), keep(l));
      break;
    }
  }
  subset.finish();
  subset.check(config, "selection");
  return subset;
}

}  // namespace emo
