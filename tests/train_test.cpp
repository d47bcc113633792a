// Specification of the trainer: configuration, schedules, AdamW, checkpoints, resume, NaN stop,
// load-balancing scope, and data parallelism (2 MPI ranks == 1 rank).
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/thread_pool.h"
#include "data/dataset.h"
#include "fault_injection.h"
#include "io/json_file.h"
#include "io/output_dir.h"
#include "model/forward_state.h"
#include "run_emo.h"
#include "tokenizer/tokenizer.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/loss_curve.h"
#include "train/row_source.h"
#include "train/schedule.h"
#include "train/trainer.h"
#include "train/usage.h"

namespace emo {
namespace {

namespace fs = std::filesystem;

std::string temp_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("emo_train_test_" + std::to_string(::getpid())) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// ---------------------------------------------------------------------------------------------- config

TEST(TrainConfig, DefaultsFollowTheReleasedRecipe) {
  TrainConfig c;
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 4e-3);
  EXPECT_DOUBLE_EQ(c.optimizer.beta1, 0.9);
  EXPECT_DOUBLE_EQ(c.optimizer.beta2, 0.95);
  EXPECT_DOUBLE_EQ(c.optimizer.eps, 1e-8);
  EXPECT_DOUBLE_EQ(c.optimizer.weight_decay, 0.1);
  EXPECT_DOUBLE_EQ(c.optimizer.grad_clip, 1.0);
  EXPECT_EQ(c.schedule.kind, "cosine");
  EXPECT_EQ(c.schedule.warmup_steps, 2000);
  EXPECT_DOUBLE_EQ(c.schedule.final_lr_ratio, 0.1);
  EXPECT_DOUBLE_EQ(c.loss.lb, 0.1);
  EXPECT_DOUBLE_EQ(c.loss.router_z, 0.001);
  EXPECT_DOUBLE_EQ(c.loss.output_z, 1e-5);
  EXPECT_EQ(c.loss.lb_scope, "global");
  EXPECT_EQ(c.routing.mode, "emo");
  EXPECT_TRUE(c.routing.intra_document_attention);
}

TEST(TrainConfig, RoundTripsThroughJson) {
  TrainConfig c;
  c.model.d = 96;
  c.routing.mode = "standard";
  c.data.validation["law"] = "synthetic:3";
  c.run.seed = 42;
  TrainConfig back = TrainConfig::from_json(c.to_json());
  EXPECT_EQ(back.to_json(), c.to_json());
}

TEST(TrainConfig, PartialJsonKeepsDefaults) {
  TrainConfig c = TrainConfig::from_json(nlohmann::json::parse(R"({"optimizer": {"lr": 0.001}})"));
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 0.001);
  EXPECT_DOUBLE_EQ(c.optimizer.beta2, 0.95);
}

TEST(TrainConfig, UnknownKeyIsAnErrorNamingIt) {
  try {
    TrainConfig::from_json(nlohmann::json::parse(R"({"optimizer": {"learning_rate": 0.001}})"), "run.json");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("optimizer.learning_rate"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("run.json"), std::string::npos) << e.what();
  }
}

// A training config whose model cannot fit in memory (weights, gradients and AdamW moments) is refused at
// load naming its sizes, before a parameter is allocated; so is a context past the stated maximum.
TEST(TrainConfig, AModelLargerThanMemoryIsRefusedAtLoadNamingTheSizes) {
  auto error_of = [](const char* text) {
    try {
      TrainConfig::from_json(nlohmann::json::parse(text), "run.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const std::string huge = error_of(R"({"model": {"d": 1048576, "heads": 4, "kv_heads": 4, "layers": 8}})");
  EXPECT_NE(huge.find("[train-config] run.json: model.d 1048576"), std::string::npos) << huge;
  EXPECT_NE(huge.find("more than this machine's memory"), std::string::npos) << huge;
  const std::string layers = error_of(R"({"model": {"layers": 100000000}})");
  EXPECT_NE(layers.find("model.layers 100000000"), std::string::npos) << layers;
  const std::string context = error_of(R"({"model": {"max_position": 1000000000}})");
  EXPECT_NE(context.find("model.max_position 1000000000 exceeds the 16777216 positions"), std::string::npos)
      << context;
  EXPECT_EQ(error_of(R"({"model": {"d": 256, "layers": 2}})"), "");
}

TEST(TrainConfig, OverridesParseAsTheExistingType) {
  nlohmann::json j = TrainConfig{}.to_json();
  apply_override(j, "optimizer.lr=0.01");
  apply_override(j, "model.layers=6");
  apply_override(j, "routing.intra_document_attention=false");
  apply_override(j, "routing.mode=dense");
  apply_override(j, "data.validation.law=synthetic:7");
  TrainConfig c = TrainConfig::from_json(j);
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 0.01);
  EXPECT_EQ(c.model.layers, 6);
  EXPECT_FALSE(c.routing.intra_document_attention);
  EXPECT_EQ(c.routing.mode, "dense");
  EXPECT_EQ(c.data.validation.at("law"), "synthetic:7");
  EXPECT_THROW(apply_override(j, "optimizer.learning_rate=1"), Error);
  EXPECT_THROW(apply_override(j, "model.layers=many"), Error);
  EXPECT_THROW(apply_override(j, "routing.intra_document_attention=yes"), Error);
  EXPECT_THROW(apply_override(j, "novalue"), Error);
}

TEST(TrainConfig, ValidateRejectsImpossibleValues) {
  TrainConfig c;
  c.run.steps = 10;
  c.validate();
  c.routing.mode = "emoo";
  EXPECT_THROW(c.validate(), Error);
  c.routing.mode = "emo";
  c.batch.global_batch_rows = 6;
  c.batch.micro_batch_rows = 4;
  EXPECT_THROW(c.validate(), Error);
}

TEST(TrainConfig, StepsFromTokens) {
  TrainConfig c;
  c.batch.global_batch_rows = 4;
  c.batch.row_length = 100;
  c.run.tokens = 1001;
  EXPECT_EQ(c.total_steps(), 3);
}

// ---------------------------------------------------------------------------------------------- schedules

TEST(Schedule, CosineWarmsUpLinearlyThenDecaysToTheFloor) {
  ScheduleConfig s;
  s.warmup_steps = 10;
  s.final_lr_ratio = 0.1;
  EXPECT_DOUBLE_EQ(learning_rate(s, 1.0, 0, 110), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(s, 1.0, 4, 110), 0.5);
  EXPECT_DOUBLE_EQ(learning_rate(s, 1.0, 9, 110), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(s, 1.0, 10, 110), 1.0);
  EXPECT_NEAR(learning_rate(s, 1.0, 10 + 99 / 2.0, 110), 0.55, 0.01);
  EXPECT_DOUBLE_EQ(learning_rate(s, 1.0, 109, 110), 0.1);
  for (int64_t step = 11; step < 110; ++step)
    EXPECT_LT(learning_rate(s, 1.0, step, 110), learning_rate(s, 1.0, step - 1, 110));
}

TEST(Schedule, AWarmupLongerThanTheRunIsWarnedWithTheRateReached) {
  ScheduleConfig s;
  s.kind = "cosine";
  s.warmup_steps = 2000;
  EXPECT_EQ(warmup_warning(s, 1e-3, 2000), "");
  const std::string w = warmup_warning(s, 1e-3, 200);
  EXPECT_NE(w.find("schedule.warmup_steps 2000 exceeds the run's 200 steps: the learning rate only reaches "
                   "0.0001 of its peak optimizer.lr 0.001"),
            std::string::npos)
      << w;
  EXPECT_NE(w.find("schedule.warmup_steps=20)"), std::string::npos) << w;
  s.kind = "anneal";
  EXPECT_EQ(warmup_warning(s, 1e-3, 200), "");
}

TEST(Schedule, WarmupStableDecay) {
  ScheduleConfig s;
  s.kind = "wsd";
  s.warmup_steps = 5;
  s.decay_steps = 11;
  s.final_lr_ratio = 0.0;
  EXPECT_DOUBLE_EQ(learning_rate(s, 2.0, 2, 100), 1.2);
  EXPECT_DOUBLE_EQ(learning_rate(s, 2.0, 50, 100), 2.0);
  EXPECT_DOUBLE_EQ(learning_rate(s, 2.0, 89, 100), 2.0);
  EXPECT_DOUBLE_EQ(learning_rate(s, 2.0, 94, 100), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(s, 2.0, 99, 100), 0.0);
}

TEST(Schedule, AnnealFromACheckpointIsLinear) {
  ScheduleConfig s;
  s.kind = "anneal";
  s.anneal_start_step = 100;
  s.anneal_start_lr = 0.5;
  s.final_lr_ratio = 0.0;
  EXPECT_DOUBLE_EQ(learning_rate(s, 1.0, 100, 111), 0.5);
  EXPECT_DOUBLE_EQ(learning_rate(s, 1.0, 105, 111), 0.25);
  EXPECT_DOUBLE_EQ(learning_rate(s, 1.0, 110, 111), 0.0);
}

// ---------------------------------------------------------------------------------------------- AdamW

TEST(AdamW, MatchesAHandComputedUpdate) {
  Tensor w({2}, {1.0f, -2.0f}), gw({2}, {0.5f, -0.25f});
  Tensor n({1}, {3.0f}), gn({1}, {1.0f});
  std::vector<Param> params = {{"w", &w, &gw, false}, {"norm", &n, &gn, true}};
  OptimizerConfig c;
  c.lr = 0.1;
  c.beta1 = 0.9;
  c.beta2 = 0.95;
  c.eps = 1e-8;
  c.weight_decay = 0.1;
  AdamW adam(c);
  // Step 1: m = 0.1 g, v = 0.05 g^2, mhat = g, vhat = g^2: the update is lr * sign(g) (up to eps).
  adam.step(params, 0.1);
  EXPECT_NEAR(w[0], 1.0 * (1 - 0.01) - 0.1, 1e-6);
  EXPECT_NEAR(w[1], -2.0 * (1 - 0.01) + 0.1, 1e-6);
  EXPECT_NEAR(n[0], 3.0 - 0.1, 1e-6);  // no weight decay on norms
  // Step 2 with a new gradient, by hand in double.
  gw[0] = -1.0f;
  double m = 0.9 * 0.05 + 0.1 * -1.0, v = 0.95 * 0.05 * 0.25 + 0.05 * 1.0;
  double mhat = m / (1 - 0.81), vhat = v / (1 - 0.9025);
  double expected = (1.0 * 0.99 - 0.1) * 0.99 - 0.1 * mhat / (std::sqrt(vhat) + 1e-8);
  adam.step(params, 0.1);
  EXPECT_NEAR(w[0], expected, 1e-6);
  EXPECT_EQ(adam.steps_taken(), 2);
}

TEST(AdamW, GradientMultiplierScalesTheGradient) {
  Tensor a({1}, {1.0f}), ga({1}, {4.0f}), b({1}, {1.0f}), gb({1}, {1.0f});
  OptimizerConfig c;
  AdamW x(c), y(c);
  x.step({{"p", &a, &ga, false}}, 0.01, 0.25f);
  y.step({{"p", &b, &gb, false}}, 0.01, 1.0f);
  EXPECT_EQ(a[0], b[0]);
}

TEST(AdamW, ResultDoesNotDependOnTheThreadCount) {
  auto run = [](int threads) {
    set_num_threads(threads);
    Rng rng(7);
    Tensor w({100003}), g({100003});  // odd: 2 threads split it mid-vector (vector and scalar code agree)
    for (int64_t i = 0; i < w.size(); ++i)
      w[i] = static_cast<float>(rng.normal()), g[i] = static_cast<float>(rng.normal());
    AdamW adam(OptimizerConfig{});
    for (int s = 0; s < 3; ++s) adam.step({{"w", &w, &g, false}}, 0.01);
    set_num_threads(0);
    return w.vec();
  };
  EXPECT_EQ(run(1), run(2));
}

// ---------------------------------------------------------------------------------------------- data, usage,
// figure

RowSourceOptions synthetic_options(int64_t rows, int rank = 0, int world = 1) {
  RowSourceOptions o;
  o.row_length = 16;
  o.global_batch_rows = rows;
  o.rank = rank;
  o.world_size = world;
  o.vocab = 64;
  o.eos_id = 63;
  o.seed = 5;
  return o;
}

TEST(SyntheticSource, ResumesExactlyFromItsState) {
  SyntheticSource a(synthetic_options(3));
  Batch expected, got;
  a.next(expected);
  nlohmann::json state = a.state();
  a.next(expected);
  RowSourceOptions other = synthetic_options(3);
  other.seed = 999;
  SyntheticSource b(other);
  b.restore(state);
  b.next(got);
  EXPECT_EQ(got.tokens, expected.tokens);
  EXPECT_EQ(got.targets, expected.targets);
  EXPECT_EQ(got.doc_ids, expected.doc_ids);
  EXPECT_EQ(got.attention_doc_ids, expected.attention_doc_ids);
}

TEST(SyntheticSource, TargetsAreTheNextTokensAcrossRows) {
  SyntheticSource s(synthetic_options(2));
  Batch b;
  s.next(b);
  ASSERT_EQ(b.B, 2);
  for (int64_t i = 0; i + 1 < 32; ++i) EXPECT_EQ(b.targets[i], b.tokens[i + 1]);
  for (int32_t t : b.tokens) EXPECT_TRUE(t >= 0 && t < 64);
}

TEST(SyntheticSource, RanksGetContiguousSharesOfTheSameGlobalBatch) {
  SyntheticSource whole(synthetic_options(4)), first(synthetic_options(4, 0, 2)),
      second(synthetic_options(4, 1, 2));
  Batch w, a, b;
  for (int step = 0; step < 2; ++step) {
    whole.next(w);
    first.next(a);
    second.next(b);
    ASSERT_EQ(a.B, 2);
    std::vector<int32_t> joined = a.tokens;
    joined.insert(joined.end(), b.tokens.begin(), b.tokens.end());
    EXPECT_EQ(joined, w.tokens);
  }
  EXPECT_EQ(first.state(), whole.state());
}

TEST(ExpertUsage, RouterCollapseIsReportedPerWindowOnceUntilItRecovers) {
  CollapseWatch watch(100);
  // Layer 0 spreads over all 8 routed experts; layer 1 keeps to 3 of them.
  std::vector<std::vector<double>> load = {std::vector<double>(8, 0.0), {0.5, 0.3, 0.2, 0, 0, 0, 0, 0}};
  std::string warning;
  auto run = [&](int64_t first, int64_t last) {
    for (int64_t step = first; step <= last; ++step) {
      load[0].assign(8, 0.0);
      load[0][step % 8] = 1.0;  // one expert per step, all of them over the window
      warning = watch.add(step, load);
      if (step < last) {
        EXPECT_EQ(warning, "") << step;
      }
    }
  };
  run(1, 100);
  EXPECT_NE(warning.find("router collapse over steps 1-100: layer 1 used 3 of 8 routed experts"),
            std::string::npos)
      << warning;
  EXPECT_EQ(warning.find("layer 0"), std::string::npos) << warning;
  run(101, 200);
  EXPECT_EQ(warning, "") << "reported once while it lasts";
  load[1] = std::vector<double>(8, 0.125);
  run(201, 300);
  EXPECT_EQ(warning, "");
  load[1] = {1, 0, 0, 0, 0, 0, 0, 0};
  run(301, 400);
  EXPECT_NE(warning.find("over steps 301-400: layer 1 used 1 of 8"), std::string::npos) << warning;
  EXPECT_EQ(CollapseWatch(1).add(1, {}), "") << "a dense model has no experts";
}

TEST(ExpertUsage, CountsDistinctExpertsLoadAndDocumentEntropy) {
  ForwardState s;
  s.batch.B = 1;
  s.batch.T = 4;
  s.batch.doc_ids = {0, 0, 1, 1};
  s.layers.resize(1);
  LayerRouting& r = s.layers[0].routing;
  r.N = 4;
  r.routed = 4;
  r.slots = 1;
  r.ids = {0, 0, 1, 2};  // document 0 uses expert 0 twice (entropy 0), document 1 experts 1 and 2 (ln 2)
  std::vector<std::vector<double>> counts = {{2, 1, 1, 0}};
  ExpertUsage u = expert_usage({&s}, counts);
  EXPECT_DOUBLE_EQ(u.distinct_experts, 3);
  EXPECT_DOUBLE_EQ(u.load_max_over_mean, 2.0);
  EXPECT_NEAR(u.pool_entropy, std::log(2.0) / 2, 1e-12);
  EXPECT_DOUBLE_EQ(u.documents, 2);
  EXPECT_EQ(u.load, (std::vector<std::vector<double>>{{0.5, 0.25, 0.25, 0.0}}));
}

TEST(LossCurve, WritesAnSvgWithTrainAndValidationLines) {
  LossCurve c;
  for (int i = 1; i <= 50; ++i) c.train.emplace_back(i, 5.0 / i);
  c.validation["law & order"] = {{25, 0.4}, {50, 0.3}};
  std::string svg = loss_curve_svg(c);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(svg.find("<polyline"), std::string::npos);
  EXPECT_NE(svg.find("law &amp; order"), std::string::npos);
  EXPECT_NE(loss_curve_svg(LossCurve{}).find("no loss recorded"), std::string::npos);
}

TEST(RowSource, PerDomainSourcesNameEachDomainWithText) {
  std::string path = temp_dir("domains") + "/validation.bin";
  data::DatasetWriter writer({"law", "math", "news"}, 16);
  std::vector<uint32_t> text = {1, 2, 3};
  writer.add(std::span<const uint32_t>(text), 0);
  writer.add(std::span<const uint32_t>(text), 2);
  writer.add(std::span<const uint32_t>(text.data(), 0), 1);  // math: only an empty document
  writer.write(path);
  auto sources = per_domain_sources(path);
  EXPECT_EQ(sources, (std::map<std::string, std::string>{{"law", path + "#law"}, {"news", path + "#news"}}));
  RowSourceOptions o = synthetic_options(1);
  o.single_pass = true;
  o.vocab = 16;
  o.eos_id = 15;
  auto law = make_row_source(sources["law"], o);
  Batch rows;
  ASSERT_TRUE(law->next(rows));
  EXPECT_EQ(std::vector<int32_t>(rows.tokens.begin(), rows.tokens.begin() + 4),
            (std::vector<int32_t>{1, 2, 3, 15}));
  EXPECT_FALSE(law->next(rows));
}

// ---------------------------------------------------------------------------------------------- the loop

// A tiny EMO model on generated documents: a few milliseconds per step.
TrainConfig tiny_config() {
  TrainConfig c;
  c.model.d = 32;
  c.model.layers = 2;
  c.model.heads = 2;
  c.model.kv_heads = 1;
  c.model.experts = 8;
  c.model.top_k = 3;
  c.model.expert_width = 32;
  c.model.vocab = 64;
  c.batch.row_length = 32;
  c.batch.micro_batch_rows = 2;
  c.batch.global_batch_rows = 4;
  c.optimizer.lr = 1e-2;
  c.schedule.warmup_steps = 2;
  c.run.steps = 6;
  c.run.seed = 11;
  c.run.checkpoint_every = 3;
  c.run.validate_every = 3;
  c.run.validation_rows = 4;
  c.data.validation["synthetic"] = "synthetic:99";
  return c;
}

TrainOptions quiet(const std::string& out) {
  TrainOptions o;
  o.out_dir = out;
  o.show_progress = false;
  return o;
}

std::vector<std::vector<float>> weights_of(Model& model) {
  std::vector<std::vector<float>> out;
  for (const Param& p : model.params()) out.push_back(p.value->vec());
  return out;
}

TEST(Trainer, LossFallsAndTheRunLeavesMetricsCheckpointsAndAFigure) {
  std::string out = temp_dir("run");
  Trainer trainer(tiny_config(), quiet(out));
  EXPECT_EQ(trainer.run(), 6);
  const auto& h = trainer.history();
  ASSERT_EQ(h.size(), 6u);
  EXPECT_LT(h.back().loss, h.front().loss);
  EXPECT_GT(h.front().lb, 0.5);  // about 1 at balance
  EXPECT_GT(h.front().usage.distinct_experts, 1);
  EXPECT_GT(h.front().tokens_per_second, 0);
  EXPECT_EQ(h.back().tokens, 6 * 4 * 32);
  std::string metrics = read_text(out + "/metrics.jsonl");
  EXPECT_EQ(std::count(metrics.begin(), metrics.end(), '\n'), 6);
  EXPECT_NE(metrics.find("\"validation\""), std::string::npos);
  EXPECT_NE(metrics.find("\"pool_entropy\""), std::string::npos);
  EXPECT_NE(metrics.find("\"expert_load\":[["), std::string::npos);
  EXPECT_EQ(resolve_checkpoint(out), out + "/checkpoints/step-00000006");
  EXPECT_TRUE(fs::exists(out + "/checkpoints/step-00000003/model.safetensors"));
  EXPECT_TRUE(fs::exists(out + "/checkpoints/step-00000006/optimizer.safetensors"));
  EXPECT_TRUE(fs::exists(out + "/checkpoints/step-00000006/config.json"));
  EXPECT_NE(read_text(out + "/loss_curve.svg").find("<polyline"), std::string::npos);
  EXPECT_TRUE(fs::exists(out + "/checkpoints/step-00000006/loss_curve.svg"));
}

TEST(Trainer, VocabularyFromATokenizerIsRoundedUpTo128Rows) {
  std::vector<std::string> bytes(256);
  for (int b = 0; b < 256; ++b) bytes[b] = std::string(1, static_cast<char>(b));
  std::vector<AddedToken> specials = {{256, "<|endoftext|>", true}, {257, "<|pad|>", true}};
  std::string path = temp_dir("vocab") + "/tokenizer.json";
  Tokenizer::from_parts(bytes, {}, kCl100kPattern, specials).save(path);
  TrainConfig c = tiny_config();
  c.model.vocab = 0;
  c.data.tokenizer = path;
  Trainer t(c, quiet(""));
  EXPECT_EQ(t.config().model.vocab, 384);  // 258 ids -> 3 x 128 embedding rows
  EXPECT_EQ(t.config().data.eos_id, 256);
  EXPECT_EQ(embedding_rows_for_vocab(100278), 100352);  // dolma2, as released
  c.data.tokenizer = "";
  c.data.train = temp_dir("vocab") + "/train.bin";  // a dataset gives no EOS
  data::DatasetWriter writer({"a"}, 300);
  std::vector<uint32_t> doc = {1, 2, 3};
  writer.add(std::span<const uint32_t>(doc), 0);
  writer.write(c.data.train);
  try {
    Trainer missing_eos(c, quiet(""));
    ADD_FAILURE() << "a dataset run without a tokenizer or eos_id must fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("data.tokenizer"), std::string::npos) << e.what();
  }
}

TEST(Trainer, ResumeContinuesBitExactly) {
  std::string straight = temp_dir("straight"), split = temp_dir("split");
  Trainer a(tiny_config(), quiet(straight));
  a.run();

  TrainOptions first = quiet(split);
  first.stop_after = 3;
  {
    Trainer b(tiny_config(), first);
    EXPECT_EQ(b.run(), 3);
  }
  TrainOptions second = quiet(split);
  second.resume = true;
  Trainer c(tiny_config(), second);
  EXPECT_EQ(c.step(), 3);
  EXPECT_EQ(c.run(), 6);
  ASSERT_EQ(c.history().size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(c.history()[i].loss, a.history()[3 + i].loss) << "step " << 4 + i;
  EXPECT_TRUE(weights_of(c.model()) == weights_of(a.model())) << "weights differ after resuming";
  // The metrics of the resumed run continue the file without duplicates.
  std::string metrics = read_text(split + "/metrics.jsonl");
  EXPECT_EQ(std::count(metrics.begin(), metrics.end(), '\n'), 6);
}

TEST(Trainer, NanLossStopsNamingTheStepAndTheLastGoodCheckpoint) {
  std::string out = temp_dir("nan");
  TrainConfig config = tiny_config();
  config.run.checkpoint_every = 2;
  Trainer* trainer = nullptr;
  TrainOptions options = quiet(out);
  options.on_step = [&](const StepMetrics& m) {
    if (m.step == 3)
      for (float& x : trainer->model().params()[0].value->vec()) x = std::nanf("");
  };
  Trainer t(config, options);
  trainer = &t;
  try {
    t.run();
    FAIL() << "expected the NaN to stop training";
  } catch (const Error& e) {
    std::string message = e.what();
    EXPECT_NE(message.find("step 4"), std::string::npos) << message;
    EXPECT_NE(message.find("step-00000002"), std::string::npos) << message;
  }
  EXPECT_EQ(resolve_checkpoint(out), out + "/checkpoints/step-00000002");
}

TEST(Trainer, ACrashWhileCheckpointingLeavesTheLastGoodOne) {
  std::string out = temp_dir("crash");
  TrainConfig config = tiny_config();
  config.run.checkpoint_every = 2;
  config.run.steps = 4;
  TrainOptions options = quiet(out);
  int optimizer_writes = 0;
  options.checkpoint_fault = [&](const std::string& stage) {
    if (stage == "optimizer" && ++optimizer_writes == 2) throw std::runtime_error("simulated crash");
  };
  {
    Trainer t(config, options);
    EXPECT_THROW(t.run(), std::runtime_error);
  }
  const std::string good = out + "/checkpoints/step-00000002";
  EXPECT_EQ(resolve_checkpoint(out), good);
  EXPECT_FALSE(fs::exists(out + "/checkpoints/step-00000004"));
  EXPECT_TRUE(fs::exists(out + "/checkpoints/.tmp-step-00000004"));  // the half-written one, never used
  LoadedCheckpoint loaded = load_checkpoint(good);
  EXPECT_EQ(loaded.state.step, 2);

  TrainOptions again = quiet(out);
  again.resume = true;
  Trainer t(config, again);
  EXPECT_EQ(t.run(), 4);
  EXPECT_FALSE(fs::exists(out + "/checkpoints/.tmp-step-00000004"));
}

// The run the SIGKILL test kills: a checkpoint after every step, long enough never to finish first.
TrainConfig kill_config() {
  TrainConfig c = tiny_config();
  c.run.steps = 100000;
  c.run.checkpoint_every = 1;
  c.run.keep_last = 2;
  c.data.validation.clear();
  return c;
}

// Worker half of SigkillAtAnyMomentLosesOnlyTheStepsSinceTheLastCheckpoint: trains until killed.
TEST(Trainer, KillWorker) {
  const char* out = std::getenv("EMO_TRAIN_TEST_KILL_OUT");
  if (out == nullptr)
    GTEST_SKIP() << "started by Trainer.SigkillAtAnyMomentLosesOnlyTheStepsSinceTheLastCheckpoint";
  TrainOptions options = quiet(out);
  options.resume = true;
  Trainer(kill_config(), options).run();
}

TEST(Trainer, SigkillAtAnyMomentLosesOnlyTheStepsSinceTheLastCheckpoint) {
  std::string out = temp_dir("kill");
  std::string self = fs::read_symlink("/proc/self/exe").string();
  std::string env = "EMO_TRAIN_TEST_KILL_OUT=" + out;
  std::string filter = "--gtest_filter=Trainer.KillWorker";
  char* argv[] = {self.data(), filter.data(), nullptr};
  char* envp[] = {env.data(), nullptr};
  std::mt19937 rng(17);
  int64_t previous_step = 0;
  // Each round resumes the run and kills it (SIGKILL: no handler, no clean-up) at a random moment, which with
  // a checkpoint per step often falls inside a checkpoint write.
  for (int round = 0; round < 20; ++round) {
    pid_t pid = 0;
    ASSERT_EQ(posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv, envp), 0);
    // Wait for this round's first new checkpoint (however loaded the machine), then kill a random few
    // milliseconds later: somewhere in a step or in the middle of writing or pruning checkpoints.
    auto step_on_disk = [&] {
      std::ifstream latest(out + "/checkpoints/latest");
      std::string name;
      return std::getline(latest, name) && name.size() > 5 ? std::atoll(name.c_str() + 5) : 0;
    };
    for (int waited = 0; step_on_disk() <= previous_step && waited < 60000; waited += 2)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 20000));
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status)) << "round " << round << ": the worker ended before it was killed";

    std::string latest = resolve_checkpoint(out);
    ASSERT_FALSE(latest.empty()) << "round " << round << ": no complete checkpoint";
    LoadedCheckpoint loaded = load_checkpoint(latest);  // throws if anything of it is damaged
    EXPECT_GE(loaded.state.step, previous_step) << "round " << round;
    previous_step = loaded.state.step;
    // Whatever the moment, a step-* directory is a whole checkpoint (leftovers only under .tmp- names).
    for (const auto& entry : fs::directory_iterator(out + "/checkpoints")) {
      std::string name = entry.path().filename().string();
      if (name.rfind("step-", 0) == 0) {
        EXPECT_TRUE(fs::exists(entry.path() / "train_state.json")) << "round " << round << ": " << name;
      }
    }
  }
  ASSERT_GT(previous_step, 0);
  // Resuming after the last kill continues exactly where an uninterrupted run would be.
  TrainOptions resume = quiet(out);
  resume.resume = true;
  resume.stop_after = 2;
  Trainer resumed(kill_config(), resume);
  EXPECT_EQ(resumed.step(), previous_step);
  resumed.run();
  for (const auto& entry : fs::directory_iterator(out + "/checkpoints"))  // the next save cleared leftovers
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();
  TrainOptions straight_options = quiet(temp_dir("kill_straight"));
  straight_options.stop_after = previous_step + 2;
  TrainConfig straight_config = kill_config();
  straight_config.run.checkpoint_every = 0;
  Trainer straight(straight_config, straight_options);
  straight.run();
  ASSERT_EQ(straight.history().size(), static_cast<size_t>(previous_step + 2));
  EXPECT_EQ(resumed.history().back().loss, straight.history().back().loss);
  EXPECT_TRUE(weights_of(resumed.model()) == weights_of(straight.model()));
}

TEST(Trainer, KeepsOnlyTheLastKCheckpoints) {
  std::string out = temp_dir("keep");
  TrainConfig config = tiny_config();
  config.run.checkpoint_every = 1;
  config.run.keep_last = 2;
  config.run.steps = 4;
  Trainer(config, quiet(out)).run();
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(out + "/checkpoints"))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"latest", "step-00000003", "step-00000004"}));
}

TEST(Trainer, GlobalBalancingSumsCountsOverMicroBatchesAndMicroBatchScopeDoesNot) {
  auto first_step = [](const std::string& scope, int64_t micro_rows) {
    TrainConfig c = tiny_config();
    c.loss.lb_scope = scope;
    c.batch.micro_batch_rows = micro_rows;
    c.run.steps = 1;
    c.data.validation.clear();
    Trainer t(c, quiet(""));
    t.run();
    return t.history()[0];
  };
  StepMetrics global = first_step("global", 2), local = first_step("micro_batch", 2);
  EXPECT_EQ(global.ce, local.ce);  // same rows, same weights: only the balancing term sees the scope
  EXPECT_NE(global.lb, local.lb);
  // With one micro-batch per step the two scopes are the same computation.
  StepMetrics global1 = first_step("global", 4), local1 = first_step("micro_batch", 4);
  EXPECT_EQ(global1.lb, local1.lb);
  EXPECT_EQ(global1.loss, local1.loss);
}

TEST(Trainer, StandardAndDenseModelsTrainToo) {
  for (const char* mode : {"standard", "dense"}) {
    TrainConfig c = tiny_config();
    c.routing.mode = mode;
    c.run.steps = 2;
    Trainer t(c, quiet(""));
    t.run();
    EXPECT_TRUE(std::isfinite(t.history().back().loss)) << mode;
  }
}

// ---------------------------------------------------------------------------------- the run directory

// `emo train` of the tiny model of tiny_config(): a checkpoint after each step, well under a second.
std::string tiny_train(const std::string& out, const std::string& extra = "--steps 2") {
  return "--threads 1 train --no-progress --out " + out +
         " model.d=32 model.layers=2 model.heads=2 model.kv_heads=1 model.experts=8 model.top_k=3"
         " model.expert_width=32 model.vocab=64 batch.row_length=32 batch.micro_batch_rows=2"
         " batch.global_batch_rows=4 run.checkpoint_every=1 run.validate_every=0 " +
         extra;
}

void write_text(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path) << text;
}

int64_t step_of_run(const std::string& run) {
  TrainState state;
  read_checkpoint_config(resolve_checkpoint(run), &state);
  return state.step;
}

TEST(RunDirectory, TrainRefusesWhatItDidNotWriteAndContinuesItsOwnRun) {
  using test::run_emo, test::tree_bytes;
  const std::string dir = temp_dir("guard");
  write_text(dir + "/foreign/sub/notes.txt", "the user's");
  write_text(dir + "/file.txt", "a file");
  write_text(dir + "/pruned/.emo-output", R"({"format": "emo-output", "command": "prune"})");
  write_text(dir + "/pruned/model.safetensors", "weights");
  write_text(dir + "/configs/run.json", "{}\n");
  const std::string before = tree_bytes(dir);
  struct Refusal {
    std::string args, why;
  };
  const std::vector<Refusal> refusals = {
      {tiny_train(dir + "/foreign"), "not written by emo"},
      {tiny_train(dir + "/foreign", "--resume --steps 2"), "not written by emo"},
      {tiny_train(dir + "/file.txt"), "is not a directory"},
      {tiny_train(dir + "/pruned"), "holds the output of 'emo prune', not of 'emo train'"},
      {tiny_train(dir + "/configs", "--config " + dir + "/configs/run.json"), "contains the input"},
      {tiny_train(dir + "/data", "--data " + dir + "/data/train.bin"), "contains the input"},
      {tiny_train(dir + "/configs/run.json/x", "--config " + dir + "/configs/run.json"), "lies inside"},
  };
  for (const Refusal& r : refusals) {
    const test::EmoRun run = run_emo(r.args);
    EXPECT_EQ(run.status, 1) << r.args;
    EXPECT_NE(run.err.find(r.why), std::string::npos) << r.args << ": " << run.err;
  }
  EXPECT_TRUE(tree_bytes(dir) == before);  // nothing created, changed or removed

  // Its own run: marked, continued by --resume.
  const std::string run = dir + "/run";
  ASSERT_EQ(run_emo(tiny_train(run)).status, 0);
  EXPECT_EQ(read_json_file(run + "/.emo-output")["command"], "train");
  const test::EmoRun resumed = run_emo(tiny_train(run, "--resume --steps 4"));
  ASSERT_EQ(resumed.status, 0) << resumed.err;
  EXPECT_EQ(step_of_run(run), 4);
}

// `train --resume` refuses an override that would make it another run, naming the key and both values, and
// says which changes it takes (steps to extend the run, intervals); a negative or absurd step in the state
// file or a checkpoint's name is an error naming the file.
TEST(RunDirectory, AResumeRefusesChangesThatMakeAnotherRunAndSaysWhichItTakes) {
  using test::run_emo;
  const std::string run = temp_dir("resume_changes") + "/run";
  ASSERT_EQ(run_emo(tiny_train(run)).status, 0);
  struct Refused {
    std::string overrides, says;
  };
  for (const Refused& r :
       std::vector<Refused>{{"model.d=64", "model.d 32 -> 64"},
                            {"model.experts=16", "model.experts 8 -> 16"},
                            {"optimizer.lr=0.5", "optimizer.lr"},
                            {"batch.row_length=16", "batch.row_length 32 -> 16"},
                            {"run.seed=9", "run.seed 0 -> 9"},
                            {"--data synthetic-7", "data.train \"synthetic\" -> \"synthetic-7\""}}) {
    const test::EmoRun refused = run_emo(tiny_train(run, "--resume --steps 3 " + r.overrides));
    EXPECT_EQ(refused.status, 1) << r.overrides << "\n" << refused.err;
    EXPECT_NE(refused.err.find("--resume would change the run: " + r.says), std::string::npos)
        << r.overrides << "\n"
        << refused.err;
    EXPECT_EQ(step_of_run(run), 2) << r.overrides;
  }
  const test::EmoRun extended = run_emo(tiny_train(run, "--resume --steps 3 run.log_every=2"));
  EXPECT_EQ(extended.status, 0) << extended.err;
  EXPECT_NE(extended.err.find("--resume: run.steps 2 -> 3 (a resumed run may change this)"),
            std::string::npos)
      << extended.err;
  EXPECT_NE(extended.err.find("--resume: run.log_every 1 -> 2"), std::string::npos) << extended.err;
  EXPECT_EQ(step_of_run(run), 3);

  const std::string state_path = run + "/checkpoints/step-00000003/train_state.json";
  const nlohmann::json good = read_json_file(state_path);
  for (const nlohmann::json& step : {nlohmann::json(-4), nlohmann::json(int64_t{1'000'000'000'000'000})}) {
    nlohmann::json bad = good;
    bad["step"] = step;
    write_json_file(state_path, bad);
    const test::EmoRun refused = run_emo(tiny_train(run, "--resume --steps 4"));
    EXPECT_EQ(refused.status, 1) << refused.err;
    EXPECT_NE(refused.err.find(state_path + ": step " + step.dump() + " is not a step of a run"),
              std::string::npos)
        << refused.err;
  }
  write_json_file(state_path, good);
  for (const char* name : {"step--0000004", "step-1e15", "step-99999999999999999999"}) {
    const std::string odd = run + "/checkpoints/" + name;
    fs::create_directories(odd);
    write_json_file(odd + "/train_state.json", good);
    const test::EmoRun refused = run_emo(tiny_train(run, "--resume --steps 4"));
    EXPECT_EQ(refused.status, 1) << refused.err;
    EXPECT_NE(refused.err.find(odd + ": not a checkpoint name"), std::string::npos) << refused.err;
    EXPECT_TRUE(fs::exists(odd));  // not emo's to delete
    fs::remove_all(odd);
  }
  EXPECT_EQ(run_emo(tiny_train(run, "--resume --steps 4")).status, 0);
  EXPECT_EQ(step_of_run(run), 4);
}

TEST(RunDirectory, ASecondTrainOnTheSameRunIsRefusedNamingTheHolder) {
  const std::string run = temp_dir("locked");
  ASSERT_EQ(test::run_emo(tiny_train(run)).status, 0);
  {
    DirectoryLock held(run, "train");  // this process stands for a run in progress
    const std::string before = test::tree_bytes(run);
    const test::EmoRun second = test::run_emo(tiny_train(run, "--resume --steps 4"));
    EXPECT_EQ(second.status, 1);
    EXPECT_NE(second.err.find(cat("in use by another 'emo train' (pid ", ::getpid(), ")")), std::string::npos)
        << second.err;
    EXPECT_TRUE(test::tree_bytes(run) == before);  // not a metrics line or checkpoint of the second run
  }
  EXPECT_EQ(test::run_emo(tiny_train(run, "--resume --steps 4")).status, 0);
  EXPECT_EQ(step_of_run(run), 4);
}

TEST(RunDirectory, AnOlderEmosRunIsRefusedWithTheLineThatAdoptsIt) {
  const std::string run = temp_dir("older");
  ASSERT_EQ(test::run_emo(tiny_train(run)).status, 0);
  fs::remove(run + "/.emo-output");  // as an emo from before the marker left it
  const std::string before = test::tree_bytes(run);
  const test::EmoRun refused = test::run_emo(tiny_train(run, "--resume --steps 4"));
  EXPECT_EQ(refused.status, 1);
  const std::string line =
      "echo '{\"format\": \"emo-output\", \"command\": \"train\"}' > " + run + "/.emo-output";
  EXPECT_NE(refused.err.find(run + ": has no .emo-output marker, but holds checkpoints"), std::string::npos)
      << refused.err;
  EXPECT_NE(refused.err.find("\n  " + line + "\n"), std::string::npos) << refused.err;
  EXPECT_TRUE(test::tree_bytes(run) == before);
  ASSERT_EQ(std::system(line.c_str()), 0);  // the user adopts it
  const test::EmoRun adopted = test::run_emo(tiny_train(run, "--resume --steps 4"));
  ASSERT_EQ(adopted.status, 0) << adopted.err;
  EXPECT_EQ(step_of_run(run), 4);
}

// ------------------------------------------------------------------------------------- stop signals

// The step of the run's latest checkpoint as `latest` names it (0 before the first).
int64_t latest_step_named(const std::string& run) {
  std::ifstream latest(run + "/checkpoints/latest");
  std::string name;
  return std::getline(latest, name) && name.size() > 5 ? std::atoll(name.c_str() + 5) : 0;
}

// SIGTERM and SIGINT stop `emo train` after the step in progress with a checkpoint, and the command exits
// with 128 + signal (143, 130) rather than 0: a scheduler can tell a stop from a finished run. A checkpoint
// after every step puts many of the signals in the middle of a checkpoint write, which is finished first.
TEST(StopSignal, TrainExitsWith128PlusTheSignalAndItsCheckpointResumes) {
  const std::string run = temp_dir("sigterm");
  const std::string err = run + ".err";
  std::mt19937 rng(23);
  int64_t previous_step = 0;
  for (int signal : {SIGTERM, SIGINT, SIGTERM, SIGTERM}) {
    const pid_t pid =
        test::spawn_emo(tiny_train(run, previous_step ? "--resume --steps 100000" : "--steps 100000"), err);
    for (int waited = 0; latest_step_named(run) <= previous_step && waited < 60000; waited += 2)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 20000));
    ASSERT_EQ(::kill(pid, signal), 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    std::ifstream in(err);
    const std::string message((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ASSERT_TRUE(WIFEXITED(status)) << "signal " << signal << " ended emo instead of stopping it: " << message;
    EXPECT_EQ(WEXITSTATUS(status), 128 + signal) << message;
    EXPECT_NE(message.find("emo: stopped: [train] signal " + std::to_string(signal) + " at step "),
              std::string::npos)
        << message;
    EXPECT_NE(message.find("resume with the same command and --resume"), std::string::npos) << message;
    const std::string latest = resolve_checkpoint(run);
    ASSERT_FALSE(latest.empty());
    LoadedCheckpoint loaded = load_checkpoint(latest);  // whole, whatever the moment of the signal
    EXPECT_GT(loaded.state.step, previous_step);
    EXPECT_NE(message.find(latest.substr(latest.rfind('/') + 1)), std::string::npos) << message;
    previous_step = loaded.state.step;
  }
  fs::remove(err);
  const std::string steps = "--resume --steps " + std::to_string(previous_step + 2);
  const test::EmoRun resumed = test::run_emo(tiny_train(run, steps));
  ASSERT_EQ(resumed.status, 0) << resumed.err;
  EXPECT_EQ(step_of_run(run), previous_step + 2);
}

// A full disk (a file size limit of 32 KB on the command; a checkpoint needs more) while a training run
// writes its next checkpoint: the error names the file, the previous checkpoint stays the latest and whole,
// and the run resumes from it once there is room.
TEST(TrainFaults, AFullDiskDuringACheckpointNamesTheFileAndKeepsThePreviousCheckpoint) {
  const std::string run = temp_dir("full_disk");
  ASSERT_EQ(test::run_emo(tiny_train(run)).status, 0);
  const std::string latest = resolve_checkpoint(run);
  const std::string before = test::tree_bytes(latest);
  const test::EmoRun full =
      test::run_emo_env(test::full_disk_after_blocks(64), tiny_train(run, "--resume --steps 4"));
  EXPECT_EQ(full.status, 1);
  EXPECT_NE(full.err.find("emo: error: [io] " + run + "/checkpoints/"), std::string::npos) << full.err;
  EXPECT_NE(full.err.find("write failed: File too large"), std::string::npos) << full.err;
  EXPECT_EQ(resolve_checkpoint(run), latest);
  EXPECT_TRUE(test::tree_bytes(latest) == before);
  EXPECT_EQ(load_checkpoint(latest).state.step, 2);
  const test::EmoRun resumed = test::run_emo(tiny_train(run, "--resume --steps 4"));
  ASSERT_EQ(resumed.status, 0) << resumed.err;
  EXPECT_EQ(step_of_run(run), 4);
}

// A real full file system (a tmpfs of 8 MB, filled but 16 KB by a file of the test's) while a training run
// writes its next checkpoint: `No space left on device` naming the file, exit 1, the previous checkpoint
// the latest and whole; once the space is freed the same command resumes from it.
TEST(TrainFaults, ARealFullFileSystemDuringACheckpointNamesTheFileAndKeepsThePreviousCheckpoint) {
  const std::string why = test::SmallFileSystem::unavailable();
  if (!why.empty()) GTEST_SKIP() << why;
  const std::string dir = temp_dir("tmpfs"), run = dir + "/run";
  const test::SmallFileSystem small(dir, temp_dir("tmpfs_results"));
  const std::string resume = tiny_train(run, "--resume --steps 4");
  ASSERT_EQ(
      small.run(8 << 20, "emo first " + tiny_train(run) + "; snap before run\nfill 16384; emo full " +
                             resume + "; snap full run\nunfill; emo freed " + resume + "; snap after run"),
      0);
  ASSERT_EQ(small.status("first"), 0) << small.err("first");
  EXPECT_EQ(small.status("full"), 1);
  EXPECT_NE(small.err("full").find("emo: error: [io] " + run + "/checkpoints/"), std::string::npos)
      << small.err("full");
  EXPECT_NE(small.err("full").find("No space left on device"), std::string::npos) << small.err("full");
  EXPECT_EQ(small.err("full").find("internal error"), std::string::npos) << small.err("full");
  const std::string latest = resolve_checkpoint(small.result("full"));
  EXPECT_EQ(latest, small.result("full") + "/checkpoints/step-00000002");
  EXPECT_TRUE(test::tree_bytes(latest) ==
              test::tree_bytes(small.result("before") + "/checkpoints/step-00000002"));
  ASSERT_EQ(small.status("freed"), 0) << small.err("freed");
  EXPECT_EQ(step_of_run(small.result("after")), 4);
}

// A run directory emo may not write into (a read-only parent for a new run, another user's run to resume;
// as a user other than root, who writes anywhere): an error naming the path, exit 1, nothing changed.
TEST(TrainFaults, AReadOnlyRunDirectoryIsAnErrorNamingIt) {
  std::string as_user;
  if (!test::unprivileged_prefix(&as_user)) GTEST_SKIP() << "root without setpriv: no read-only directory";
  const std::string dir = temp_dir("readonly");
  const std::string run = dir + "/run";
  ASSERT_EQ(test::run_emo(tiny_train(run)).status, 0);
  fs::create_directories(dir + "/locked");
  for (const std::string& path : {dir, dir + "/locked", run, run + "/checkpoints"})
    fs::permissions(path, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                              fs::perms::others_read | fs::perms::others_exec);
  const std::string before = test::tree_bytes(dir);
  const test::EmoRun fresh = test::run_emo_env(as_user, tiny_train(dir + "/locked/new"));
  EXPECT_EQ(fresh.status, 1);
  EXPECT_NE(fresh.err.find(dir + "/locked/new: cannot create the directory: Permission denied"),
            std::string::npos)
      << fresh.err;
  const test::EmoRun resumed = test::run_emo_env(as_user, tiny_train(run, "--resume --steps 4"));
  EXPECT_EQ(resumed.status, 1);
  EXPECT_NE(resumed.err.find(run + "/"), std::string::npos) << resumed.err;
  EXPECT_NE(resumed.err.find("Permission denied"), std::string::npos) << resumed.err;
  EXPECT_TRUE(test::tree_bytes(dir) == before);
  EXPECT_EQ(step_of_run(run), 2);
}

// ---------------------------------------------------------------------------------------------- MPI

// Worker half of TwoRanksMatchOneRank: runs only under mpirun, started by the test below.
TEST(Mpi, Worker) {
  const char* out = std::getenv("EMO_TRAIN_TEST_MPI_OUT");
  if (out == nullptr) GTEST_SKIP() << "started by Mpi.TwoRanksMatchOneRank";
  set_num_threads(1);
  Trainer(tiny_config(), quiet(out)).run();
}

TEST(Mpi, TwoRanksMatchOneRank) {
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) GTEST_SKIP() << "mpirun is not installed";
#ifndef EMO_HAVE_MPI
  GTEST_SKIP() << "built without MPI";
#endif
  std::string two = temp_dir("mpi2"), one = temp_dir("mpi1");
  // The log beside the run directory: inside it, it would make the directory one emo did not write.
  const std::string log = temp_dir("mpi2_log") + "/mpirun.log";
  std::string self = fs::read_symlink("/proc/self/exe").string();
  std::string command = "EMO_TRAIN_TEST_MPI_OUT=" + two +
                        " mpirun --oversubscribe --allow-run-as-root -np 2 -x EMO_TRAIN_TEST_MPI_OUT " +
                        self + " --gtest_filter=Mpi.Worker > " + log + " 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << read_text(log);
  Trainer single(tiny_config(), quiet(one));
  single.run();

  std::ifstream metrics(two + "/metrics.jsonl");
  std::string line;
  size_t i = 0;
  while (std::getline(metrics, line)) {
    auto j = nlohmann::json::parse(line);
    ASSERT_LT(i, single.history().size());
    EXPECT_NEAR(j["loss"].get<double>(), single.history()[i].loss, 1e-4) << "step " << i + 1;
    EXPECT_NEAR(j["lb"].get<double>(), single.history()[i].lb, 1e-4) << "step " << i + 1;
    ++i;
  }
  EXPECT_EQ(i, single.history().size());
  LoadedCheckpoint two_ranks = load_checkpoint(resolve_checkpoint(two));
  EXPECT_EQ(two_ranks.state.world_size, 2);
  auto a = weights_of(*two_ranks.model), b = weights_of(single.model());
  ASSERT_EQ(a.size(), b.size());
  double worst = 0;
  for (size_t p = 0; p < a.size(); ++p)
    for (size_t k = 0; k < a[p].size(); ++k) worst = std::max(worst, std::fabs(double(a[p][k]) - b[p][k]));
  EXPECT_LT(worst, 1e-4);
}

// Only rank 0 looks at the run directory; the other rank must stop with its refusal, not wait for it.
TEST(Mpi, ARefusedRunDirectoryStopsEveryRankWithTheSameError) {
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) GTEST_SKIP() << "mpirun is not installed";
#ifndef EMO_HAVE_MPI
  GTEST_SKIP() << "built without MPI";
#endif
  const std::string foreign = temp_dir("mpi_foreign"), log = temp_dir("mpi_foreign_log") + "/mpirun.log";
  write_text(foreign + "/notes.txt", "the user's");
  // `timeout`: should a rank hang after all, the test fails instead of stalling the suite.
  const std::string command = "timeout 120 mpirun --oversubscribe --allow-run-as-root -np 2 " +
                              std::string(EMO_BINARY_DIR) + "/bin/emo " + tiny_train(foreign) + " > " + log +
                              " 2>&1";
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status)) << read_text(log);
  EXPECT_NE(WEXITSTATUS(status), 0) << read_text(log);
  EXPECT_NE(WEXITSTATUS(status), 124) << "a rank hung: " << read_text(log);
  const std::string text = read_text(log),
                    error = "emo: error: [train] " + foreign + ": exists, is not empty";
  size_t count = 0;
  for (size_t at = text.find(error); at != std::string::npos; at = text.find(error, at + 1)) ++count;
  EXPECT_EQ(count, 2u) << text;
  EXPECT_EQ(test::tree_bytes(foreign), "notes.txt\nthe user's\n");
}

}  // namespace
}  // namespace emo
