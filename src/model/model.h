// The EMO / standard-MoE / dense decoder: parameters, the forward pass that keeps what the backward needs,
// the backward, and the loss terms of docs/emo.md §4. Routing policies live in model/routing.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/config.h"
#include "tensor/tensor.h"

namespace emo {

// One named parameter: its value and its gradient (same shape). Names are the Hugging Face tensor names.
struct Param {
  std::string name;
  Tensor* value;
  Tensor* grad;
  bool no_weight_decay;  // embeddings and norms
};

// A micro-batch of packed rows, with the two EOS rules of the reference (data/segments.h): doc_ids are the
// EMO pool's segments (an EOS at t > 0 starts the next one: it is routed with the document that follows it),
// attention_doc_ids the documents of intra-document attention (an EOS ends its own document). Both are made
// from the EOS positions by the packer and by Batch::from_tokens.
struct Batch {
  int64_t B = 0, T = 0;
  std::vector<int32_t> tokens;             // [B, T]
  std::vector<int32_t> targets;            // [B, T]; -1 = no loss at this position
  std::vector<int32_t> doc_ids;            // [B, T]; routing segment index within its row, from 0
  std::vector<int32_t> attention_doc_ids;  // [B, T]; attention document index within its row, from 0
  static Batch from_tokens(int64_t B, int64_t T, std::vector<int32_t> tokens, std::vector<int32_t> targets,
                           int32_t eos_id);
};

enum class RoutingMode { kStandard, kEmoPool, kSubset };

struct RoutingOptions {
  RoutingMode mode = RoutingMode::kStandard;
  bool training = true;    // EMO pool size drawn per (segment, layer) in training, d_eval otherwise
  int64_t pool_min = 0;    // d_min; 0 = K (the released recipe draws from [K, E])
  int64_t pool_max = 0;    // d_max; 0 = E
  int64_t pool_eval = 32;  // d_eval
  // Explicit pool sizes (tests and the PyTorch twin): pool_sizes[layer][row][segment], overriding the draw.
  std::vector<std::vector<std::vector<int32_t>>> pool_sizes;
  // Subset routing: kept ORIGINAL expert indices per layer (routed ones; the shared expert(s) always kept).
  std::vector<std::vector<int32_t>> subset;
  // Attention only within a document of a packed row (doc_ids), as the EMO recipe trains.
  bool intra_document_attention = false;
};

struct LossWeights {
  double output_z = 1e-5;   // times mean_t logsumexp(output logits)^2
  double lb = 0.1;          // alpha: sum_l (alpha / L) LB_l
  double router_z = 0.001;  // beta:  sum_l (beta / L) Z_l
};

// Loss terms of one micro-batch (means over its counted tokens; lb and router_z summed over layers with
// their 1/L, before the alpha/beta weights).
struct LossTerms {
  double ce = 0, output_z = 0, lb = 0, router_z = 0, total = 0;
  int64_t tokens = 0;
  std::vector<double> lb_per_layer, router_z_per_layer;
};

// Everything the forward keeps for the backward of one micro-batch, plus its routing decisions.
struct ForwardState;  // defined in model/forward_state.h
struct LayerRouting;  // defined in model/routing.h

class Model {
 public:
  explicit Model(ModelConfig config);
  ~Model();
  const ModelConfig& config() const { return config_; }

  // Trunc-normal(0, 0.02, +-3 sigma) for matrices, ones for norms, from the seed.
  void init_weights(uint64_t seed);
  std::vector<Param> params();
  void zero_grads();
  int64_t num_params() const;

  // Forward of one micro-batch: logits, routing, saved activations. rng draws the EMO pool sizes.
  std::unique_ptr<ForwardState> forward(const Batch& batch, const RoutingOptions& routing,
                                        Rng* rng = nullptr);
  // The same into a state of an earlier call, reusing its buffers (repeated steps then touch no fresh pages).
  void forward_into(ForwardState& state, const Batch& batch, const RoutingOptions& routing,
                    Rng* rng = nullptr);
  // The same forward keeping only logits and routing decisions (no backward possible): for eval/inference.
  std::unique_ptr<ForwardState> infer(const Batch& batch, const RoutingOptions& routing,
                                      Rng* rng = nullptr) const;

  // Inference one MoE layer at a time, for callers that choose a layer's routing after seeing its router
  // probabilities (layerwise expert selection, one forward instead of one per layer): begin_layers embeds
  // the batch; layer_router(l) runs layer l's attention and router and returns its routing under `routing`
  // (LayerRouting::probs are the unmasked router probabilities, whatever the policy); layer_experts(l) routes
  // layer l again under `routing`, which may now restrict layer l, and adds the experts' output; end_layers
  // computes the logits. Layers run in order 0..L-1. With the same options at every step the state equals
  // infer()'s exactly (same kernels in the same order). Evaluation-mode routing only (no pool draws).
  std::unique_ptr<ForwardState> begin_layers(const Batch& batch, const RoutingOptions& routing) const;
  const LayerRouting& layer_router(ForwardState& state, int64_t l, const RoutingOptions& routing) const;
  void layer_experts(ForwardState& state, int64_t l, const RoutingOptions& routing) const;
  void end_layers(ForwardState& state) const;

  // Expert counts C_e per MoE layer of this micro-batch ([L][E_routed], number of (token, slot) assignments),
  // for the trainer to sum over micro-batches and ranks before the load-balancing loss uses them.
  std::vector<std::vector<double>> expert_counts(const ForwardState& state) const;

  // Loss terms with the given global counts (null = this micro-batch's own) and G, the global batch's label
  // tokens (positions with a target; 0 = this micro-batch's). LB divides by G, the router z-loss by this
  // micro-batch's label tokens (model/losses.h).
  LossTerms loss(const ForwardState& state, const LossWeights& weights,
                 const std::vector<std::vector<double>>* global_counts = nullptr,
                 int64_t global_label_tokens = 0) const;

  // Accumulates (+=) grad_scale * d(total loss)/d(params) into the gradients.
  void backward(ForwardState& state, const LossWeights& weights,
                const std::vector<std::vector<double>>* global_counts = nullptr,
                int64_t global_label_tokens = 0, float grad_scale = 1.0f);

  // Checkpoint I/O in the Hugging Face layout (config.json + model.safetensors or shards).
  static std::unique_ptr<Model> load(const std::string& dir);
  void save(const std::string& dir, const std::string& dtype = "float32") const;
  // The same with shards of at most max_shard_bytes (the default above is 5 GB, as Hugging Face).
  void save(const std::string& dir, const std::string& dtype, int64_t max_shard_bytes) const;

  // A parameter by its Hugging Face name (throws for an unknown name); names in checkpoint order.
  Tensor& weight(const std::string& name);
  const Tensor& weight(const std::string& name) const;
  std::vector<std::string> param_names() const;

 private:
  friend struct ModelPasses;  // model.cpp: the forward and backward passes over the private weights
  ModelConfig config_;
  struct Weights;
  std::unique_ptr<Weights> weights_;
};

}  // namespace emo
