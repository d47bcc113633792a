// Expert-usage statistics of a training step (observability): distinct experts used, load per expert,
// entropy of each document's expert assignments (low = the document keeps to a few experts, as EMO intends).
#pragma once

#include <cstdint>
#include <string>
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

// Router collapse: the routed experts of each layer that received any token over windows of `window` steps.
// A layer using fewer than half of them over a window is reported, once until it recovers.
class CollapseWatch {
 public:
  explicit CollapseWatch(int64_t window = 100) : window_(window) {}
  // Adds step `step`'s load [L][Er] (shares or counts); at the end of a window where a layer newly collapsed,
  // returns the warning ("router collapse over steps 101-200: layer 1 used 3 of 8 routed experts, ..."),
  // else "".
  std::string add(int64_t step, const std::vector<std::vector<double>>& load);

 private:
  int64_t window_, steps_ = 0;
  std::vector<std::vector<bool>> used_;  // [L][Er] received a token in this window
  std::vector<bool> reported_;           // [L] collapsed at the last window (already warned)
};

// Sums per-layer counts b into a (a empty: becomes b).
void add_counts(std::vector<std::vector<double>>& a, const std::vector<std::vector<double>>& b);

}  // namespace emo
