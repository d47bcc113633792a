// What Model::forward keeps for the backward of one micro-batch, and its routing decisions (public, for tests
// and analysis). Legend: N = B*T tokens, C = width, H/Hkv = query/kv heads, hd = head dim, V = vocab,
// Er = routed experts of a layer, Kr = routed slots, K = Kr + shared slots, F = MLP width.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/moe.h"
#include "kernels/softmax.h"
#include "model/model.h"
#include "model/routing.h"
#include "tensor/tensor.h"

namespace emo {

struct LayerState {
  // Attention block
  Tensor input;      // [N, C] residual stream entering the layer
  Tensor attn_norm;  // [N, C] RMSNorm(input)
  Tensor attn_rstd;  // [N]
  Tensor q;          // [N, H*hd] after RoPE
  Tensor k;          // [N, Hkv*hd] after RoPE
  Tensor v;          // [N, Hkv*hd]
  Tensor probs;      // [B, H, T, T] attention probabilities
  Tensor attn_out;   // [N, H*hd] before o_proj
  Tensor mid;        // [N, C] residual stream after attention
  Tensor ffn_norm;   // [N, C] RMSNorm(mid)
  Tensor ffn_rstd;   // [N]
  // MoE block
  Tensor router_logits;          // [N, Er] routed experts' logits (the shared expert's row is never used)
  LayerRouting routing;          // probs, pools, chosen ids [N, Kr] and weights [N, Kr]
  std::vector<int32_t> moe_ids;  // [N, K] routed slots then the shared expert(s)
  Tensor moe_weights;            // [N, K] routing weights, then exactly 1 for the shared expert(s)
  MoeCache moe;
  // Dense block
  Tensor mlp_gate, mlp_up, mlp_hidden;  // [N, F] gate(x), up(x), silu(gate)*up
};

struct ForwardState {
  Batch batch;
  bool for_backward = true;        // false after Model::infer: activations were not kept
  std::vector<int32_t> positions;  // [N] RoPE position = index in the row
  std::vector<LayerState> layers;  // [L] (after infer: only routing is kept)
  Tensor final_input;              // [N, C] residual stream after the last layer
  Tensor final_norm;               // [N, C]
  Tensor final_rstd;               // [N]
  Tensor logits;                   // [N, V]
  Tensor lse;                      // [N] logsumexp of the output logits
  CrossEntropySums ce;             // sums over tokens with target >= 0

  // Layer-by-layer inference (Model::begin_layers .. end_layers) only: the residual stream [N, C] after the
  // layers run so far, the index of the next layer, and the working buffers of the layer being run.
  Tensor residual;
  int64_t next_layer = 0;
  LayerState step_layer;
  Tensor step_branch;

  // Routing decision of layer l (MoE models).
  const LayerRouting& routing(int64_t l) const { return layers[l].routing; }
};

}  // namespace emo
