// Selective expert use (docs/emo.md §5): the subset file and its validation, the selection methods
// (deterministic, one example enough), and pruning (a pruned checkpoint gives the logits of subset routing).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>

#include "core/error.h"
#include "data/dataset.h"
#include "io/json_file.h"
#include "io/output_dir.h"
#include "io/safetensors.h"
#include "model/forward_state.h"
#include "model/model.h"
#include "run_emo.h"
#include "select/examples.h"
#include "select/finetune.h"
#include "select/merge.h"
#include "select/prune.h"
#include "select/selection.h"
#include "select/subset.h"
#include "select/sweep.h"
#include "train/checkpoint.h"

namespace emo {
namespace {

namespace fs = std::filesystem;
constexpr int32_t kEos = 1;

// V=48, d=16, L=3, H=2 (hd 8), Hkv=1, E=10 (9 routed + 1 shared), K=3 (2 routed slots), f=12.
ModelConfig tiny_config() {
  ModelConfig c;
  c.model_type = "emo";
  c.vocab_size = 48;
  c.hidden_size = 16;
  c.intermediate_size = 12;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.max_position_embeddings = 64;
  c.rope_theta = 10000.0;
  c.eos_token_id = kEos;
  c.pad_token_id = 0;
  c.num_experts = 10;
  c.num_experts_per_tok = 3;
  c.num_shared_experts = 1;
  return c;
}

// Weights scaled up so routing is far from uniform and experts differ visibly.
std::unique_ptr<Model> tiny_model(uint64_t seed = 11) {
  auto model = std::make_unique<Model>(tiny_config());
  model->init_weights(seed);
  for (Param& p : model->params())
    if (p.value->ndim() > 1)
      for (float& w : p.value->vec()) w *= 12.0f;
  return model;
}

Examples one_example() {
  Examples ex;
  ex.sequences = {{5, 9, 3, 17, 22, 40, 7, 7, 12, 30, 2, 44, 8, 19}};
  ex.description = "one hand-written example";
  return ex;
}

// A temporary directory removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("emo_select_test_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

ExpertSubset valid_subset() {
  ExpertSubset s = ExpertSubset::for_model(tiny_config(), 4, "layerwise");
  s.routed = {{0, 4, 8}, {1, 2, 3}, {2, 5, 6}};
  return s;
}

// Loads the JSON after `edit` and returns the error message ("" when it loads).
std::string load_error(const std::function<void(nlohmann::json&)>& edit, const ModelConfig& config) {
  TempDir dir;
  nlohmann::json j = valid_subset().to_json();
  edit(j);
  write_text(dir / "subset.json", j.dump());
  try {
    ExpertSubset::load(dir / "subset.json", config);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// ---------------------------------------------------------------------------------------------------------
// Subset file

TEST(SubsetFile, RoundTripsThroughJson) {
  TempDir dir;
  ExpertSubset s = valid_subset();
  s.calibration = {"examples.txt", 2, 57, 9};
  s.save(dir / "subset.json");
  ExpertSubset back = ExpertSubset::load(dir / "subset.json", tiny_config());
  EXPECT_EQ(back.routed, s.routed);
  EXPECT_EQ(back.shared, (std::vector<std::vector<int32_t>>{{9}, {9}, {9}}));
  EXPECT_EQ(back.keep_k, 4);
  EXPECT_EQ(back.method, "layerwise");
  EXPECT_EQ(back.calibration.description, "examples.txt");
  EXPECT_EQ(back.calibration.examples, 2);
  EXPECT_EQ(back.calibration.tokens, 57);
  EXPECT_EQ(back.calibration.seed, 9u);
  EXPECT_EQ(back.num_layers, 3);
  EXPECT_EQ(back.num_experts, 10);
}

TEST(SubsetFile, AValidFileLoads) {
  EXPECT_EQ(load_error([](nlohmann::json&) {}, tiny_config()), "");
}

TEST(SubsetFile, RejectsAWrongLayerCount) {
  ModelConfig four_layers = tiny_config();
  four_layers.num_hidden_layers = 4;
  std::string message = load_error([](nlohmann::json&) {}, four_layers);
  EXPECT_NE(message.find("subset.json"), std::string::npos) << message;
  EXPECT_NE(message.find("3 layers"), std::string::npos) << message;
  EXPECT_NE(message.find("the model has 4"), std::string::npos) << message;
}

TEST(SubsetFile, RejectsAnIndexOutOfRange) {
  std::string message = load_error(
      [](nlohmann::json& j) {
        j["layers"][1]["routed"] = {1, 2, 9};
      },
      tiny_config());
  EXPECT_NE(message.find("subset.json: layer 1: expert index 9 out of range"), std::string::npos) << message;
  message = load_error([](nlohmann::json& j) { j["layers"][0]["routed"] = {-1, 2, 3}; }, tiny_config());
  EXPECT_NE(message.find("layer 0: expert index -1 out of range"), std::string::npos) << message;
}

TEST(SubsetFile, RejectsADuplicateExpert) {
  std::string message = load_error(
      [](nlohmann::json& j) {
        j["layers"][2]["routed"] = {5, 5, 6};
      },
      tiny_config());
  EXPECT_NE(message.find("layer 2: duplicate expert 5"), std::string::npos) << message;
}

TEST(SubsetFile, RejectsKeepKLargerThanTheModelsExperts) {
  std::string message = load_error([](nlohmann::json& j) { j["keep_k"] = 11; }, tiny_config());
  EXPECT_NE(message.find("keep_k 11 exceeds the layer's 10 experts"), std::string::npos) << message;
}

TEST(SubsetFile, RejectsAListOfTheWrongLength) {
  std::string message = load_error(
      [](nlohmann::json& j) {
        j["layers"][0]["routed"] = {0, 4};
      },
      tiny_config());
  EXPECT_NE(message.find("layer 0: lists 2 routed experts"), std::string::npos) << message;
}

TEST(SubsetFile, RejectsAModelWithOtherExpertCounts) {
  ModelConfig more = tiny_config();
  more.num_experts = 12;
  std::string message = load_error([](nlohmann::json&) {}, more);
  EXPECT_NE(message.find("made for 10 experts"), std::string::npos) << message;
}

TEST(SubsetFile, RejectsAFileThatIsNotASubset) {
  TempDir dir;
  write_text(dir / "x.json", "{\"format\": \"something\"}");
  EXPECT_THROW(ExpertSubset::load(dir / "x.json", tiny_config()), Error);
  write_text(dir / "y.json", "{ not json");
  EXPECT_THROW(ExpertSubset::load(dir / "y.json", tiny_config()), Error);
}

// ---------------------------------------------------------------------------------------------------------
// Selection

TEST(Selection, TopExpertsKeepsTheLargestScoresAscendingWithTiesToTheLowerIndex) {
  EXPECT_EQ(top_experts({0.1, 0.5, 0.3, 0.5, 0.0}, 2), (std::vector<int32_t>{1, 3}));
  EXPECT_EQ(top_experts({0.2, 0.2, 0.2, 0.9}, 2), (std::vector<int32_t>{0, 3}));
}

TEST(Selection, EveryMethodRunsFromOneExampleAndGivesAValidSubset) {
  auto model = tiny_model();
  for (const char* name : {"layerwise", "global", "easy_ep", "random"}) {
    SelectionOptions options{4, parse_selection_method(name), 3};
    ExpertSubset s = select_experts(*model, one_example(), options);
    EXPECT_NO_THROW(s.check(model->config())) << name;
    EXPECT_EQ(s.method, name);
    EXPECT_EQ(s.keep_k, 4);
    EXPECT_EQ(s.calibration.examples, 1);
    EXPECT_EQ(s.calibration.tokens, 14);
    for (const auto& kept : s.routed) EXPECT_EQ(kept.size(), 3u) << name;
  }
}

TEST(Selection, IsDeterministicForAFixedSeedAndExample) {
  auto model = tiny_model();
  for (const char* name : {"layerwise", "global", "easy_ep", "random"}) {
    SelectionOptions options{3, parse_selection_method(name), 5};
    EXPECT_EQ(select_experts(*model, one_example(), options).routed,
              select_experts(*model, one_example(), options).routed)
        << name;
  }
  std::set<std::vector<std::vector<int32_t>>> seen;
  for (uint64_t seed = 0; seed < 6; ++seed)
    seen.insert(select_experts(*model, one_example(), {3, SelectionMethod::kRandom, seed}).routed);
  EXPECT_GT(seen.size(), 1u) << "the random method ignores its seed";
}

TEST(Selection, GlobalKeepsTheExpertsWithTheLargestMeanProbability) {
  auto model = tiny_model();
  RoutingOptions standard;
  standard.training = false;
  auto usage = routed_usage(*model, one_example(), standard);
  ExpertSubset s = select_experts(*model, one_example(), {4, SelectionMethod::kGlobal, 0});
  for (int64_t l = 0; l < 3; ++l) {
    double kept_min = 1e9, dropped_max = -1;
    for (int32_t e = 0; e < 9; ++e) {
      bool kept = std::count(s.routed[l].begin(), s.routed[l].end(), e) > 0;
      if (kept)
        kept_min = std::min(kept_min, usage[l][e]);
      else
        dropped_max = std::max(dropped_max, usage[l][e]);
    }
    EXPECT_GE(kept_min, dropped_max) << "layer " << l;
    double total = 0;
    for (double a : usage[l]) total += a;
    EXPECT_NEAR(total, 1.0, 1e-5) << "a_{l,.} is a mean of probability vectors";
  }
}

TEST(Selection, LayerwiseChoosesLaterLayersWithTheEarlierOnesRestricted) {
  auto model = tiny_model();
  ExpertSubset s = select_experts(*model, one_example(), {3, SelectionMethod::kLayerwise, 0});
  ExpertSubset g = select_experts(*model, one_example(), {3, SelectionMethod::kGlobal, 0});
  // Layer 0 sees the same unrestricted input under both methods.
  EXPECT_EQ(s.routed[0], g.routed[0]);
  // Layer 2 is the top of a_{2,.} measured with layers 0 and 1 restricted to the layerwise choice.
  RoutingOptions restricted = s.routing_options();
  restricted.subset[2] = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  auto usage = routed_usage(*model, one_example(), restricted);
  EXPECT_EQ(s.routed[2], top_experts(usage[2], 2));
}

Examples three_examples() {
  Examples ex = one_example();
  ex.sequences.push_back({3, 1, 44, 45, 2, 9, 9, 30});
  ex.sequences.push_back({17, 12, 6, 1, 33, 21, 40, 41, 5, 5, 8, 2, 47, 11, 16, 29, 3, 38, 4});
  return ex;
}

// The layerwise method as first written: one full forward of the examples per layer, with the layers chosen
// so far restricted (routed_usage), keeping layer l's usage.
LayerwiseSelection layerwise_by_repeated_forwards(const Model& model, const Examples& examples,
                                                  int64_t keep_k) {
  const int64_t L = model.config().num_hidden_layers;
  RoutingOptions routing;
  routing.mode = RoutingMode::kSubset;
  routing.training = false;
  routing.subset.assign(L, {0, 1, 2, 3, 4, 5, 6, 7, 8});
  LayerwiseSelection out;
  for (int64_t l = 0; l < L; ++l) {
    out.usage.push_back(routed_usage(model, examples, routing)[l]);
    out.routed.push_back(top_experts(out.usage[l], keep_k - 1));
    routing.subset[l] = out.routed[l];
  }
  return out;
}

TEST(Selection, LayerwiseInOneForwardEqualsOneForwardPerLayerExactly) {
  for (uint64_t seed : {11, 12, 13}) {
    auto model = tiny_model(seed);
    for (int64_t keep_k : {2, 3, 5, 9}) {
      LayerwiseSelection fast = layerwise_selection(*model, three_examples(), keep_k);
      LayerwiseSelection slow = layerwise_by_repeated_forwards(*model, three_examples(), keep_k);
      EXPECT_EQ(fast.routed, slow.routed) << "seed " << seed << " keep_k " << keep_k;
      EXPECT_EQ(fast.usage, slow.usage) << "the statistics differ in some bit";  // exact, not near
    }
    EXPECT_EQ(select_experts(*model, three_examples(), {3, SelectionMethod::kLayerwise, 0}).routed,
              layerwise_by_repeated_forwards(*model, three_examples(), 3).routed);
  }
}

void expect_same_routing(const LayerRouting& a, const LayerRouting& b, int64_t l) {
  EXPECT_EQ(a.ids, b.ids) << "layer " << l;
  EXPECT_EQ(a.weights.vec(), b.weights.vec()) << "layer " << l;
  EXPECT_EQ(a.probs.vec(), b.probs.vec()) << "layer " << l;
}

TEST(LayerByLayerInference, EqualsInferExactly) {
  auto model = tiny_model();
  Batch batch = Batch::from_tokens(2, 8, {5, 9, 3, 1, 22, 40, 7, 7, 12, 30, 2, 44, 1, 19, 4, 6}, {}, kEos);
  RoutingOptions standard;
  standard.training = false;
  RoutingOptions subset = valid_subset().routing_options();
  subset.intra_document_attention = true;
  for (const RoutingOptions& routing : {standard, subset}) {
    auto reference = model->infer(batch, routing);
    auto state = model->begin_layers(batch, routing);
    for (int64_t l = 0; l < 3; ++l) {
      model->layer_router(*state, l, routing);
      model->layer_experts(*state, l, routing);
    }
    model->end_layers(*state);
    EXPECT_EQ(state->logits.vec(), reference->logits.vec());
    for (int64_t l = 0; l < 3; ++l) expect_same_routing(state->routing(l), reference->routing(l), l);
  }
}

TEST(LayerByLayerInference, RestrictingALayerAfterItsRouterEqualsInferWithTheSubset) {
  auto model = tiny_model();
  Batch batch = Batch::from_tokens(1, 14, one_example().sequences[0], {}, kEos);
  RoutingOptions subset = valid_subset().routing_options();
  auto reference = model->infer(batch, subset);
  RoutingOptions growing = subset;
  for (auto& kept : growing.subset) kept = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  auto state = model->begin_layers(batch, growing);
  for (int64_t l = 0; l < 3; ++l) {
    const LayerRouting& r = model->layer_router(*state, l, growing);
    EXPECT_EQ(r.probs.vec(), reference->routing(l).probs.vec()) << "unmasked probabilities, layer " << l;
    growing.subset[l] = subset.subset[l];
    model->layer_experts(*state, l, growing);
  }
  model->end_layers(*state);
  EXPECT_EQ(state->logits.vec(), reference->logits.vec());
  EXPECT_THROW(model->layer_router(*state, 0, growing), Error) << "layers run in order";
}

TEST(Selection, EasyEpScoresOnlyExpertsThatReceivedTokens) {
  auto model = tiny_model();
  auto scores = easy_ep_scores(*model, one_example());
  RoutingOptions standard;
  standard.training = false;
  auto state = model->infer(Batch::from_tokens(1, 14, one_example().sequences[0], {}, kEos), standard);
  for (int64_t l = 0; l < 3; ++l) {
    std::set<int32_t> used;
    for (int32_t e : state->routing(l).ids)
      if (e >= 0) used.insert(e);
    for (int32_t e = 0; e < 9; ++e) {
      if (used.count(e))
        EXPECT_GT(scores[l][e], 0.0) << "layer " << l << " expert " << e;
      else
        EXPECT_EQ(scores[l][e], 0.0) << "layer " << l << " expert " << e;
    }
  }
}

TEST(Selection, RefusesKeepKLargerThanTheModelsExperts) {
  auto model = tiny_model();
  try {
    select_experts(*model, one_example(), {11, SelectionMethod::kGlobal, 0});
    FAIL() << "keep-k 11 of 10 experts was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("keep-k 11 exceeds the 10 experts"), std::string::npos) << e.what();
  }
  EXPECT_THROW(select_experts(*model, one_example(), {1, SelectionMethod::kGlobal, 0}), Error);
}

TEST(Selection, ReadsPlainTextAndJsonlExamples) {
  TempDir dir;
  write_text(dir / "one.txt", "Question: 2+2?\nAnswer: 4\n");
  EXPECT_EQ(read_example_texts(dir / "one.txt"), (std::vector<std::string>{"Question: 2+2?\nAnswer: 4\n"}));
  write_text(dir / "two.jsonl", "{\"text\": \"abc\"}\n\n{\"context\": \"Q: x\", \"answer\": \" A: y\"}\n");
  EXPECT_EQ(read_example_texts(dir / "two.jsonl"), (std::vector<std::string>{"abc", "Q: x A: y"}));
  write_text(dir / "bad.jsonl", "{\"text\": \"abc\"}\n{\"other\": 1}\n");
  try {
    read_example_texts(dir / "bad.jsonl");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl: line 2"), std::string::npos) << e.what();
  }
}

TEST(Selection, TakesTheFirstDocumentsOfADomainOfADataset) {
  TempDir dir;
  data::DatasetWriter writer({"law", "code"}, 48);
  for (int d = 0; d < 6; ++d) {
    std::vector<int32_t> doc(3 + d, d + 2);
    writer.add(doc, d % 2);
  }
  writer.write(dir / "valid.bin");
  Examples ex = examples_from_dataset(dir / "valid.bin", "code", 2);
  ASSERT_EQ(ex.sequences.size(), 2u);
  EXPECT_EQ(ex.sequences[0], std::vector<int32_t>(4, 3));  // document 1
  EXPECT_EQ(ex.sequences[1], std::vector<int32_t>(6, 5));  // document 3
  EXPECT_NE(ex.description.find("2 documents of domain code"), std::string::npos) << ex.description;
  EXPECT_EQ(examples_from_dataset(dir / "valid.bin", "law", 0).sequences.size(), 3u);
  EXPECT_THROW(examples_from_dataset(dir / "valid.bin", "medicine", 1), Error);
  auto model = tiny_model();
  EXPECT_NO_THROW(select_experts(*model, ex, {4, SelectionMethod::kLayerwise, 0}).check(model->config()));
}

// ---------------------------------------------------------------------------------------------------------
// Pruning

// Relative difference max|a - b| / max|b| of two logit tensors.
double relative_difference(const Tensor& a, const Tensor& b) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < b.size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::fabs(a[i] - b[i])));
    scale = std::max(scale, static_cast<double>(std::fabs(b[i])));
  }
  return diff / scale;
}

Batch two_rows() {
  std::vector<int32_t> tokens = {5,  9,  3, kEos, 7,  7,  12,   30, 2,  44, 8, 19,  //
                                 40, 41, 6, 6,    20, 21, kEos, 23, 24, 25, 3, 4};
  return Batch::from_tokens(2, 12, tokens, {}, kEos);
}

TEST(Prune, PlanSlicesRouterRowsAndExpertsInTheReferenceOrder) {
  ExpertSubset s = valid_subset();  // layer 0 keeps 0, 4, 8 (+ shared 9)
  std::vector<std::string> names = {"model.embed_tokens.weight", "model.layers.0.mlp.gate.weight"};
  for (int e = 0; e < 10; ++e)
    names.push_back("model.layers.0.mlp.experts." + std::to_string(e) + ".up_proj.weight");
  names.push_back("lm_head.weight");
  auto plan = prune_plan(s, names);
  ASSERT_EQ(plan.size(), 2u + 4u + 1u);
  EXPECT_EQ(plan[0].name, "model.embed_tokens.weight");
  EXPECT_TRUE(plan[0].rows.empty());
  EXPECT_EQ(plan[1].rows, (std::vector<int32_t>{0, 4, 8, 9}));
  const char* expected[4][2] = {{"experts.0.", "experts.0."},
                                {"experts.1.", "experts.4."},
                                {"experts.2.", "experts.8."},
                                {"experts.3.", "experts.9."}};
  for (int j = 0; j < 4; ++j) {
    EXPECT_NE(plan[2 + j].name.find(expected[j][0]), std::string::npos) << plan[2 + j].name;
    EXPECT_NE(plan[2 + j].source.find(expected[j][1]), std::string::npos) << plan[2 + j].source;
  }
  EXPECT_EQ(plan[6].name, "lm_head.weight");
}

TEST(Prune, PrunedConfigHasKeepKExperts) {
  ExpertSubset s = valid_subset();
  ModelConfig c = pruned_config(tiny_config(), s);
  EXPECT_EQ(c.num_experts, 4);
  EXPECT_EQ(c.num_experts_per_tok, 3);
  EXPECT_EQ(c.num_shared_experts, 1);
  ExpertSubset two = ExpertSubset::for_model(tiny_config(), 2, "random");
  two.routed = {{1}, {2}, {3}};
  EXPECT_EQ(pruned_config(tiny_config(), two).num_experts_per_tok, 2) << "min(K, k)";
}

TEST(Prune, PrunedModelGivesTheLogitsOfSubsetRouting) {
  auto full = tiny_model();
  for (int64_t k : {2, 3, 4, 7, 10}) {
    ExpertSubset s = select_experts(*full, one_example(), {k, SelectionMethod::kGlobal, 0});
    auto pruned = prune_model(*full, s);
    EXPECT_EQ(pruned->config().num_experts, k);
    RoutingOptions standard;
    standard.training = false;
    auto expected = full->infer(two_rows(), s.routing_options());
    auto got = pruned->infer(two_rows(), standard);
    EXPECT_LT(relative_difference(got->logits, expected->logits), 1e-5) << "keep-k " << k;
    // And the pruned model routes its tokens to the same original experts.
    for (int64_t l = 0; l < 3; ++l) {
      auto kept = kept_experts(s, l);
      const LayerRouting& a = got->routing(l);
      const LayerRouting& b = expected->routing(l);
      for (int64_t n = 0; n < a.N; ++n) {
        std::set<int32_t> ids_a, ids_b;
        for (int64_t j = 0; j < a.slots; ++j)
          if (a.ids[n * a.slots + j] >= 0) ids_a.insert(kept[a.ids[n * a.slots + j]]);
        for (int64_t j = 0; j < b.slots; ++j)
          if (b.ids[n * b.slots + j] >= 0) ids_b.insert(b.ids[n * b.slots + j]);
        EXPECT_EQ(ids_a, ids_b) << "keep-k " << k << " layer " << l << " token " << n;
      }
    }
  }
}

TEST(Prune, PrunedModelIsSmallerInProportion) {
  auto full = tiny_model();
  ExpertSubset s = valid_subset();
  auto pruned = prune_model(*full, s);
  const ModelConfig& c = full->config();
  const int64_t expert_params = 3 * c.intermediate_size * c.hidden_size, router_row = c.hidden_size;
  EXPECT_EQ(full->num_params() - pruned->num_params(),
            c.num_hidden_layers * 6 * (expert_params + router_row));
}

// Bytes of the tensor file(s) of a checkpoint directory.
int64_t tensor_bytes(const std::string& dir) {
  int64_t total = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") total += static_cast<int64_t>(fs::file_size(e.path()));
  return total;
}

TEST(PruneCheckpoint, LoadingThePrunedCheckpointGivesTheLogitsOfSubsetRouting) {
  TempDir dir;
  auto full = tiny_model();
  full->save(dir / "full");
  write_text(dir / "full/tokenizer.json", "{\"model\": \"stand-in\"}");
  ExpertSubset s = select_experts(*full, one_example(), {4, SelectionMethod::kLayerwise, 0});
  PruneSummary summary = prune_checkpoint(dir / "full", s, dir / "pruned");

  auto pruned = Model::load(dir / "pruned");
  EXPECT_EQ(pruned->config().num_experts, 4);
  EXPECT_EQ(pruned->config().num_experts_per_tok, 3);
  RoutingOptions standard;
  standard.training = false;
  auto expected = full->infer(two_rows(), s.routing_options());
  auto got = pruned->infer(two_rows(), standard);
  EXPECT_LT(relative_difference(got->logits, expected->logits), 1e-5);

  // The same tensors as pruning in memory, bit for bit.
  auto in_memory = prune_model(*full, s);
  for (const std::string& name : in_memory->param_names())
    EXPECT_EQ(pruned->weight(name).vec(), in_memory->weight(name).vec()) << name;

  nlohmann::json meta = read_json_file(dir / "pruned/pruning_metadata.json");
  EXPECT_EQ(meta["method"], "layerwise");
  EXPECT_EQ(meta["keep_k"], 4);
  EXPECT_EQ(meta["calibration"]["examples"], 1);
  for (int64_t l = 0; l < 3; ++l)
    EXPECT_EQ(meta["kept_original_indices"][l].get<std::vector<int32_t>>(), kept_experts(s, l));
  EXPECT_TRUE(fs::exists(dir / "pruned/tokenizer.json"));

  // Smaller in proportion: the file shrinks by exactly the dropped experts' and router rows' bytes.
  const ModelConfig& c = full->config();
  const int64_t dropped = c.num_hidden_layers * 6 * (3 * c.intermediate_size * c.hidden_size + c.hidden_size);
  EXPECT_EQ(summary.params_in - summary.params_out, dropped);
  EXPECT_EQ(summary.bytes_in - summary.bytes_out, dropped * 4);
  const double ratio = static_cast<double>(tensor_bytes(dir / "pruned")) / tensor_bytes(dir / "full");
  EXPECT_NEAR(ratio, static_cast<double>(summary.params_out) / summary.params_in, 0.01);
}

TEST(PruneCheckpoint, KeepsTheStoredDtype) {
  TempDir dir;
  auto full = tiny_model();
  full->save(dir / "full", "bfloat16");
  ExpertSubset s = valid_subset();
  prune_checkpoint(dir / "full", s, dir / "pruned");
  auto file = SafetensorsCheckpoint::open(dir / "pruned");
  EXPECT_EQ(file.info("model.layers.1.mlp.gate.weight").dtype, DType::kBF16);
  EXPECT_EQ(file.info("model.layers.1.mlp.gate.weight").shape, (Shape{4, 16}));
  EXPECT_FALSE(file.contains("model.layers.0.mlp.experts.4.up_proj.weight"));
  auto full_bf16 = Model::load(dir / "full");
  auto pruned = Model::load(dir / "pruned");
  RoutingOptions standard;
  standard.training = false;
  EXPECT_LT(relative_difference(pruned->infer(two_rows(), standard)->logits,
                                full_bf16->infer(two_rows(), s.routing_options())->logits),
            1e-5);
}

TEST(PruneCheckpoint, RefusesASubsetMadeForAnotherModel) {
  TempDir dir;
  auto full = tiny_model();
  full->save(dir / "full");
  ExpertSubset s = valid_subset();
  s.routed.pop_back();
  s.shared.pop_back();
  s.num_layers = 2;
  EXPECT_THROW(prune_checkpoint(dir / "full", s, dir / "pruned"), Error);
  EXPECT_FALSE(fs::exists(dir / "pruned"));
}

// ---------------------------------------------------------------------------------------------------------
// Merge

// A full model saved to dir/full and its pruned checkpoint (valid_subset) in dir/pruned.
std::unique_ptr<Model> full_and_pruned(const TempDir& dir) {
  auto full = tiny_model();
  full->save(dir / "full");
  prune_checkpoint(dir / "full", valid_subset(), dir / "pruned");
  return full;
}

// The pruned model with expert 1 of layer 0 (original 4) and its router row changed, saved to dir/tuned.
void save_tuned(const TempDir& dir) {
  auto tuned = Model::load(dir / "pruned");
  for (float& w : tuned->weight("model.layers.0.mlp.experts.1.down_proj.weight").vec()) w += 1.0f;
  Tensor& router = tuned->weight("model.layers.0.mlp.gate.weight");  // [4, 16]
  for (int64_t c = 0; c < 16; ++c) router[1 * 16 + c] = 2.0f;
  tuned->save(dir / "tuned");
  fs::copy_file(dir / "pruned/pruning_metadata.json", dir / "tuned/pruning_metadata.json");
}

TEST(Merge, MergingAnUnchangedPrunedModelGivesTheParentBack) {
  TempDir dir;
  auto full = full_and_pruned(dir);
  MergeSummary summary = merge_checkpoint(dir / "full", dir / "pruned", dir / "merged", MergeMode::kReplace);
  EXPECT_EQ(summary.tensors_merged, 3 * (1 + 4 * 3));  // per layer: the router and 4 experts x 3 matrices
  auto merged = Model::load(dir / "merged");
  for (const std::string& name : full->param_names())
    EXPECT_EQ(merged->weight(name).vec(), full->weight(name).vec()) << name;
  EXPECT_TRUE(fs::exists(dir / "merged/merge_metadata.json"));
}

TEST(Merge, WritesTunedExpertsBackAtTheirOriginalIndices) {
  TempDir dir;
  auto full = full_and_pruned(dir);
  save_tuned(dir);
  merge_checkpoint(dir / "full", dir / "tuned", dir / "replaced", MergeMode::kReplace);
  merge_checkpoint(dir / "full", dir / "tuned", dir / "averaged", MergeMode::kAverage);
  auto replaced = Model::load(dir / "replaced");
  auto averaged = Model::load(dir / "averaged");
  const std::string changed = "model.layers.0.mlp.experts.4.down_proj.weight";
  const Tensor& before = full->weight(changed);
  for (int64_t i = 0; i < before.size(); ++i) {
    EXPECT_NEAR(replaced->weight(changed)[i], before[i] + 1.0f, 1e-6);
    EXPECT_NEAR(averaged->weight(changed)[i], before[i] + 0.5f, 1e-6);
  }
  const Tensor& router = replaced->weight("model.layers.0.mlp.gate.weight");  // [10, 16]
  for (int64_t c = 0; c < 16; ++c) {
    EXPECT_EQ(router[4 * 16 + c], 2.0f);
    EXPECT_EQ(router[5 * 16 + c], full->weight("model.layers.0.mlp.gate.weight")[5 * 16 + c]);
  }
  // Everything else is the parent's.
  for (const std::string& name : full->param_names())
    if (name != changed && name != "model.layers.0.mlp.gate.weight") {
      EXPECT_EQ(replaced->weight(name).vec(), full->weight(name).vec()) << name;
    }
}

// `emo prune` and `emo merge` (the real command line) never delete or overwrite what emo did not write.
TEST(OutputGuard, PruneAndMergeRefuseForeignOutputsAndInputsAndReplaceOnlyTheirOwnWithForce) {
  using test::run_emo, test::tree_bytes;
  TempDir dir;
  full_and_pruned(dir);
  valid_subset().save(dir / "subset.json");
  fs::create_directories(dir / "foreign/sub");
  write_text(dir / "foreign/sub/notes.txt", "the user's");
  write_text(dir / "file.txt", "a file");
  const std::string full_bytes = tree_bytes(dir / "full"), foreign_bytes = tree_bytes(dir / "foreign");
  const std::string prune = "prune " + dir / "full" + " --subset " + dir / "subset.json" + " -o ";
  const std::string merge = "merge " + dir / "full" + " " + dir / "pruned" + " -o ";
  struct Refusal {
    std::string command, why;
  };
  const std::vector<Refusal> refusals = {
      {prune + dir / "foreign", "not written by emo"},
      {prune + dir / "foreign --force", "not written by emo"},
      {prune + dir / "file.txt", "is not a directory"},
      {prune + dir / "full", "is the input"},
      {prune + dir / "full --force", "is the input"},
      {prune + dir.path.string(), "contains the input"},
      {prune + dir / "full/inner", "lies inside the input"},
      {prune + dir / "subset.json", "is the input"},
      {prune + dir / "pruned", "give --force"},
      {merge + dir / "foreign", "not written by emo"},
      {merge + dir / "file.txt", "is not a directory"},
      {merge + dir / "full", "is the input"},
      {merge + dir / "pruned --force", "is the input"},
      {merge + dir.path.string(), "contains the input"},
      {merge + dir / "pruned", "is the input"},
  };
  for (const Refusal& r : refusals) {
    const test::EmoRun run = run_emo(r.command);
    EXPECT_EQ(run.status, 1) << r.command;
    EXPECT_NE(run.err.find(r.why), std::string::npos) << r.command << ": " << run.err;
  }
  EXPECT_EQ(tree_bytes(dir / "full"), full_bytes);
  EXPECT_EQ(tree_bytes(dir / "foreign"), foreign_bytes);
  EXPECT_EQ(tree_bytes(dir / "file.txt"), "a file");

  // Their own previous output: replaced with --force, never the other command's.
  ASSERT_EQ(run_emo(merge + dir / "merged").status, 0);
  EXPECT_EQ(read_json_file(dir / "merged/.emo-output")["command"], "merge");
  EXPECT_NE(run_emo(merge + dir / "merged").err.find("give --force"), std::string::npos);
  EXPECT_EQ(run_emo(merge + dir / "merged --force").status, 0);
  const test::EmoRun over_merge = run_emo(prune + dir / "merged --force");
  EXPECT_NE(over_merge.err.find("holds the output of 'emo merge'"), std::string::npos) << over_merge.err;
  ASSERT_EQ(run_emo(prune + dir / "pruned2").status, 0);
  EXPECT_EQ(run_emo(prune + dir / "pruned2 --force").status, 0);
  EXPECT_TRUE(Model::load(dir / "pruned2") != nullptr);
  for (const auto& e : fs::directory_iterator(dir.path))  // no temporary sibling left behind
    EXPECT_EQ(e.path().filename().string().find(".emo-"), std::string::npos) << e.path();
}

TEST(Merge, RefusesAModelThatWasNotPrunedFromTheParent) {
  TempDir dir;
  auto full = full_and_pruned(dir);
  EXPECT_THROW(merge_checkpoint(dir / "full", dir / "full", dir / "merged", MergeMode::kReplace), Error);
  nlohmann::json meta = read_json_file(dir / "pruned/pruning_metadata.json");
  meta["kept_original_indices"][1][0] = 12;
  write_json_file(dir / "pruned/pruning_metadata.json", meta);
  try {
    merge_checkpoint(dir / "full", dir / "pruned", dir / "merged", MergeMode::kReplace);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 1: expert index 12 out of range"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "merged"));
}

// ---------------------------------------------------------------------------------------------------------
// Sweep

TEST(Sweep, ScoresEveryModelDomainMethodAndKeepK) {
  TempDir dir;
  tiny_model()->save(dir / "model");
  data::DatasetWriter writer({"law", "code"}, 48);
  for (int d = 0; d < 8; ++d) {
    std::vector<int32_t> doc;
    for (int t = 0; t < 10 + d; ++t) doc.push_back(2 + (d * 7 + t * (d % 2 ? 5 : 3)) % 46);
    writer.add(doc, d % 2);
  }
  writer.write(dir / "valid.bin");
  SweepOptions options;
  options.models = {dir / "model"};
  options.eval_data = dir / "valid.bin";
  options.methods = {"layerwise", "random"};
  options.keep_k = {2, 4, 10, 12};  // 10 = E (the full model), 12 skipped
  options.perplexity.seq_len = 16;
  options.names = {"tiny", "extra"};
  EXPECT_THROW(run_sweep(options), Error);  // two names for one model
  options.names = {"tiny"};
  auto rows = run_sweep(options);
  ASSERT_EQ(rows.size(), 2u * 2u * 3u);  // domains x methods x (2, 4, full)
  EXPECT_EQ(rows[0].model, "tiny");
  for (const SweepRow& r : rows) {
    EXPECT_GT(r.loss, 0.0);
    EXPECT_GT(r.tokens, 0);
    EXPECT_DOUBLE_EQ(r.fraction, r.keep_k / 10.0);
  }
  EXPECT_EQ(rows[2].keep_k, 10);
  EXPECT_EQ(rows[2].loss, rows[5].loss) << "the full model scores the same under every method";
  EXPECT_NE(rows[0].loss, rows[2].loss);

  write_sweep(dir / "out", rows);
  for (const char* file : {"results.md", "results.csv", "quality.svg"})
    EXPECT_TRUE(fs::exists(dir / (std::string("out/") + file)));
  const std::string svg = sweep_svg(rows);
  size_t lines = 0;
  for (size_t at = svg.find("<polyline"); at != std::string::npos; at = svg.find("<polyline", at + 1))
    ++lines;
  EXPECT_EQ(lines, 2u) << "one line per model and method";
  const std::string csv = sweep_csv(rows);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 13);

  // results.md: keep-k in columns, a row per model, method and domain, then each method's mean.
  const std::string md = sweep_markdown(rows);
  EXPECT_EQ(md.find("| model | method | domain | k=2 (20.0%) | k=4 (40.0%) | k=10 (100.0%) |\n"), 0u) << md;
  EXPECT_EQ(std::count(md.begin(), md.end(), '\n'), 2 + 2 * 3) << md;
  const auto cell = [](double loss) {
    char text[32];
    std::snprintf(text, sizeof text, "%.4f", loss);
    return std::string(text);
  };
  EXPECT_NE(md.find("| tiny | layerwise | " + rows[0].domain + " | " + cell(rows[0].loss) + " | " +
                    cell(rows[1].loss) + " | " + cell(rows[2].loss) + " |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| tiny | random | **mean** | "), std::string::npos) << md;
  EXPECT_NE(md.find(cell((rows[2].loss + rows[8].loss) / 2) + " |\n| tiny | random | **mean** | "),
            std::string::npos)
      << md;
}

TEST(Sweep, ShortModelNamesNameTheRunOfACheckpoint) {
  EXPECT_EQ(short_model_name("/runs/emo-small/checkpoints/step-00000100"), "emo-small");
  EXPECT_EQ(short_model_name("/models/pruned/"), "pruned");
  EXPECT_EQ(short_model_name("pruned"), "pruned");
}

// ---------------------------------------------------------------------------------------------------------
// Fine-tune

// Every byte a token of its own, plus EOS 256.
Tokenizer byte_tokenizer() {
  std::vector<std::string> bytes;
  for (int b = 0; b < 256; ++b) bytes.push_back(std::string(1, static_cast<char>(b)));
  return Tokenizer::from_parts(bytes, {}, kCl100kPattern, {AddedToken{256, "<|endoftext|>"}});
}

TEST(Finetune, SplitsExamplesAfterTheLastAnswerMarker) {
  Tokenizer tok = byte_tokenizer();
  auto examples = make_finetune_examples({"q? Answer: no. again? Answer: yes"}, tok, "Answer:");
  ASSERT_EQ(examples.size(), 1u);
  const auto& e = examples[0];
  EXPECT_EQ(tok.decode(std::vector<int32_t>(e.tokens.begin(), e.tokens.begin() + e.answer_start)),
            "q? Answer: no. again? Answer:");
  EXPECT_EQ(tok.decode(std::vector<int32_t>(e.tokens.begin() + e.answer_start, e.tokens.end())), " yes");
  try {
    make_finetune_examples({"a Answer: b", "no marker"}, tok, "Answer:");
    FAIL();
  } catch (const Error& err) {
    EXPECT_NE(
        std::string(err.what()).find("example 1 has no \"answer\" field and no answer marker 'Answer:'"),
        std::string::npos)
        << err.what();
  }
  EXPECT_THROW(make_finetune_examples({"a Answer:"}, tok, "Answer:"), Error);
}

TEST(Finetune, ContextAnswerExamplesSplitWhereTheAnswerStartsWithoutAMarker) {
  TempDir dir;
  std::ofstream(dir / "task.jsonl") << "{\"context\": \"Capital of Italy?\", \"answer\": \" Rome\"}\n"
                                    << "{\"text\": \"2+2? Answer: 4\"}\n";
  Tokenizer tok = byte_tokenizer();
  auto examples = make_finetune_examples(read_examples(dir / "task.jsonl"), tok, "Answer:");
  ASSERT_EQ(examples.size(), 2u);
  auto part = [&](const FinetuneExample& e, bool answer) {
    const auto mid = e.tokens.begin() + e.answer_start;
    return tok.decode(answer ? std::vector<int32_t>(mid, e.tokens.end())
                             : std::vector<int32_t>(e.tokens.begin(), mid));
  };
  EXPECT_EQ(part(examples[0], false), "Capital of Italy?");
  EXPECT_EQ(part(examples[0], true), " Rome");
  EXPECT_EQ(part(examples[1], false), "2+2? Answer:");
  EXPECT_EQ(part(examples[1], true), " 4");
}

TEST(Finetune, LowersTheAnswerLossAndTrainsOnTheAnswerOnly) {
  auto pruned = prune_model(*tiny_model(), valid_subset());
  // Token ids of the tiny vocabulary: two prompts and their answers (6 and 2 tokens).
  std::vector<FinetuneExample> examples = {{{5, 9, 3, 17, 22, 40, 7, 8, 30, 31, 32, 33, 34, 35}, 8},
                                           {{12, 13, 14, 40, 44, 45}, 4}};
  const double before = answer_loss(*pruned, examples);
  FinetuneOptions options;
  options.epochs = 15;
  options.lr = 3e-3;
  FinetuneReport report = finetune(*pruned, examples, options);
  EXPECT_EQ(report.steps, 15);
  EXPECT_EQ(report.answer_tokens, 6 + 2);
  EXPECT_NEAR(report.step_losses[0], before, 1e-4)
      << "the first step's loss is the answer loss before training";
  EXPECT_LT(answer_loss(*pruned, examples), 0.5 * before);

  // Deterministic for a fixed seed.
  auto again = prune_model(*tiny_model(), valid_subset());
  FinetuneReport second = finetune(*again, examples, options);
  EXPECT_EQ(second.step_losses, report.step_losses);
}

bool is_expert_or_router(const std::string& name) {
  return name.find(".mlp.experts.") != std::string::npos ||
         name.find(".mlp.gate.weight") != std::string::npos;
}

TEST(Finetune, TrainsOnlyExpertsAndRoutersByDefault) {
  std::vector<FinetuneExample> examples = {{{5, 9, 3, 17, 22, 40, 7, 8, 30, 31}, 6}};
  for (bool experts_only : {true, false}) {
    auto before = prune_model(*tiny_model(), valid_subset());
    auto tuned = prune_model(*tiny_model(), valid_subset());
    FinetuneOptions options;
    options.lr = 1e-2;
    options.experts_only = experts_only;
    finetune(*tuned, examples, options);
    bool other_changed = false, expert_changed = false;
    for (const std::string& name : tuned->param_names()) {
      const bool changed = tuned->weight(name).vec() != before->weight(name).vec();
      (is_expert_or_router(name) ? expert_changed : other_changed) |= changed;
    }
    EXPECT_TRUE(expert_changed) << experts_only;
    EXPECT_EQ(other_changed, !experts_only) << experts_only;
  }
}

TEST(FinetuneAndMerge, TheMergedModelRestrictedToTheSubsetIsTheFineTunedOne) {
  TempDir dir;
  auto full = full_and_pruned(dir);
  std::vector<FinetuneExample> examples = {{{5, 9, 3, 17, 22, 40, 7, 8, 30, 31}, 6},
                                           {{12, 13, 14, 40, 44}, 3}};
  for (bool experts_only : {true, false}) {
    auto tuned = Model::load(dir / "pruned");
    FinetuneOptions options;
    options.lr = 1e-2;
    options.epochs = 3;
    options.experts_only = experts_only;
    finetune(*tuned, examples, options);
    tuned->save(dir / "tuned");
    fs::copy_file(dir / "pruned/pruning_metadata.json", dir / "tuned/pruning_metadata.json",
                  fs::copy_options::overwrite_existing);
    fs::remove_all(dir / "merged");
    MergeSummary summary = merge_checkpoint(dir / "full", dir / "tuned", dir / "merged", MergeMode::kReplace);
    auto merged = Model::load(dir / "merged");
    RoutingOptions standard;
    standard.training = false;
    const double difference =
        relative_difference(merged->infer(two_rows(), valid_subset().routing_options())->logits,
                            tuned->infer(two_rows(), standard)->logits);
    if (experts_only) {
      EXPECT_TRUE(summary.other_tensors_differing.empty());
      EXPECT_LT(difference, 1e-5);
    } else {
      EXPECT_FALSE(summary.other_tensors_differing.empty())
          << "attention, norms, embeddings changed and were lost";
      EXPECT_GT(difference, 1e-4);
    }
  }
}

}  // namespace
}  // namespace emo
