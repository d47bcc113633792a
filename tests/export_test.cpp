// GGUF (src/io/gguf) written and read back, its refusals of bad files, and `emo export gguf` (src/export):
// the mapping's tensors and metadata, the refusals, and the proof that the mapping is right: llama.cpp
// (node-llama-cpp's prebuilt binding, tests/gguf_parity) generates the same greedy tokens as emo.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "core/error.h"
#include "export/gguf_export.h"
#include "infer/decoder.h"
#include "infer/generate.h"
#include "infer/quantize.h"
#include "io/gguf.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace emo {
namespace {

namespace fs = std::filesystem;

// Each test its own scratch directory (ctest runs them in parallel).
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("emo_export_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// ------------------------------------------------------------------------------------------ GGUF files
GgufTensorEntry floats(const std::string& name, std::vector<int64_t> dims, GgmlType type,
                       std::vector<float> values) {
  return {name, std::move(dims), type, [values, type](std::vector<uint8_t>& out) {
            ggml_encode(type, values.data(), static_cast<int64_t>(values.size()), out);
          }};
}

TEST(Gguf, WrittenFileReadsBackWithItsMetadataAndTensors) {
  TempDir dir;
  std::vector<float> a(64), b(96);
  for (size_t i = 0; i < a.size(); ++i) a[i] = std::sin(0.3f * i);
  for (size_t i = 0; i < b.size(); ++i) b[i] = 0.01f * (float(i) - 40.0f);
  GgufWriter w;
  w.set("general.architecture", GgufValue::string("qwen2moe"));
  w.set("x.count", GgufValue::u32(7));
  w.set("x.eps", GgufValue::f32(1e-6f));
  w.set("x.flag", GgufValue::boolean(true));
  w.set("x.tokens", GgufValue::strings({"a", "", "Ġb"}));
  w.set("x.types", GgufValue::i32s({1, 3, -5}));
  w.set("x.count", GgufValue::u32(8));  // replaced in place
  w.add_tensor(floats("a", {32, 2}, GgmlType::kF32, a));
  w.add_tensor(floats("b_bf16", {96}, GgmlType::kBF16, b));
  w.add_tensor(floats("b_q8", {32, 3}, GgmlType::kQ8_0, b));
  w.write(dir / "m.gguf");

  GgufFile f = GgufFile::open(dir / "m.gguf");
  EXPECT_EQ(f.version(), 3u);
  ASSERT_EQ(f.metadata().size(), 6u);
  EXPECT_EQ(f.metadata()[1].first, "x.count");
  EXPECT_EQ(f.get("x.count").integer, 8);
  EXPECT_EQ(f.get("x.count").type, GgufType::kUint32);
  EXPECT_FLOAT_EQ(static_cast<float>(f.get("x.eps").real), 1e-6f);
  EXPECT_EQ(f.get("x.flag").integer, 1);
  EXPECT_EQ(f.get("x.tokens").texts, (std::vector<std::string>{"a", "", "Ġb"}));
  EXPECT_EQ(f.get("x.types").integers, (std::vector<int64_t>{1, 3, -5}));
  ASSERT_EQ(f.tensors().size(), 3u);
  for (const auto& t : f.tensors()) EXPECT_EQ(t.offset % 32, 0u) << t.name;
  EXPECT_EQ(f.tensor("a").dims, (std::vector<int64_t>{32, 2}));
  EXPECT_EQ(f.read_f32("a"), a);
  EXPECT_EQ(f.tensor("b_q8").nbytes, 3u * 34u);
  std::vector<float> bf = f.read_f32("b_bf16"), q8 = f.read_f32("b_q8");
  for (size_t i = 0; i < b.size(); ++i) {
    EXPECT_NEAR(bf[i], b[i], std::fabs(b[i]) / 128.0f);
    // Q8_0: half a step of its block's max/127
    float amax = 0;
    for (size_t j = i / 32 * 32; j < i / 32 * 32 + 32; ++j) amax = std::max(amax, std::fabs(b[j]));
    EXPECT_LE(std::fabs(q8[i] - b[i]), 0.5f * amax / 127.0f * 1.01f + 1e-7f) << i;
  }
  EXPECT_NE(error_of([&] { f.tensor("c"); }).find("no tensor 'c'"), std::string::npos);
}

TEST(Gguf, WriterRefusesRowsThatAreNotWholeBlocksAndDuplicates) {
  GgufWriter w;
  EXPECT_NE(error_of([&] {
              w.add_tensor(floats("q", {48}, GgmlType::kQ8_0, std::vector<float>(48)));
            }).find("whole blocks of 32"),
            std::string::npos);
  w.add_tensor(floats("t", {4}, GgmlType::kF32, std::vector<float>(4)));
  EXPECT_NE(error_of([&] {
              w.add_tensor(floats("t", {4}, GgmlType::kF32, std::vector<float>(4)));
            }).find("added twice"),
            std::string::npos);
}

TEST(Gguf, WriterLeavesNoFileWhenATensorProducesTheWrongSize) {
  TempDir dir;
  GgufWriter w;
  w.add_tensor({"t", {8}, GgmlType::kF32, [](std::vector<uint8_t>& out) { out.resize(4); }});
  EXPECT_NE(error_of([&] { w.write(dir / "m.gguf"); }).find("produced 4 bytes"), std::string::npos);
  EXPECT_TRUE(fs::is_empty(dir.path));
}

// The 5-bit and k-quant layouts (io/ggml_blocks): encode and decode are inverse up to the format's rounding,
// whose error is bounded by its bits (relative RMS over normal weights with outliers), a constant and an
// all-zero block survive, and each is the documented size.
TEST(Gguf, BlockFormatsRoundTripWithinTheirBits) {
  std::vector<float> w(1024);
  uint64_t state = 12345;
  auto uniform = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>((state >> 11) * (1.0 / 9007199254740992.0));
  };
  for (size_t i = 0; i < w.size(); ++i) {
    const float u1 = std::max(uniform(), 1e-7f), u2 = uniform();
    w[i] = 0.02f * std::sqrt(-2.0f * std::log(u1)) * std::cos(6.2831853f * u2) + (i % 97 == 0 ? 0.1f : 0.0f);
  }
  const struct {
    GgmlType type;
    int64_t block_bytes;
    double max_rel_rms;
  } formats[] = {{GgmlType::kQ5_0, 22, 0.06},
                 {GgmlType::kQ5_1, 24, 0.05},
                 {GgmlType::kQ4_K, 144, 0.11},
                 {GgmlType::kQ5_K, 176, 0.055},
                 {GgmlType::kQ6_K, 210, 0.03}};
  double signal = 0;
  for (float v : w) signal += double(v) * v;
  for (const auto& f : formats) {
    SCOPED_TRACE(ggml_type_name(f.type));
    EXPECT_EQ(ggml_block_bytes(f.type), f.block_bytes);
    std::vector<uint8_t> bytes;
    ggml_encode(f.type, w.data(), static_cast<int64_t>(w.size()), bytes);
    ASSERT_EQ(static_cast<int64_t>(bytes.size()), ggml_row_bytes(f.type, static_cast<int64_t>(w.size())));
    std::vector<float> back(w.size());
    ggml_decode(f.type, bytes.data(), static_cast<int64_t>(w.size()), back.data());
    double err = 0;
    for (size_t i = 0; i < w.size(); ++i) err += (double(w[i]) - back[i]) * (double(w[i]) - back[i]);
    const double rel = std::sqrt(err / signal);
    std::printf("%s relative RMS error %.4f\n", ggml_type_name(f.type).c_str(), rel);
    EXPECT_LT(rel, f.max_rel_rms);
    for (float value : {0.0f, 0.25f, -0.5f}) {
      const std::vector<float> flat(256, value);
      std::vector<uint8_t> b;
      ggml_encode(f.type, flat.data(), 256, b);
      std::vector<float> out(256);
      ggml_decode(f.type, b.data(), 256, out.data());
      for (float v : out) ASSERT_NEAR(v, value, 0.002f) << value;
    }
  }
}

TEST(Gguf, ReaderNamesTheFileAndByteOfEachCorruption) {
  TempDir dir;
  GgufWriter w;
  w.set("k", GgufValue::string("value"));
  w.add_tensor(floats("t", {32}, GgmlType::kF32, std::vector<float>(32, 1.0f)));
  w.write(dir / "good.gguf");
  const std::string good = read_bytes(dir / "good.gguf");
  auto error_for = [&](const std::string& bytes) {
    write_bytes(dir / "bad.gguf", bytes);
    return error_of([&] { GgufFile::open(dir / "bad.gguf"); });
  };
  EXPECT_NE(error_for("GGML" + good.substr(4)).find("no 'GGUF' magic"), std::string::npos);
  std::string e = error_for(good.substr(0, good.size() - 8));  // data cut short
  EXPECT_NE(e.find("bad.gguf"), std::string::npos) << e;
  EXPECT_NE(e.find("runs past the end"), std::string::npos) << e;
  e = error_for(good.substr(0, 30));  // inside the metadata
  EXPECT_NE(e.find("byte "), std::string::npos) << e;
  std::string huge = good;
  const uint64_t count = uint64_t{1} << 60;  // metadata count: must not size anything
  std::memcpy(&huge[16], &count, 8);
  EXPECT_NE(error_for(huge).find("cannot fit"), std::string::npos);
  std::string long_string = good;
  const uint64_t length = uint64_t{1} << 40;  // the key's length
  std::memcpy(&long_string[24], &length, 8);
  EXPECT_NE(error_for(long_string).find("runs past the end of the file"), std::string::npos);
}

// ------------------------------------------------------------------------------------------ export
ModelConfig tiny_config() {
  ModelConfig c;
  c.model_type = "emo";
  c.vocab_size = 320;
  c.hidden_size = 64;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 64;
  c.rope_theta = 10000.0;
  c.eos_token_id = 256;
  c.num_experts = 8;  // 7 routed + the shared expert 7
  c.num_experts_per_tok = 3;
  c.num_shared_experts = 1;
  return c;
}

// Bytes 0..255, "<|endoftext|>" 256, and merges "th" 257, "he" 258, "the" 259.
Tokenizer tiny_tokenizer() {
  std::vector<std::string> bytes;
  for (int b = 0; b < 256; ++b) bytes.push_back(std::string(1, static_cast<char>(b)));
  bytes.push_back("");
  bytes.push_back("th");
  bytes.push_back("he");
  bytes.push_back("the");
  return Tokenizer::from_parts(bytes, {{'t', 'h'}, {'h', 'e'}, {257, 'e'}}, kCl100kPattern,
                               {AddedToken{256, "<|endoftext|>"}});
}

// A checkpoint with weights larger than the default init, so routing and logits are far from uniform.
void write_model(const std::string& dir, const ModelConfig& config, uint64_t seed, const std::string& dtype) {
  Model model(config);
  model.init_weights(seed);
  for (const std::string& name : model.param_names())
    if (name.find("norm") == std::string::npos)
      for (float& w : model.weight(name).vec()) w *= 5.0f;
  model.save(dir, dtype);
  tiny_tokenizer().save((fs::path(dir) / "tokenizer.json").string());
}

TEST(ExportGguf, MapsEveryTensorAndTheSharedExpertGate) {
  TempDir dir;
  write_model(dir / "model", tiny_config(), 5, "float32");
  GgufExportSummary s = export_gguf(dir / "model", dir / "m.gguf", {});
  GgufFile f = GgufFile::open(dir / "m.gguf");
  EXPECT_EQ(static_cast<int64_t>(f.tensors().size()), s.tensors);
  EXPECT_EQ(f.get("general.architecture").text, "qwen2moe");
  EXPECT_EQ(f.get("qwen2moe.expert_count").integer, 7);
  EXPECT_EQ(f.get("qwen2moe.expert_used_count").integer, 2);
  EXPECT_EQ(f.get("tokenizer.ggml.model").text, "gpt2");
  EXPECT_EQ(f.get("tokenizer.ggml.eos_token_id").integer, 256);
  const auto& tokens = f.get("tokenizer.ggml.tokens").texts;
  ASSERT_EQ(tokens.size(), 320u);
  EXPECT_EQ(tokens[' '], "Ġ");
  EXPECT_EQ(tokens[256], "<|endoftext|>");
  EXPECT_EQ(tokens[259], "the");
  EXPECT_EQ(tokens[300], "[PAD300]");
  EXPECT_EQ(f.get("tokenizer.ggml.token_type").integers[300], 5);
  EXPECT_EQ(f.get("tokenizer.ggml.merges").texts, (std::vector<std::string>{"t h", "h e", "th e"}));

  auto model = load_model_dequantized(dir / "model");
  const int64_t C = 64, F = 64;
  EXPECT_EQ(f.tensor("blk.1.ffn_gate_exps.weight").dims, (std::vector<int64_t>{C, F, 7}));
  std::vector<float> up = f.read_f32("blk.1.ffn_up_exps.weight");
  const Tensor& up3 = model->weight("model.layers.1.mlp.experts.3.up_proj.weight");
  for (int64_t i = 0; i < F * C; ++i) ASSERT_EQ(up[3 * F * C + i], up3[i]);
  std::vector<float> down = f.read_f32("blk.0.ffn_down_shexp.weight");
  const Tensor& shared_down = model->weight("model.layers.0.mlp.experts.7.down_proj.weight");
  for (int64_t i = 0; i < C * F; ++i) ASSERT_EQ(down[i], 2.0f * shared_down[i]);
  std::vector<float> router = f.read_f32("blk.0.ffn_gate_inp.weight");
  ASSERT_EQ(router.size(), size_t(7 * C));  // the routed rows only
  for (int64_t i = 0; i < 7 * C; ++i)
    ASSERT_EQ(router[i], model->weight("model.layers.0.mlp.gate.weight")[i]);
  for (float g : f.read_f32("blk.0.ffn_gate_inp_shexp.weight")) ASSERT_EQ(g, 1e-20f);
  for (float bias : f.read_f32("blk.1.attn_k.bias")) ASSERT_EQ(bias, 0.0f);
  EXPECT_EQ(f.tensor("token_embd.weight").dims, (std::vector<int64_t>{C, 320}));
}

// DIR/model (fp32, seed), its q4 checkpoint DIR/q4 (emo quantize) and its q4_0 export DIR/m.gguf.
void write_q4_pair(const TempDir& dir, uint64_t seed) {
  write_model(dir / "model", tiny_config(), seed, "float32");
  quantize_checkpoint(dir / "model", dir / "q4", DType::kQ4_0);
  GgufExportOptions options;
  options.dtype = "q4_0";
  export_gguf(dir / "model", dir / "m.gguf", options);
}

// q4_0: llama.cpp's Q4_0 blocks, made by emo quantize's quantiser, so a q4_0 file holds the weights of the
// q4 checkpoint of the same model (dequantised alike); the embedding and output stay at q8_0.
TEST(ExportGguf, Q4_0HoldsTheBlocksOfEmoQuantizeAndKeepsTheEmbeddingAtQ8_0) {
  TempDir dir;
  write_q4_pair(dir, 5);
  GgufFile f = GgufFile::open(dir / "m.gguf");
  EXPECT_EQ(f.get("general.file_type").integer, 2);  // LLAMA_FTYPE_MOSTLY_Q4_0
  EXPECT_EQ(f.tensor("blk.0.attn_q.weight").type, GgmlType::kQ4_0);
  EXPECT_EQ(f.tensor("blk.1.ffn_down_exps.weight").type, GgmlType::kQ4_0);
  EXPECT_EQ(f.tensor("token_embd.weight").type, GgmlType::kQ8_0);
  EXPECT_EQ(f.tensor("output.weight").type, GgmlType::kQ8_0);
  EXPECT_EQ(f.tensor("blk.0.ffn_gate_inp.weight").type, GgmlType::kF32);
  auto q4 = load_model_dequantized(dir / "q4");
  const int64_t C = 64, F = 64;
  const std::vector<float> up = f.read_f32("blk.1.ffn_up_exps.weight");
  const Tensor& up3 = q4->weight("model.layers.1.mlp.experts.3.up_proj.weight");
  for (int64_t i = 0; i < F * C; ++i) ASSERT_EQ(up[3 * F * C + i], up3[i]) << i;
  const std::vector<float> k = f.read_f32("blk.0.attn_k.weight");
  EXPECT_EQ(k, q4->weight("model.layers.0.self_attn.k_proj.weight").vec());
}

// Widths of whole Q4_K super-blocks (256): hidden, expert width and attention width 256.
ModelConfig q4_k_config() {
  ModelConfig c = tiny_config();
  c.hidden_size = 256;
  c.intermediate_size = 256;
  return c;
}

void expect_types(const std::string& gguf, const std::vector<std::pair<std::string, GgmlType>>& want) {
  const GgufFile f = GgufFile::open(gguf);
  for (const auto& [name, type] : want)
    EXPECT_EQ(ggml_type_name(f.tensor(name).type), ggml_type_name(type)) << name;
}

// q4_k: llama-quantize's Q4_K_M mix. Of 2 layers, layer 1 is a "more bits" layer (the last eighth): its
// attn_v and both ffn_down tensors are Q6_K; the output Q6_K; every other matrix Q4_K, the embedding too; the
// router and norms f32. The weights decode to the fp32 model's within 4-bit (6-bit) rounding.
TEST(ExportGguf, Q4_KUsesLlamaQuantizesQ4_K_MMix) {
  TempDir dir;
  write_model(dir / "model", q4_k_config(), 5, "float32");
  GgufExportOptions options;
  options.dtype = "q4_k";
  export_gguf(dir / "model", dir / "m.gguf", options);
  GgufFile f = GgufFile::open(dir / "m.gguf");
  EXPECT_EQ(f.get("general.file_type").integer, 15);  // LLAMA_FTYPE_MOSTLY_Q4_K_M
  expect_types(dir / "m.gguf", {{"token_embd.weight", GgmlType::kQ4_K},
                                {"output.weight", GgmlType::kQ6_K},
                                {"blk.0.attn_q.weight", GgmlType::kQ4_K},
                                {"blk.0.attn_k.weight", GgmlType::kQ4_K},
                                {"blk.0.attn_v.weight", GgmlType::kQ4_K},
                                {"blk.1.attn_v.weight", GgmlType::kQ6_K},
                                {"blk.1.attn_output.weight", GgmlType::kQ4_K},
                                {"blk.0.ffn_down_exps.weight", GgmlType::kQ4_K},
                                {"blk.1.ffn_down_exps.weight", GgmlType::kQ6_K},
                                {"blk.0.ffn_down_shexp.weight", GgmlType::kQ4_K},
                                {"blk.1.ffn_down_shexp.weight", GgmlType::kQ6_K},
                                {"blk.1.ffn_gate_exps.weight", GgmlType::kQ4_K},
                                {"blk.1.ffn_up_shexp.weight", GgmlType::kQ4_K},
                                {"blk.1.ffn_gate_inp.weight", GgmlType::kF32},
                                {"blk.1.attn_norm.weight", GgmlType::kF32}});
  auto fp32 = load_model_dequantized(dir / "model");
  auto rel_error = [](const std::vector<float>& got, const float* ref, size_t n) {
    double err = 0, signal = 0;
    for (size_t i = 0; i < n; ++i) err += (got[i] - ref[i]) * (got[i] - ref[i]), signal += ref[i] * ref[i];
    return std::sqrt(err / signal);
  };
  const std::vector<float> q = f.read_f32("blk.0.attn_q.weight");
  EXPECT_LT(rel_error(q, fp32->weight("model.layers.0.self_attn.q_proj.weight").data(), q.size()), 0.11);
  const std::vector<float> down = f.read_f32("blk.1.ffn_down_exps.weight");
  const int64_t FC = 256 * 256;
  EXPECT_LT(rel_error(std::vector<float>(down.begin() + 2 * FC, down.begin() + 3 * FC),
                      fp32->weight("model.layers.1.mlp.experts.2.down_proj.weight").data(), FC),
            0.03);
}

// Rows that are not whole super-blocks take llama-quantize's fallbacks (Q4_K -> Q5_0, Q6_K -> Q8_0, Q5_K ->
// Q5_1), and a model of exactly 8 routed experts its rule for them (attn_k, attn_v Q8_0, attn_output Q5_K).
TEST(ExportGguf, Q4_KFallsBackForNarrowRowsAndFollowsTheEightExpertRule) {
  TempDir dir;
  write_model(dir / "model", tiny_config(), 5, "float32");  // width 64, 7 routed experts
  GgufExportOptions options;
  options.dtype = "q4_k";
  export_gguf(dir / "model", dir / "m.gguf", options);
  expect_types(dir / "m.gguf", {{"blk.0.attn_q.weight", GgmlType::kQ5_0},
                                {"blk.1.attn_v.weight", GgmlType::kQ8_0},
                                {"output.weight", GgmlType::kQ8_0},
                                {"token_embd.weight", GgmlType::kQ5_0}});
  ModelConfig eight = q4_k_config();
  eight.num_experts = 9;  // 8 routed + the shared one
  write_model(dir / "eight", eight, 5, "float32");
  export_gguf(dir / "eight", dir / "e.gguf", options);
  expect_types(dir / "e.gguf", {{"blk.0.attn_k.weight", GgmlType::kQ8_0},
                                {"blk.0.attn_v.weight", GgmlType::kQ8_0},
                                {"blk.0.attn_output.weight", GgmlType::kQ5_K},
                                {"blk.1.ffn_down_exps.weight", GgmlType::kQ6_K}});
}

TEST(ExportGguf, RefusesLayersWithDifferentExpertCounts) {
  TempDir dir;
  ModelConfig c = tiny_config();
  c.num_experts_per_layer = {8, 5};
  write_model(dir / "model", c, 5, "float32");
  const std::string e = error_of([&] { export_gguf(dir / "model", dir / "m.gguf", {}); });
  EXPECT_NE(e.find("layer 1 has 5 experts"), std::string::npos) << e;
  EXPECT_NE(e.find("same expert count in every layer"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(dir / "m.gguf"));
}

TEST(ExportGguf, UniformPrunedModelUsesAllItsRoutedExperts) {
  TempDir dir;
  ModelConfig c = tiny_config();
  c.num_experts_per_layer = {3, 3};  // 2 routed + the shared one: both routed slots used
  write_model(dir / "model", c, 5, "float32");
  export_gguf(dir / "model", dir / "m.gguf", {});
  GgufFile f = GgufFile::open(dir / "m.gguf");
  EXPECT_EQ(f.get("qwen2moe.expert_count").integer, 2);
  EXPECT_EQ(f.get("qwen2moe.expert_used_count").integer, 2);
}

TEST(ExportGguf, RefusesRenormalisedTopKAndBadDtypes) {
  TempDir dir;
  ModelConfig c = tiny_config();
  c.norm_topk_prob = true;
  write_model(dir / "model", c, 5, "float32");
  EXPECT_NE(error_of([&] { export_gguf(dir / "model", dir / "m.gguf", {}); }).find("norm_topk_prob"),
            std::string::npos);
  GgufExportOptions o;
  o.dtype = "q3";
  EXPECT_NE(error_of([&] { export_gguf(dir / "model", dir / "m.gguf", o); }).find("--dtype 'q3'"),
            std::string::npos);
}

// ------------------------------------------------------------------------------------------ llama.cpp parity
std::optional<std::string> run(const std::string& command) {
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return std::nullopt;
  std::string out;
  char buffer[65536];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) out.append(buffer, n);
  if (pclose(pipe) != 0) return std::nullopt;
  return out;
}

std::string parity_dir() {
  return std::string(EMO_SOURCE_DIR) + "/tests/gguf_parity";
}

// node-llama-cpp's install directory, or why it cannot be had (installed from the npm registry once).
std::optional<std::string> llama_install(std::string* why) {
  static std::optional<std::string> dir;
  static std::string reason = [&]() -> std::string {
    if (!run("command -v node >/dev/null 2>&1")) return "node is not installed";
    auto out = run(parity_dir() + "/setup.sh");
    if (!out)
      return "tests/gguf_parity/setup.sh could not install node-llama-cpp (npm registry unreachable?)";
    dir = out->substr(0, out->find('\n'));
    return "";
  }();
  *why = reason;
  return dir;
}

#define SKIP_OR_FAIL_WITHOUT_LLAMA(dir)                                                        \
  std::string why;                                                                             \
  std::optional<std::string> dir = llama_install(&why);                                        \
  if (!dir) {                                                                                  \
    if (std::getenv("CI") != nullptr) FAIL() << "CI: llama.cpp parity prerequisites: " << why; \
    GTEST_SKIP() << "skipped: " << why;                                                        \
  }

std::vector<int32_t> emo_greedy(const std::string& model_dir, const std::vector<int32_t>& prompt, int64_t n) {
  auto weights = InferWeights::open(model_dir);
  Decoder decoder(*weights, static_cast<int64_t>(prompt.size()) + n);
  GenerateOptions options;
  options.max_new_tokens = n;
  return generate(decoder, prompt, options).tokens;
}

nlohmann::json llama_greedy(const std::string& install, const std::string& gguf,
                            const std::vector<int32_t>& prompt, int64_t n, const std::string& text) {
  auto out = run(cat("node ", parity_dir(), "/llama_generate.mjs '", install, "' '", gguf, "' '",
                     nlohmann::json(prompt).dump(), "' ", n, " '", text, "'"));
  if (!out) {
    ADD_FAILURE() << "llama_generate.mjs failed on " << gguf;
    return {{"tokens", nlohmann::json::array()}, {"tokenized", nlohmann::json::array()}};
  }
  return nlohmann::json::parse(out->substr(out->rfind('{')));
}

void expect_llama_equals_emo(const std::string& dtype, const std::string& stored) {
  SKIP_OR_FAIL_WITHOUT_LLAMA(install);
  TempDir dir;
  write_model(dir / "model", tiny_config(), 11, stored);
  GgufExportOptions options;
  options.dtype = dtype;
  export_gguf(dir / "model", dir / "m.gguf", options);
  const std::vector<int32_t> prompt = {84, 104, 101, 32, 99, 97, 116, 259, 32, 115, 97, 116};
  const int64_t n = 16;
  const std::vector<int32_t> want = emo_greedy(dir / "model", prompt, n);
  const std::string text = "the theme of the thesis";
  nlohmann::json got = llama_greedy(*install, dir / "m.gguf", prompt, n, text);
  EXPECT_EQ(got["tokens"].get<std::vector<int32_t>>(), want) << dtype;
  EXPECT_EQ(got["tokenized"].get<std::vector<int32_t>>(), tiny_tokenizer().encode(text));
}

TEST(ExportGgufLlamaCpp, F32GreedyTokensEqualEmos) {
  expect_llama_equals_emo("f32", "float32");
}

// bf16 weights in both engines: emo runs the bf16 checkpoint, llama.cpp its BF16 export of the same values.
TEST(ExportGgufLlamaCpp, Bf16GreedyTokensEqualEmos) {
  expect_llama_equals_emo("bf16", "bfloat16");
}

// Perplexity of next-token log-probabilities.
double perplexity_of(const std::vector<double>& logprobs) {
  double sum = 0;
  for (double lp : logprobs) sum += lp;
  return std::exp(-sum / static_cast<double>(logprobs.size()));
}

// emo's inference engine: log p(ids[t + 1] | ids[0..t]) from one forward.
std::vector<double> emo_logprobs(const std::string& model_dir, const std::vector<int32_t>& ids) {
  auto weights = InferWeights::open(model_dir);
  Decoder decoder(*weights, static_cast<int64_t>(ids.size()));
  const Tensor logits = decoder.forward(ids, true);  // [T, V]
  const int64_t V = weights->config().vocab_size;
  std::vector<double> out;
  for (size_t t = 0; t + 1 < ids.size(); ++t) {
    const float* row = logits.data() + static_cast<int64_t>(t) * V;
    double max = row[0], sum = 0;
    for (int64_t v = 0; v < V; ++v) max = std::max(max, double(row[v]));
    for (int64_t v = 0; v < V; ++v) sum += std::exp(double(row[v]) - max);
    out.push_back(double(row[ids[t + 1]]) - max - std::log(sum));
  }
  return out;
}

// llama.cpp's log p(ids[t + 1] | ids[0..t]) from its full next-token distributions (llama_generate.mjs
// logprobs); empty, with a test failure, when the script fails or returns a non-number.
std::vector<double> llama_logprobs(const std::string& install, const std::string& gguf,
                                   const std::vector<int32_t>& ids) {
  auto out = run(cat("node ", parity_dir(), "/llama_generate.mjs '", install, "' '", gguf, "' '",
                     nlohmann::json(ids).dump(), "' logprobs"));
  if (!out) {
    ADD_FAILURE() << "llama_generate.mjs logprobs failed on " << gguf;
    return {};
  }
  const nlohmann::json got = nlohmann::json::parse(out->substr(out->rfind('{')));
  std::vector<double> logprobs;
  for (const auto& lp : got["logprobs"]) {
    if (!lp.is_number()) {
      ADD_FAILURE() << got.dump();
      return {};
    }
    logprobs.push_back(lp.get<double>());
  }
  return logprobs;
}

// q4_0 in llama.cpp against emo's q4 checkpoint of the same model (the same blocks, both engines rounding the
// activations to 8-bit blocks) and against the fp32 model, by perplexity over the text's tokens.
TEST(ExportGgufLlamaCpp, Q4_0PerplexityFollowsEmosQ4) {
  SKIP_OR_FAIL_WITHOUT_LLAMA(install);
  TempDir dir;
  write_q4_pair(dir, 11);
  const std::vector<int32_t> ids = tiny_tokenizer().encode("the cat sat on the mat; the theme of the math");
  ASSERT_GE(ids.size(), 16u);
  const std::vector<double> llama = llama_logprobs(*install, dir / "m.gguf", ids);
  ASSERT_EQ(llama.size(), ids.size() - 1);
  const double llama_q4 = perplexity_of(llama), emo_q4 = perplexity_of(emo_logprobs(dir / "q4", ids));
  const double fp32 = perplexity_of(emo_logprobs(dir / "model", ids));
  std::printf("perplexity over %zu tokens: llama.cpp q4_0 %.4f, emo q4 %.4f, emo fp32 %.4f\n", ids.size() - 1,
              llama_q4, emo_q4, fp32);
  EXPECT_NEAR(llama_q4 / emo_q4, 1.0, 0.01);
  EXPECT_NEAR(llama_q4 / fp32, 1.0, 0.05);
}

// The weights a GGUF export holds, decoded, back in an fp32 emo checkpoint at `out` (the inverse of the
// mapping, for one shared expert): what llama.cpp computes with, run by emo. The router rows of the shared
// expert, which the file leaves out (its weight is 1), keep the model's values.
void write_gguf_weights_as_model(const std::string& model_dir, const std::string& gguf,
                                 const std::string& out) {
  auto model = load_model_dequantized(model_dir);
  const ModelConfig& c = model->config();
  const GgufFile f = GgufFile::open(gguf);
  auto set = [&](const std::string& name, const std::vector<float>& values, int64_t offset, float scale) {
    std::vector<float>& w = model->weight(name).vec();
    for (size_t i = 0; i < w.size(); ++i) w[i] = values[static_cast<size_t>(offset) + i] * scale;
  };
  set("model.embed_tokens.weight", f.read_f32("token_embd.weight"), 0, 1);
  set("lm_head.weight", f.read_f32("output.weight"), 0, 1);
  const int64_t Er = c.experts_in_layer(0) - 1, FC = c.intermediate_size * c.hidden_size;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = cat("model.layers.", l, "."), b = cat("blk.", l, ".");
    for (const char* m : {"q", "k", "v"})
      set(cat(p, "self_attn.", m, "_proj.weight"), f.read_f32(cat(b, "attn_", m, ".weight")), 0, 1);
    set(p + "self_attn.o_proj.weight", f.read_f32(b + "attn_output.weight"), 0, 1);
    for (const char* proj : {"gate", "up", "down"}) {
      const std::vector<float> routed = f.read_f32(cat(b, "ffn_", proj, "_exps.weight"));
      for (int64_t e = 0; e < Er; ++e)
        set(cat(p, "mlp.experts.", e, ".", proj, "_proj.weight"), routed, e * FC, 1);
      // The shared down projection is stored x2 (the gate llama.cpp applies is 0.5).
      set(cat(p, "mlp.experts.", Er, ".", proj, "_proj.weight"),
          f.read_f32(cat(b, "ffn_", proj, "_shexp.weight")), 0, std::string(proj) == "down" ? 0.5f : 1.0f);
    }
  }
  model->save(out, "float32");
}

// q4_k in llama.cpp against emo running the very weights the file holds (decoded) in fp32, by perplexity
// over the text's tokens: they differ by llama.cpp's rounding of the activations (8-bit blocks for its
// k-quant products) and its f16 KV cache only, so a type or layout llama.cpp read otherwise than emo wrote
// would be far off the bound. The blocks are ggml's layout exactly (emo's decode of them equals ggml's
// dequantize_row_* bit for bit: docs/export.md). Against the fp32 model itself the random test model (weights
// x5, perplexity above its vocabulary) magnifies every rounding: recorded, bounded loosely.
TEST(ExportGgufLlamaCpp, Q4_KPerplexityFollowsItsWeightsInEmo) {
  SKIP_OR_FAIL_WITHOUT_LLAMA(install);
  TempDir dir;
  write_model(dir / "model", q4_k_config(), 11, "float32");
  GgufExportOptions options;
  options.dtype = "q4_k";
  export_gguf(dir / "model", dir / "m.gguf", options);
  write_gguf_weights_as_model(dir / "model", dir / "m.gguf", dir / "decoded");
  const std::vector<int32_t> ids = tiny_tokenizer().encode("the cat sat on the mat; the theme of the math");
  const std::vector<double> llama = llama_logprobs(*install, dir / "m.gguf", ids);
  ASSERT_EQ(llama.size(), ids.size() - 1);
  const double llama_q4_k = perplexity_of(llama),
               emo_decoded = perplexity_of(emo_logprobs(dir / "decoded", ids));
  const double fp32 = perplexity_of(emo_logprobs(dir / "model", ids));
  std::printf(
      "perplexity over %zu tokens: llama.cpp q4_k %.4f, emo on its decoded weights %.4f, emo fp32 %.4f\n",
      ids.size() - 1, llama_q4_k, emo_decoded, fp32);
  EXPECT_NEAR(llama_q4_k / emo_decoded, 1.0, 0.02);
  EXPECT_NEAR(llama_q4_k / fp32, 1.0, 0.25);
}

}  // namespace
}  // namespace emo
