// The router's auxiliary losses of one MoE layer (docs/emo.md §4). The output cross-entropy and
// z-loss are the kernels' (kernels/softmax.h); Model::loss combines all terms.
#pragma once

#include <cstdint>
#include <vector>

#include "model/routing.h"

namespace emo {

struct RouterLoss {
  double lb = 0;  // LB = (Er / Kr) * sum_e C_e * Pbar_e / G
  double z = 0;   // Z = sum_t lse_t^2 / G_local, lse of the masked routed logits
};

// The label tokens (positions with a target) the router losses divide by, as the reference: G of the whole
// global batch for LB, G_local of this micro-batch for Z. Every token is routed and counted in the sums;
// only the divisors leave the positions without a target out (identical where every position has one).
struct LabelTokens {
  int64_t global = 0, local = 0;
};

// LB and Z of one layer. counts[Er] = C_e (global (token, slot) assignments, no gradient), Pbar_e = mean over
// this micro-batch's tokens of the (pool- or subset-masked) scores. When dscores[N, Er] and dlse[N] are given
// they are OVERWRITTEN with lb_scale * dLB/dscores and z_scale * dZ/dlse.
RouterLoss router_loss(const LayerRouting& r, const std::vector<double>& counts, LabelTokens labels,
                       float* dscores = nullptr, float* dlse = nullptr, double lb_scale = 0,
                       double z_scale = 0);

}  // namespace emo
