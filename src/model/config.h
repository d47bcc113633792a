// Model configuration, read from and written to the Hugging Face config.json of docs/emo.md §2.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace emo {

struct ModelConfig {
  // The longest context emo runs (2^24 positions, past every released model's; positions are 32-bit). No
  // tensor bounds max_position_embeddings: nothing is allocated by it (the RoPE table holds at most
  // kRopeTableRows positions, the KV cache what a run asks for), but it is checked against this limit.
  static constexpr int64_t kMaxPositionEmbeddings = int64_t{1} << 24;

  std::string model_type = "emo";  // "emo" (MoE) or "olmo2_noqknorm_prenorm" (dense)
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;          // d
  int64_t intermediate_size = 0;    // expert width f (dense: MLP width)
  int64_t num_hidden_layers = 0;    // L
  int64_t num_attention_heads = 0;  // H
  int64_t num_key_value_heads = 0;  // Hkv
  int64_t max_position_embeddings = 4096;
  double rope_theta = 500000.0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  std::optional<int64_t> pad_token_id, bos_token_id, eos_token_id;
  // MoE (ignored by the dense variant)
  int64_t num_experts = 0;          // E per layer, shared expert(s) included, shared = the LAST n_s indices
  int64_t num_experts_per_tok = 0;  // K, shared included
  int64_t num_shared_experts = 1;   // n_s
  bool norm_topk_prob = false;
  double router_aux_loss_coef = 0.1;
  std::vector<int64_t> num_experts_per_layer;         // optional per-layer E (pruned models); empty = uniform
  std::vector<int64_t> num_shared_experts_per_layer;  // optional per-layer n_s
  std::string torch_dtype = "float32";
  nlohmann::json extra;  // keys we do not interpret, written back unchanged

  bool is_moe() const { return model_type != "olmo2_noqknorm_prenorm"; }
  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  int64_t experts_in_layer(int64_t layer) const;
  int64_t shared_in_layer(int64_t layer) const;
  int64_t routed_in_layer(int64_t layer) const { return experts_in_layer(layer) - shared_in_layer(layer); }
  // Parameters of a model of this config (in double: absurd sizes must not overflow).
  double parameter_count() const;
  // Throws "[config] <source>: ..." naming the size fields when parameter_count() x bytes_per_parameter
  // exceeds the machine's memory (`what`: what the bytes hold, for the message).
  void check_fits_in_memory(double bytes_per_parameter, const std::string& what,
                            const std::string& source = "config") const;
  // Throws "[config] <source>: <problem>" for inconsistent values (heads not dividing d, K > E, ...).
  void validate(const std::string& source = "config") const;

  nlohmann::json to_json() const;
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source = "config.json");
  static ModelConfig load(const std::string& path);  // a config.json file
  void save(const std::string& path) const;          // atomic write
};

}  // namespace emo
