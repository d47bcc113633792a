// `emo info` (src/infer/model_info) and the model / tokenizer paths every command shares
// (src/infer/model_files): the released checkpoints' exact layout, read from headers alone, and emo's own
// checkpoints (training runs, pruned, int8).
#include "infer/model_files.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "infer/model_info.h"
#include "infer/quantize.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "model/model.h"
#include "select/prune.h"
#include "tokenizer/tokenizer.h"

namespace emo {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("emo_model_files_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

using TensorShapes = std::vector<std::pair<std::string, Shape>>;

// A safetensors file whose header describes `tensors` in fp32 and whose data section is a hole of the right
// size (a sparse file): the released model's 54 GB of shapes in a few hundred KB of disk. Any read of the
// data would return zeros without allocating blocks, so the file's allocation shows what was read... and
// nothing here may need the values.
void write_sparse_safetensors(const std::string& path, const TensorShapes& tensors) {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const auto& [name, shape] : tensors) {
    const uint64_t bytes = static_cast<uint64_t>(numel(shape)) * 4;
    header[name] = {{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  while (text.size() % 8 != 0) text += ' ';
  std::ofstream out(path, std::ios::binary);
  const uint64_t length = text.size();
  char le[8];
  for (int i = 0; i < 8; ++i) le[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  out.write(le, 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  out.close();
  fs::resize_file(path, 8 + length + offset);
}

// The released Emo_1b14b_1T's layout (docs/emo.md §1-2): the Hub's config.json, two shards and their index.
void write_released_layout(const std::string& dir) {
  const int64_t d = 2048, f = 1024, E = 128, V = 100352, L = 16;
  std::vector<TensorShapes> shards(2);
  shards[0].push_back({"model.embed_tokens.weight", {V, d}});
  for (int64_t l = 0; l < L; ++l) {
    TensorShapes& s = shards[l < L / 2 ? 0 : 1];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    s.push_back({p + "pre_attention_layernorm.weight", {d}});
    for (const char* m : {"q_proj", "k_proj", "v_proj", "o_proj"})
      s.push_back({p + "self_attn." + m + ".weight", {d, d}});
    s.push_back({p + "pre_feedforward_layernorm.weight", {d}});
    s.push_back({p + "mlp.gate.weight", {E, d}});
    for (int64_t e = 0; e < E; ++e) {
      const std::string x = p + "mlp.experts." + std::to_string(e) + ".";
      s.push_back({x + "gate_proj.weight", {f, d}});
      s.push_back({x + "up_proj.weight", {f, d}});
      s.push_back({x + "down_proj.weight", {d, f}});
    }
  }
  shards[1].push_back({"model.norm.weight", {d}});
  shards[1].push_back({"lm_head.weight", {V, d}});
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string name = "model-0000" + std::to_string(i + 1) + "-of-00002.safetensors";
    write_sparse_safetensors((fs::path(dir) / name).string(), shards[i]);
    for (const auto& [tensor, shape] : shards[i]) weight_map[tensor] = name;
  }
  write_json_file((fs::path(dir) / "model.safetensors.index.json").string(),
                  {{"metadata", {{"total_size", 54274564096}}}, {"weight_map", weight_map}});
  const nlohmann::json config = {{"architectures", {"EmoForCausalLM"}},
                                 {"model_type", "emo"},
                                 {"vocab_size", V},
                                 {"hidden_size", d},
                                 {"intermediate_size", f},
                                 {"num_hidden_layers", L},
                                 {"num_attention_heads", 16},
                                 {"num_key_value_heads", 16},
                                 {"hidden_act", "silu"},
                                 {"max_position_embeddings", 4096},
                                 {"rope_theta", 500000.0},
                                 {"rope_scaling", nullptr},
                                 {"attention_bias", false},
                                 {"attention_dropout", 0.0},
                                 {"rms_norm_eps", 1e-6},
                                 {"tie_word_embeddings", false},
                                 {"pad_token_id", 100277},
                                 {"bos_token_id", nullptr},
                                 {"eos_token_id", 100257},
                                 {"num_experts", E},
                                 {"num_experts_per_tok", 8},
                                 {"num_shared_experts", 1},
                                 {"norm_topk_prob", false},
                                 {"router_aux_loss_coef", 0.01},
                                 {"torch_dtype", "float32"},
                                 {"transformers_version", "4.47.0"}};
  write_json_file((fs::path(dir) / "config.json").string(), config);
}

int64_t allocated_bytes(const std::string& dir) {
  int64_t total = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    struct stat st {};
    if (::stat(entry.path().c_str(), &st) == 0) total += static_cast<int64_t>(st.st_blocks) * 512;
  }
  return total;
}

TEST(ModelInfo, TheReleasedLayoutFromItsHeadersAlone) {
  TempDir dir;
  write_released_layout(dir.path.string());
  const int64_t allocated_before = allocated_bytes(dir.path.string());
  const ModelInfo info = inspect_model(dir.path.string());
  // Nothing but headers was read: the 54 GB of holes are still holes.
  EXPECT_EQ(allocated_bytes(dir.path.string()), allocated_before);
  EXPECT_LT(allocated_before, int64_t{8} << 20);

  EXPECT_EQ(info.params, 13'568'641'024);  // docs/emo.md §2
  EXPECT_EQ(info.files, 2);
  EXPECT_EQ(info.tensors, 1 + 16 * (7 + 128 * 3) + 2);
  ASSERT_EQ(info.dtypes.size(), 1u);
  EXPECT_EQ(info.dtypes.at("F32").params, info.params);
  EXPECT_EQ(info.weight_bytes, 4 * info.params);
  ASSERT_EQ(info.experts_per_layer.size(), 16u);
  EXPECT_TRUE(info.uniform_experts());
  EXPECT_EQ(info.experts_per_layer[3], 128);
  EXPECT_EQ(info.expert_params_per_layer[3], 3 * 1024 * 2048);
  // Per token: attention, router and norms of 16 layers, 8 experts each, embedding and output matrices.
  const int64_t per_layer = 4 * 2048 * 2048 + 128 * 2048 + 2 * 2048 + 8 * 3 * 1024 * 2048;
  EXPECT_EQ(info.active_params, 16 * per_layer + 2048 + 2 * 100352 * 2048);
  EXPECT_EQ(info.embedding_params, 2 * 100352 * 2048);
  EXPECT_FALSE(info.tokenizer.has_value());
  EXPECT_FALSE(info.pruning.has_value());

  EXPECT_EQ(info.memory(16).weight_params, 2'290'681'856);  // docs/emo.md §2
  EXPECT_EQ(info.memory(32).weight_params, 3'901'818'880);
  EXPECT_EQ(info.memory(16).weight_bytes, 4 * 2'290'681'856);
  EXPECT_EQ(info.memory(0).weight_bytes, info.weight_bytes);
  EXPECT_EQ(info.memory(16).kv_bytes_per_token, 2 * 16 * 2048 * 4);
  EXPECT_EQ(info.memory_table().size(), 4u);  // 16, 32, 64 and all 128
  EXPECT_NE(error_of([&] { info.memory(1); }).find("keep-k 1 is not possible"), std::string::npos);

  const std::string text = info.text(24);
  EXPECT_NE(text.find("13,568,641,024 in all"), std::string::npos) << text;
  EXPECT_NE(text.find("128 per layer in all 16 layers (127 routed + 1 shared)"), std::string::npos) << text;
  EXPECT_NE(text.find("tokenizer: none found (looked for " + dir / "tokenizer.json"), std::string::npos)
      << text;
  EXPECT_NE(text.find("16 (12.5%)"), std::string::npos) << text;
  EXPECT_NE(text.find("24 (18.75%)"), std::string::npos) << text;
  const nlohmann::json j = info.to_json();
  EXPECT_EQ(j["params"]["total"], 13'568'641'024);
  EXPECT_TRUE(j["tokenizer"].is_null());
  EXPECT_EQ(j["memory"][0]["keep_k"], 16);
  EXPECT_EQ(j["memory"].back()["keep_k"], "all");
}

ModelConfig small_config() {
  ModelConfig c;
  c.vocab_size = 260;
  c.hidden_size = 16;
  c.intermediate_size = 8;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.max_position_embeddings = 64;
  c.eos_token_id = 256;
  c.num_experts = 8;
  c.num_experts_per_tok = 3;
  return c;
}

Tokenizer byte_tokenizer() {
  std::vector<std::string> bytes;
  for (int b = 0; b < 256; ++b) bytes.push_back(std::string(1, static_cast<char>(b)));
  return Tokenizer::from_parts(bytes, {}, kCl100kPattern,
                               {AddedToken{256, "<|endoftext|>"}, AddedToken{257, "<|pad|>"}});
}

TEST(ModelInfo, OurCheckpointPrunedAndInt8) {
  TempDir dir;
  Model model(small_config());
  model.init_weights(1);
  model.save(dir / "full");
  byte_tokenizer().save(dir / "full/tokenizer.json");
  const ModelInfo full = inspect_model(dir / "full");
  EXPECT_EQ(full.params, model.num_params());
  EXPECT_EQ(full.weights_layout, "model.safetensors");
  ASSERT_TRUE(full.tokenizer.has_value());
  EXPECT_EQ(full.tokenizer->path, dir / "full/tokenizer.json");
  EXPECT_EQ(full.tokenizer->vocab_size, 258);
  EXPECT_EQ(full.tokenizer->eos_id, 256);
  EXPECT_EQ(full.tokenizer->pad_id, 257);
  EXPECT_EQ(full.memory_table().size(), 3u);  // 2 (1/4), 4 (1/2) and all 8; 1/8 is the shared expert alone

  ExpertSubset subset = ExpertSubset::for_model(model.config(), 4, "layerwise");
  subset.routed = {{0, 2, 5}, {1, 3, 6}};
  subset.calibration.description = "two sentences";
  subset.finish();
  prune_checkpoint(dir / "full", subset, dir / "pruned");
  const ModelInfo pruned = inspect_model(dir / "pruned");
  ASSERT_TRUE(pruned.pruning.has_value());
  EXPECT_EQ(pruned.experts_per_layer, (std::vector<int64_t>{4, 4}));
  EXPECT_EQ(pruned.params, full.memory(4).weight_params);
  EXPECT_EQ(pruned.weight_bytes, full.memory(4).weight_bytes);
  // K = 3 of the 4 kept: the same experts per token, the routers' dropped rows fewer.
  EXPECT_EQ(pruned.active_params, full.active_params - 2 * 4 * 16);
  const std::string text = pruned.text();
  EXPECT_NE(text.find("pruned: a subset keeping 4 of 8 experts per layer, method layerwise, chosen from two "
                      "sentences"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("layer 1 keeps experts 1 3 6 7"), std::string::npos) << text;
  EXPECT_NE(text.find("source: a local checkpoint"), std::string::npos) << text;

  quantize_checkpoint(dir / "pruned", dir / "int8", DType::kI8);
  const ModelInfo int8 = inspect_model(dir / "int8");
  EXPECT_EQ(int8.params, pruned.params);  // row scales are not parameters
  EXPECT_TRUE(int8.dtypes.count("I8"));
  EXPECT_GT(int8.dtypes.at("F32").params, 0);  // norms and routers
  EXPECT_LT(int8.weight_bytes, pruned.weight_bytes / 3);
  EXPECT_FALSE(int8.quantization.empty());
  EXPECT_TRUE(int8.pruning.has_value());
  EXPECT_TRUE(int8.tokenizer.has_value());
}

TEST(ModelInfo, ABrokenTokenizerIsReportedAndWrongExpertCountsAreErrors) {
  TempDir dir;
  Model model(small_config());
  model.init_weights(1);
  model.save(dir / "m");
  atomic_write_file(dir / "m/tokenizer.json", "{ not json");
  const ModelInfo info = inspect_model(dir / "m");
  ASSERT_TRUE(info.tokenizer.has_value());
  EXPECT_NE(info.tokenizer->problem.find("not valid JSON"), std::string::npos) << info.tokenizer->problem;
  EXPECT_NE(info.text().find("cannot be used"), std::string::npos);

  ModelConfig wrong = small_config();
  wrong.num_experts = 6;
  wrong.save(dir / "m/config.json");
  EXPECT_NE(error_of([&] {
              inspect_model(dir / "m");
            }).find("layer 0: config.json gives 6 experts, the weights hold 8"),
            std::string::npos);
}

TEST(ModelFiles, RunDirectoriesAndLatestResolveToTheLatestStep) {
  TempDir dir;
  Model model(small_config());
  model.init_weights(1);
  for (const char* step : {"step-00000002", "step-00000004"}) {
    const std::string path = dir / (std::string("run/checkpoints/") + step);
    model.save(path);
    atomic_write_file(path + "/train_state.json", "{}\n");
  }
  atomic_write_file(dir / "run/checkpoints/latest", "step-00000004\n");
  const std::string latest = dir / "run/checkpoints/step-00000004";
  EXPECT_EQ(resolve_model_dir(dir / "run", "eval"), latest);
  EXPECT_EQ(resolve_model_dir(dir / "run/checkpoints", "eval"), latest);
  EXPECT_EQ(resolve_model_dir(dir / "run/checkpoints/latest", "eval"), latest);
  EXPECT_EQ(resolve_model_dir(dir / "run/checkpoints/step-00000002", "eval"),
            dir / "run/checkpoints/step-00000002");

  EXPECT_EQ(error_of([&] { resolve_model_dir(dir / "nowhere", "eval"); }),
            "[eval] " + dir / "nowhere" + ": no such file or directory");
  fs::create_directories(dir / "empty");
  EXPECT_NE(error_of([&] {
              resolve_model_dir(dir / "empty", "select");
            }).find("[select] " + dir / "empty" + ": not a model: expected"),
            std::string::npos);
}

TEST(ModelFiles, TheTokenizerBesideTheModelOrAnErrorSayingWhereItLooked) {
  TempDir dir;
  fs::create_directories(dir / "m");
  EXPECT_FALSE(find_tokenizer(dir / "m").has_value());
  EXPECT_EQ(tokenizer_path_for(dir / "m", "other/tokenizer.json", "generate"), "other/tokenizer.json");
  const std::string message = error_of([&] { tokenizer_path_for(dir / "m", "", "generate"); });
  EXPECT_NE(message.find("[generate] " + dir / "m" + ": no tokenizer found beside the model (looked for " +
                         dir / "m/tokenizer.json" + "); give --tokenizer FILE"),
            std::string::npos)
      << message;
  byte_tokenizer().save(dir / "m/tokenizer.json");
  EXPECT_EQ(tokenizer_path_for(dir / "m", "", "generate"), dir / "m/tokenizer.json");
}

// The command line: `emo info MODEL --json -` prints the facts as one JSON document on stdout.
TEST(ModelInfo, TheCommandPrintsJsonOnStdout) {
  TempDir dir;
  Model model(small_config());
  model.init_weights(1);
  model.save(dir / "m");
  const std::string command = std::string(EMO_BINARY_DIR) + "/bin/emo info " + (dir / "m") + " --json -";
  FILE* pipe = ::popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, n);
  ASSERT_EQ(::pclose(pipe), 0) << out;
  const nlohmann::json j = parse_json(out, "emo info output");
  EXPECT_EQ(j["params"]["total"], model.num_params());
  EXPECT_FALSE(j["pruned"].get<bool>());
}

}  // namespace
}  // namespace emo
