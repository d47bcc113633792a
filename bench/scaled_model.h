// The scaled instance of the released EMO shape the benchmarks make with Model::init_weights when no model
// is given: d=256, L=8, H=4, E=64 (1 shared), K=8, f=128, vocab 8192, context 1024.
#pragma once

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

}  // namespace emo::bench
