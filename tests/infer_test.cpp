// The inference engine (src/infer) against the training engine's forward (src/model) on the same checkpoint,
// its kernels against double-precision references, the sampler, refusals, and the memory it touches.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "core/error.h"
#include "core/rng.h"
#include "infer/decoder.h"
#include "infer/generate.h"
#include "infer/quantize.h"
#include "infer/resident.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "kernels/quant.h"
#include "model/forward_state.h"
#include "model/weights_check.h"
#include "run_emo.h"
#include "select/prune.h"
#include "select/selection.h"
#include "tiny_emo.h"
#include "tokenizer/tokenizer.h"

namespace emo {
namespace {

namespace fs = std::filesystem;

ModelConfig tiny_config(bool moe = true) {
  ModelConfig c;
  c.model_type = moe ? "emo" : "olmo2_noqknorm_prenorm";
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;  // GQA
  c.max_position_embeddings = 32;
  c.eos_token_id = 63;
  if (moe) {
    c.num_experts = 8;  // 7 routed + the shared expert 7
    c.num_experts_per_tok = 3;
    c.num_shared_experts = 1;
  }
  return c;
}

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("emo_infer_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

// Larger than the default init so routing and logits are not all near-uniform.
std::unique_ptr<Model> random_model(const ModelConfig& config, uint64_t seed) {
  auto model = std::make_unique<Model>(config);
  model->init_weights(seed);
  for (const std::string& name : model->param_names())
    if (name.find("norm") == std::string::npos)
      for (float& w : model->weight(name).vec()) w *= 5.0f;
  return model;
}

std::vector<int32_t> some_tokens(int64_t n, uint64_t seed = 3) {
  Rng rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(rng.uniform_int(0, 62));  // never the EOS 63
  return t;
}

// Logits [T, V] of the training engine.
Tensor reference_logits(const Model& model, const std::vector<int32_t>& tokens,
                        const RoutingOptions& routing) {
  const int64_t T = static_cast<int64_t>(tokens.size());
  Batch batch = Batch::from_tokens(1, T, tokens, {}, 63);
  return model.infer(batch, routing)->logits;
}

RoutingOptions eval_routing() {
  RoutingOptions r;
  r.training = false;
  return r;
}

void expect_close(const Tensor& got, const Tensor& want, double rel) {
  ASSERT_EQ(got.size(), want.size());
  double scale = 1.0, worst = 0.0;
  for (int64_t i = 0; i < want.size(); ++i) scale = std::max(scale, std::fabs(double(want[i])));
  for (int64_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::fabs(double(got[i]) - want[i]));
  EXPECT_LE(worst, rel * scale) << "largest difference " << worst << " (scale " << scale << ")";
}

Tensor infer_logits(const std::string& dir, const std::vector<int32_t>& tokens,
                    const std::vector<std::vector<int32_t>>* subset = nullptr) {
  auto weights = InferWeights::open(dir);
  if (subset)
    for (size_t l = 0; l < subset->size(); ++l) weights->keep_experts(static_cast<int64_t>(l), (*subset)[l]);
  Decoder decoder(*weights, static_cast<int64_t>(tokens.size()));
  return decoder.forward(tokens, true);
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// ------------------------------------------------------------------------------------------ same logits

TEST(InferLogits, FullModelEqualsTheTrainingForward) {
  TempDir dir;
  auto model = random_model(tiny_config(), 1);
  model->save(dir / "m");
  const auto tokens = some_tokens(20);
  expect_close(infer_logits(dir / "m", tokens), reference_logits(*model, tokens, eval_routing()), 2e-5);
}

TEST(InferLogits, DenseModelEqualsTheTrainingForward) {
  TempDir dir;
  auto model = random_model(tiny_config(false), 2);
  model->save(dir / "m");
  const auto tokens = some_tokens(17);
  expect_close(infer_logits(dir / "m", tokens), reference_logits(*model, tokens, eval_routing()), 2e-5);
}

TEST(InferLogits, SubsetEqualsSubsetRoutingOfTheTrainingForward) {
  TempDir dir;
  auto model = random_model(tiny_config(), 3);
  model->save(dir / "m");
  const auto tokens = some_tokens(20);
  // Layer 1 keeps a single routed expert: fewer than the 2 routed slots, so a slot stays unused.
  const std::vector<std::vector<int32_t>> subset = {{1, 4, 6}, {5}};
  RoutingOptions routing = eval_routing();
  routing.mode = RoutingMode::kSubset;
  routing.subset = subset;
  expect_close(infer_logits(dir / "m", tokens, &subset), reference_logits(*model, tokens, routing), 2e-5);
}

// Forces a kernel for a scope (set_quant_kernel), the process's choice restored after.
struct ForcedKernel {
  QuantKernel chosen = quant_kernel();
  explicit ForcedKernel(QuantKernel kernel) { set_quant_kernel(kernel); }
  ~ForcedKernel() { set_quant_kernel(chosen); }
};

// bf16 logits beside the training engine's: on the AVX2 kernel (x exact, as the training engine) within
// 2e-5 of the largest; on the process's kernel within 5e-3 (AVX-512 BF16 prompts round x to bf16, which this
// tiny model's large random weights amplify; InferLogits.EveryKernelGivesTheAvx2KernelsLogits).
void expect_bf16_logits_follow(const std::string& dir, const std::vector<int32_t>& tokens,
                               const Tensor& want) {
  {
    ForcedKernel avx2(QuantKernel::kAvx2);
    expect_close(infer_logits(dir, tokens), want, 2e-5);
  }
  expect_close(infer_logits(dir, tokens), want, 5e-3);
}

TEST(InferLogits, Bf16CheckpointEqualsTheTrainingForwardOfTheSameCheckpoint) {
  TempDir dir;
  random_model(tiny_config(), 4)->save(dir / "m", "bfloat16");
  auto model = Model::load(dir / "m");
  const auto tokens = some_tokens(20);
  expect_bf16_logits_follow(dir / "m", tokens, reference_logits(*model, tokens, eval_routing()));
}

TEST(InferLogits, Int8CheckpointEqualsTheTrainingForwardOfItsDequantisedWeights) {
  TempDir dir;
  random_model(tiny_config(), 5)->save(dir / "m");
  QuantizeSummary summary = quantize_checkpoint(dir / "m", dir / "q", DType::kI8);
  EXPECT_EQ(summary.converted, 1 + 2 * (4 + 8 * 3) + 1);  // embed, q k v o and 24 expert matrices, lm_head
  EXPECT_LT(summary.bytes_out, summary.bytes_in / 2);
  auto model = load_model_dequantized(dir / "q");
  const auto tokens = some_tokens(20);
  expect_close(infer_logits(dir / "q", tokens), reference_logits(*model, tokens, eval_routing()), 2e-5);
}

// Sizes of whole q4 blocks: every projection has 32 or 64 columns.
ModelConfig q4_config(bool moe = true) {
  ModelConfig c = tiny_config(moe);
  c.hidden_size = 64;
  c.intermediate_size = 32;
  return c;
}

// The q4 engine multiplies 4-bit blocks by int8 blocks of the activations (steps of max|block| / 127, as
// llama.cpp does): its logits follow the fp32 forward of the dequantised weights within that rounding,
// which the large random weights of these models amplify over 2 layers (measured: 3.7% of the largest
// logit at most).
TEST(InferLogits, Q4CheckpointFollowsTheTrainingForwardOfItsDequantisedWeights) {
  TempDir dir;
  random_model(q4_config(), 5)->save(dir / "m");
  QuantizeSummary summary = quantize_checkpoint(dir / "m", dir / "q", DType::kQ4_0);
  EXPECT_EQ(summary.converted, 1 + 2 * (4 + 8 * 3) + 1);  // embed and lm_head int8, 56 matrices q4
  EXPECT_LT(summary.bytes_out, summary.bytes_in / 5);
  const SafetensorsCheckpoint stored = SafetensorsCheckpoint::open(dir / "q");
  const TensorInfo& q_proj = stored.info("model.layers.1.self_attn.q_proj.weight");
  EXPECT_EQ(q_proj.dtype, DType::kQ4_0);
  EXPECT_EQ(q_proj.shape, (Shape{64, 64}));
  EXPECT_EQ(q_proj.nbytes, size_t(64 * 2 * 18));
  EXPECT_EQ(stored.info("model.layers.0.mlp.experts.7.down_proj.weight").dtype, DType::kQ4_0);
  EXPECT_EQ(stored.info("model.embed_tokens.weight").dtype, DType::kI8);
  EXPECT_EQ(stored.info("lm_head.weight").dtype, DType::kI8);
  EXPECT_EQ(stored.info("model.layers.0.mlp.gate.weight").dtype, DType::kF32);
  EXPECT_EQ(stored.metadata().at("emo_weight_format"), "q4_0");
  const ModelConfig config = ModelConfig::load(dir / "q/config.json");
  EXPECT_EQ(config.extra.at("quantization_config").at("quant_method"), "emo_q4_0");
  EXPECT_EQ(config.extra.at("quantization_config").at("block_size"), 32);

  auto model = load_model_dequantized(dir / "q");
  const auto tokens = some_tokens(20);
  const Tensor want = reference_logits(*model, tokens, eval_routing());
  const Tensor prompt = infer_logits(dir / "q", tokens);  // 20 tokens at once: the prompt's products
  expect_close(prompt, want, 6e-2);
  // Token by token (the decode matrix-vector products) follows the prompt pass: the same integer kernel per
  // row; the fp32 paths around it (attention over the cache) round differently, which can move an
  // activation's int8 rounding by a step.
  auto weights = InferWeights::open(dir / "q");
  Decoder step(*weights, 20);
  const int64_t V = weights->config().vocab_size;
  step.forward({tokens.begin(), tokens.begin() + 3});
  for (int64_t t = 3; t < 20; ++t) {
    const Tensor logits = step.forward({tokens[t]});
    Tensor row({V}, std::vector<float>(prompt.data() + t * V, prompt.data() + (t + 1) * V));
    expect_close(logits, row, 3e-4);
  }
  // The dequantised weights are the blocks' own values: far closer to them than to the fp32 originals.
  auto original = Model::load(dir / "m");
  const std::string name = "model.layers.0.mlp.experts.2.up_proj.weight";
  const Tensor& w = original->weight(name);
  std::vector<float> blocks(static_cast<size_t>(w.size()));
  convert_to_f32(DType::kQ4_0, stored.info(name).data, blocks.data(), blocks.size());
  EXPECT_EQ(model->weight(name).vec(), blocks);
}

TEST(InferLogits, Q4KeepsEmbeddingsInBf16WhenAskedAndRefusesPartialBlocksNamingTheTensor) {
  TempDir dir;
  random_model(q4_config(false), 8)->save(dir / "m");
  QuantizeTarget target(DType::kQ4_0);
  target.others = DType::kBF16;
  target.scale = Q4Scale::kExtreme;
  quantize_checkpoint(dir / "m", dir / "q", target);
  const SafetensorsCheckpoint stored = SafetensorsCheckpoint::open(dir / "q");
  EXPECT_EQ(stored.info("model.embed_tokens.weight").dtype, DType::kBF16);
  EXPECT_EQ(stored.info("model.layers.0.mlp.down_proj.weight").dtype, DType::kQ4_0);
  EXPECT_EQ(stored.info("model.norm.weight").dtype, DType::kF32);
  auto model = load_model_dequantized(dir / "q");
  const auto tokens = some_tokens(9);
  expect_close(infer_logits(dir / "q", tokens), reference_logits(*model, tokens, eval_routing()), 6e-2);

  random_model(tiny_config(), 9)->save(dir / "odd");  // expert width 24: not whole blocks
  const std::string msg = error_of([&] { quantize_checkpoint(dir / "odd", dir / "odd_q4", DType::kQ4_0); });
  EXPECT_NE(msg.find("down_proj.weight' [32, 24]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a multiple of 32"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(dir / "odd_q4"));
  const std::string again = error_of([&] { quantize_checkpoint(dir / "q", dir / "q2", DType::kQ4_0); });
  EXPECT_NE(again.find("is Q4_0"), std::string::npos) << again;
}

// Every command that takes a model runs on a q4 checkpoint: quantize (with its perplexity check), info,
// generate (full, and on a subset), select, eval, prune, and generate on the pruned q4 model.
TEST(InferCommands, EveryCommandRunsOnAQ4Checkpoint) {
  using test::run_emo;
  TempDir dir;
  ModelConfig c = q4_config();
  c.vocab_size = 300;  // the trained tokenizer's
  c.eos_token_id = 298;
  c.max_position_embeddings = 64;
  random_model(c, 11)->save(dir / "m");
  fs::copy_file(test::kTrainedTokenizer, dir / "m/tokenizer.json");
  std::ofstream(dir / "text.txt") << "The quick brown fox jumps over the lazy dog. It was the best of times, "
                                     "it was the worst of times, the age of wisdom and of foolishness.\n";
  const std::string q = dir / "q";
  const std::vector<std::string> commands = {
      "quantize " + dir / "m" + " --dtype q4 --text " + dir / "text.txt" + " -o " + q,
      "info " + q,
      "generate " + q + " --prompt 'The quick brown' -n 6 --ignore-eos",
      "select " + q + " --examples " + dir / "text.txt" + " --keep-k 4 -o " + dir / "subset.json",
      "generate " + q + " --subset " + dir / "subset.json" + " --prompt 'It was' -n 4 --ignore-eos",
      "eval " + q + " --data " + dir / "text.bin",
      "prune " + q + " --subset " + dir / "subset.json" + " -o " + dir / "pruned",
      "generate " + dir / "pruned" + " --prompt 'It was' -n 4 --ignore-eos",
  };
  write_text_dataset(dir / "text.txt", Tokenizer::load(dir / "m/tokenizer.json"), dir / "text.bin");
  for (const std::string& command : commands) {
    const test::EmoRun run = run_emo(command);
    EXPECT_EQ(run.status, 0) << command << "\n" << run.err;
  }
  EXPECT_EQ(
      SafetensorsCheckpoint::open(dir / "pruned").info("model.layers.0.mlp.experts.2.up_proj.weight").dtype,
      DType::kQ4_0);
}

// `emo quantize` (the real command line) never deletes or overwrites what emo did not write.
TEST(OutputGuard, QuantizeRefusesForeignOutputsAndItsInputAndReplacesOnlyItsOwnWithForce) {
  using test::run_emo, test::tree_bytes;
  TempDir dir;
  random_model(tiny_config(), 5)->save(dir / "m");
  fs::create_directories(dir / "foreign");
  std::ofstream(dir / "foreign/notes.txt") << "the user's";
  std::ofstream(dir / "file.txt") << "a file";
  const std::string model_bytes = tree_bytes(dir / "m");
  const std::string quantize = "quantize " + dir / "m" + " --dtype int8 --skip-eval -o ";
  const std::vector<std::pair<std::string, std::string>> refusals = {
      {dir / "foreign --force", "not written by emo"},
      {dir / "file.txt", "is not a directory"},
      {dir / "m --force", "is the input"},
      {dir.path.string(), "contains the input"},
      {dir / "m/int8", "lies inside the input"},
  };
  for (const auto& [out, why] : refusals) {
    const test::EmoRun run = run_emo(quantize + out);
    EXPECT_EQ(run.status, 1) << out;
    EXPECT_NE(run.err.find(why), std::string::npos) << out << ": " << run.err;
  }
  EXPECT_EQ(tree_bytes(dir / "m"), model_bytes);
  EXPECT_EQ(tree_bytes(dir / "foreign"), "notes.txt\nthe user's\n");
  EXPECT_EQ(tree_bytes(dir / "file.txt"), "a file");
  ASSERT_EQ(run_emo(quantize + dir / "q").status, 0);
  EXPECT_NE(run_emo(quantize + dir / "q").err.find("give --force"), std::string::npos);
  EXPECT_EQ(run_emo(quantize + dir / "q --force").status, 0);
  EXPECT_TRUE(fs::exists(dir / "q/config.json"));
}

// eval, select and analyze load every checkpoint through load_model_dequantized: fp32 and bf16 give the
// weights Model::load gives, int8 (which Model::load refuses) its dequantised weights.
TEST(InferLogits, EveryDtypeLoadsThroughTheOneEvaluationPath) {
  TempDir dir;
  random_model(tiny_config(), 7)->save(dir / "m");
  quantize_checkpoint(dir / "m", dir / "b", DType::kBF16);
  quantize_checkpoint(dir / "m", dir / "q", DType::kI8);
  for (const char* name : {"m", "b"}) {
    auto direct = Model::load(dir / name);
    auto dequantized = load_model_dequantized(dir / name);
    for (const std::string& tensor : direct->param_names())
      EXPECT_EQ(direct->weight(tensor).vec(), dequantized->weight(tensor).vec()) << name << " " << tensor;
  }
  EXPECT_THROW(Model::load(dir / "q"), Error);
  auto int8 = load_model_dequantized(dir / "q");
  const auto tokens = some_tokens(12);
  expect_close(infer_logits(dir / "q", tokens), reference_logits(*int8, tokens, eval_routing()), 2e-5);
}

// A prefix kept by truncate() and a new tail give the logits of a fresh run over the whole sequence; a layer
// restricted and then released routes over all its experts again.
TEST(InferDecoder, TruncateReusesThePrefixAndKeepAllLiftsARestriction) {
  TempDir dir;
  random_model(tiny_config(), 14)->save(dir / "m");
  auto weights = InferWeights::open(dir / "m");
  const auto tokens = some_tokens(12);
  Decoder fresh(*weights, 16);
  const Tensor expected = fresh.forward(tokens);
  Decoder reused(*weights, 16);
  std::vector<int32_t> other(tokens.begin(), tokens.begin() + 8);
  other.push_back(5);
  other.push_back(6);
  reused.forward(other);
  reused.truncate(8);
  EXPECT_EQ(reused.length(), 8);
  EXPECT_THROW(reused.truncate(9), Error);
  expect_close(reused.forward(std::vector<int32_t>(tokens.begin() + 8, tokens.end())), expected, 1e-5);
  for (int64_t l = 0; l < 2; ++l) weights->keep_experts(l, {0, 1});
  EXPECT_TRUE(weights->restricted(0));
  for (int64_t l = 0; l < 2; ++l) weights->keep_all_experts(l);
  EXPECT_FALSE(weights->restricted(0));
  Decoder again(*weights, 16);
  expect_close(again.forward(tokens), expected, 0.0);
}

TEST(InferLogits, Bf16QuantizeWritesWhatTheTrainingEngineLoads) {
  TempDir dir;
  random_model(tiny_config(), 6)->save(dir / "m");
  quantize_checkpoint(dir / "m", dir / "b", DType::kBF16);
  auto model = Model::load(dir / "b");
  EXPECT_EQ(SafetensorsCheckpoint::open(dir / "b").info("lm_head.weight").dtype, DType::kBF16);
  const auto tokens = some_tokens(12);
  expect_bf16_logits_follow(dir / "b", tokens, reference_logits(*model, tokens, eval_routing()));
}

TEST(InferDecode, IncrementalDecodeWithTheCacheEqualsTheFullForward) {
  TempDir dir;
  random_model(tiny_config(), 7)->save(dir / "m");
  auto weights = InferWeights::open(dir / "m");
  const auto tokens = some_tokens(16);
  Decoder full(*weights, 16);
  const Tensor all = full.forward(tokens, true);  // [16, V]
  Decoder step(*weights, 16);
  const int64_t V = weights->config().vocab_size;
  auto check_row = [&](const Tensor& logits, int64_t position) {
    Tensor want({V}, std::vector<float>(all.data() + position * V, all.data() + (position + 1) * V));
    expect_close(logits, want, 2e-5);
  };
  check_row(step.forward({tokens.begin(), tokens.begin() + 9}), 8);  // a prompt of 9
  check_row(step.forward({tokens[9], tokens[10]}), 10);              // a chunk of 2
  for (int64_t t = 11; t < 16; ++t) check_row(step.forward({tokens[t]}), t);
  EXPECT_EQ(step.length(), 16);
}

// Three sequences in one decoder, stepped together: a prompt joining while others decode, each on its own
// experts (all, and two different subsets), one leaving early; every step's logits equal the sequence
// decoded alone.
TEST(InferDecode, BatchedStepsOfSequencesOnTheirOwnExpertsEqualEachDecodedAlone) {
  TempDir dir;
  random_model(tiny_config(), 9)->save(dir / "m");
  auto weights = InferWeights::open(dir / "m");
  const int64_t V = weights->config().vocab_size;
  const std::vector<std::vector<int32_t>> subset_a = {{0, 2, 4}, {1, 3, 5}}, subset_b = {{1, 6}, {0, 6}};
  const std::vector<const std::vector<std::vector<int32_t>>*> kept = {nullptr, &subset_a, &subset_b};
  const std::vector<std::vector<int32_t>> tokens = {some_tokens(14, 1), some_tokens(14, 2),
                                                    some_tokens(14, 3)};
  // What each sequence gives alone: a prompt of `prompt[i]` tokens, then one token per step.
  const std::vector<int64_t> prompt = {6, 3, 5};
  std::vector<std::vector<Tensor>> alone(3);
  for (size_t i = 0; i < 3; ++i) {
    auto own = InferWeights::open(dir / "m");
    if (kept[i])
      for (int64_t l = 0; l < 2; ++l) own->keep_experts(l, (*kept[i])[l]);
    Decoder d(*own, 16);
    alone[i].push_back(d.forward({tokens[i].begin(), tokens[i].begin() + prompt[i]}));
    for (int64_t t = prompt[i]; t < 14; ++t) alone[i].push_back(d.forward({tokens[i][t]}));
  }
  Decoder batch(*weights, 16, 4);
  std::vector<int64_t> done(3, 0);  // positions run per sequence
  // Step 0: sequences 0 and 1 prefill; sequence 2 joins at step 2; sequence 1 leaves after step 5.
  for (int step = 0; step < 10; ++step) {
    std::vector<BatchEntry> entries;
    std::vector<size_t> who;
    for (size_t i = 0; i < 3; ++i) {
      if ((i == 2 && step < 2) || (i == 1 && step > 5) || done[i] >= 14) continue;
      const int64_t n = done[i] == 0 ? prompt[i] : 1;
      entries.push_back({static_cast<int64_t>(i) + 1,  // slots 1..3: slot 0 stays unused
                         {tokens[i].begin() + done[i], tokens[i].begin() + done[i] + n},
                         kept[i]});
      who.push_back(i);
    }
    const Tensor& logits = batch.forward_batch(entries);  // [entries, V]
    ASSERT_EQ(logits.dim(0), static_cast<int64_t>(entries.size()));
    for (size_t j = 0; j < who.size(); ++j) {
      const size_t i = who[j];
      const Tensor& want = alone[i][done[i] == 0 ? 0 : done[i] - prompt[i] + 1];
      Tensor got({V}, std::vector<float>(logits.data() + j * V, logits.data() + (j + 1) * V));
      SCOPED_TRACE(testing::Message() << "step " << step << " sequence " << i);
      expect_close(got, want, 2e-5);
      done[i] += static_cast<int64_t>(entries[j].tokens.size());
      EXPECT_EQ(batch.length(static_cast<int64_t>(i) + 1), done[i]);
    }
  }
  EXPECT_EQ(batch.length(0), 0);
  // A slot named twice, or one whose tokens do not fit, changes nothing.
  const int64_t before = batch.length(1);
  EXPECT_THROW(batch.forward_batch({{1, {5}, nullptr}, {1, {6}, nullptr}}), Error);
  EXPECT_THROW(batch.forward_batch({{1, {5}, nullptr}, {3, std::vector<int32_t>(16, 5), nullptr}}), Error);
  EXPECT_THROW(batch.forward_batch({{4, {5}, nullptr}}), Error);
  EXPECT_EQ(batch.length(1), before);
}

// ------------------------------------------------------------------------------------------ kernels

// A [rows, cols] matrix in `dtype` with its fp32 values as the kernels see them.
struct TestMatrix {
  MatrixView view;
  std::vector<float> f32, scales, values;  // values: the exact weights the view represents
  std::vector<uint16_t> bf16;
  std::vector<int8_t> i8;
};

TestMatrix test_matrix(DType dtype, int64_t rows, int64_t cols, uint64_t seed) {
  TestMatrix m;
  std::mt19937 gen(static_cast<unsigned>(seed));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  m.f32.resize(rows * cols);
  for (float& w : m.f32) w = normal(gen);
  m.view = {dtype, nullptr, nullptr, rows, cols};
  m.values = m.f32;
  if (dtype == DType::kF32) m.view.data = m.f32.data();
  if (dtype == DType::kBF16) {
    m.bf16.resize(m.f32.size());
    convert_from_f32(DType::kBF16, m.f32.data(), m.bf16.data(), m.f32.size());
    convert_to_f32(DType::kBF16, m.bf16.data(), m.values.data(), m.f32.size());
    m.view.data = m.bf16.data();
  }
  if (dtype == DType::kI8) {
    m.i8.resize(m.f32.size());
    m.scales.resize(rows);
    quantize_rows_int8(m.i8.data(), m.scales.data(), m.f32.data(), rows, cols);
    for (int64_t i = 0; i < rows * cols; ++i) m.values[i] = m.scales[i / cols] * m.i8[i];
    m.view.data = m.i8.data();
    m.view.scales = m.scales.data();
  }
  return m;
}

TEST(QuantKernels, Int8RowQuantisationErrorIsAtMostHalfAStep) {
  TestMatrix m = test_matrix(DType::kI8, 9, 77, 1);
  for (int64_t i = 0; i < 9 * 77; ++i)
    EXPECT_LE(std::fabs(m.values[i] - m.f32[i]), 0.5f * m.scales[i / 77] * 1.0001f);
  for (int64_t r = 0; r < 9; ++r) {
    int max_q = 0;
    for (int64_t c = 0; c < 77; ++c) max_q = std::max(max_q, std::abs(int(m.i8[r * 77 + c])));
    EXPECT_EQ(max_q, 127);
  }
}

TEST(QuantKernels, ProductsEqualADoubleReferenceForEveryFormatAndTokenCount) {
  // Odd sizes exercise the row blocks and the column tails.
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kI8}) {
    TestMatrix m = test_matrix(dtype, 37, 301, 2);
    for (int64_t N : {1, 2, 3, 4, 5, 8, 9, 20}) {
      std::vector<float> x(N * 301), y(N * 37, 0.0f), ys(N * 37, 0.0f);
      std::mt19937 gen(static_cast<unsigned>(N));
      std::normal_distribution<float> normal(0.0f, 1.0f);
      for (float& v : x) v = normal(gen);
      matmul(y.data(), x.data(), N, m.view);
      matmul_serial(ys.data(), x.data(), N, m.view);
      for (int64_t n = 0; n < N; ++n) {
        double max_x = 0;
        for (int64_t c = 0; c < 301; ++c) max_x = std::max(max_x, std::fabs(double(x[n * 301 + c])));
        for (int64_t r = 0; r < 37; ++r) {
          double want = 0, magnitude = 0, weight_sum = 0;
          for (int64_t c = 0; c < 301; ++c) {
            want += double(m.values[r * 301 + c]) * x[n * 301 + c];
            magnitude += std::fabs(double(m.values[r * 301 + c]) * x[n * 301 + c]);
            weight_sum += std::fabs(double(m.values[r * 301 + c]));
          }
          // int8 streaming (N <= 8) rounds x to int16 steps of max|x| / 32767: half a step per weight;
          // bf16 prompts (N > 8) on AVX-512 round x to bf16: 2^-9 of each product.
          const bool x_rounded = dtype == DType::kI8 && N <= 8;
          const bool bf16_x = dtype == DType::kBF16 && N > 8 && quant_kernel() == QuantKernel::kAvx512 &&
                              quant_kernel_available(QuantKernel::kAvx512, dtype);
          const double tolerance = 1e-6 * magnitude + 1e-6 +
                                   (x_rounded ? 0.5 * max_x / 32767 * weight_sum : 0.0) +
                                   (bf16_x ? 0x1p-9 * magnitude : 0.0);
          EXPECT_NEAR(y[n * 37 + r], want, tolerance) << dtype_name(dtype) << " N=" << N;
          EXPECT_NEAR(ys[n * 37 + r], want, tolerance) << dtype_name(dtype) << " N=" << N;
        }
      }
      if (N == 1) {
        std::vector<float> yv(37);
        matvec(yv.data(), m.view, x.data());
        for (int64_t r = 0; r < 37; ++r) EXPECT_EQ(yv[r], y[r]);
      }
    }
  }
}

TEST(QuantKernels, Int8SumsStayExactPastTheInt32FlushOfLongRows) {
  // 9000 columns of the largest products: int32 lanes would overflow without the flush every 4096 columns.
  const int64_t C = 9000;
  std::vector<int8_t> q(C, 127);
  std::vector<float> x(C, 1.0f), scale = {1.0f};
  MatrixView w{DType::kI8, q.data(), scale.data(), 1, C};
  float y = 0;
  matvec(&y, w, x.data());
  EXPECT_FLOAT_EQ(y, 127.0f * C);
}

TEST(QuantKernels, UnsupportedViewsAreRefused) {
  MatrixView v{DType::kI32, nullptr, nullptr, 2, 2};
  EXPECT_NE(error_of([&] { check_matrix_view(v, "w"); }).find("I32"), std::string::npos);
  int8_t q[4] = {};
  MatrixView noscale{DType::kI8, q, nullptr, 2, 2};
  EXPECT_NE(error_of([&] { check_matrix_view(noscale, "w"); }).find("scales"), std::string::npos);
}

// Every kernel this CPU runs, on odd sizes (rows and columns not multiples of any vector width, 1 to 64
// tokens), against a double-precision scalar reference and against the forced AVX2 kernel. int8: the AVX-512
// VNNI kernel does the AVX2 kernel's integer arithmetic, so wherever both stream (up to 8 tokens) the results
// are bit-identical, and beyond 8 tokens every format takes the same sgemm. fp32: the same products summed
// in another order. bf16: up to 8 tokens x in two bf16 parts (hi + lo), within 2^-17 of x; beyond (a prompt)
// x rounded to bf16, within 2^-9. q4: tests/kernels_test.cpp (Q4.EveryKernel...).
TEST(QuantKernels, EveryKernelAgreesWithAvx2AndAScalarReferenceOnOddSizes) {
  const QuantKernel chosen = quant_kernel();
  struct Size {
    int64_t rows, cols;
  };
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kI8})
    for (Size size : {Size{37, 301}, Size{5, 33}, Size{70, 1000}, Size{1, 17}, Size{9, 64}}) {
      const int64_t R = size.rows, C = size.cols;
      TestMatrix m = test_matrix(dtype, R, C, static_cast<uint64_t>(R * C));
      for (int64_t N : {1, 2, 3, 4, 5, 7, 8, 9, 13, 64}) {
        std::vector<float> x(N * C);
        std::mt19937 gen(static_cast<unsigned>(N + C));
        std::normal_distribution<float> normal(0.0f, 1.0f);
        for (float& v : x) v = normal(gen);
        set_quant_kernel(QuantKernel::kAvx2);
        std::vector<float> avx2(N * R);
        matmul(avx2.data(), x.data(), N, m.view);
        for (QuantKernel kernel : {QuantKernel::kAvx2, QuantKernel::kAvx512}) {
          const std::string what =
              cat(quant_kernel_name(kernel), " ", dtype_name(dtype), " ", R, "x", C, " N=", N);
          if (!quant_kernel_available(kernel, dtype)) {
            if (N == 1 && R == 37) std::printf("%s: not on this CPU, skipped\n", what.c_str());
            continue;
          }
          set_quant_kernel(kernel);
          std::vector<float> y(N * R, 0.0f), ys(N * R, 0.0f);
          matmul(y.data(), x.data(), N, m.view);
          matmul_serial(ys.data(), x.data(), N, m.view);
          // Streaming int8 (up to 8 tokens) rounds x to int16 steps of max|x| / 32767.
          const bool int16_x = dtype == DType::kI8 && N <= 8;
          const bool split_x = dtype == DType::kBF16 && kernel == QuantKernel::kAvx512 && N <= 8;
          // bf16 prompts on AVX-512 round x to bf16: 2^-9 of each |x|, products and sums exact otherwise.
          const bool rounded_x = dtype == DType::kBF16 && kernel == QuantKernel::kAvx512 && N > 8;
          // Streamed products do not depend on how rows are split over threads; sgemm's may, by rounding.
          const bool streamed = N <= 8 || rounded_x;
          for (int64_t n = 0; n < N; ++n) {
            const float* xn = x.data() + n * C;
            double max_x = 0;
            for (int64_t c = 0; c < C; ++c) max_x = std::max(max_x, std::fabs(double(xn[c])));
            for (int64_t r = 0; r < R; ++r) {
              double want = 0, magnitude = 0, weight_sum = 0;
              for (int64_t c = 0; c < C; ++c) {
                want += double(m.values[r * C + c]) * xn[c];
                magnitude += std::fabs(double(m.values[r * C + c]) * xn[c]);
                weight_sum += std::fabs(double(m.values[r * C + c]));
              }
              const double rounding = int16_x     ? 0.5 * max_x / 32767 * weight_sum
                                      : split_x   ? 0x1p-17 * magnitude
                                      : rounded_x ? 0x1p-9 * magnitude
                                                  : 0;
              const double tolerance = 1e-6 * magnitude + 1e-6 + rounding;
              const int64_t i = n * R + r;
              EXPECT_NEAR(y[i], want, tolerance) << what;
              if (streamed)
                EXPECT_EQ(y[i], ys[i]) << what;
              else
                EXPECT_NEAR(y[i], ys[i], tolerance) << what;
              // int8: the same integer arithmetic; beyond 8 tokens every format takes the same sgemm.
              const bool identical =
                  kernel == QuantKernel::kAvx2 || dtype == DType::kI8 || (N > 8 && !rounded_x);
              if (identical)
                EXPECT_EQ(y[i], avx2[i]) << what;
              else
                EXPECT_NEAR(y[i], avx2[i], 2 * tolerance) << what;
            }
          }
        }
      }
    }
  set_quant_kernel(chosen);
}

TEST(QuantKernels, TheChosenKernelIsTheBestTheCpuHasAndAvx512IsRefusedWithoutIt) {
  EXPECT_TRUE(quant_kernel_available(QuantKernel::kAvx2, DType::kBF16));
  EXPECT_FALSE(quant_kernel_available(QuantKernel::kAvx512, DType::kF16));
  EXPECT_FALSE(quant_kernel_available(QuantKernel::kAvx2, DType::kI32));
  const bool has_avx512 = quant_kernel_available(QuantKernel::kAvx512, DType::kF32);
  if (std::getenv("EMO_QUANT_KERNEL") == nullptr) {
    EXPECT_EQ(quant_kernel(), has_avx512 ? QuantKernel::kAvx512 : QuantKernel::kAvx2);
  }
  if (has_avx512) GTEST_SKIP() << "this CPU has AVX-512F";
  EXPECT_NE(error_of([] { set_quant_kernel(QuantKernel::kAvx512); }).find("AVX-512F"), std::string::npos);
  EXPECT_EQ(quant_kernel(), QuantKernel::kAvx2);
}

// The decoder's logits on each kernel against the forced AVX2 kernel, for a prompt (20 tokens at once) and
// then decode steps of one token. int8 and q4 prompts bit-identical (int8: sgemm on both; q4: the same
// integer sums); fp32 within summation order; int8 and q4 decode within an int8/int16 step of x (their
// matrices give bit-identical products, but the routers stay fp32, and a rounding-level change of x can move
// its rounding to integers by a step); bf16 within 5e-3 of the largest logit: its prompt rounds x to bf16
// (2^-9 of each product, which this tiny model's large random weights amplify: measured 3e-3), and decode
// reads that prompt's KV cache.
TEST(InferLogits, EveryKernelGivesTheAvx2KernelsLogits) {
  if (!quant_kernel_available(QuantKernel::kAvx512, DType::kF32)) GTEST_SKIP() << "no AVX-512 on this CPU";
  const QuantKernel chosen = quant_kernel();
  TempDir dir;
  random_model(tiny_config(), 21)->save(dir / "f32");
  quantize_checkpoint(dir / "f32", dir / "bf16", DType::kBF16);
  quantize_checkpoint(dir / "f32", dir / "int8", DType::kI8);
  random_model(q4_config(), 21)->save(dir / "f32-q4");
  quantize_checkpoint(dir / "f32-q4", dir / "q4", DType::kQ4_0);
  const auto tokens = some_tokens(26);
  const std::vector<int32_t> prompt(tokens.begin(), tokens.begin() + 20);
  for (const std::string name : {"f32", "bf16", "int8", "q4"}) {
    auto weights = InferWeights::open(dir / name);
    auto run = [&](QuantKernel kernel) {
      set_quant_kernel(kernel);
      Decoder decoder(*weights, 26);
      std::vector<Tensor> logits = {decoder.forward(prompt, true)};
      for (size_t t = 20; t < tokens.size(); ++t) logits.push_back(decoder.forward({tokens[t]}));
      return logits;
    };
    const std::vector<Tensor> avx2 = run(QuantKernel::kAvx2), avx512 = run(QuantKernel::kAvx512);
    const bool integer = name == "int8" || name == "q4";
    if (!integer) {
      EXPECT_NE(avx512.back().vec(), avx2.back().vec()) << name << ": the two kernels ran the same code";
    }
    for (size_t step = 0; step < avx2.size(); ++step) {
      SCOPED_TRACE(cat(name, step == 0 ? " prompt" : " decode step"));
      if (!quant_kernel_available(QuantKernel::kAvx512, weights->lm_head().dtype)) continue;
      if (integer && step == 0)
        EXPECT_EQ(avx512[step].vec(), avx2[step].vec());
      else
        expect_close(avx512[step], avx2[step], name == "f32" ? 2e-6 : name == "bf16" ? 5e-3 : 2e-5);
    }
  }
  set_quant_kernel(chosen);
}

// ------------------------------------------------------------------------------------------ sampler

std::vector<float> four_logits() {
  return {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
}

TEST(InferSampler, TheSameSeedDrawsTheSameTokens) {
  std::vector<float> logits = four_logits();
  auto draws = [&](uint64_t seed) {
    Sampler s({1.0, 0, 1.0, seed});
    std::vector<int32_t> out;
    for (int i = 0; i < 200; ++i) out.push_back(s.next(logits.data(), 4));
    return out;
  };
  EXPECT_EQ(draws(7), draws(7));
  EXPECT_NE(draws(7), draws(8));
}

TEST(InferSampler, GreedyTakesTheArgmaxWithTiesToTheLowerId) {
  std::vector<float> logits = {0.1f, 2.0f, 2.0f, -1.0f};
  Sampler s({0.0, 0, 1.0, 0});
  EXPECT_EQ(s.next(logits.data(), 4), 1);
}

TEST(InferSampler, TopKAndTopPCutTheDistributionAndRenormalise) {
  std::vector<float> logits = four_logits();
  auto dist = Sampler({1.0, 0, 0.8, 0}).distribution(logits.data(), 4);  // 0.5 + 0.3 reaches 0.8
  ASSERT_EQ(dist.size(), 2u);
  EXPECT_EQ(dist[0].first, 0);
  EXPECT_NEAR(dist[0].second, 0.625, 1e-6);
  EXPECT_NEAR(dist[1].second, 0.375, 1e-6);
  dist = Sampler({1.0, 3, 1.0, 0}).distribution(logits.data(), 4);
  ASSERT_EQ(dist.size(), 3u);
  EXPECT_NEAR(dist[2].second, 0.15 / 0.95, 1e-6);
  dist = Sampler({1.0, 0, 0.01, 0}).distribution(logits.data(), 4);
  ASSERT_EQ(dist.size(), 1u);  // top-p below the first probability keeps one token
  // Temperature 2 flattens: p ~ sqrt(p).
  dist = Sampler({2.0, 0, 1.0, 0}).distribution(logits.data(), 4);
  double norm = std::sqrt(0.5) + std::sqrt(0.3) + std::sqrt(0.15) + std::sqrt(0.05);
  EXPECT_NEAR(dist[3].second, std::sqrt(0.05) / norm, 1e-6);
}

TEST(InferSampler, DrawsFollowTheCutDistribution) {
  std::vector<float> logits = four_logits();
  Sampler s({1.0, 3, 0.8, 11});
  std::map<int32_t, int> counts;
  const int draws = 20000;
  for (int i = 0; i < draws; ++i) ++counts[s.next(logits.data(), 4)];
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_NEAR(counts[0] / double(draws), 0.625, 0.02);
}

TEST(InferSampler, BadOptionsAreRefused) {
  EXPECT_THROW(Sampler({-1.0, 0, 1.0, 0}), Error);
  EXPECT_THROW(Sampler({1.0, -2, 1.0, 0}), Error);
  EXPECT_THROW(Sampler({1.0, 0, 0.0, 0}), Error);
  EXPECT_THROW(Sampler({1.0, 0, 1.5, 0}), Error);
}

// ------------------------------------------------------------------------------------------ generate

// The weights of a random tiny model saved in `dir`, for the generate tests.
std::unique_ptr<InferWeights> generate_weights(const TempDir& dir) {
  random_model(tiny_config(), 8)->save(dir / "m");
  return InferWeights::open(dir / "m");
}

TEST(InferGenerate, StopsAtEosAtTheLengthAndAtTheCapacity) {
  TempDir dir;
  auto weights = generate_weights(dir);
  const auto prompt = some_tokens(6);
  GenerateOptions options;
  options.max_new_tokens = 5;
  Decoder a(*weights, 20);
  std::vector<int32_t> streamed;
  GenerateResult r = generate(a, prompt, options, [&](int32_t t) {
    streamed.push_back(t);
    return true;
  });
  EXPECT_EQ(r.stop_reason, "length");
  EXPECT_EQ(r.tokens, streamed);
  EXPECT_EQ(r.tokens.size(), 5u);
  EXPECT_EQ(r.decode_steps, 4);

  options.eos_id = r.tokens[2];  // greedy decoding repeats itself: stop at the third token
  Decoder b(*weights, 20);
  GenerateResult e = generate(b, prompt, options);
  EXPECT_EQ(e.stop_reason, "eos");
  EXPECT_EQ(e.tokens.back(), r.tokens[2]);

  options.eos_id.reset();
  options.max_new_tokens = 50;
  Decoder c(*weights, 9);
  GenerateResult f = generate(c, prompt, options);
  EXPECT_EQ(f.stop_reason, "context");
  EXPECT_EQ(f.tokens.size(), 4u);  // 3 from the cache's 3 free positions plus the one after the last
}

TEST(InferGenerate, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogitsOfSeenTokens) {
  std::vector<float> logits = {2.0f, -1.0f, 0.5f, 3.0f};
  apply_repetition_penalty(logits.data(), 4, {0, 1, 1, 7}, 2.0);  // 1 seen twice counts once; 7 is no id
  EXPECT_EQ(logits, (std::vector<float>{1.0f, -2.0f, 0.5f, 3.0f}));

  // Greedy decoding with a penalty picks, at every step, the argmax of the penalised logits of the prompt
  // and the tokens so far (replayed here with a second decoder).
  TempDir dir;
  auto weights = generate_weights(dir);
  const auto prompt = some_tokens(6);
  GenerateOptions options;
  options.max_new_tokens = 12;
  options.sampling.repetition_penalty = 1.8;
  Decoder a(*weights, 20);
  const GenerateResult r = generate(a, prompt, options);
  ASSERT_EQ(r.tokens.size(), 12u);
  Decoder b(*weights, 20);
  std::vector<int32_t> seen = prompt;
  const Tensor* step_logits = &b.forward(prompt);
  const int64_t V = weights->config().vocab_size;
  for (int32_t token : r.tokens) {
    std::vector<float> scores(step_logits->data(), step_logits->data() + V);
    for (int32_t id : std::set<int32_t>(seen.begin(), seen.end()))
      scores[id] = scores[id] > 0 ? scores[id] / 1.8f : scores[id] * 1.8f;
    EXPECT_EQ(token, std::max_element(scores.begin(), scores.end()) - scores.begin());
    seen.push_back(token);
    step_logits = &b.forward({token});
  }
  Decoder c(*weights, 20);
  options.sampling.repetition_penalty = 1.0;
  EXPECT_NE(generate(c, prompt, options).tokens, r.tokens) << "the penalty changed nothing on this model";
}

// The weights are views into the mapped safetensors file: another program truncating it in place under a
// running generate made the next read a SIGBUS that killed emo without a word. Now the fault is an error
// naming the file and the byte, exit status 1 (io/mapped_guard).
TEST(InferGenerateDeathTest, AWeightsFileTruncatedUnderARunningGenerateIsAnErrorNamingItNotASigbus) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  TempDir dir;
  random_model(tiny_config(), 8)->save(dir / "m");
  const std::string file = dir / "m/model.safetensors";
  ASSERT_GT(fs::file_size(file), 64u * 1024u);
  EXPECT_EXIT(
      {
        auto weights = InferWeights::open(dir / "m");
        Decoder decoder(*weights, 20);
        GenerateOptions options;
        options.max_new_tokens = 2;
        generate(decoder, some_tokens(6), options);  // every page read once
        if (::truncate(file.c_str(), 4096) != 0) std::exit(3);
        Decoder again(*weights, 20);
        generate(again, some_tokens(6), options);
        std::exit(0);
      },
      ::testing::ExitedWithCode(1),
      "emo: error: \\[safetensors\\] .*/m/model.safetensors: byte [0-9]+: the file was truncated or "
      "rewritten in "
      "place while emo was reading it");
}

TEST(InferGenerate, AutoExpertsChooseLikeEmoSelectLayerwiseAndRouteWithinThem) {
  TempDir dir;
  auto model = random_model(tiny_config(), 9);
  model->save(dir / "m");
  const auto prompt = some_tokens(14);
  auto weights = InferWeights::open(dir / "m");
  Decoder decoder(*weights, 20);
  GenerateOptions options;
  options.max_new_tokens = 1;
  options.auto_experts = 3;
  GenerateResult r = generate(decoder, prompt, options);
  ASSERT_TRUE(r.chosen.has_value());

  Examples examples;
  examples.sequences = {prompt};
  SelectionOptions selection;
  selection.keep_k = 3;
  ExpertSubset want = select_experts(*model, examples, selection);
  EXPECT_EQ(r.chosen->routed, want.routed);

  // The prompt's logits equal subset routing of the training engine with that subset.
  RoutingOptions routing = want.routing_options();
  routing.training = false;
  Tensor ref = reference_logits(*model, prompt, routing);
  const int64_t V = 64, T = 14;
  Tensor last({V}, std::vector<float>(ref.data() + (T - 1) * V, ref.data() + T * V));
  expect_close(decoder.pass().logits, last, 2e-5);
  // Only the chosen experts (2 routed + the shared one per layer) were ever loaded.
  EXPECT_EQ(weights->experts_loaded(), 2 * 3);
}

// ------------------------------------------------------------------------------------------ refusals

// Writes the tiny model's tensors to dir/model.safetensors with `edit` applied, plus its config.json.
void write_edited(const std::string& dir, const std::function<void(std::vector<SafetensorsEntry>&)>& edit,
                  const Model& model) {
  fs::create_directories(dir);
  std::vector<SafetensorsEntry> entries;
  for (const std::string& name : model.param_names()) entries.emplace_back(name, model.weight(name));
  edit(entries);
  write_safetensors(dir + "/model.safetensors", entries);
  model.config().save(dir + "/config.json");
}

TEST(InferRefusals, MissingTensorWrongShapeUnsupportedDtypeAndStrangersAreNamed) {
  TempDir dir;
  auto model = random_model(tiny_config(), 10);
  const std::string victim = "model.layers.1.mlp.experts.3.up_proj.weight";
  auto find = [&](std::vector<SafetensorsEntry>& e) {
    return std::find_if(e.begin(), e.end(), [&](const SafetensorsEntry& x) { return x.name == victim; });
  };
  write_edited(
      dir / "missing", [&](auto& e) { e.erase(find(e)); }, *model);
  std::string msg = error_of([&] { InferWeights::open(dir / "missing"); });
  EXPECT_NE(msg.find("no tensor '" + victim + "'"), std::string::npos) << msg;

  Tensor wrong({24, 31});
  write_edited(
      dir / "shape", [&](auto& e) { *find(e) = SafetensorsEntry(victim, wrong); }, *model);
  msg = error_of([&] { InferWeights::open(dir / "shape"); });
  EXPECT_NE(msg.find(victim), std::string::npos) << msg;
  EXPECT_NE(msg.find("shape"), std::string::npos) << msg;

  std::vector<int32_t> ints(24 * 32);
  write_edited(
      dir / "dtype",
      [&](auto& e) {
        *find(e) = SafetensorsEntry::raw(victim, DType::kI32, {24, 32}, ints.data());
      },
      *model);
  msg = error_of([&] { InferWeights::open(dir / "dtype"); });
  EXPECT_NE(msg.find(victim), std::string::npos) << msg;
  EXPECT_NE(msg.find("I32"), std::string::npos) << msg;

  std::vector<int8_t> bytes(24 * 32);
  write_edited(
      dir / "noscale",
      [&](auto& e) {
        *find(e) = SafetensorsEntry::raw(victim, DType::kI8, {24, 32}, bytes.data());
      },
      *model);
  msg = error_of([&] { InferWeights::open(dir / "noscale"); });
  EXPECT_NE(msg.find(victim + "_scale"), std::string::npos) << msg;

  Tensor norm({32});
  write_edited(
      dir / "qknorm", [&](auto& e) { e.emplace_back("model.layers.0.self_attn.q_norm.weight", norm); },
      *model);
  msg = error_of([&] { InferWeights::open(dir / "qknorm"); });
  EXPECT_NE(msg.find("q_norm"), std::string::npos) << msg;
}

// config.json sizes the mmap'ed weights do not back are named at open, from the headers, before the views,
// the expert tables or the RoPE table are sized by them; so are the eval/select path
// (load_model_dequantized) and quantize. Each case finishes in milliseconds: nothing of its size is made.
TEST(InferRefusals, ConfigSizesThatDisagreeWithTheWeightsNameTheField) {
  TempDir dir;
  random_model(tiny_config(), 11)->save(dir / "m");
  const std::string config_path = dir / "m/config.json";
  const ModelConfig good = ModelConfig::load(config_path);
  auto errors_with = [&](const std::function<void(ModelConfig&)>& edit) {
    ModelConfig c = good;
    edit(c);
    c.save(config_path);
    std::vector<std::string> messages = {error_of([&] { InferWeights::open(dir / "m"); }),
                                         error_of([&] { load_model_dequantized(dir / "m"); }), error_of([&] {
                                           quantize_checkpoint(dir / "m", dir / "q", DType::kI8);
                                         })};
    good.save(config_path);
    return messages;
  };
  auto expect_in = [&](const std::vector<std::string>& messages, const std::string& part) {
    for (const std::string& m : messages) {
      EXPECT_NE(m.find("[model] " + config_path + ": "), std::string::npos) << m;
      EXPECT_NE(m.find(part), std::string::npos) << part << " in: " << m;
    }
  };
  expect_in(errors_with([](ModelConfig& c) { c.hidden_size = int64_t{1} << 20; }),
            "hidden_size 1048576 but tensor 'model.embed_tokens.weight' has shape [64, 32] in " +
                (dir / "m/model.safetensors"));
  expect_in(errors_with([](ModelConfig& c) { c.vocab_size = 1'000'000'000; }),
            "vocab_size 1000000000 but tensor 'model.embed_tokens.weight' has shape [64, 32]");
  expect_in(errors_with([](ModelConfig& c) { c.num_experts = 1'000'000; }),
            "num_experts 1000000 but tensor 'model.layers.0.mlp.gate.weight' has shape [8, 32]");
  expect_in(errors_with([](ModelConfig& c) { c.num_hidden_layers = 100'000'000; }),
            "num_hidden_layers 100000000 but the weights in " + (dir / "m") + " hold 2 layer(s)");
  EXPECT_FALSE(fs::exists(dir / "q"));
}

// The scan itself: every float dtype, any alignment, the first bad element past whole blocks and in the
// tail.
TEST(NonFinite, TheFirstNanOrInfinityIsFoundInEveryFloatDtypeAtAnyAlignment) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    const size_t size = dtype_size(dtype);
    for (int64_t n : {1, 255, 256, 1000}) {
      std::vector<float> values(static_cast<size_t>(n), 1.5f);
      std::vector<char> bytes(static_cast<size_t>(n) * size + 1);
      char* unaligned = bytes.data() + 1;
      // Converted into an aligned buffer and copied: the scan reads at any alignment, the converter stores
      // aligned (UBSan checks both).
      auto write = [&](const std::vector<float>& v) {
        std::vector<uint32_t> aligned(v.size());
        convert_from_f32(dtype, v.data(), aligned.data(), v.size());
        std::memcpy(unaligned, aligned.data(), v.size() * size);
      };
      write(values);
      EXPECT_EQ(first_nonfinite(dtype, unaligned, n), -1) << dtype_name(dtype) << " " << n;
      for (float bad : {NAN, INFINITY, -INFINITY})
        for (int64_t at : {int64_t{0}, n / 2, n - 1}) {
          std::vector<float> with = values;
          with[static_cast<size_t>(at)] = bad;
          if (at + 1 < n) with[static_cast<size_t>(n - 1)] = NAN;  // a later one is not the first
          write(with);
          EXPECT_EQ(first_nonfinite(dtype, unaligned, n), at) << dtype_name(dtype) << " " << n << " " << bad;
        }
    }
  }
  std::vector<int8_t> ints(300, -128);
  EXPECT_EQ(first_nonfinite(DType::kI8, ints.data(), 300), -1);
}

// A NaN or infinity in the weights is named (tensor, index, element, file) by every loader when it reads
// the tensor: inference when the tensor is loaded for use (an expert when kept, never an expert left out),
// the training engine, the eval / select path, prune, quantize (before writing anything) and `emo` itself;
// `emo --allow-nonfinite` lets them through.
TEST(InferRefusals, NonFiniteWeightsAreNamedByEveryLoaderUnlessAllowed) {
  TempDir dir;
  auto model = random_model(tiny_config(), 12);
  const std::string expert = "model.layers.1.mlp.experts.3.up_proj.weight";  // [24, 32]
  auto write_with = [&](const std::string& name, int64_t index, float value, const std::string& out) {
    float& w = model->weight(name).vec()[static_cast<size_t>(index)];
    const float good = w;
    w = value;
    write_edited(
        out, [](auto&) {}, *model);
    w = good;
  };
  write_with(expert, 5 * 32 + 7, NAN, dir / "expert");
  write_with("model.norm.weight", 31, -INFINITY, dir / "norm");
  const std::string expert_file = dir / "expert/model.safetensors",
                    norm_file = dir / "norm/model.safetensors";
  const std::string expert_says =
      "[model] " + expert_file + ": tensor '" + expert + "' [24, 32] holds nan at index 167 (element [5, 7])";
  const std::string norm_says =
      "[model] " + norm_file + ": tensor 'model.norm.weight' [32] holds -inf at index 31 (element [31])";

  auto weights = InferWeights::open(dir / "expert");  // experts are checked when loaded
  weights->keep_experts(1, {0, 1});                   // expert 3 left out: never read
  EXPECT_FALSE(weights->expert_loaded(1, 3));
  std::string msg = error_of([&] { weights->keep_experts(1, {2, 3}); });
  EXPECT_NE(msg.find(expert_says), std::string::npos) << msg;
  EXPECT_NE(msg.find("emo --allow-nonfinite"), std::string::npos) << msg;
  for (const std::string& m : {error_of([&] { InferWeights::open(dir / "norm"); }),
                               error_of([&] { load_model_dequantized(dir / "norm"); }),
                               error_of([&] { Model::load(dir / "norm"); })})
    EXPECT_NE(m.find(norm_says), std::string::npos) << m;
  for (const std::string& m :
       {error_of([&] { load_model_dequantized(dir / "expert"); }),
        error_of([&] { Model::load(dir / "expert"); }),
        error_of([&] { quantize_checkpoint(dir / "expert", dir / "q", DType::kI8); }), error_of([&] {
          ExpertSubset all = ExpertSubset::for_model(model->config(), 4, "test");
          for (auto& routed : all.routed) routed = {0, 1, 3};
          all.finish();
          prune_checkpoint(dir / "expert", all, dir / "p");
        })})
    EXPECT_NE(m.find(expert_says), std::string::npos) << m;
  EXPECT_FALSE(fs::exists(dir / "q"));
  EXPECT_FALSE(fs::exists(dir / "p"));

  test::EmoRun refused =
      test::run_emo("quantize " + (dir / "expert") + " --dtype bf16 -o " + (dir / "q") + " --skip-eval");
  EXPECT_EQ(refused.status, 1) << refused.err;
  EXPECT_NE(refused.err.find("emo: error: " + expert_says), std::string::npos) << refused.err;
  EXPECT_FALSE(fs::exists(dir / "q"));
  test::EmoRun allowed = test::run_emo("--allow-nonfinite quantize " + (dir / "expert") +
                                       " --dtype bf16 -o " + (dir / "q") + " --skip-eval");
  EXPECT_EQ(allowed.status, 0) << allowed.err;
  set_allow_nonfinite_weights(true);
  EXPECT_TRUE(std::isnan(load_model_dequantized(dir / "q")->weight(expert).vec()[5 * 32 + 7]));
  set_allow_nonfinite_weights(false);
}

// `emo quantize` checks config.json against the weights and in itself (the check every loader makes) before
// it writes anything: an inconsistent config never becomes a "successful" output.
TEST(InferRefusals, QuantizeRefusesAnInconsistentConfigAndWritesNothing) {
  TempDir dir;
  random_model(tiny_config(), 13)->save(dir / "m");
  const std::string config_path = dir / "m/config.json";
  const nlohmann::json good = read_json_file(config_path);
  struct Edit {
    const char* key;
    nlohmann::json value;
    std::string says;
  };
  for (const Edit& e : std::vector<Edit>{{"num_attention_heads", 3, "num_attention_heads"},
                                         {"num_experts_per_tok", 9, "num_experts_per_tok"},
                                         {"eos_token_id", 64, "eos_token_id 64 is outside the vocabulary"},
                                         {"intermediate_size", 48, "intermediate_size 48 but tensor"},
                                         {"num_key_value_heads", 3, "num_key_value_heads"}}) {
    nlohmann::json bad = good;
    bad[e.key] = e.value;
    write_json_file(config_path, bad);
    const std::string msg = error_of([&] { quantize_checkpoint(dir / "m", dir / "q", DType::kI8); });
    EXPECT_NE(msg.find(config_path), std::string::npos) << e.key << ": " << msg;
    EXPECT_NE(msg.find(e.says), std::string::npos) << e.key << ": " << msg;
    const test::EmoRun run =
        test::run_emo("quantize " + (dir / "m") + " --dtype bf16 -o " + (dir / "q") + " --skip-eval");
    EXPECT_EQ(run.status, 1) << e.key << ": " << run.err;
    EXPECT_NE(run.err.find(e.says), std::string::npos) << e.key << ": " << run.err;
    EXPECT_FALSE(fs::exists(dir / "q")) << e.key;
  }
  write_json_file(config_path, good);
  quantize_checkpoint(dir / "m", dir / "q", DType::kI8);
  EXPECT_TRUE(fs::exists(dir / "q/config.json"));
}

TEST(InferRefusals, APromptLongerThanTheContextIsAnErrorAndLeavesTheCacheAlone) {
  TempDir dir;
  random_model(tiny_config(), 11)->save(dir / "m");
  auto weights = InferWeights::open(dir / "m");
  EXPECT_THROW(Decoder(*weights, 33), Error);  // beyond max_position_embeddings 32
  Decoder decoder(*weights, 32);
  std::string msg = error_of([&] { generate(decoder, some_tokens(40), {}); });
  EXPECT_NE(msg.find("context"), std::string::npos) << msg;
  decoder.forward(some_tokens(30));
  EXPECT_THROW(decoder.forward(some_tokens(3)), Error);
  EXPECT_EQ(decoder.length(), 30);
  EXPECT_THROW(decoder.forward({64}), Error);  // outside the vocabulary
  EXPECT_EQ(decoder.length(), 30);
  decoder.forward({1, 2});
  EXPECT_EQ(decoder.length(), 32);
}

// ------------------------------------------------------------------------------------------ memory

// Drops the file's pages from the page cache (after fsync), so that mincore shows what is read afterwards.
bool evict(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return false;
  ::fsync(fd);
  bool ok = ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0;
  ::close(fd);
  return ok;
}

// Bytes of the whole pages strictly inside [p, p + bytes) (not shared with a neighbouring tensor) that are
// in the page cache (mincore) or mapped in this process (pagemap).
int64_t interior_resident(const void* p, int64_t bytes, bool mapped) {
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(bytes)) & ~(page - 1);
  if (e <= b) return 0;
  const void* begin = reinterpret_cast<const void*>(b);
  const int64_t n = static_cast<int64_t>(e - b);
  return mapped ? mapped_resident_bytes(begin, n) : cached_resident_bytes(begin, n);
}

TEST(InferMemory, ASubsetReadsOnlyTheKeptExperts) {
  TempDir dir;
  ModelConfig config = tiny_config();
  config.intermediate_size = 512;  // 64 KiB per expert matrix: many whole pages per expert
  random_model(config, 12)->save(dir / "m");
  auto weights = InferWeights::open(dir / "m");
  // Evicted after opening: reading the header at open may pull its neighbourhood into the page cache (and
  // keeps the few pages mapped around it there: those are the baseline).
  ASSERT_TRUE(evict(dir / "m/model.safetensors"));
  auto expert_bytes = [&](int64_t l, int64_t e, bool mapped) {
    int64_t bytes = 0;
    for (const MemoryRange& r : weights->expert_ranges(l, e))
      bytes += interior_resident(r.begin, r.bytes, mapped);
    return bytes;
  };
  int64_t cached_before[2][8], mapped_before[2][8], total_baseline = 0;
  for (int64_t l = 0; l < 2; ++l) {
    for (int64_t e = 0; e < 8; ++e) {
      total_baseline += cached_before[l][e] = expert_bytes(l, e, false);
      mapped_before[l][e] = expert_bytes(l, e, true);
    }
  }
  if (total_baseline > 4 * 3 * 64 * 1024)
    GTEST_SKIP() << "the page cache keeps this file (" << total_baseline << " bytes): mincore cannot tell";

  const std::vector<std::vector<int32_t>> subset = {{1, 4}, {0, 6}};
  for (int64_t l = 0; l < 2; ++l) weights->keep_experts(l, subset[l]);
  Decoder decoder(*weights, 16);
  GenerateOptions options;
  options.max_new_tokens = 8;
  generate(decoder, some_tokens(8), options);

  for (int64_t l = 0; l < 2; ++l) {
    for (int64_t e = 0; e < 8; ++e) {
      const bool kept = e == 7 || std::count(subset[l].begin(), subset[l].end(), e) > 0;
      EXPECT_EQ(weights->expert_loaded(l, e), kept) << "layer " << l << " expert " << e;
      if (kept) {
        EXPECT_EQ(expert_bytes(l, e, false), 3 * 64 * 1024 - 3 * 4096) << "layer " << l << " expert " << e;
      } else {
        EXPECT_EQ(expert_bytes(l, e, false), cached_before[l][e])
            << "layer " << l << " expert " << e << " was read";
        EXPECT_EQ(expert_bytes(l, e, true), mapped_before[l][e])
            << "layer " << l << " expert " << e << " mapped";
      }
    }
  }
  // The report sees the kept experts in this process.
  ResidentReport report = resident_report(weights->memory_ranges(true));
  for (const ComponentMemory& c : report.components) {
    if (c.component == "experts") {
      EXPECT_GT(c.resident, 0);
    }
  }
}

TEST(InferMemory, KeptWeightBytesCountTheSubset) {
  TempDir dir;
  random_model(tiny_config(), 13)->save(dir / "m");
  auto weights = InferWeights::open(dir / "m");
  const int64_t full = weights->kept_weight_bytes();
  weights->keep_experts(0, {2});
  weights->keep_experts(1, {2});
  const int64_t expert = 3 * 24 * 32 * 4;
  EXPECT_EQ(full - weights->kept_weight_bytes(), 2 * 6 * expert);  // 6 of 8 experts dropped per layer
  EXPECT_EQ(weights->bytes_per_token(3) - weights->bytes_per_token(2), 2 * expert);
}

}  // namespace
}  // namespace emo
