#include "model/model_weights.h"

#include "core/error.h"

namespace emo {

Model::Weights::Weights(const ModelConfig& config) {
  const int64_t C = config.hidden_size, V = config.vocab_size, F = config.intermediate_size;
  const int64_t hd = config.head_dim(), H = config.num_attention_heads, Hkv = config.num_key_value_heads;
  embed = add("model.embed_tokens.weight", {V, C}, true, false);
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Layer layer;
    layer.attn_norm = add(p + "pre_attention_layernorm.weight", {C}, true, true);
    layer.q = add(p + "self_attn.q_proj.weight", {H * hd, C}, false, false);
    layer.k = add(p + "self_attn.k_proj.weight", {Hkv * hd, C}, false, false);
    layer.v = add(p + "self_attn.v_proj.weight", {Hkv * hd, C}, false, false);
    layer.o = add(p + "self_attn.o_proj.weight", {C, H * hd}, false, false);
    layer.ffn_norm = add(p + "pre_feedforward_layernorm.weight", {C}, true, true);
    if (config.is_moe()) {
      const int64_t E = config.experts_in_layer(l);
      layer.router = add(p + "mlp.gate.weight", {E, C}, false, false);
      for (int64_t e = 0; e < E; ++e) {
        const std::string ep = p + "mlp.experts." + std::to_string(e) + ".";
        layer.gate.push_back(add(ep + "gate_proj.weight", {F, C}, false, false));
        layer.up.push_back(add(ep + "up_proj.weight", {F, C}, false, false));
        layer.down.push_back(add(ep + "down_proj.weight", {C, F}, false, false));
      }
    } else {
      layer.gate.push_back(add(p + "mlp.gate_proj.weight", {F, C}, false, false));
      layer.up.push_back(add(p + "mlp.up_proj.weight", {F, C}, false, false));
      layer.down.push_back(add(p + "mlp.down_proj.weight", {C, F}, false, false));
    }
    layers.push_back(std::move(layer));
  }
  norm = add("model.norm.weight", {C}, true, true);
  // Tied embeddings: the output map reads (and its gradient accumulates into) the embedding table.
  lm_head = config.tie_word_embeddings ? embed : add("lm_head.weight", {V, C}, false, false);
  rope = rope_table(hd, config.max_position_embeddings, config.rope_theta);
}

WeightEntry* Model::Weights::add(const std::string& name, Shape shape, bool no_weight_decay, bool is_norm) {
  entries.push_back({name, Tensor(std::move(shape)), Tensor(), no_weight_decay, is_norm});
  by_name[name] = &entries.back();
  return &entries.back();
}

WeightEntry& Model::Weights::find(const std::string& name) const {
  auto it = by_name.find(name);
  if (it == by_name.end()) fail("model", cat("no parameter named '", name, "'"));
  return *it->second;
}

void Model::Weights::allocate_grads() {
  for (auto& entry : entries)
    if (entry.grad.shape() != entry.value.shape()) entry.grad = Tensor(entry.value.shape());
}

std::vector<ExpertWeights> Model::Weights::expert_weights(int64_t layer) const {
  const Layer& l = layers[layer];
  std::vector<ExpertWeights> out;
  for (size_t e = 0; e < l.gate.size(); ++e)
    out.push_back({l.gate[e]->value.data(), l.up[e]->value.data(), l.down[e]->value.data()});
  return out;
}

std::vector<ExpertGrads> Model::Weights::expert_grads(int64_t layer) {
  const Layer& l = layers[layer];
  std::vector<ExpertGrads> out;
  for (size_t e = 0; e < l.gate.size(); ++e)
    out.push_back({l.gate[e]->grad.data(), l.up[e]->grad.data(), l.down[e]->grad.data()});
  return out;
}

}  // namespace emo
