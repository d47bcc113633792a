// The C++ engine against an independent PyTorch implementation of docs/emo.md §1, §3, §4
// (tests/reference/emo_torch.py, "the twin", float64): logits, every loss term, every parameter gradient and
// the chosen experts, for EMO training and evaluation, the standard MoE, subset routing, the dense variant
// and bf16 weights. Skipped when /usr/bin/python3 or its torch is missing.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "core/rng.h"
#include "io/safetensors.h"
#include "model/forward_state.h"
#include "model/model.h"

namespace emo {
namespace {

namespace fs = std::filesystem;

constexpr int32_t kEos = 1;
constexpr const char* kPython = "/usr/bin/python3";

// Tolerances: the twin runs in float64, the engine in fp32, so differences are the engine's rounding.
// Relative error of a tensor = max |engine - twin| / max |twin|.
constexpr double kLogitsTol = 1e-5;
constexpr double kLossTol = 1e-5;
constexpr double kGradTol = 1e-4;
constexpr double kBf16LogitsTol = 1e-3;  // bf16 weights are loaded and widened the same way on both sides

bool twin_available() {
  if (!fs::exists(kPython)) return false;
  std::string probe = std::string(kPython) + " -c 'import torch, numpy' >/dev/null 2>&1";
  return std::system(probe.c_str()) == 0;
}

// V=64, d=32, L=2, H=4 (hd 8), Hkv=2, E=8 (7 routed + 1 shared), K=3 (2 routed slots), f=16.
ModelConfig tiny_config(bool moe) {
  ModelConfig c;
  c.model_type = moe ? "emo" : "olmo2_noqknorm_prenorm";
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 64;
  c.eos_token_id = kEos;
  c.pad_token_id = 0;
  if (moe) {
    c.num_experts = 8;
    c.num_experts_per_tok = 3;
    c.num_shared_experts = 1;
  }
  return c;
}

// init_weights, then matrices scaled up (std ~0.3) and norms spread around 1, so that router logits and
// attention are far from uniform: every term has a visible gradient and routing has clear winners.
std::unique_ptr<Model> tiny_model(bool moe, std::vector<int64_t> experts_per_layer = {}) {
  ModelConfig config = tiny_config(moe);
  config.num_experts_per_layer = std::move(experts_per_layer);
  auto model = std::make_unique<Model>(config);
  model->init_weights(11);
  Rng rng(12);
  for (Param& p : model->params()) {
    bool norm = p.value->ndim() == 1;
    for (float& w : p.value->vec()) w = norm ? static_cast<float>(1.0 + 0.2 * rng.normal()) : w * 15.0f;
  }
  return model;
}

// B=2, T=16, documents separated by EOS inside the rows (an EOS at t = 0 opens no segment).
constexpr int64_t kB = 2, kT = 16, kMaxSegments = 3;
Batch tiny_batch() {
  std::vector<int32_t> tokens = {5,    9, 3, kEos, 7,  7,  12, 30, 41, kEos, 4,  8,  2,  60,   33, 17,  //
                                 kEos, 6, 6, 20,   21, 22, 23, 24, 25, 50,   51, 52, 53, kEos, 3,  4};
  std::vector<int32_t> targets(kB * kT);
  for (int64_t i = 0; i < kB * kT; ++i) targets[i] = (tokens[i] * 7 + 3) % 64;
  targets[5] = -1;  // ignored positions
  targets[kT + 3] = -1;
  return Batch::from_tokens(kB, kT, tokens, targets, kEos);
}

// Pool sizes [layer][row][segment] (row 0: 3 segments, row 1: 2); a pool of 1 leaves a routed slot unused.
std::vector<std::vector<std::vector<int32_t>>> fixed_pools() {
  return {{{3, 5, 2}, {4, 7}}, {{6, 2, 3}, {1, 4}}};
}

struct Case {
  std::string mode;  // emo | standard | subset | dense
  RoutingOptions routing;
  std::string dtype = "float32";
  int64_t max_shard_bytes = int64_t{5} << 30;  // Hugging Face's default: one file
};

std::string flag(bool b) {
  return b ? "true" : "false";
}

// IN.safetensors of the twin's protocol (see the top of emo_torch.py).
void write_inputs(const std::string& path, const Batch& batch, const Case& c, const LossWeights& w) {
  std::vector<int32_t> pools(2 * kB * kMaxSegments, -1);  // [L, B, S]
  for (size_t l = 0; l < c.routing.pool_sizes.size(); ++l)
    for (size_t b = 0; b < c.routing.pool_sizes[l].size(); ++b)
      for (size_t s = 0; s < c.routing.pool_sizes[l][b].size(); ++s)
        pools[(l * kB + b) * kMaxSegments + s] = c.routing.pool_sizes[l][b][s];
  std::vector<SafetensorsEntry> entries = {
      SafetensorsEntry::raw("tokens", DType::kI32, {kB, kT}, batch.tokens.data()),
      SafetensorsEntry::raw("targets", DType::kI32, {kB, kT}, batch.targets.data())};
  if (!c.routing.pool_sizes.empty())
    entries.push_back(SafetensorsEntry::raw("pool_sizes", DType::kI32, {2, kB, kMaxSegments}, pools.data()));
  SafetensorsMetadata meta = {{"mode", c.mode},
                              {"training", flag(c.routing.training)},
                              {"intra_document_attention", flag(c.routing.intra_document_attention)},
                              {"output_z", std::to_string(w.output_z)},
                              {"lb", std::to_string(w.lb)},
                              {"router_z", std::to_string(w.router_z)},
                              {"eos_id", std::to_string(kEos)},
                              {"pool_eval", std::to_string(c.routing.pool_eval)}};
  if (!c.routing.subset.empty()) meta["subset"] = nlohmann::json(c.routing.subset).dump();
  write_safetensors(path, entries, meta);
}

// The largest relative error seen in the current test, printed at its end.
double g_worst_logits = 0, g_worst_grad = 0;

// max |a - b| / max |b| over the tensor.
double relative_error(const float* a, const float* b, int64_t n) {
  double diff = 0, scale = 1e-30;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;  // NaN would slip through std::max
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return diff / scale;
}

double scalar(const SafetensorsFile& out, const std::string& name) {
  return std::stod(out.metadata().at(name));  // full precision from the metadata
}

std::vector<int32_t> int_tensor(const SafetensorsFile& out, const std::string& name) {
  const TensorInfo& info = out.info(name);
  std::vector<int32_t> v(info.numel());
  std::memcpy(v.data(), info.data, info.nbytes);
  return v;
}

class ReferenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!twin_available()) GTEST_SKIP() << kPython << " with torch is not available";
    dir_ = fs::temp_directory_path() / ("emo_reference_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (std::getenv("EMO_KEEP_REFERENCE_FILES")) dir_.clear();  // for debugging a disagreement
    if (g_worst_logits > 0)
      std::printf("  relative error vs twin: logits %.2e, worst parameter gradient %.2e\n", g_worst_logits,
                  g_worst_grad);
    g_worst_logits = g_worst_grad = 0;
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  // Saves the model, runs the twin on the same batch and the engine (loaded back from the saved checkpoint),
  // and compares everything. Returns the twin's output file.
  SafetensorsFile run_and_compare(const Model& original, const Case& c, bool compare_gradients = true) {
    const LossWeights weights;  // the release's 1e-5, 0.1, 0.001
    const std::string model_dir = (dir_ / "model").string();
    original.save(model_dir, c.dtype, c.max_shard_bytes);
    auto model = Model::load(model_dir);  // the engine reads exactly the weights the twin reads
    const Batch batch = tiny_batch();
    const std::string in = (dir_ / "in.safetensors").string(), out_path = (dir_ / "out.safetensors").string();
    write_inputs(in, batch, c, weights);
    const std::string command = std::string(kPython) + " " + EMO_SOURCE_DIR +
                                "/tests/reference/emo_torch.py" + " --model " + model_dir + " --inputs " +
                                in + " --out " + out_path;
    EXPECT_EQ(std::system(command.c_str()), 0) << command;
    SafetensorsFile out = SafetensorsFile::open(out_path);

    auto state = model->forward(batch, c.routing);
    const LossTerms loss = model->loss(*state, weights);
    model->zero_grads();
    model->backward(*state, weights);

    const int64_t N = kB * kT, V = model->config().vocab_size;
    const Tensor twin_logits = out.read_fp32("logits");
    g_worst_logits = relative_error(state->logits.data(), twin_logits.data(), N * V);
    EXPECT_LT(g_worst_logits, c.dtype == "float32" ? kLogitsTol : kBf16LogitsTol) << "logits";
    if (!compare_gradients) return out;

    auto expect_close = [&](double engine, const std::string& name) {
      double twin = scalar(out, name);
      EXPECT_NEAR(engine, twin, kLossTol * std::max(1.0, std::abs(twin))) << name;
    };
    expect_close(loss.total, "loss.total");
    expect_close(loss.ce, "loss.ce");
    expect_close(loss.output_z, "loss.output_z");
    expect_close(loss.lb, "loss.lb");
    expect_close(loss.router_z, "loss.router_z");
    for (size_t l = 0; l < loss.lb_per_layer.size(); ++l) {
      expect_close(loss.lb_per_layer[l], "loss.lb." + std::to_string(l));
      expect_close(loss.router_z_per_layer[l], "loss.router_z." + std::to_string(l));
    }

    for (const Param& p : model->params()) {
      const Tensor twin_grad = out.read_fp32("grad." + p.name);
      EXPECT_EQ(twin_grad.shape(), p.grad->shape()) << p.name;
      if (twin_grad.shape() != p.grad->shape()) continue;
      const double error = relative_error(p.grad->data(), twin_grad.data(), p.grad->size());
      g_worst_grad = std::max(g_worst_grad, error);
      EXPECT_LT(error, kGradTol) << "grad " << p.name;
    }

    if (model->config().is_moe()) compare_routing(*model, *state, out);
    return out;
  }

  // Same routed probabilities, same chosen expert SET per token, same weights per expert, same counts.
  void compare_routing(const Model& model, const ForwardState& state, const SafetensorsFile& out) {
    const auto counts = model.expert_counts(state);
    for (int64_t l = 0; l < model.config().num_hidden_layers; ++l) {
      const std::string L = std::to_string(l);
      const LayerRouting& r = state.routing(l);
      const Tensor probs = out.read_fp32("router_probs." + L);
      EXPECT_LT(relative_error(r.probs.data(), probs.data(), r.probs.size()), 1e-5) << "router_probs " << L;
      const std::vector<int32_t> chosen = int_tensor(out, "chosen." + L);
      const Tensor weights = out.read_fp32("weights." + L);
      ASSERT_EQ(static_cast<int64_t>(chosen.size()), r.N * r.slots);
      int mismatched = 0;
      for (int64_t n = 0; n < r.N; ++n) {
        std::map<int32_t, float> engine, twin;
        for (int64_t k = 0; k < r.slots; ++k) {
          if (r.ids[n * r.slots + k] >= 0) engine[r.ids[n * r.slots + k]] = r.weights[n * r.slots + k];
          if (chosen[n * r.slots + k] >= 0) twin[chosen[n * r.slots + k]] = weights[n * r.slots + k];
        }
        bool same = engine.size() == twin.size();
        for (const auto& [e, w] : engine)
          same = same && twin.count(e) && std::abs(w - twin[e]) <= 1e-5 * std::max(1.0f, std::abs(twin[e]));
        if (!same && ++mismatched <= 3) ADD_FAILURE() << "layer " << l << " token " << n << ": chosen differ";
      }
      EXPECT_EQ(mismatched, 0) << "layer " << l;
      const Tensor twin_counts = out.read_fp32("counts." + L);
      for (int64_t e = 0; e < r.routed; ++e)
        EXPECT_EQ(counts[l][e], twin_counts[e]) << "layer " << l << " e " << e;
    }
  }

  fs::path dir_;
};

// The twin checks itself first: its gradients against finite differences and its routing rules, on a
// checkpoint it writes itself (EMO, standard, subset, dense).
TEST_F(ReferenceTest, TwinPassesItsOwnSelfTest) {
  const std::string command = std::string(kPython) + " " + EMO_SOURCE_DIR +
                              "/tests/reference/emo_torch.py --self-test > " +
                              (dir_ / "self_test.log").string();
  EXPECT_EQ(std::system(command.c_str()), 0) << command;
}

TEST_F(ReferenceTest, EmoTrainingWithGivenPoolsAndIntraDocumentAttention) {
  Case c{"emo", {}};
  c.routing.mode = RoutingMode::kEmoPool;
  c.routing.training = true;
  c.routing.pool_sizes = fixed_pools();
  c.routing.intra_document_attention = true;
  auto model = tiny_model(true);
  run_and_compare(*model, c);
}

TEST_F(ReferenceTest, EmoEvaluationUsesTheFixedEvalPool) {
  Case c{"emo", {}};
  c.routing.mode = RoutingMode::kEmoPool;
  c.routing.training = false;
  c.routing.pool_eval = 4;  // below the 7 routed experts, so the pool matters
  c.routing.intra_document_attention = true;
  auto model = tiny_model(true);
  run_and_compare(*model, c);
}

TEST_F(ReferenceTest, StandardMoe) {
  Case c{"standard", {}};
  c.routing.mode = RoutingMode::kStandard;
  auto model = tiny_model(true);
  run_and_compare(*model, c);
}

TEST_F(ReferenceTest, SubsetRouting) {
  Case c{"subset", {}};
  c.routing.mode = RoutingMode::kSubset;
  c.routing.training = false;
  c.routing.subset = {{0, 2, 5, 6}, {3}};  // layer 1 keeps fewer routed experts than slots
  auto model = tiny_model(true);
  run_and_compare(*model, c);
}

// A pruned model's shape: per-layer expert counts (layer 1 keeps 3 routed experts + the shared one), in EMO
// training with pools larger than some layers' routed experts (clamped).
TEST_F(ReferenceTest, PerLayerExpertCountsOfAPrunedModel) {
  Case c{"emo", {}};
  c.routing.mode = RoutingMode::kEmoPool;
  c.routing.pool_sizes = fixed_pools();
  c.routing.intra_document_attention = true;
  auto model = tiny_model(true, {8, 4});
  run_and_compare(*model, c);
}

TEST_F(ReferenceTest, DenseVariant) {
  Case c{"dense", {}};
  c.routing.intra_document_attention = true;
  auto model = tiny_model(false);
  run_and_compare(*model, c);
}

TEST_F(ReferenceTest, Bf16ShardedWeightsGiveTheSameLogits) {
  Case c{"standard", {}};
  c.routing.mode = RoutingMode::kStandard;
  c.dtype = "bfloat16";
  c.max_shard_bytes = 16 << 10;  // several shards and an index
  auto model = tiny_model(true);
  run_and_compare(*model, c, /*compare_gradients=*/false);
}

}  // namespace
}  // namespace emo
