// The parameters of a Model, one Tensor per Hugging Face tensor name (docs/emo.md §2), in
// checkpoint order, with per-layer pointers for the forward and backward. Private to src/model.
#pragma once

#include <deque>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/moe.h"
#include "kernels/rope.h"
#include "model/model.h"
#include "tensor/tensor.h"

namespace emo {

struct WeightEntry {
  std::string name;
  Tensor value;
  Tensor grad;  // empty until the first params() / zero_grads() / backward()
  bool no_weight_decay = false;
  bool is_norm = false;
};

struct Model::Weights {
  struct Layer {
    WeightEntry *attn_norm = nullptr, *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr;
    WeightEntry *ffn_norm = nullptr, *router = nullptr;  // router: MoE only, [E, C]
    std::vector<WeightEntry*> gate, up, down;            // per expert (dense: one MLP)
  };

  std::deque<WeightEntry> entries;  // deque: pointers stay valid as entries are added
  std::unordered_map<std::string, WeightEntry*> by_name;
  WeightEntry *embed = nullptr, *norm = nullptr, *lm_head = nullptr;
  std::vector<Layer> layers;
  RopeTable rope;
  // Gradient buffers of the backward, kept between calls so repeated steps touch no fresh pages.
  struct BackwardBuffers {
    Tensor dlogits, dnorm, dx, dffn, datt, dq, dk, dv, dhidden, dgate, dup;
    MoeScratch moe;  // the expert dispatch's backward
  } buffers;

  explicit Weights(const ModelConfig& config);
  WeightEntry& find(const std::string& name) const;
  void allocate_grads();
  std::vector<ExpertWeights> expert_weights(int64_t layer) const;
  std::vector<ExpertGrads> expert_grads(int64_t layer);

 private:
  WeightEntry* add(const std::string& name, Shape shape, bool no_weight_decay, bool is_norm);
};

}  // namespace emo
