// config.json of docs/emo.md §2 <-> ModelConfig.
#include "model/config.h"

#include <algorithm>
#include <set>

#include "core/error.h"
#include "core/log.h"
#include "core/machine.h"
#include "io/json_file.h"

namespace emo {

namespace {

constexpr const char* kOp = "config";
constexpr const char* kMoeType = "emo";
constexpr const char* kDenseType = "olmo2_noqknorm_prenorm";

const char* architecture_of(const std::string& model_type) {
  return model_type == kDenseType ? "Olmo2ForCausalLM" : "EmoForCausalLM";
}

// Every key from_json interprets (or checks and regenerates); all others go to `extra`.
const std::set<std::string>& known_keys() {
  static const std::set<std::string> keys = {"architectures",
                                             "model_type",
                                             "vocab_size",
                                             "hidden_size",
                                             "intermediate_size",
                                             "num_hidden_layers",
                                             "num_attention_heads",
                                             "num_key_value_heads",
                                             "hidden_act",
                                             "max_position_embeddings",
                                             "rope_theta",
                                             "rope_scaling",
                                             "attention_bias",
                                             "rms_norm_eps",
                                             "tie_word_embeddings",
                                             "pad_token_id",
                                             "bos_token_id",
                                             "eos_token_id",
                                             "num_experts",
                                             "num_experts_per_tok",
                                             "num_shared_experts",
                                             "norm_topk_prob",
                                             "router_aux_loss_coef",
                                             "torch_dtype",
                                             "num_experts_per_layer",
                                             "num_shared_experts_per_layer"};
  return keys;
}

nlohmann::json optional_id(const std::optional<int64_t>& id) {
  return id ? nlohmann::json(*id) : nlohmann::json();
}

void check_positive(int64_t value, const char* key, const std::string& source) {
  if (value <= 0) fail_file(kOp, source, cat(key, " must be positive, got ", value));
}

void check_token_id(const std::optional<int64_t>& id, const char* key, int64_t vocab,
                    const std::string& source) {
  if (id && (*id < 0 || *id >= vocab))
    fail_file(kOp, source, cat(key, " ", *id, " is outside the vocabulary [0, ", vocab, ")"));
}

void check_moe(const ModelConfig& c, const std::string& source) {
  check_positive(c.num_experts, "num_experts", source);
  check_positive(c.num_experts_per_tok, "num_experts_per_tok", source);
  if (c.num_shared_experts < 0)
    fail_file(kOp, source, cat("num_shared_experts must be >= 0, got ", c.num_shared_experts));
  if (c.num_experts_per_tok > c.num_experts)
    fail_file(kOp, source,
              cat("num_experts_per_tok ", c.num_experts_per_tok, " exceeds num_experts ", c.num_experts));
  for (const auto* list : {&c.num_experts_per_layer, &c.num_shared_experts_per_layer})
    if (!list->empty() && static_cast<int64_t>(list->size()) != c.num_hidden_layers)
      fail_file(
          kOp, source,
          cat(list == &c.num_experts_per_layer ? "num_experts_per_layer" : "num_shared_experts_per_layer",
              " has ", list->size(), " entries for ", c.num_hidden_layers, " layers"));
  // Per-layer counts may drop below K in a pruned model: every token then uses all kept experts. Without
  // per-layer lists every layer is alike: one is checked (num_hidden_layers is not bounded by any tensor
  // yet).
  const bool per_layer = !c.num_experts_per_layer.empty() || !c.num_shared_experts_per_layer.empty();
  for (int64_t l = 0; l < (per_layer ? c.num_hidden_layers : 1); ++l) {
    const int64_t E = c.experts_in_layer(l), ns = c.shared_in_layer(l);
    if (ns < 0) fail_file(kOp, source, cat("layer ", l, ": negative number of shared experts ", ns));
    if (E <= ns)
      fail_file(kOp, source,
                cat("layer ", l, ": ", E, " experts leave no routed expert beside ", ns, " shared"));
    if (c.num_experts_per_tok <= ns)
      fail_file(kOp, source,
                cat("layer ", l, ": num_experts_per_tok ", c.num_experts_per_tok,
                    " leaves no routed slot beside ", ns, " shared experts"));
  }
}

}  // namespace

int64_t ModelConfig::experts_in_layer(int64_t layer) const {
  if (num_experts_per_layer.empty()) return num_experts;
  EMO_CHECK(layer >= 0 && layer < static_cast<int64_t>(num_experts_per_layer.size()), kOp, "layer ", layer,
            " outside num_experts_per_layer of ", num_experts_per_layer.size(), " entries");
  return num_experts_per_layer[layer];
}

int64_t ModelConfig::shared_in_layer(int64_t layer) const {
  if (num_shared_experts_per_layer.empty()) return num_shared_experts;
  EMO_CHECK(layer >= 0 && layer < static_cast<int64_t>(num_shared_experts_per_layer.size()), kOp, "layer ",
            layer, " outside num_shared_experts_per_layer of ", num_shared_experts_per_layer.size(),
            " entries");
  return num_shared_experts_per_layer[layer];
}

double ModelConfig::parameter_count() const {
  const double C = static_cast<double>(hidden_size), F = static_cast<double>(intermediate_size);
  const double kv = static_cast<double>(num_key_value_heads) * static_cast<double>(head_dim());
  const double embeddings = static_cast<double>(vocab_size) * C * (tie_word_embeddings ? 1 : 2);
  double layers = 0;
  const bool uniform = num_experts_per_layer.empty();
  for (int64_t l = 0; l < (uniform ? 1 : num_hidden_layers); ++l) {
    const double E = is_moe() ? static_cast<double>(experts_in_layer(l)) : 1.0;
    const double layer = 2 * C + 2 * C * C + 2 * kv * C + (is_moe() ? E * C : 0) + E * 3 * F * C;
    layers += uniform ? layer * static_cast<double>(num_hidden_layers) : layer;
  }
  return embeddings + layers + C;
}

void ModelConfig::check_fits_in_memory(double bytes_per_parameter, const std::string& what,
                                       const std::string& source) const {
  const double params = parameter_count(), bytes = params * bytes_per_parameter;
  const int64_t memory = machine_memory_bytes();
  if (bytes <= static_cast<double>(memory)) return;
  fail_file(kOp, source,
            cat("hidden_size ", hidden_size, ", intermediate_size ", intermediate_size,
                ", num_hidden_layers ", num_hidden_layers, ", vocab_size ", vocab_size,
                is_moe() ? cat(", num_experts ", num_experts) : std::string(), " make ", params,
                " parameters: ", human_bytes(bytes), " of ", what, ", more than this machine's memory of ",
                human_bytes(static_cast<double>(memory))));
}

void ModelConfig::validate(const std::string& source) const {
  if (model_type != kMoeType && model_type != kDenseType)
    fail_file(kOp, source,
              cat("model_type '", model_type, "' is not supported (expected '", kMoeType, "' or '",
                  kDenseType, "')"));
  check_positive(vocab_size, "vocab_size", source);
  check_positive(hidden_size, "hidden_size", source);
  check_positive(intermediate_size, "intermediate_size", source);
  check_positive(num_hidden_layers, "num_hidden_layers", source);
  check_positive(num_attention_heads, "num_attention_heads", source);
  check_positive(num_key_value_heads, "num_key_value_heads", source);
  check_positive(max_position_embeddings, "max_position_embeddings", source);
  if (max_position_embeddings > kMaxPositionEmbeddings)
    fail_file(kOp, source,
              cat("max_position_embeddings ", max_position_embeddings, " exceeds the ",
                  kMaxPositionEmbeddings, " positions emo supports"));
  if (hidden_size % num_attention_heads != 0)
    fail_file(
        kOp, source,
        cat("hidden_size ", hidden_size, " is not divisible by num_attention_heads ", num_attention_heads));
  if (num_attention_heads % num_key_value_heads != 0)
    fail_file(kOp, source,
              cat("num_attention_heads ", num_attention_heads, " is not divisible by num_key_value_heads ",
                  num_key_value_heads));
  if (head_dim() % 2 != 0) fail_file(kOp, source, cat("head_dim ", head_dim(), " must be even for RoPE"));
  if (!(rope_theta > 0)) fail_file(kOp, source, cat("rope_theta must be positive, got ", rope_theta));
  if (!(rms_norm_eps > 0)) fail_file(kOp, source, cat("rms_norm_eps must be positive, got ", rms_norm_eps));
  if (attention_bias) fail_file(kOp, source, "attention_bias true is not supported (EMO has no biases)");
  check_token_id(pad_token_id, "pad_token_id", vocab_size, source);
  check_token_id(bos_token_id, "bos_token_id", vocab_size, source);
  check_token_id(eos_token_id, "eos_token_id", vocab_size, source);
  if (torch_dtype != "float32" && torch_dtype != "bfloat16" && torch_dtype != "float16")
    fail_file(kOp, source, cat("torch_dtype '", torch_dtype, "' is not one of float32, bfloat16, float16"));
  if (is_moe()) check_moe(*this, source);
}

nlohmann::json ModelConfig::to_json() const {
  nlohmann::json j = extra.is_object() ? extra : nlohmann::json::object();
  j["architectures"] = {architecture_of(model_type)};
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = max_position_embeddings;
  j["rope_theta"] = rope_theta;
  j["rope_scaling"] = nullptr;
  j["attention_bias"] = attention_bias;
  j["rms_norm_eps"] = rms_norm_eps;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["pad_token_id"] = optional_id(pad_token_id);
  j["bos_token_id"] = optional_id(bos_token_id);
  j["eos_token_id"] = optional_id(eos_token_id);
  j["torch_dtype"] = torch_dtype;
  if (is_moe()) {
    j["num_experts"] = num_experts;
    j["num_experts_per_tok"] = num_experts_per_tok;
    j["num_shared_experts"] = num_shared_experts;
    j["norm_topk_prob"] = norm_topk_prob;
    j["router_aux_loss_coef"] = router_aux_loss_coef;
    if (!num_experts_per_layer.empty()) j["num_experts_per_layer"] = num_experts_per_layer;
    if (!num_shared_experts_per_layer.empty())
      j["num_shared_experts_per_layer"] = num_shared_experts_per_layer;
  }
  return j;
}

ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) fail_file(kOp, source, "is " + json_kind(j) + ", expected a JSON object");
  ModelConfig c;
  c.model_type = json_get<std::string>(j, "model_type", source);
  if (c.model_type != kMoeType && c.model_type != kDenseType)
    fail_file(kOp, source,
              cat("model_type '", c.model_type, "' is not supported (expected '", kMoeType, "' or '",
                  kDenseType, "')"));
  json_get_or<std::vector<std::string>>(j, "architectures", {},
                                        source);  // type-checked, regenerated on write
  const std::string act = json_get_or<std::string>(j, "hidden_act", "silu", source);
  if (act != "silu") fail_file(kOp, source, cat("hidden_act '", act, "' is not supported (only 'silu')"));
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
    fail_file(kOp, source, "rope_scaling " + j["rope_scaling"].dump() + " is not supported yet (only null)");

  c.vocab_size = json_get<int64_t>(j, "vocab_size", source);
  c.hidden_size = json_get<int64_t>(j, "hidden_size", source);
  c.intermediate_size = json_get<int64_t>(j, "intermediate_size", source);
  c.num_hidden_layers = json_get<int64_t>(j, "num_hidden_layers", source);
  c.num_attention_heads = json_get<int64_t>(j, "num_attention_heads", source);
  // Hugging Face convention: absent means plain multi-head attention.
  c.num_key_value_heads = json_get_or<int64_t>(j, "num_key_value_heads", c.num_attention_heads, source);
  c.max_position_embeddings = json_get_or(j, "max_position_embeddings", c.max_position_embeddings, source);
  c.rope_theta = json_get_or(j, "rope_theta", c.rope_theta, source);
  c.rms_norm_eps = json_get_or(j, "rms_norm_eps", c.rms_norm_eps, source);
  c.tie_word_embeddings = json_get_or(j, "tie_word_embeddings", c.tie_word_embeddings, source);
  c.attention_bias = json_get_or(j, "attention_bias", c.attention_bias, source);
  c.pad_token_id = json_get_optional<int64_t>(j, "pad_token_id", source);
  c.bos_token_id = json_get_optional<int64_t>(j, "bos_token_id", source);
  c.eos_token_id = json_get_optional<int64_t>(j, "eos_token_id", source);
  c.torch_dtype = json_get_or(j, "torch_dtype", c.torch_dtype, source);
  if (c.is_moe()) {
    c.num_experts = json_get<int64_t>(j, "num_experts", source);
    c.num_experts_per_tok = json_get<int64_t>(j, "num_experts_per_tok", source);
    c.num_shared_experts = json_get_or(j, "num_shared_experts", c.num_shared_experts, source);
    c.norm_topk_prob = json_get_or(j, "norm_topk_prob", c.norm_topk_prob, source);
    c.router_aux_loss_coef = json_get_or(j, "router_aux_loss_coef", c.router_aux_loss_coef, source);
    c.num_experts_per_layer = json_get_or(j, "num_experts_per_layer", c.num_experts_per_layer, source);
    c.num_shared_experts_per_layer =
        json_get_or(j, "num_shared_experts_per_layer", c.num_shared_experts_per_layer, source);
  }
  c.extra = nlohmann::json::object();
  for (const auto& [key, value] : j.items())
    if (!known_keys().count(key)) c.extra[key] = value;
  // A dense config carrying MoE keys (e.g. converted from an MoE one) keeps them unchanged.
  if (!c.is_moe())
    for (const char* key : {"num_experts", "num_experts_per_tok", "num_shared_experts", "norm_topk_prob",
                            "router_aux_loss_coef", "num_experts_per_layer", "num_shared_experts_per_layer"})
      if (j.contains(key)) c.extra[key] = j[key];
  c.validate(source);
  return c;
}

ModelConfig ModelConfig::load(const std::string& path) {
  return from_json(read_json_file(path), path);
}

void ModelConfig::save(const std::string& path) const {
  validate(path);
  write_json_file(path, to_json());
}

}  // namespace emo
