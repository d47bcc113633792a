// Expert-usage statistics of a training step (observability): distinct experts used, load per expert,
// entropy of each document's expert assignments (low = the document keeps to a few experts, as EMO intends).
#pragma once

#include <vector>

namespace emo {

struct ForwardState;

// Expert usage of one step, averaged over MoE layers.
struct ExpertUsage {
  double distinct_experts = 0;    // routed experts that received at least one token
  double load_max_over_mean = 0;  // max_e C_e / mean_e C_e (1 = perfectly balanced)
  double pool_entropy = 0;  // mean over documents of the entropy (nats) of their expert-assignment histogram
  double documents = 0;     // (document, layer) pairs the entropy averages over
  std::vector<std::vector<double>> load;  // [L][Er]: each routed expert's share of its layer's assignments
};

// Usage statistics of one step from the routing of the given forward states and the step's counts [L][Er].
ExpertUsage expert_usage(const std::vector<const ForwardState*>& states,
                         const std::vector<std::vector<double>>& counts);

// Sums per-layer counts b into a (a empty: becomes b).
void add_counts(std::vector<std::vector<double>>& a, const std::vector<std::vector<double>>& b);

}  // namespace emo
