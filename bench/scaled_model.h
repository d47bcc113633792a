// The scaled instance of the released EMO shape the benchmarks make with Model::init_weights when no model
// is given: d=256, L=8, H=4, E=64 (1 shared), K=8, f=128, vocab 8192, context 1024.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "core/rng.h"
#include "io/safetensors.h"
#include "model/config.h"

namespace emo::bench {

inline ModelConfig scaled_released_config() {
  ModelConfig c;
  c.model_type = "emo";
  c.vocab_size = 8192;
  c.hidden_size = 256;
  c.intermediate_size = 128;
  c.num_hidden_layers = 8;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 4;
  c.max_position_embeddings = 1024;
  c.eos_token_id = 1;
  c.pad_token_id = 0;
  c.num_experts = 64;
  c.num_experts_per_tok = 8;
  c.num_shared_experts = 1;
  return c;
}

// The model bench_peer runs in emo and in llama.cpp: d=1024, L=16, H=16, E=32 of width 512 (1 shared),
// K=8 (7 routed + the shared one), vocab 32768: 0.94B parameters, 3.8 GB in fp32.
inline ModelConfig peer_config() {
  ModelConfig c = scaled_released_config();
  c.vocab_size = 32768;
  c.hidden_size = 1024;
  c.intermediate_size = 512;
  c.num_hidden_layers = 16;
  c.num_attention_heads = 16;
  c.num_key_value_heads = 16;
  c.max_position_embeddings = 4096;
  c.num_experts = 32;
  return c;
}

// Writes a checkpoint of `config`'s shapes in fp32 with random values into dir (config.json and
// model.safetensors, or shards of 2 GB) in seconds, where Model::init_weights + save takes minutes for a GB:
// matrices of one shape share one random block (the values do not matter for speed and memory) but every
// layer's router is its own, so prompts still pick different experts per layer.
inline void write_random_fp32_checkpoint(const std::string& dir, const ModelConfig& c, uint64_t seed = 5) {
  const int64_t d = c.hidden_size, f = c.intermediate_size, E = c.num_experts, V = c.vocab_size;
  const int64_t hd = c.head_dim(), q = c.num_attention_heads * hd, kv = c.num_key_value_heads * hd;
  Rng rng(seed);
  auto random = [&](int64_t n, float scale) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = static_cast<float>(rng.normal()) * scale;
    return v;
  };
  const std::vector<float> vocab_block = random(V * d, 0.02f), q_block = random(q * d, 0.02f);
  const std::vector<float> kv_block = random(kv * d, 0.02f), o_block = random(d * q, 0.02f);
  const std::vector<float> expert_block = random(f * d, 0.05f), ones(static_cast<size_t>(d), 1.0f);
  std::vector<std::vector<float>> routers;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) routers.push_back(random(E * d, 0.5f));
  const DType F32 = DType::kF32;
  std::vector<SafetensorsEntry> tensors = {{"model.embed_tokens.weight", F32, {V, d}, vocab_block.data()}};
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    tensors.push_back({p + "pre_attention_layernorm.weight", F32, {d}, ones.data()});
    tensors.push_back({p + "self_attn.q_proj.weight", F32, {q, d}, q_block.data()});
    tensors.push_back({p + "self_attn.k_proj.weight", F32, {kv, d}, kv_block.data()});
    tensors.push_back({p + "self_attn.v_proj.weight", F32, {kv, d}, kv_block.data()});
    tensors.push_back({p + "self_attn.o_proj.weight", F32, {d, q}, o_block.data()});
    tensors.push_back({p + "pre_feedforward_layernorm.weight", F32, {d}, ones.data()});
    tensors.push_back({p + "mlp.gate.weight", F32, {E, d}, routers[l].data()});
    for (int64_t e = 0; e < E; ++e) {
      const std::string x = p + "mlp.experts." + std::to_string(e) + ".";
      tensors.push_back({x + "gate_proj.weight", F32, {f, d}, expert_block.data()});
      tensors.push_back({x + "up_proj.weight", F32, {f, d}, expert_block.data()});
      tensors.push_back({x + "down_proj.weight", F32, {d, f}, expert_block.data()});
    }
  }
  tensors.push_back({"model.norm.weight", F32, {d}, ones.data()});
  tensors.push_back({"lm_head.weight", F32, {V, d}, vocab_block.data()});
  std::filesystem::create_directories(dir);
  write_safetensors_sharded(dir, tensors, int64_t(2) << 30);
  c.save((std::filesystem::path(dir) / "config.json").string());
}

}  // namespace emo::bench
