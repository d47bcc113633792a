// Expert selection from a few examples (docs/emo.md §5). Every method keeps, per MoE layer, the
// top keep_k - n_s routed experts by a per-expert score plus the shared expert(s):
//   layerwise  (default) for l = 0..L-1: run the examples with layers 0..l-1 already restricted to their
//              chosen subsets, score = a_{l,e}, the mean over the examples' tokens of the routed softmax
//              probability of expert e at layer l; choose layer l, continue.
//   global     one pass of the unrestricted model, score = a_{l,e} for every layer at once.
//   easy_ep    EASY-EP (arXiv 2504.06792), one unrestricted pass: score_e = sum over the (token, slot)
//              assignments of tokens routed to e of  gate weight * ||expert_e(x_t)||_2 * s_t, with
//              s_t = max(0, 1 - cos(h_t, h_t + moe_out_t)); h_t is the residual stream entering the MoE block
//              (after attention), moe_out_t the MoE block's output, x_t = RMSNorm(h_t) the experts' input.
//   random     a seeded uniformly random subset per layer (the control).
// Ties rank the lower expert index first. Deterministic for a fixed model, examples, method and seed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/model.h"
#include "select/examples.h"
#include "select/subset.h"

namespace emo {

enum class SelectionMethod { kLayerwise, kGlobal, kEasyEp, kRandom };

// "layerwise", "global", "easy_ep", "random"; emo::Error for anything else.
SelectionMethod parse_selection_method(const std::string& name);
std::string selection_method_name(SelectionMethod method);

struct SelectionOptions {
  int64_t keep_k = 0;  // experts kept per layer, shared included
  SelectionMethod method = SelectionMethod::kLayerwise;
  uint64_t seed = 0;  // random method
};

// The subset chosen for `model` from `examples` (sequences longer than the context are cut).
ExpertSubset select_experts(Model& model, const Examples& examples, const SelectionOptions& options);

// a_{l,e} of every layer [L][Er]: mean over all example tokens of the routed softmax probability, with the
// model routed by `routing` (standard, or subset routing for the layerwise method).
std::vector<std::vector<double>> routed_usage(const Model& model, const Examples& examples,
                                              const RoutingOptions& routing);

// The layerwise method's statistics: usage[l] = a_{l,.} measured with layers 0..l-1 already restricted to
// routed[0..l-1], and routed[l] = the top keep_k - n_s of usage[l]. The examples run layer by layer
// (Model::begin_layers), so this costs about one forward of them; it equals, bit for bit, running
// routed_usage once per layer with subset routing of the layers chosen so far.
struct LayerwiseSelection {
  std::vector<std::vector<double>> usage;    // [L][Er]
  std::vector<std::vector<int32_t>> routed;  // [L][keep_k - n_s] ascending
};
LayerwiseSelection layerwise_selection(const Model& model, const Examples& examples, int64_t keep_k);

// EASY-EP scores [L][Er] of one unrestricted pass.
std::vector<std::vector<double>> easy_ep_scores(Model& model, const Examples& examples);

// Indices of the `count` largest scores, ascending (ties: lower index first).
std::vector<int32_t> top_experts(const std::vector<double>& scores, int64_t count);

}  // namespace emo
