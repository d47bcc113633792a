// Routing of one MoE layer (docs/emo.md §1, §3): one shared routing core and three policies that
// only decide WHICH routed experts each token may choose:
//   standard  every routed expert (softmax over all routed experts, top K_r, raw weights),
//   EMO pool  per document segment the top-d experts by summed probability mass (d drawn per segment/layer),
//   subset    a fixed kept list per layer (exactly how a pruned model routes).
// The core then takes the softmax of the masked routed logits ("scores"), the top K_r scores among the
// allowed experts and uses those scores as weights (renormalised over the top K_r only when norm_topk_prob).
// The shared expert(s) are not routed here: the model adds them with weight exactly 1.
//
// Legend: N = tokens (B*T), Er = routed experts of the layer, Kr = routed slots per token.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/rng.h"
#include "model/model.h"
#include "tensor/tensor.h"

namespace emo {

// One document segment [begin, end) of a row and the pool the EMO policy kept for it at one layer.
struct PoolSegment {
  int32_t row = 0, begin = 0, end = 0;  // token positions within the row
  int32_t pool_size = 0;                // d after clamping to [1, Er]
  std::vector<int32_t> members;         // the kept routed experts, by decreasing mass (ties: lower index)
};

// The routing decision of one MoE layer for one micro-batch.
struct LayerRouting {
  int64_t N = 0, routed = 0, slots = 0;  // N, Er, Kr
  bool norm_topk_prob = false;
  Tensor probs;                    // [N, Er] softmax over all routed experts (unmasked)
  Tensor scores;                   // [N, Er] softmax over the allowed experts; 0 elsewhere
  Tensor lse;                      // [N] logsumexp of the masked routed logits (router z-loss)
  std::vector<uint8_t> allowed;    // [N, Er] 1 = the token may choose the expert; empty = all allowed
  std::vector<PoolSegment> pools;  // EMO policy only: one per (row, segment)
  std::vector<int32_t> ids;        // [N, Kr] chosen routed experts by decreasing score; -1 = unused slot
  Tensor weights;                  // [N, Kr] their weights (0 for an unused slot)

  bool is_allowed(int64_t n, int64_t e) const { return allowed.empty() || allowed[n * routed + e] != 0; }
};

// What a policy may look at when it restricts the choice of one layer.
struct RoutingContext {
  const Batch* batch = nullptr;  // rows, doc_ids (segments)
  const RoutingOptions* options = nullptr;
  int64_t layer = 0;
  int64_t experts = 0;            // E of the layer, shared included (default d_max)
  int64_t experts_per_token = 0;  // K, shared included (default d_min)
  Rng* rng = nullptr;             // draws EMO pool sizes in training
};

// The one routing interface: fills r.allowed (and, for EMO, r.pools) from r.probs. Leaving r.allowed empty
// means every routed expert is allowed.
class RoutingPolicy {
 public:
  virtual ~RoutingPolicy() = default;
  virtual void restrict(LayerRouting& r, const RoutingContext& context) const = 0;
};

// The policy of options.mode.
std::unique_ptr<RoutingPolicy> make_routing_policy(const RoutingOptions& options);

// Segments of one row: maximal runs of equal doc_ids, as [begin, end) pairs.
std::vector<std::pair<int32_t, int32_t>> row_segments(const int32_t* doc_ids, int64_t T);

// The shared routing core. logits[N, Er] are the routed experts' router logits (fp32).
void route_forward(LayerRouting& r, const float* logits, int64_t N, int64_t routed, int64_t slots,
                   bool norm_topk_prob, const RoutingPolicy& policy, const RoutingContext& context);

// dlogits[N, Er] += gradient through the masked softmax from: dweights[N, Kr] (d loss / d weights),
// dscores[N, Er] (d loss / d scores, e.g. load balancing; may be null) and dlse[N] (d loss / d lse, router
// z-loss; may be null). The pool / subset selection itself has no gradient.
void route_backward(float* dlogits, const LayerRouting& r, const float* dweights, const float* dscores,
                    const float* dlse);

}  // namespace emo
