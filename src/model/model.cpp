// The decoder of docs/emo.md §1 wired from the kernels, llm.c style: the forward keeps what each
// kernel's backward needs, the backward calls the kernels' backward in reverse order.
// Legend: B = rows, T = row length, N = B*T, C = width, V = vocab, H/Hkv = query/kv heads, hd = head dim,
// F = MLP width, E = experts of a layer, Er = routed experts, Kr = routed slots, K = Kr + shared slots.
#include "model/model.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/profile.h"
#include "data/segments.h"
#include "kernels/attention.h"
#include "kernels/embedding.h"
#include "kernels/linear.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "model/forward_state.h"
#include "model/losses.h"
#include "model/model_weights.h"

namespace emo {

Batch Batch::from_tokens(int64_t B, int64_t T, std::vector<int32_t> tokens, std::vector<int32_t> targets,
                         int32_t eos_id) {
  EMO_CHECK(static_cast<int64_t>(tokens.size()) == B * T, "batch", "got ", tokens.size(), " tokens for B=", B,
            " T=", T);
  EMO_CHECK(targets.empty() || targets.size() == tokens.size(), "batch", "got ", targets.size(),
            " targets for ", tokens.size(), " tokens");
  Batch batch;
  batch.B = B, batch.T = T;
  batch.tokens = std::move(tokens);
  batch.targets = targets.empty() ? std::vector<int32_t>(B * T, -1) : std::move(targets);
  batch.doc_ids.resize(B * T);
  batch.attention_doc_ids.resize(B * T);
  for (int64_t b = 0; b < B; ++b)
    data::row_segment_ids(&batch.tokens[b * T], T, eos_id, &batch.doc_ids[b * T],
                          &batch.attention_doc_ids[b * T]);
  return batch;
}

namespace {

// Experts and slots of MoE layer l.
struct MoeLayout {
  int64_t experts, shared, routed, slots, all_slots;  // E, n_s, Er, Kr, K
};

MoeLayout moe_layout(const ModelConfig& config, int64_t l) {
  MoeLayout m;
  m.experts = config.experts_in_layer(l);
  m.shared = config.shared_in_layer(l);
  m.routed = m.experts - m.shared;
  // A pruned layer with no more routed experts than slots uses all of them.
  m.slots = std::min(config.num_experts_per_tok - m.shared, m.routed);
  m.all_slots = m.slots + m.shared;
  return m;
}

// t resized to shape and zero-filled, keeping its allocation.
Tensor& zeroed(Tensor& t, Shape shape) {
  t.resize(std::move(shape));
  return t;
}

void add_into(Tensor& dst, const Tensor& src) {
  for (int64_t i = 0; i < dst.size(); ++i) dst[i] += src[i];
}

void check_batch(const Batch& batch, const ModelConfig& config, const RoutingOptions& routing) {
  const size_t N = static_cast<size_t>(batch.B * batch.T);
  EMO_CHECK(batch.B > 0 && batch.T > 0 && batch.tokens.size() == N, "model", "batch B=", batch.B,
            " T=", batch.T, " holds ", batch.tokens.size(), " tokens");
  EMO_CHECK(batch.targets.empty() || batch.targets.size() == N, "model", "batch holds ", batch.targets.size(),
            " targets for ", N, " tokens");
  EMO_CHECK(batch.T <= config.max_position_embeddings, "model", "row length ", batch.T,
            " exceeds max_position_embeddings ", config.max_position_embeddings);
  EMO_CHECK(routing.mode != RoutingMode::kEmoPool || batch.doc_ids.size() == N, "model", "batch holds ",
            batch.doc_ids.size(), " doc_ids for ", N, " tokens (EMO pools need them)");
  EMO_CHECK(!routing.intra_document_attention || batch.attention_doc_ids.size() == N, "model", "batch holds ",
            batch.attention_doc_ids.size(), " attention_doc_ids for ", N,
            " tokens (intra-document attention needs them)");
}

}  // namespace

Model::Model(ModelConfig config) : config_(std::move(config)) {
  config_.validate();
  config_.check_fits_in_memory(sizeof(float), "fp32 weights");
  weights_ = std::make_unique<Weights>(config_);
}

Model::~Model() = default;

void Model::init_weights(uint64_t seed) {
  Rng rng(seed);
  for (auto& entry : weights_->entries) {
    if (entry.is_norm) {
      std::fill(entry.value.vec().begin(), entry.value.vec().end(), 1.0f);
      continue;
    }
    for (float& w : entry.value.vec()) {
      double z;
      do z = rng.normal();
      while (z < -3.0 || z > 3.0);
      w = static_cast<float>(0.02 * z);
    }
  }
}

std::vector<Param> Model::params() {
  weights_->allocate_grads();
  std::vector<Param> out;
  for (auto& entry : weights_->entries)
    out.push_back({entry.name, &entry.value, &entry.grad, entry.no_weight_decay});
  return out;
}

void Model::zero_grads() {
  weights_->allocate_grads();
  for (auto& entry : weights_->entries) entry.grad.zero();
}

int64_t Model::num_params() const {
  int64_t total = 0;
  for (const auto& entry : weights_->entries) total += entry.value.size();
  return total;
}

Tensor& Model::weight(const std::string& name) {
  return weights_->find(name).value;
}
const Tensor& Model::weight(const std::string& name) const {
  return weights_->find(name).value;
}

std::vector<std::string> Model::param_names() const {
  std::vector<std::string> names;
  for (const auto& entry : weights_->entries) names.push_back(entry.name);
  return names;
}

// Scales of the router losses' gradients: grad_scale * alpha / L, grad_scale * beta / L, and their divisors.
struct RouterGradScales {
  double lb, z;
  LabelTokens labels;
};

// The router losses' divisors of a micro-batch: its positions with a target, and `global_labels` (those of
// the whole global batch; 0: this micro-batch alone). A batch without any target (inference, selection)
// divides by its positions.
LabelTokens label_tokens(const ForwardState& state, int64_t global_labels) {
  const int64_t local = state.ce.count > 0 ? state.ce.count : state.batch.B * state.batch.T;
  return {global_labels > 0 ? global_labels : local, local};
}

// The passes over a model's private weights.
struct ModelPasses {
  using Weights = Model::Weights;
  static void run_forward(const Model& model, ForwardState& state, const Batch& batch,
                          const RoutingOptions& routing, Rng* rng, bool keep);
  // The pieces of run_forward, shared with the layer-by-layer inference: embedding into x [N, C]; layer l's
  // attention block (x += attention) up to the feed-forward input s.ffn_norm; final norm, logits, loss.
  static void begin_forward(const Model& model, ForwardState& state, const Batch& batch,
                            const RoutingOptions& routing, bool keep, Tensor& x);
  static void attention_block_forward(const Model& model, int64_t l, LayerState& s, const ForwardState& state,
                                      const RoutingOptions& routing, Tensor& x, Tensor& branch);
  static void end_forward(const Model& model, ForwardState& state, const Tensor& x, bool keep);
  // Router logits of layer l's input s.ffn_norm and the routing decision under `policy`.
  static void router_forward(const Model& model, int64_t l, LayerState& s, const RoutingPolicy& policy,
                             const RoutingContext& context);
  static void moe_block_forward(const Model& model, int64_t l, LayerState& s, Tensor& out,
                                const RoutingPolicy& policy, const RoutingContext& context);
  static void dense_block_forward(const Model& model, int64_t l, LayerState& s, Tensor& out);
  static void backward(Model& model, ForwardState& state, const LossWeights& weights,
                       const std::vector<std::vector<double>>* global_counts, int64_t global_label_tokens,
                       float grad_scale);
  static void moe_block_backward(Model& model, int64_t l, LayerState& s, const Tensor& dout, Tensor& dffn,
                                 const std::vector<double>& counts, const RouterGradScales& router);
  static void dense_block_backward(Model& model, int64_t l, LayerState& s, const Tensor& dout, Tensor& dffn);
  static void attention_block_backward(Model& model, int64_t l, LayerState& s, const ForwardState& state,
                                       Tensor& dx);
};

std::unique_ptr<ForwardState> Model::forward(const Batch& batch, const RoutingOptions& routing, Rng* rng) {
  auto state = std::make_unique<ForwardState>();
  ModelPasses::run_forward(*this, *state, batch, routing, rng, true);
  return state;
}

void Model::forward_into(ForwardState& state, const Batch& batch, const RoutingOptions& routing, Rng* rng) {
  ModelPasses::run_forward(*this, state, batch, routing, rng, true);
}

std::unique_ptr<ForwardState> Model::infer(const Batch& batch, const RoutingOptions& routing,
                                           Rng* rng) const {
  auto state = std::make_unique<ForwardState>();
  ModelPasses::run_forward(*this, *state, batch, routing, rng, false);
  return state;
}

void ModelPasses::begin_forward(const Model& model, ForwardState& state, const Batch& batch,
                                const RoutingOptions& routing, bool keep, Tensor& x) {
  const ModelConfig& config_ = model.config_;
  check_batch(batch, config_, routing);
  const int64_t B = batch.B, T = batch.T, N = B * T, C = config_.hidden_size, V = config_.vocab_size;
  state.batch = batch;
  if (state.batch.targets.empty()) state.batch.targets.assign(N, -1);
  state.for_backward = keep;
  state.positions.resize(N);
  for (int64_t i = 0; i < N; ++i) state.positions[i] = static_cast<int32_t>(i % T);
  state.layers.resize(config_.num_hidden_layers);
  x.resize({N, C});
  EMO_PROFILE_SCOPE("embedding");
  embedding_forward(x.data(), batch.tokens.data(), model.weights_->embed->value.data(), N, V, C);
}

void ModelPasses::attention_block_forward(const Model& model, int64_t l, LayerState& s,
                                          const ForwardState& state, const RoutingOptions& routing, Tensor& x,
                                          Tensor& branch) {
  const ModelConfig& config_ = model.config_;
  const Weights& w = *model.weights_;
  const Weights::Layer& lw = w.layers[l];
  const int64_t B = state.batch.B, T = state.batch.T, N = B * T, C = config_.hidden_size;
  const int64_t H = config_.num_attention_heads, Hkv = config_.num_key_value_heads, hd = config_.head_dim();
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const int32_t* doc_ids = routing.intra_document_attention ? state.batch.attention_doc_ids.data() : nullptr;

  // Attention block: x += o(attention(rope(q), rope(k), v)) of RMSNorm(x)
  {
    EMO_PROFILE_SCOPE("residual adds and copies");
    s.input = x;
  }
  s.attn_norm.resize({N, C});
  s.attn_rstd.resize({N});
  {
    EMO_PROFILE_SCOPE("norms");
    rmsnorm_forward(s.attn_norm.data(), s.attn_rstd.data(), x.data(), lw.attn_norm->value.data(), N, C, eps);
  }
  s.q.resize({N, H * hd});
  s.k.resize({N, Hkv * hd});
  s.v.resize({N, Hkv * hd});
  {
    EMO_PROFILE_SCOPE("attention: q/k/v/o projections");
    linear_forward(s.q.data(), s.attn_norm.data(), lw.q->value.data(), N, C, H * hd);
    linear_forward(s.k.data(), s.attn_norm.data(), lw.k->value.data(), N, C, Hkv * hd);
    linear_forward(s.v.data(), s.attn_norm.data(), lw.v->value.data(), N, C, Hkv * hd);
  }
  {
    EMO_PROFILE_SCOPE("attention: RoPE");
    rope_forward(s.q.data(), state.positions.data(), N, H, w.rope);
    rope_forward(s.k.data(), state.positions.data(), N, Hkv, w.rope);
  }
  s.probs.resize({B, H, T, T});
  s.attn_out.resize({N, H * hd});
  {
    EMO_PROFILE_SCOPE("attention: scores, softmax, values");
    attention_forward(s.attn_out.data(), s.probs.data(), s.q.data(), s.k.data(), s.v.data(), doc_ids,
                      {B, T, H, Hkv, hd});
  }
  branch.resize({N, C});
  {
    EMO_PROFILE_SCOPE("attention: q/k/v/o projections");
    linear_forward(branch.data(), s.attn_out.data(), lw.o->value.data(), N, H * hd, C);
  }
  {
    EMO_PROFILE_SCOPE("residual adds and copies");
    add_into(x, branch);
    // The feed-forward block's input: RMSNorm(x)
    s.mid = x;
  }
  s.ffn_norm.resize({N, C});
  s.ffn_rstd.resize({N});
  EMO_PROFILE_SCOPE("norms");
  rmsnorm_forward(s.ffn_norm.data(), s.ffn_rstd.data(), x.data(), lw.ffn_norm->value.data(), N, C, eps);
}

void ModelPasses::run_forward(const Model& model, ForwardState& out, const Batch& batch,
                              const RoutingOptions& routing, Rng* rng, bool keep) {
  const ModelConfig& config_ = model.config_;
  Tensor x;       // [N, C] the residual stream
  Tensor branch;  // [N, C] output of the block being added to it
  begin_forward(model, out, batch, routing, keep, x);
  std::unique_ptr<RoutingPolicy> policy = make_routing_policy(routing);
  LayerState scratch;  // reused by every layer when nothing is kept
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    LayerState& s = keep ? out.layers[l] : scratch;
    attention_block_forward(model, l, s, out, routing, x, branch);
    // Feed-forward block: x += MoE (or dense MLP) of RMSNorm(x)
    if (config_.is_moe()) {
      RoutingContext context{&batch, &routing, l, config_.experts_in_layer(l), config_.num_experts_per_tok,
                             rng};
      moe_block_forward(model, l, s, branch, *policy, context);
    } else {
      dense_block_forward(model, l, s, branch);
    }
    {
      EMO_PROFILE_SCOPE("residual adds and copies");
      add_into(x, branch);
    }
    if (!keep) out.layers[l].routing = std::move(s.routing);
  }
  end_forward(model, out, x, keep);
}

void ModelPasses::end_forward(const Model& model, ForwardState& state, const Tensor& x, bool keep) {
  const ModelConfig& config_ = model.config_;
  const Weights& w = *model.weights_;
  const int64_t N = x.dim(0), C = config_.hidden_size, V = config_.vocab_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  {
    EMO_PROFILE_SCOPE("residual adds and copies");
    state.final_input = x;
  }
  state.final_norm.resize({N, C});
  state.final_rstd.resize({N});
  {
    EMO_PROFILE_SCOPE("norms");
    rmsnorm_forward(state.final_norm.data(), state.final_rstd.data(), x.data(), w.norm->value.data(), N, C,
                    eps);
  }
  state.logits.resize({N, V});
  {
    EMO_PROFILE_SCOPE("LM head");
    linear_forward(state.logits.data(), state.final_norm.data(), w.lm_head->value.data(), N, C, V);
  }
  state.lse.resize({N});
  EMO_PROFILE_SCOPE("cross-entropy + z-loss");
  state.ce = cross_entropy_forward(state.lse.data(), state.logits.data(), state.batch.targets.data(), N, V);
  if (!keep) {
    state.final_input = Tensor();
    state.final_norm = Tensor();
  }
}

std::unique_ptr<ForwardState> Model::begin_layers(const Batch& batch, const RoutingOptions& routing) const {
  EMO_CHECK(!(routing.mode == RoutingMode::kEmoPool && routing.training), "model",
            "layer-by-layer inference routes in evaluation mode (EMO pool sizes are not drawn)");
  auto state = std::make_unique<ForwardState>();
  ModelPasses::begin_forward(*this, *state, batch, routing, false, state->residual);
  state->next_layer = 0;
  return state;
}

const LayerRouting& Model::layer_router(ForwardState& state, int64_t l, const RoutingOptions& routing) const {
  EMO_CHECK(config_.is_moe(), "model", "layer-by-layer routing needs an MoE model");
  EMO_CHECK(l == state.next_layer && l < config_.num_hidden_layers, "model", "layer ", l,
            " run out of order (next is ", state.next_layer, ")");
  LayerState& s = state.step_layer;
  ModelPasses::attention_block_forward(*this, l, s, state, routing, state.residual, state.step_branch);
  // Route once to expose the router's probabilities; layer_experts routes again under the final options.
  RoutingContext context{&state.batch, &routing, l, config_.experts_in_layer(l), config_.num_experts_per_tok,
                         nullptr};
  ModelPasses::router_forward(*this, l, s, *make_routing_policy(routing), context);
  return s.routing;
}

void Model::layer_experts(ForwardState& state, int64_t l, const RoutingOptions& routing) const {
  EMO_CHECK(l == state.next_layer, "model", "layer_experts(", l, ") without layer_router(", l, ")");
  LayerState& s = state.step_layer;
  RoutingContext context{&state.batch, &routing, l, config_.experts_in_layer(l), config_.num_experts_per_tok,
                         nullptr};
  ModelPasses::moe_block_forward(*this, l, s, state.step_branch, *make_routing_policy(routing), context);
  add_into(state.residual, state.step_branch);
  state.layers[l].routing = std::move(s.routing);
  ++state.next_layer;
}

void Model::end_layers(ForwardState& state) const {
  EMO_CHECK(state.next_layer == config_.num_hidden_layers, "model", "end_layers after ", state.next_layer,
            " of ", config_.num_hidden_layers, " layers");
  ModelPasses::end_forward(*this, state, state.residual, false);
  state.residual = Tensor();
  state.step_branch = Tensor();
  state.step_layer = LayerState();
}

void ModelPasses::router_forward(const Model& model, int64_t l, LayerState& s, const RoutingPolicy& policy,
                                 const RoutingContext& context) {
  EMO_PROFILE_SCOPE("router (logits, routing, losses)");
  const ModelConfig& config_ = model.config_;
  const MoeLayout m = moe_layout(config_, l);
  const int64_t N = s.ffn_norm.dim(0), C = config_.hidden_size;
  // The routed experts' rows of gate.weight come first, so they are one contiguous [Er, C] block.
  s.router_logits.resize({N, m.routed});
  linear_forward(s.router_logits.data(), s.ffn_norm.data(), model.weights_->layers[l].router->value.data(), N,
                 C, m.routed);
  route_forward(s.routing, s.router_logits.data(), N, m.routed, m.slots, config_.norm_topk_prob, policy,
                context);
}

void ModelPasses::moe_block_forward(const Model& model, int64_t l, LayerState& s, Tensor& out,
                                    const RoutingPolicy& policy, const RoutingContext& context) {
  const ModelConfig& config_ = model.config_;
  const MoeLayout m = moe_layout(config_, l);
  const int64_t N = s.ffn_norm.dim(0), C = config_.hidden_size, F = config_.intermediate_size;
  router_forward(model, l, s, policy, context);

  // Slots: the routed choices, then the shared expert(s) E-n_s.. with weight exactly 1.
  s.moe_ids.assign(N * m.all_slots, -1);
  s.moe_weights.resize({N, m.all_slots});
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < m.slots; ++k) {
      s.moe_ids[n * m.all_slots + k] = s.routing.ids[n * m.slots + k];
      s.moe_weights[n * m.all_slots + k] = s.routing.weights[n * m.slots + k];
    }
    for (int64_t j = 0; j < m.shared; ++j) {
      s.moe_ids[n * m.all_slots + m.slots + j] = static_cast<int32_t>(m.routed + j);
      s.moe_weights[n * m.all_slots + m.slots + j] = 1.0f;
    }
  }
  EMO_PROFILE_SCOPE("experts: matmuls + SwiGLU");
  moe_forward(out.data(), s.moe, s.ffn_norm.data(), s.moe_ids.data(), s.moe_weights.data(), N, m.all_slots, C,
              F, model.weights_->expert_weights(l));
}

void ModelPasses::dense_block_forward(const Model& model, int64_t l, LayerState& s, Tensor& out) {
  const ModelConfig& config_ = model.config_;
  const Weights::Layer& lw = model.weights_->layers[l];
  const int64_t N = s.ffn_norm.dim(0), C = config_.hidden_size, F = config_.intermediate_size;
  s.mlp_gate.resize({N, F});
  s.mlp_up.resize({N, F});
  s.mlp_hidden.resize({N, F});
  linear_forward(s.mlp_gate.data(), s.ffn_norm.data(), lw.gate[0]->value.data(), N, C, F);
  linear_forward(s.mlp_up.data(), s.ffn_norm.data(), lw.up[0]->value.data(), N, C, F);
  swiglu_forward(s.mlp_hidden.data(), s.mlp_gate.data(), s.mlp_up.data(), N * F);
  linear_forward(out.data(), s.mlp_hidden.data(), lw.down[0]->value.data(), N, F, C);
}

std::vector<std::vector<double>> Model::expert_counts(const ForwardState& state) const {
  std::vector<std::vector<double>> counts;
  if (!config_.is_moe()) return counts;
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    const LayerRouting& r = state.routing(l);
    std::vector<double> c(r.routed, 0.0);
    for (int32_t e : r.ids)
      if (e >= 0) c[e] += 1.0;
    counts.push_back(std::move(c));
  }
  return counts;
}

LossTerms Model::loss(const ForwardState& state, const LossWeights& weights,
                      const std::vector<std::vector<double>>* global_counts,
                      int64_t global_label_tokens) const {
  LossTerms terms;
  terms.tokens = state.ce.count;
  if (state.ce.count > 0) {
    terms.ce = state.ce.ce / static_cast<double>(state.ce.count);
    terms.output_z = state.ce.z / static_cast<double>(state.ce.count);
  }
  if (config_.is_moe()) {
    const int64_t L = config_.num_hidden_layers;
    const LabelTokens labels = label_tokens(state, global_label_tokens);
    std::vector<std::vector<double>> own;
    if (!global_counts) own = expert_counts(state);
    const auto& counts = global_counts ? *global_counts : own;
    EMO_CHECK(static_cast<int64_t>(counts.size()) == L, "model", "expert counts hold ", counts.size(),
              " layers, the model has ", L);
    for (int64_t l = 0; l < L; ++l) {
      RouterLoss r = router_loss(state.routing(l), counts[l], labels);
      terms.lb_per_layer.push_back(r.lb);
      terms.router_z_per_layer.push_back(r.z);
      terms.lb += r.lb / static_cast<double>(L);
      terms.router_z += r.z / static_cast<double>(L);
    }
  }
  terms.total = terms.ce + weights.output_z * terms.output_z + weights.lb * terms.lb +
                weights.router_z * terms.router_z;
  return terms;
}

void Model::backward(ForwardState& state, const LossWeights& weights,
                     const std::vector<std::vector<double>>* global_counts, int64_t global_label_tokens,
                     float grad_scale) {
  ModelPasses::backward(*this, state, weights, global_counts, global_label_tokens, grad_scale);
}

void ModelPasses::backward(Model& model, ForwardState& state, const LossWeights& weights,
                           const std::vector<std::vector<double>>* global_counts, int64_t global_label_tokens,
                           float grad_scale) {
  EMO_CHECK(state.for_backward, "model",
            "backward needs the state of Model::forward (Model::infer keeps none)");
  const ModelConfig& config_ = model.config_;
  model.weights_->allocate_grads();
  Weights& w = *model.weights_;
  const int64_t N = state.batch.B * state.batch.T, C = config_.hidden_size, V = config_.vocab_size;
  const int64_t L = config_.num_hidden_layers;

  // Output: CE + output z-loss, means over counted tokens.
  Tensor& dlogits = zeroed(w.buffers.dlogits, {N, V});  // [N, V]
  if (state.ce.count > 0) {
    EMO_PROFILE_SCOPE("cross-entropy + z-loss");
    const float per_token = grad_scale / static_cast<float>(state.ce.count);
    cross_entropy_backward(dlogits.data(), state.logits.data(), state.lse.data(), state.batch.targets.data(),
                           N, V, per_token, per_token * static_cast<float>(weights.output_z));
  }
  Tensor& dnorm = zeroed(w.buffers.dnorm, {N, C});  // [N, C]
  {
    EMO_PROFILE_SCOPE("LM head");
    linear_backward(dnorm.data(), w.lm_head->grad.data(), dlogits.data(), state.final_norm.data(),
                    w.lm_head->value.data(), N, C, V);
  }
  Tensor& dx = zeroed(w.buffers.dx, {N, C});  // [N, C] gradient of the residual stream
  {
    EMO_PROFILE_SCOPE("norms");
    rmsnorm_backward(dx.data(), w.norm->grad.data(), dnorm.data(), state.final_input.data(),
                     w.norm->value.data(), state.final_rstd.data(), N, C);
  }

  std::vector<std::vector<double>> own;
  if (config_.is_moe() && !global_counts) own = model.expert_counts(state);
  const auto* counts = global_counts ? global_counts : &own;
  RouterGradScales router{grad_scale * weights.lb / static_cast<double>(L),
                          grad_scale * weights.router_z / static_cast<double>(L),
                          label_tokens(state, global_label_tokens)};
  for (int64_t l = L - 1; l >= 0; --l) {
    LayerState& s = state.layers[l];
    Tensor& dffn = zeroed(w.buffers.dffn, {N, C});  // [N, C] gradient of RMSNorm(mid)
    if (config_.is_moe())
      moe_block_backward(model, l, s, dx, dffn, (*counts)[l], router);
    else
      dense_block_backward(model, l, s, dx, dffn);
    const Weights::Layer& lw = w.layers[l];
    {
      EMO_PROFILE_SCOPE("norms");
      rmsnorm_backward(dx.data(), lw.ffn_norm->grad.data(), dffn.data(), s.mid.data(),
                       lw.ffn_norm->value.data(), s.ffn_rstd.data(), N, C);
    }
    attention_block_backward(model, l, s, state, dx);
  }
  EMO_PROFILE_SCOPE("embedding");
  embedding_backward(w.embed->grad.data(), dx.data(), state.batch.tokens.data(), N, V, C);
}

void ModelPasses::moe_block_backward(Model& model, int64_t l, LayerState& s, const Tensor& dout, Tensor& dffn,
                                     const std::vector<double>& counts, const RouterGradScales& router) {
  const ModelConfig& config_ = model.config_;
  Weights& w = *model.weights_;
  const Weights::Layer& lw = w.layers[l];
  const MoeLayout m = moe_layout(config_, l);
  const int64_t N = dout.dim(0), C = config_.hidden_size;
  Tensor dweights({N, m.all_slots});  // [N, K]
  {
    EMO_PROFILE_SCOPE("experts: matmuls + SwiGLU");
    moe_backward(dffn.data(), dweights.data(), w.expert_grads(l), dout.data(), s.moe_ids.data(),
                 s.moe_weights.data(), s.moe, w.expert_weights(l), w.buffers.moe);
  }
  EMO_PROFILE_SCOPE("router (logits, routing, losses)");
  Tensor droute({N, m.slots});  // [N, Kr] the routed slots' part (the shared weight is a constant 1)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < m.slots; ++k) droute[n * m.slots + k] = dweights[n * m.all_slots + k];
  Tensor dscores({N, m.routed});  // [N, Er]
  Tensor dlse({N});               // [N]
  router_loss(s.routing, counts, router.labels, dscores.data(), dlse.data(), router.lb, router.z);
  Tensor dlogits({N, m.routed});  // [N, Er]
  route_backward(dlogits.data(), s.routing, droute.data(), dscores.data(), dlse.data());
  linear_backward(dffn.data(), lw.router->grad.data(), dlogits.data(), s.ffn_norm.data(),
                  lw.router->value.data(), N, C, m.routed);
}

void ModelPasses::dense_block_backward(Model& model, int64_t l, LayerState& s, const Tensor& dout,
                                       Tensor& dffn) {
  const ModelConfig& config_ = model.config_;
  const Weights::Layer& lw = model.weights_->layers[l];
  const int64_t N = dout.dim(0), C = config_.hidden_size, F = config_.intermediate_size;
  auto& buffers = model.weights_->buffers;
  Tensor& dhidden = zeroed(buffers.dhidden, {N, F});  // [N, F]
  Tensor& dgate = zeroed(buffers.dgate, {N, F});      // [N, F]
  Tensor& dup = zeroed(buffers.dup, {N, F});          // [N, F]
  linear_backward(dhidden.data(), lw.down[0]->grad.data(), dout.data(), s.mlp_hidden.data(),
                  lw.down[0]->value.data(), N, F, C);
  swiglu_backward(dgate.data(), dup.data(), dhidden.data(), s.mlp_gate.data(), s.mlp_up.data(), N * F);
  linear_backward(dffn.data(), lw.gate[0]->grad.data(), dgate.data(), s.ffn_norm.data(),
                  lw.gate[0]->value.data(), N, C, F);
  linear_backward(dffn.data(), lw.up[0]->grad.data(), dup.data(), s.ffn_norm.data(), lw.up[0]->value.data(),
                  N, C, F);
}

void ModelPasses::attention_block_backward(Model& model, int64_t l, LayerState& s, const ForwardState& state,
                                           Tensor& dx) {
  const ModelConfig& config_ = model.config_;
  const Weights::Layer& lw = model.weights_->layers[l];
  const int64_t B = state.batch.B, T = state.batch.T, N = B * T, C = config_.hidden_size;
  const int64_t H = config_.num_attention_heads, Hkv = config_.num_key_value_heads, hd = config_.head_dim();
  auto& buffers = model.weights_->buffers;
  Tensor& datt = zeroed(buffers.datt, {N, H * hd});  // [N, H*hd]
  {
    EMO_PROFILE_SCOPE("attention: q/k/v/o projections");
    linear_backward(datt.data(), lw.o->grad.data(), dx.data(), s.attn_out.data(), lw.o->value.data(), N,
                    H * hd, C);
  }
  Tensor& dq = zeroed(buffers.dq, {N, H * hd});    // [N, H*hd]
  Tensor& dk = zeroed(buffers.dk, {N, Hkv * hd});  // [N, Hkv*hd]
  Tensor& dv = zeroed(buffers.dv, {N, Hkv * hd});  // [N, Hkv*hd]
  {
    EMO_PROFILE_SCOPE("attention: scores, softmax, values");
    attention_backward(dq.data(), dk.data(), dv.data(), datt.data(), s.probs.data(), s.q.data(), s.k.data(),
                       s.v.data(), {B, T, H, Hkv, hd});
  }
  {
    EMO_PROFILE_SCOPE("attention: RoPE");
    rope_backward(dq.data(), state.positions.data(), N, H, model.weights_->rope);
    rope_backward(dk.data(), state.positions.data(), N, Hkv, model.weights_->rope);
  }
  Tensor& dnorm = zeroed(buffers.dnorm, {N, C});  // [N, C]
  {
    EMO_PROFILE_SCOPE("attention: q/k/v/o projections");
    linear_backward(dnorm.data(), lw.q->grad.data(), dq.data(), s.attn_norm.data(), lw.q->value.data(), N, C,
                    H * hd);
    linear_backward(dnorm.data(), lw.k->grad.data(), dk.data(), s.attn_norm.data(), lw.k->value.data(), N, C,
                    Hkv * hd);
    linear_backward(dnorm.data(), lw.v->grad.data(), dv.data(), s.attn_norm.data(), lw.v->value.data(), N, C,
                    Hkv * hd);
  }
  EMO_PROFILE_SCOPE("norms");
  rmsnorm_backward(dx.data(), lw.attn_norm->grad.data(), dnorm.data(), s.input.data(),
                   lw.attn_norm->value.data(), s.attn_rstd.data(), N, C);
}

}  // namespace emo
