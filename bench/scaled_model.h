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

}  // namespace emo::bench
