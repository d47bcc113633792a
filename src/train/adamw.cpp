#include "train/adamw.h"

#include <cmath>

#include "core/error.h"
#include "core/thread_pool.h"

namespace emo {

AdamW::Moments& AdamW::moments_for(const Param& p) {
  Moments& s = moments_[p.name];
  if (s.m.shape() != p.value->shape()) {
    EMO_CHECK(s.m.empty(), "adamw", "optimizer state of '", p.name, "' has shape ", shape_str(s.m.shape()),
              " but the parameter has ", shape_str(p.value->shape()));
    s.m = Tensor(p.value->shape());
    s.v = Tensor(p.value->shape());
  }
  return s;
}

void AdamW::step(const std::vector<Param>& params, double lr, float grad_multiplier) {
  ++steps_;
  const double t = static_cast<double>(steps_);
  const float b1 = static_cast<float>(config_.beta1), b2 = static_cast<float>(config_.beta2);
  const float step_size = static_cast<float>(lr / (1.0 - std::pow(config_.beta1, t)));
  const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(config_.beta2, t)));
  const float eps = static_cast<float>(config_.eps);
  for (const Param& p : params) {
    Moments& s = moments_for(p);
    const float decay = p.no_weight_decay ? 1.0f : static_cast<float>(1.0 - lr * config_.weight_decay);
    float* w = p.value->data();
    const float* g = p.grad->data();
    float* m = s.m.data();
    float* v = s.v.data();
    parallel_for(p.value->size(), 16384, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        float gi = g[i] * grad_multiplier;
        m[i] = b1 * m[i] + (1.0f - b1) * gi;
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        w[i] = w[i] * decay - step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
      }
    });
  }
}

std::map<std::string, Tensor*> AdamW::state_tensors(const std::vector<Param>& params) {
  std::map<std::string, Tensor*> out;
  for (const Param& p : params) {
    Moments& s = moments_for(p);
    out[p.name + ".exp_avg"] = &s.m;
    out[p.name + ".exp_avg_sq"] = &s.v;
  }
  return out;
}

}  // namespace emo
