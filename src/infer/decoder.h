// The inference decoder of docs/emo.md §1 over InferWeights: one sequence, a KV cache, tokens fed
// in chunks (the prompt at once, then one token per step). Separate from the training engine (src/model):
// no saved activations, weights used in their stored format, attention over the cache.
//
// Routing exactly as the released models at inference: p = softmax over the routed experts (or over the
// kept ones of a restricted layer), top K - n_s of p with the raw p as weights (renormalised only with
// norm_topk_prob), shared expert(s) added with weight 1; no EMO pool. The routing core of src/model is used.
//
// A pass is also available layer by layer (begin / attention / router / experts / finish) so that expert
// selection can look at each layer's routing probabilities before the layer's experts run (layerwise
// selection from the prompt, infer/generate.h).
//
// A decoder may hold several sequences (slots, each with its own KV cache) and run a step of several at
// once (forward_batch): one pass over the tokens of all of them, each token attending to its own sequence
// and routed within its own sequence's experts, the MoE dispatch grouping the tokens of all sequences by
// expert (continuous batching in emo serve --parallel). The single-sequence calls use slot 0.
// Legend: N = tokens of a chunk, C = width, H/Hkv = query/kv heads, hd = head dim, F = expert width,
// V = vocab, Er = routed experts, K = slots (routed + shared).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "infer/weights.h"
#include "model/routing.h"
#include "tensor/tensor.h"

namespace emo {

// Keys and values of every layer for positions [0, length), rotated keys. Memory is reserved for
// `capacity` positions but only touched (made resident) as positions are written.
class KvCache {
 public:
  KvCache(int64_t layers, int64_t capacity, int64_t width);
  int64_t capacity() const { return capacity_; }
  int64_t width() const { return width_; }
  float* keys(int64_t layer) { return k_.get() + layer * capacity_ * width_; }    // [capacity, width]
  float* values(int64_t layer) { return v_.get() + layer * capacity_ * width_; }  // [capacity, width]
  // The bytes of positions [0, length) of every layer (what a run of that length needs).
  int64_t bytes_used(int64_t length) const;
  std::vector<MemoryRange> memory_ranges() const;

 private:
  int64_t layers_, capacity_, width_;
  std::unique_ptr<float[]> k_, v_;  // [layers, capacity, width], left uninitialised (untouched pages)
};

// Tokens [first, first + count) of a pass belong to one sequence: they go to positions start.. of its
// slot's KV cache and are routed within `kept` (per layer the kept routed experts; null: the restriction of
// the weights).
struct PassSequence {
  int64_t slot = 0;  // whose KV cache
  int64_t start = 0, first = 0, count = 0;
  const std::vector<std::vector<int32_t>>* kept = nullptr;
};

// The activations of one chunk of tokens going through the layers.
struct DecoderPass {
  std::vector<PassSequence> sequences;
  std::vector<int32_t> sequence_of;  // [N] index into sequences
  std::vector<int32_t> tokens;
  std::vector<int32_t> positions;  // [N]
  int64_t N = 0;
  Tensor x;                       // [N, C] residual stream
  Tensor normed;                  // [N, C] RMSNorm of x for the block being run
  Tensor rstd;                    // [N]
  Tensor q, k, v, attn, branch;   // [N, H*hd], [N, Hkv*hd] x2, [N, H*hd], [N, C]
  Tensor router_logits;           // [N, Er] of the current layer
  LayerRouting routing;           // of the current layer; routing.probs = unmasked softmax
  LayerRouting sequence_routing;  // batched: the routing of one sequence at a time
  Tensor last_rows;               // batched: [sequences, C] the last token of each
  Tensor logits;                  // [V] of the last token, or [N, V]; batched: [sequences, V]
  // Expert dispatch scratch: assignments sorted by expert.
  std::vector<int32_t> order;        // [A] token*K + slot, sorted by expert
  std::vector<int64_t> offsets;      // [E+1]
  Tensor gathered, gate, up, out;    // [A, C], [A, F], [A, F], [A, C]
  std::vector<int32_t> slot_expert;  // [N, K] expert of each slot, -1 = unused
  std::vector<float> slot_weight;    // [N, K]
};

// One sequence's share of a batched step: tokens appended to the sequence in `slot`, routed within `kept`
// (per layer the kept routed experts, as ExpertSubset::routed; null: every routed expert).
struct BatchEntry {
  int64_t slot = 0;
  std::vector<int32_t> tokens;
  const std::vector<std::vector<int32_t>>* kept = nullptr;
};

class Decoder {
 public:
  // capacity: most positions a sequence will hold (prompt + generated); at most the model's context.
  // slots: sequences held at once (forward_batch); slot 0 is the one of the single-sequence calls.
  Decoder(InferWeights& weights, int64_t capacity, int64_t slots = 1);

  // Runs `tokens` at positions length().. and appends them to the cache. Returns the logits of the last token
  // [V], or of every token [N, V] with all_logits. Throws emo::Error (and leaves the cache unchanged) when
  // the tokens do not fit the capacity or hold an id outside the vocabulary.
  const Tensor& forward(const std::vector<int32_t>& tokens, bool all_logits = false);

  // The same pass in stages, for selection between a layer's router and its experts:
  // begin(), then per layer attention(l), router(l), experts(l), then finish().
  DecoderPass& begin(const std::vector<int32_t>& tokens);
  void attention(int64_t l);
  // Router probabilities of the layer (pass().routing.probs [N, Er], unmasked softmax over routed experts).
  void router(int64_t l);
  // Routes within the layer's kept experts, loads the experts used, adds the MoE (or dense MLP) output.
  void experts(int64_t l);
  const Tensor& finish(bool all_logits = false);

  // One step of several sequences (distinct slots) at once: each entry's tokens appended to its slot.
  // Returns the logits of each entry's last token [entries, V], in the order of the entries. Throws
  // emo::Error (and changes no slot) when an entry does not fit its slot or holds a bad token id.
  const Tensor& forward_batch(const std::vector<BatchEntry>& entries);

  DecoderPass& pass() { return pass_; }
  int64_t length(int64_t slot = 0) const { return lengths_.at(slot); }
  int64_t capacity() const { return caches_[0]->capacity(); }
  int64_t slots() const { return static_cast<int64_t>(caches_.size()); }
  const KvCache& cache(int64_t slot = 0) const { return *caches_.at(slot); }
  InferWeights& weights() { return weights_; }
  // Forgets every position of the slot (the cache is reused).
  void reset(int64_t slot = 0) { lengths_.at(slot) = 0; }
  // Keeps positions [0, length) of the slot and forgets the rest (a shared prefix is reused, the tail
  // recomputed).
  void truncate(int64_t length, int64_t slot = 0);

 private:
  void check_chunk(const std::vector<int32_t>& tokens, int64_t slot) const;
  // Starts a pass over the sequences' tokens (checked).
  DecoderPass& begin_sequences(std::vector<PassSequence> sequences,
                               const std::vector<const std::vector<int32_t>*>& tokens);
  // Routes the tokens of each sequence within its experts into the pass's slots [N, K].
  void route(int64_t l, int64_t Kr, int64_t K);
  // logits [rows, V] of the given rows of x; the sequences' lengths advance.
  const Tensor& logits_of(const std::vector<int64_t>& rows, bool as_vector);
  void dispatch(int64_t l, int64_t K);
  void dispatch_chunk(int64_t l, int64_t K, int64_t n0, int64_t n1);

  InferWeights& weights_;
  std::vector<std::unique_ptr<KvCache>> caches_;  // [slots]
  std::vector<int64_t> lengths_;                  // [slots]
  DecoderPass pass_;
  std::unique_ptr<RoutingPolicy> standard_, subset_;
  RoutingOptions subset_options_;
};

}  // namespace emo
