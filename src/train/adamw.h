// AdamW with decoupled weight decay (Loshchilov & Hutter; the PyTorch update order): per step t,
//   p *= 1 - lr * wd                      (skipped for Param::no_weight_decay: embeddings, norms)
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// The state (m, v per parameter, and t) is saved with every checkpoint so resuming continues bit-exactly.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/model.h"
#include "tensor/tensor.h"
#include "train/config.h"

namespace emo {

class AdamW {
 public:
  explicit AdamW(const OptimizerConfig& config) : config_(config) {}

  // One update of every parameter from its gradient times `grad_multiplier` (the clipping factor).
  // Elementwise, split over the thread pool; the result does not depend on the number of threads.
  void step(const std::vector<Param>& params, double lr, float grad_multiplier = 1.0f);

  int64_t steps_taken() const { return steps_; }
  void set_steps_taken(int64_t steps) { steps_ = steps; }

  // The moment tensors by name: "<param name>.exp_avg" and "<param name>.exp_avg_sq" (created on demand
  // with the parameter's shape).
  std::map<std::string, Tensor*> state_tensors(const std::vector<Param>& params);

 private:
  struct Moments {
    Tensor m, v;
  };
  Moments& moments_for(const Param& p);

  OptimizerConfig config_;
  std::map<std::string, Moments> moments_;
  int64_t steps_ = 0;
};

}  // namespace emo
