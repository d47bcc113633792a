// The decoder of docs/emo.md §1, §3, §4: whole-model gradients against finite differences (EMO,
// standard MoE, dense), the routing rules, the losses, and checkpoint round trips.
#include "model/model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <set>

#include "core/error.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "model/forward_state.h"
#include "model/routing.h"
#include "tensor/dtype.h"

namespace emo {
namespace {

constexpr int32_t kEos = 1;

// V=32, d=16, L=2, H=2 (hd 8), Hkv=1, E=8 (7 routed + 1 shared), K=3 (2 routed slots), f=12.
ModelConfig tiny_config(bool moe) {
  ModelConfig c;
  c.model_type = moe ? "emo" : "olmo2_noqknorm_prenorm";
  c.vocab_size = 32;
  c.hidden_size = 16;
  c.intermediate_size = 12;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.max_position_embeddings = 64;
  c.rope_theta = 10000.0;
  c.eos_token_id = kEos;
  c.pad_token_id = 0;
  if (moe) {
    c.num_experts = 8;
    c.num_experts_per_tok = 3;
    c.num_shared_experts = 1;
  }
  return c;
}

// Weights large enough that every term has a visible gradient (std 0.3 matrices, norms around 1).
std::unique_ptr<Model> tiny_model(bool moe, uint64_t seed = 7) {
  auto model = std::make_unique<Model>(tiny_config(moe));
  model->init_weights(seed);
  Rng rng(seed + 1);
  for (Param& p : model->params()) {
    bool norm = p.value->ndim() == 1;
    for (float& w : p.value->vec()) w = norm ? static_cast<float>(1.0 + 0.2 * rng.normal()) : w * 15.0f;
  }
  return model;
}

// Two rows of 12 with documents separated by EOS (an EOS at t = 0 of row 1 does not open a segment).
Batch tiny_batch() {
  const int64_t B = 2, T = 12;
  std::vector<int32_t> tokens = {5,    9, 3, kEos, 7,  7,  12, 30, kEos, 4,    8, 2,  //
                                 kEos, 6, 6, 20,   21, 22, 23, 24, 25,   kEos, 3, 4};
  std::vector<int32_t> targets(B * T);
  for (int64_t i = 0; i < B * T; ++i) targets[i] = (tokens[i] * 7 + 3) % 32;
  targets[5] = -1;  // an ignored position
  return Batch::from_tokens(B, T, tokens, targets, kEos);
}

// Pool sizes [layer][row][segment] for tiny_batch (row 0: 3 segments, row 1: 2).
std::vector<std::vector<std::vector<int32_t>>> fixed_pools() {
  return {{{3, 5, 2}, {4, 7}}, {{6, 2, 3}, {1, 4}}};  // a pool of 1 leaves a routed slot unused
}

RoutingOptions emo_options() {
  RoutingOptions o;
  o.mode = RoutingMode::kEmoPool;
  o.pool_sizes = fixed_pools();
  o.intra_document_attention = true;
  return o;
}

// Routing decisions that must not change between finite-difference evaluations.
std::vector<int32_t> routing_signature(const ForwardState& s) {
  std::vector<int32_t> sig;
  for (const auto& layer : s.layers) {
    sig.insert(sig.end(), layer.routing.ids.begin(), layer.routing.ids.end());
    for (const auto& pool : layer.routing.pools)
      sig.insert(sig.end(), pool.members.begin(), pool.members.end());
  }
  return sig;
}

// Checks d(total loss)/d(params) against central differences: for every parameter tensor a random direction
// (directional derivative) and its three largest-gradient coordinates. Loss counts are held fixed (they carry
// no gradient), and a sample whose perturbation changes a routing decision is skipped.
void check_gradients(Model& model, const Batch& batch, const RoutingOptions& options,
                     const LossWeights& weights = LossWeights{}) {
  auto base = model.forward(batch, options);
  const auto counts = model.expert_counts(*base);
  const auto signature = routing_signature(*base);
  const int64_t G = batch.B * batch.T;
  model.zero_grads();
  model.backward(*base, weights, &counts, G);

  auto loss_at = [&](bool* same_routing) {
    auto s = model.forward(batch, options);
    *same_routing = routing_signature(*s) == signature;
    return model.loss(*s, weights, &counts, G).total;
  };
  // Central difference along direction dir (a unit vector) of tensor p.
  auto directional = [&](Param& p, const std::vector<float>& dir, double eps, bool* ok) {
    std::vector<float> saved = p.value->vec();
    bool same_plus, same_minus;
    for (size_t i = 0; i < dir.size(); ++i) p.value->vec()[i] = saved[i] + static_cast<float>(eps) * dir[i];
    double plus = loss_at(&same_plus);
    for (size_t i = 0; i < dir.size(); ++i) p.value->vec()[i] = saved[i] - static_cast<float>(eps) * dir[i];
    double minus = loss_at(&same_minus);
    p.value->vec() = saved;
    *ok = same_plus && same_minus;
    return (plus - minus) / (2 * eps);
  };

  Rng rng(123);
  int checked = 0, skipped = 0;
  double worst = 0;  // largest |numeric - analytic| / (1e-3 + |analytic|)
  for (Param& p : model.params()) {
    const int64_t n = p.value->size();
    std::vector<std::vector<float>> directions;
    std::vector<float> random(n);
    double norm = 0;
    for (float& r : random) {
      r = static_cast<float>(rng.normal());
      norm += static_cast<double>(r) * r;
    }
    for (float& r : random) r /= static_cast<float>(std::sqrt(norm));
    directions.push_back(random);
    std::vector<int64_t> order(n);
    for (int64_t i = 0; i < n; ++i) order[i] = i;
    std::partial_sort(
        order.begin(), order.begin() + std::min<int64_t>(3, n), order.end(),
        [&](int64_t a, int64_t b) { return std::fabs((*p.grad)[a]) > std::fabs((*p.grad)[b]); });
    for (int64_t j = 0; j < std::min<int64_t>(3, n); ++j) {
      std::vector<float> unit(n, 0.0f);
      unit[order[j]] = 1.0f;
      directions.push_back(unit);
    }
    for (const auto& dir : directions) {
      double analytic = 0;
      for (int64_t i = 0; i < n; ++i) analytic += static_cast<double>((*p.grad)[i]) * dir[i];
      bool ok;
      double numeric = directional(p, dir, 2e-3, &ok);
      if (!ok) {
        ++skipped;
        continue;
      }
      ++checked;
      worst = std::max(worst, std::fabs(numeric - analytic) / (1e-3 + std::fabs(analytic)));
      EXPECT_NEAR(numeric, analytic, 3e-4 + 2e-2 * std::fabs(analytic)) << p.name;
    }
  }
  std::printf("  %d samples checked, %d skipped (routing changed), worst relative error %.2e\n", checked,
              skipped, worst);
  EXPECT_GT(checked, 10 * skipped + 20) << "too many samples flipped a routing decision";
}

TEST(ModelGradient, EmoPoolRoutingMatchesFiniteDifferences) {
  auto model = tiny_model(true);
  check_gradients(*model, tiny_batch(), emo_options());
}

// The auxiliary terms weigh little at their released weights; amplified, their gradients must hold too.
LossWeights heavy_aux() {
  LossWeights w;
  w.output_z = 0.05;
  w.lb = 2.0;
  w.router_z = 0.2;
  return w;
}

TEST(ModelGradient, EmoPoolWithHeavyAuxiliaryLossesMatchesFiniteDifferences) {
  auto model = tiny_model(true);
  check_gradients(*model, tiny_batch(), emo_options(), heavy_aux());
}

TEST(ModelGradient, StandardWithHeavyAuxiliaryLossesMatchesFiniteDifferences) {
  auto model = tiny_model(true);
  check_gradients(*model, tiny_batch(), RoutingOptions{}, heavy_aux());
}

TEST(ModelGradient, StandardRoutingMatchesFiniteDifferences) {
  auto model = tiny_model(true);
  check_gradients(*model, tiny_batch(), RoutingOptions{});
}

TEST(ModelGradient, DenseModelMatchesFiniteDifferences) {
  auto model = tiny_model(false);
  check_gradients(*model, tiny_batch(), RoutingOptions{});
}

TEST(ModelGradient, NormalisedTopKMatchesFiniteDifferences) {
  ModelConfig config = tiny_config(true);
  config.norm_topk_prob = true;
  Model model(config);
  auto reference = tiny_model(true);
  for (Param& p : model.params()) *p.value = reference->weight(p.name);
  check_gradients(model, tiny_batch(), RoutingOptions{});
}

TEST(Batch, EosStartsTheNextRoutingSegmentAndEndsItsOwnAttentionDocument) {
  Batch b = Batch::from_tokens(1, 7, {kEos, 4, 5, kEos, 6, kEos, kEos}, {}, kEos);
  EXPECT_EQ(b.doc_ids, (std::vector<int32_t>{0, 0, 0, 1, 1, 2, 3}));
  EXPECT_EQ(b.attention_doc_ids, (std::vector<int32_t>{0, 1, 1, 1, 2, 2, 3}));
  EXPECT_EQ(b.targets, std::vector<int32_t>(7, -1));
}

TEST(EmoRouting, TheEosIsRoutedWithTheDocumentThatFollowsIt) {
  auto model = tiny_model(true);
  auto state = model->forward(tiny_batch(), emo_options());
  const auto& pools = state->routing(0).pools;
  ASSERT_EQ(pools.size(), 5u);
  // Row 0: EOS at 3 and 8 open segments [3, 8) and [8, 12); row 1's EOS at 0 stays in the first segment.
  EXPECT_EQ(pools[1].begin, 3);
  EXPECT_EQ(pools[1].end, 8);
  EXPECT_EQ(pools[2].begin, 8);
  EXPECT_EQ(pools[3].begin, 0);
  EXPECT_EQ(pools[3].end, 9);
  EXPECT_EQ(pools[4].begin, 9);
  for (int l = 0; l < 2; ++l)
    for (size_t i = 0; i < pools.size(); ++i)
      EXPECT_EQ(static_cast<int32_t>(state->routing(l).pools[i].members.size()),
                fixed_pools()[l][state->routing(l).pools[i].row][i < 3 ? i : i - 3]);
}

TEST(EmoRouting, ExpertsOutsideThePoolAreNeverChosen) {
  auto model = tiny_model(true);
  RoutingOptions options;
  options.mode = RoutingMode::kEmoPool;
  options.pool_min = 1;
  options.pool_max = 4;
  Rng rng(5);
  Batch batch = tiny_batch();
  for (int trial = 0; trial < 5; ++trial) {
    auto state = model->forward(batch, options, &rng);
    for (int l = 0; l < 2; ++l) {
      const LayerRouting& r = state->routing(l);
      for (const PoolSegment& pool : r.pools) {
        EXPECT_GE(pool.pool_size, 1);
        EXPECT_LE(pool.pool_size, 4);
        std::set<int32_t> members(pool.members.begin(), pool.members.end());
        for (int32_t t = pool.begin; t < pool.end; ++t) {
          const int64_t n = pool.row * batch.T + t;
          for (int64_t k = 0; k < r.slots; ++k) {
            int32_t e = r.ids[n * r.slots + k];
            if (e >= 0) {
              EXPECT_TRUE(members.count(e)) << "token " << n << " chose expert " << e;
            } else {
              EXPECT_LT(pool.pool_size, r.slots);  // only a pool smaller than the slots leaves a slot unused
            }
          }
          double in_pool = 0;
          for (int64_t e = 0; e < r.routed; ++e) {
            if (!members.count(static_cast<int32_t>(e))) {
              EXPECT_EQ(r.scores[n * r.routed + e], 0.0f);
            }
            in_pool += r.scores[n * r.routed + e];
          }
          EXPECT_NEAR(in_pool, 1.0, 1e-5);  // renormalised inside the pool
        }
      }
    }
  }
}

TEST(EmoRouting, PoolMembersAreTheTopExpertsBySegmentMass) {
  auto model = tiny_model(true);
  auto state = model->forward(tiny_batch(), emo_options());
  const LayerRouting& r = state->routing(1);
  for (const PoolSegment& pool : r.pools) {
    std::vector<double> mass(r.routed, 0.0);
    for (int32_t t = pool.begin; t < pool.end; ++t)
      for (int64_t e = 0; e < r.routed; ++e) mass[e] += r.probs[(pool.row * 12 + t) * r.routed + e];
    double smallest_kept = 1e9, largest_dropped = -1;
    for (int64_t e = 0; e < r.routed; ++e) {
      bool kept = std::count(pool.members.begin(), pool.members.end(), e) > 0;
      if (kept)
        smallest_kept = std::min(smallest_kept, mass[e]);
      else
        largest_dropped = std::max(largest_dropped, mass[e]);
    }
    EXPECT_GE(smallest_kept, largest_dropped);
  }
}

TEST(EmoRouting, EvaluationModeUsesPoolEval) {
  auto model = tiny_model(true);
  RoutingOptions options;
  options.mode = RoutingMode::kEmoPool;
  options.training = false;
  options.pool_eval = 3;
  auto state = model->forward(tiny_batch(), options);  // no Rng needed
  for (int l = 0; l < 2; ++l)
    for (const PoolSegment& pool : state->routing(l).pools) {
      EXPECT_EQ(pool.pool_size, 3);
      EXPECT_EQ(pool.members.size(), 3u);
    }
}

TEST(EmoRouting, DefaultPoolSizesAreDrawnFromKToE) {
  auto model = tiny_model(true);
  RoutingOptions options;
  options.mode = RoutingMode::kEmoPool;
  Rng rng(11);
  std::set<int32_t> seen;
  for (int trial = 0; trial < 20; ++trial) {
    auto state = model->forward(tiny_batch(), options, &rng);
    for (int l = 0; l < 2; ++l)
      for (const PoolSegment& pool : state->routing(l).pools) seen.insert(pool.pool_size);
  }
  // Drawn from [K, E] = [3, 8]; 8 means every routed expert, clamped to the 7 routed ones.
  EXPECT_EQ(seen, (std::set<int32_t>{3, 4, 5, 6, 7}));
}

TEST(EmoRouting, TrainingWithoutAnRngIsAnError) {
  auto model = tiny_model(true);
  RoutingOptions options;
  options.mode = RoutingMode::kEmoPool;
  EXPECT_THROW(model->forward(tiny_batch(), options), Error);
}

TEST(EmoRouting, APoolOfAllRoutedExpertsEqualsStandardRouting) {
  auto model = tiny_model(true);
  RoutingOptions all = emo_options();
  all.intra_document_attention = false;
  for (auto& layer : all.pool_sizes)
    for (auto& row : layer) std::fill(row.begin(), row.end(), 7);
  auto pooled = model->forward(tiny_batch(), all);
  auto standard = model->forward(tiny_batch(), RoutingOptions{});
  EXPECT_EQ(pooled->logits.vec(), standard->logits.vec());
}

TEST(Routing, SharedExpertIsAlwaysUsedWithWeightExactlyOne) {
  auto model = tiny_model(true);
  auto state = model->forward(tiny_batch(), emo_options());
  for (const LayerState& layer : state->layers) {
    const int64_t N = 24, K = 3;
    ASSERT_EQ(layer.moe_ids.size(), static_cast<size_t>(N * K));
    for (int64_t n = 0; n < N; ++n) {
      EXPECT_EQ(layer.moe_ids[n * K + 2], 7);
      EXPECT_EQ(layer.moe_weights[n * K + 2], 1.0f);
      for (int64_t k = 0; k < 2; ++k) EXPECT_NE(layer.moe_ids[n * K + k], 7);  // never routed
    }
  }
}

TEST(Routing, StandardWeightsAreTheRawSoftmaxOverRoutedExperts) {
  auto model = tiny_model(true);
  auto state = model->forward(tiny_batch(), RoutingOptions{});
  const LayerState& layer = state->layers[0];
  const LayerRouting& r = layer.routing;
  for (int64_t n = 0; n < 24; ++n) {
    double sum = 0;
    for (int64_t e = 0; e < 7; ++e) sum += r.probs[n * 7 + e];
    EXPECT_NEAR(sum, 1.0, 1e-6);
    // Weight of the best expert = its unmasked probability, and it is the maximum.
    const float* p = r.probs.data() + n * 7;
    EXPECT_EQ(r.ids[n * 2], std::max_element(p, p + 7) - p);
    EXPECT_EQ(r.weights[n * 2], p[r.ids[n * 2]]);
    EXPECT_GE(r.weights[n * 2], r.weights[n * 2 + 1]);
    EXPECT_LT(r.weights[n * 2] + r.weights[n * 2 + 1], 1.0f);  // not renormalised
  }
}

TEST(Routing, SubsetWithAllExpertsKeptEqualsStandardRouting) {
  auto model = tiny_model(true);
  RoutingOptions subset;
  subset.mode = RoutingMode::kSubset;
  subset.subset = {{0, 1, 2, 3, 4, 5, 6}, {6, 5, 4, 3, 2, 1, 0}};
  auto a = model->forward(tiny_batch(), subset);
  auto b = model->forward(tiny_batch(), RoutingOptions{});
  EXPECT_EQ(a->logits.vec(), b->logits.vec());
  for (int l = 0; l < 2; ++l) EXPECT_EQ(a->routing(l).ids, b->routing(l).ids);
}

TEST(Routing, SubsetRenormalisesOverTheKeptExpertsAndUsesAllWhenFewerThanSlots) {
  auto model = tiny_model(true);
  RoutingOptions subset;
  subset.mode = RoutingMode::kSubset;
  subset.subset = {{2, 5, 6}, {4}};
  auto state = model->forward(tiny_batch(), subset);
  for (int64_t n = 0; n < 24; ++n) {
    const LayerRouting& r0 = state->routing(0);
    double kept = r0.scores[n * 7 + 2] + r0.scores[n * 7 + 5] + r0.scores[n * 7 + 6];
    EXPECT_NEAR(kept, 1.0, 1e-6);
    for (int64_t k = 0; k < 2; ++k)
      EXPECT_TRUE(r0.ids[n * 2 + k] == 2 || r0.ids[n * 2 + k] == 5 || r0.ids[n * 2 + k] == 6);
    const LayerRouting& r1 = state->routing(1);
    EXPECT_EQ(r1.ids[n * 2], 4);
    EXPECT_EQ(r1.weights[n * 2], 1.0f);  // the only kept expert gets all the probability
    EXPECT_EQ(r1.ids[n * 2 + 1], -1);
  }
}

TEST(Routing, ASubsetKeepingOnlyTheSharedExpertRunsItAlone) {
  auto model = tiny_model(true);
  RoutingOptions subset;
  subset.mode = RoutingMode::kSubset;
  subset.subset = {{}, {3}};
  auto state = model->forward(tiny_batch(), subset);
  for (int32_t e : state->routing(0).ids) EXPECT_EQ(e, -1);
  LossTerms terms = model->loss(*state, LossWeights{});
  EXPECT_TRUE(std::isfinite(terms.total));
  EXPECT_EQ(terms.router_z_per_layer[0], 0.0);
  model->zero_grads();
  model->backward(*state, LossWeights{});
  for (Param& p : model->params())
    for (float g : p.grad->vec()) ASSERT_TRUE(std::isfinite(g)) << p.name;
}

TEST(Losses, LoadBalancingIsOneAtPerfectBalance) {
  auto model = tiny_model(true);
  // Zero router weights: every token's scores are uniform (1/7), and global counts are perfectly even.
  for (int l = 0; l < 2; ++l) model->weight("model.layers." + std::to_string(l) + ".mlp.gate.weight").zero();
  auto state = model->forward(tiny_batch(), RoutingOptions{});
  const int64_t G = 700;
  std::vector<std::vector<double>> counts(2, std::vector<double>(7, 2.0 * G / 7));  // K_r * G / N_r each
  LossTerms terms = model->loss(*state, LossWeights{}, &counts, G);
  for (double lb : terms.lb_per_layer) EXPECT_NEAR(lb, 1.0, 1e-6);
  EXPECT_NEAR(terms.lb, 1.0, 1e-6);
  // Router z-loss: lse of seven zero logits = log 7 at each of the 24 positions, summed and divided by the
  // label tokens, the 23 positions with a target (as the reference; one position is ignored).
  for (double z : terms.router_z_per_layer) EXPECT_NEAR(z, std::log(7.0) * std::log(7.0) * 24 / 23, 1e-5);
}

TEST(Losses, TotalCombinesTheTermsWithTheirWeights) {
  auto model = tiny_model(true);
  auto state = model->forward(tiny_batch(), emo_options());
  LossWeights w;
  LossTerms t = model->loss(*state, w);
  EXPECT_EQ(t.tokens, 23);  // one ignored target
  EXPECT_NEAR(t.total, t.ce + 1e-5 * t.output_z + 0.1 * t.lb + 0.001 * t.router_z, 1e-9);
  EXPECT_NEAR(t.lb, (t.lb_per_layer[0] + t.lb_per_layer[1]) / 2, 1e-12);
  EXPECT_GT(t.ce, 0);
  // Own counts: sum_e C_e = K_r * tokens, less the slots a pool smaller than K_r leaves unused.
  double assigned = 0;
  for (const auto& layer : model->expert_counts(*state))
    for (double c : layer) assigned += c;
  EXPECT_EQ(assigned, 2.0 * 2 * 24 - 9);  // the 9 tokens with a pool of 1 at layer 1 fill one slot
}

TEST(Losses, DenseModelHasNoRouterTerms) {
  auto model = tiny_model(false);
  auto state = model->forward(tiny_batch(), RoutingOptions{});
  LossTerms t = model->loss(*state, LossWeights{});
  EXPECT_EQ(t.lb, 0.0);
  EXPECT_EQ(t.router_z, 0.0);
  EXPECT_TRUE(model->expert_counts(*state).empty());
}

TEST(Model, IntraDocumentAttentionIsolatesTheDocumentsOfARow) {
  auto model = tiny_model(true);
  Batch batch = tiny_batch();
  Batch changed = batch;
  changed.tokens[1] = 17;  // inside row 0's first document [0, 3)
  RoutingOptions isolated;
  isolated.intra_document_attention = true;
  auto a = model->forward(batch, isolated);
  auto b = model->forward(changed, isolated);
  const int64_t V = 32;
  // Not bit-identical: the changed token routes elsewhere, so the experts' token groups change size, and
  // OpenBLAS's rounding of a row depends on the size of the product (on some CPUs). A leak across the EOS
  // would move the logits by far more than this.
  for (int64_t t = 4; t < 24; ++t)  // every position of row 0 after the document's EOS, and row 1
    for (int64_t v = 0; v < V; ++v)
      ASSERT_NEAR(a->logits[t * V + v], b->logits[t * V + v], 1e-5 * (1 + std::abs(a->logits[t * V + v])))
          << "position " << t;
  auto c = model->forward(batch, RoutingOptions{});
  auto d = model->forward(changed, RoutingOptions{});
  EXPECT_NE(c->logits[5 * V], d->logits[5 * V]);  // plain causal attention sees across the EOS
}

// The EOS at 3 closes row 0's first document: it attends to [0, 3], and the next document (from 4) does not
// attend to it; the EMO pool routes it with the next document all the same (EmoRouting tests).
TEST(Model, AnEosAttendsToTheDocumentItClosesAndTheNextDocumentDoesNotSeeIt) {
  auto model = tiny_model(true);
  RoutingOptions isolated;
  isolated.intra_document_attention = true;
  auto state = model->forward(tiny_batch(), isolated);
  const int64_t T = 12, H = 2;
  for (int64_t l = 0; l < 2; ++l)
    for (int64_t h = 0; h < H; ++h) {
      const float* p = state->layers[l].probs.data() + h * T * T;  // row 0, head h: [T, T]
      for (int64_t s = 0; s <= 3; ++s) EXPECT_GT(p[3 * T + s], 0.0f) << "EOS 3 to " << s;
      for (int64_t t = 4; t < T; ++t)
        for (int64_t s = 0; s <= 3; ++s) EXPECT_EQ(p[t * T + s], 0.0f) << t << " to " << s;
    }
}

TEST(Model, ForwardIntoAReusedStateEqualsAFreshForward) {
  auto model = tiny_model(true);
  Batch other = Batch::from_tokens(1, 5, {3, 4, kEos, 6, 7}, {4, kEos, 6, 7, 8}, kEos);
  RoutingOptions eval_pool;
  eval_pool.mode = RoutingMode::kEmoPool;
  eval_pool.training = false;
  eval_pool.pool_eval = 4;
  auto reused = model->forward(other, eval_pool);
  model->forward_into(*reused, tiny_batch(), emo_options());
  auto fresh = model->forward(tiny_batch(), emo_options());
  EXPECT_EQ(reused->logits.vec(), fresh->logits.vec());
  EXPECT_EQ(routing_signature(*reused), routing_signature(*fresh));
  EXPECT_EQ(model->loss(*reused, LossWeights{}).total, model->loss(*fresh, LossWeights{}).total);
}

TEST(Model, BackwardAccumulatesScaledGradients) {
  auto model = tiny_model(true);
  auto state = model->forward(tiny_batch(), emo_options());
  model->zero_grads();
  model->backward(*state, LossWeights{});
  const std::vector<float> once = model->params()[0].grad->vec();
  model->backward(*state, LossWeights{}, nullptr, 0, 0.5f);
  const std::vector<float> twice = model->params()[0].grad->vec();
  for (size_t i = 0; i < once.size(); ++i)
    EXPECT_NEAR(twice[i], 1.5f * once[i], 1e-6f + 1e-5f * std::fabs(once[i]));
}

TEST(Model, InferGivesTheSameLogitsAsForward) {
  auto model = tiny_model(true);
  auto a = model->forward(tiny_batch(), emo_options());
  auto b = model->infer(tiny_batch(), emo_options());
  EXPECT_EQ(a->logits.vec(), b->logits.vec());
  EXPECT_EQ(a->routing(1).ids, b->routing(1).ids);
  EXPECT_THROW(model->backward(*b, LossWeights{}), Error);
}

TEST(Model, ParameterNamesFollowTheHuggingFaceLayout) {
  Model moe(tiny_config(true));
  auto names = moe.param_names();
  EXPECT_EQ(names.front(), "model.embed_tokens.weight");
  EXPECT_EQ(names.back(), "lm_head.weight");
  EXPECT_EQ(moe.weight("model.layers.1.mlp.gate.weight").shape(), (Shape{8, 16}));
  EXPECT_EQ(moe.weight("model.layers.0.mlp.experts.7.down_proj.weight").shape(), (Shape{16, 12}));
  EXPECT_EQ(moe.weight("model.layers.0.self_attn.k_proj.weight").shape(), (Shape{8, 16}));
  EXPECT_EQ(moe.num_params(),
            2 * 32 * 16 + 16 + 2 * (2 * 16 + 16 * 16 * 2 + 8 * 16 * 2 + 8 * 16 + 8 * 3 * 12 * 16));
  Model dense(tiny_config(false));
  EXPECT_EQ(dense.weight("model.layers.0.mlp.up_proj.weight").shape(), (Shape{12, 16}));
  EXPECT_THROW(dense.weight("model.layers.0.mlp.gate.weight"), Error);
}

TEST(Model, InitIsTruncatedNormalWithUnitNorms) {
  Model model(tiny_config(true));
  model.init_weights(3);
  double sum2 = 0;
  int64_t count = 0;
  for (Param& p : model.params()) {
    if (p.value->ndim() == 1) {
      for (float w : p.value->vec()) EXPECT_EQ(w, 1.0f);
      EXPECT_TRUE(p.no_weight_decay);
      continue;
    }
    for (float w : p.value->vec()) {
      EXPECT_LE(std::fabs(w), 0.06f + 1e-7f);
      sum2 += static_cast<double>(w) * w;
    }
    count += p.value->size();
  }
  EXPECT_NEAR(std::sqrt(sum2 / count), 0.0197, 0.0005);  // std of N(0, 0.02) truncated at 3 sigma
}

// A fresh directory under the build tree for checkpoint round trips.
std::string scratch_dir(const std::string& name) {
  namespace fs = std::filesystem;
  fs::path dir = fs::path(EMO_BINARY_DIR) / "test_scratch" / "model" / name;
  fs::remove_all(dir);
  fs::create_directories(dir.parent_path());
  return dir.string();
}

TEST(Checkpoint, Fp32RoundTripGivesIdenticalLogits) {
  auto model = tiny_model(true);
  const std::string dir = scratch_dir("fp32");
  model->save(dir);
  auto loaded = Model::load(dir);
  EXPECT_EQ(loaded->config().num_experts, 8);
  EXPECT_EQ(loaded->param_names(), model->param_names());
  auto a = model->forward(tiny_batch(), emo_options());
  auto b = loaded->forward(tiny_batch(), emo_options());
  EXPECT_EQ(a->logits.vec(), b->logits.vec());
  EXPECT_EQ(SafetensorsFile::open(dir + "/model.safetensors").info("lm_head.weight").dtype, DType::kF32);
}

TEST(Checkpoint, Bf16RoundTripKeepsTheRoundedWeights) {
  auto model = tiny_model(false);
  const std::string dir = scratch_dir("bf16");
  model->save(dir, "bfloat16");
  EXPECT_EQ(SafetensorsFile::open(dir + "/model.safetensors").info("model.norm.weight").dtype, DType::kBF16);
  auto loaded = Model::load(dir);
  EXPECT_EQ(loaded->config().torch_dtype, "bfloat16");
  for (const std::string& name : model->param_names()) {
    const Tensor& original = model->weight(name);
    const Tensor& back = loaded->weight(name);
    ASSERT_EQ(back.shape(), original.shape()) << name;
    for (int64_t i = 0; i < original.size(); ++i)
      ASSERT_EQ(back[i], bf16_to_f32(f32_to_bf16(original[i]))) << name << " element " << i;
  }
}

TEST(Checkpoint, ShardedSaveLoadsAndReplacesTheSingleFile) {
  auto model = tiny_model(true);
  const std::string dir = scratch_dir("sharded");
  model->save(dir);                    // single file first
  model->save(dir, "float32", 20000);  // then shards of at most 20 kB
  namespace fs = std::filesystem;
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors.index.json"));
  auto loaded = Model::load(dir);
  EXPECT_EQ(loaded->forward(tiny_batch(), RoutingOptions{})->logits.vec(),
            model->forward(tiny_batch(), RoutingOptions{})->logits.vec());
}

TEST(Checkpoint, AMissingOrMisshapenTensorIsAnErrorNamingIt) {
  auto model = tiny_model(true);
  const std::string dir = scratch_dir("broken");
  model->save(dir);
  std::vector<SafetensorsEntry> tensors;
  for (const std::string& name : model->param_names())
    if (name != "model.layers.1.mlp.experts.3.up_proj.weight")
      tensors.emplace_back(name, model->weight(name));
  write_safetensors(dir + "/model.safetensors", tensors);
  try {
    Model::load(dir);
    FAIL() << "loading a checkpoint without a tensor must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.1.mlp.experts.3.up_proj.weight"), std::string::npos)
        << e.what();
  }
  Tensor wrong({3, 16});
  tensors.emplace_back("model.layers.1.mlp.experts.3.up_proj.weight", wrong);
  write_safetensors(dir + "/model.safetensors", tensors);
  try {
    Model::load(dir);
    FAIL() << "loading a misshapen tensor must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[3, 16]"), std::string::npos) << e.what();
  }
}

// config.json sizes that the weights do not back: each an error naming the field, the tensor and both sizes,
// found from the headers before the model is sized by them (this test allocating 128 GB for hidden_size
// 2^20, or looping over 10^8 layers, would not finish in well under a second).
TEST(Checkpoint, ConfigSizesThatDisagreeWithTheWeightsNameTheField) {
  const std::string dir = scratch_dir("sizes");
  tiny_model(true)->save(dir);
  const std::string config_path = dir + "/config.json";
  const ModelConfig good = ModelConfig::load(config_path);
  auto error_with = [&](const std::function<void(ModelConfig&)>& edit) {
    ModelConfig c = good;
    edit(c);
    c.save(config_path);
    std::string message;
    try {
      Model::load(dir);
    } catch (const Error& e) {
      message = e.what();
    }
    good.save(config_path);
    return message;
  };
  auto expect_in = [](const std::string& message, std::initializer_list<std::string> parts) {
    EXPECT_FALSE(message.empty()) << "not rejected";
    for (const std::string& p : parts)
      EXPECT_NE(message.find(p), std::string::npos) << p << " in: " << message;
  };
  const std::string weights = dir + "/model.safetensors";
  expect_in(error_with([](ModelConfig& c) { c.hidden_size = int64_t{1} << 20; }),
            {"[model] " + config_path,
             "hidden_size 1048576 but tensor 'model.embed_tokens.weight' has shape [32, 16]", weights,
             "the config implies [32, 1048576]"});
  expect_in(error_with([](ModelConfig& c) { c.vocab_size = 1'000'000'000; }),
            {"vocab_size 1000000000 but tensor 'model.embed_tokens.weight' has shape [32, 16]"});
  expect_in(error_with([](ModelConfig& c) { c.num_experts = 1'000'000; }),
            {"num_experts 1000000 but tensor 'model.layers.0.mlp.gate.weight' has shape [8, 16]"});
  expect_in(error_with([](ModelConfig& c) { c.num_hidden_layers = 100'000'000; }),
            {"num_hidden_layers 100000000 but the weights in " + dir + " hold 2 layer(s)",
             "model.layers.2.self_attn.q_proj.weight"});
  expect_in(
      error_with([](ModelConfig& c) { c.intermediate_size = 13; }),
      {"intermediate_size 13 but tensor 'model.layers.0.mlp.experts.0.gate_proj.weight' has shape [12, 16]"});
  expect_in(error_with([](ModelConfig& c) { c.num_key_value_heads = 2; }),
            {"num_key_value_heads 2 but tensor 'model.layers.0.self_attn.k_proj.weight' has shape [8, 16]"});
  expect_in(error_with([](ModelConfig& c) {
              c.num_experts_per_layer = {8, 9};
            }),
            {"num_experts_per_layer[1] 9 but tensor 'model.layers.1.mlp.gate.weight' has shape [8, 16]"});
}

// No tensor bounds max_position_embeddings: it has a stated maximum, and nothing is sized by it (a model
// of the largest allowed context is built in well under a second: the RoPE table stops at kRopeTableRows).
TEST(Checkpoint, MaxPositionEmbeddingsHasAStatedLimitAndSizesNoAllocation) {
  ModelConfig c = tiny_config(true);
  c.max_position_embeddings = 1'000'000'000;
  std::string message;
  try {
    c.validate("config.json");
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("max_position_embeddings 1000000000 exceeds the 16777216 positions emo supports"),
            std::string::npos)
      << message;
  c.max_position_embeddings = ModelConfig::kMaxPositionEmbeddings;
  Model model(c);
  model.init_weights(1);
  const std::vector<int32_t> tokens = {5, 9, 3, 7};
  const Batch batch = Batch::from_tokens(1, 4, tokens, {}, kEos);
  Model reference(tiny_config(true));
  for (const std::string& name : reference.param_names())
    reference.weight(name).vec() = model.weight(name).vec();
  RoutingOptions routing;
  routing.training = false;
  EXPECT_EQ(model.infer(batch, routing)->logits.vec(), reference.infer(batch, routing)->logits.vec());
}

// A config whose parameters alone exceed the machine's memory is refused naming the sizes, before any
// allocation.
TEST(Checkpoint, AModelLargerThanMemoryIsRefusedNamingTheSizes) {
  ModelConfig c = tiny_config(false);
  c.num_hidden_layers = 100'000'000;
  c.hidden_size = 4096;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 32;
  std::string message;
  try {
    Model model(c);
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("num_hidden_layers 100000000"), std::string::npos) << message;
  EXPECT_NE(message.find("more than this machine's memory"), std::string::npos) << message;
}

}  // namespace
}  // namespace emo
