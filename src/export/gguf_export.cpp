#include "export/gguf_export.h"

#include <filesystem>
#include <map>

#include "core/error.h"
#include "core/log.h"
#include "core/version.h"
#include "infer/quantize.h"
#include "io/gguf.h"
#include "io/output_dir.h"
#include "kernels/q4.h"
#include "model/model.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer.h"

namespace emo {
namespace {

namespace fs = std::filesystem;
constexpr const char* kOp = "export gguf";

// llama.cpp's token types.
constexpr int32_t kTokenNormal = 1, kTokenControl = 3, kTokenUserDefined = 4, kTokenUnused = 5;
// The shared expert's gate weights: g = 1e-20 * sum(x) is tiny but (but for an exact cancellation) not zero,
// so llama.cpp's silu(g)/g is exactly 0.5 in fp32; the shared down projection is stored x2 to make it 1.
constexpr float kSharedGateWeight = 1e-20f;
constexpr float kSharedDownScale = 2.0f;

GgmlType weight_type(const std::string& dtype, uint32_t* file_type) {
  if (dtype == "f32" || dtype == "fp32" || dtype == "float32") return *file_type = 0, GgmlType::kF32;
  if (dtype == "bf16" || dtype == "bfloat16") return *file_type = 32, GgmlType::kBF16;
  if (dtype == "q8_0" || dtype == "Q8_0") return *file_type = 7, GgmlType::kQ8_0;
  if (dtype == "q4_0" || dtype == "Q4_0") return *file_type = 2, GgmlType::kQ4_0;
  // LLAMA_FTYPE_MOSTLY_Q4_K_M: Q4_K with llama-quantize's Q4_K_M mix (mixed_type below).
  if (dtype == "q4_k" || dtype == "Q4_K" || dtype == "q4_k_m" || dtype == "Q4_K_M")
    return *file_type = 15, GgmlType::kQ4_K;
  fail(kOp, cat("--dtype '", dtype, "' is not f32, bf16, q8_0, q4_0 or q4_k"));
}

// A matrix as llama-quantize categorises it (by name: token_embd, output, attn_q/k/v/output, ffn_gate*,
// ffn_up*, ffn_down*; the experts' and shared experts' tensors alike).
enum class Role { kEmbedding, kOutput, kAttnQ, kAttnK, kAttnV, kAttnOutput, kFfnGate, kFfnUp, kFfnDown };

struct MatrixPlace {
  Role role;
  int64_t layer = 0;  // blk.N
};

// llama-quantize's layers given more bits: the first and last eighth and every third one between.
bool more_bits(int64_t layer, int64_t layers) {
  return layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;
}

// Q4_K_M as llama.cpp's llama_tensor_get_type chooses it for an untied model with separate output
// (llama-quant.cpp, the source node-llama-cpp 3.21.1 bundles): the output in Q6_K (Q8_0 when its rows are
// not whole super-blocks); attn_v and ffn_down (routed and shared) in Q6_K in the more_bits layers; with
// exactly 8 routed experts attn_v and attn_k in Q8_0 and attn_output in Q5_K; the rest Q4_K. Then its
// fallback for rows that are not whole super-blocks of 256: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0.
GgmlType q4_k_m_type(MatrixPlace place, int64_t layers, int64_t routed_experts, int64_t ne0) {
  const bool eight = routed_experts == 8;
  GgmlType type = GgmlType::kQ4_K;
  switch (place.role) {
    case Role::kOutput:
      type = ne0 % ggml_block_size(GgmlType::kQ4_K) != 0 ? GgmlType::kQ8_0 : GgmlType::kQ6_K;
      break;
    case Role::kAttnV:
      type = eight ? GgmlType::kQ8_0 : more_bits(place.layer, layers) ? GgmlType::kQ6_K : GgmlType::kQ4_K;
      break;
    case Role::kAttnK:
      type = eight ? GgmlType::kQ8_0 : GgmlType::kQ4_K;
      break;
    case Role::kAttnOutput:
      type = eight ? GgmlType::kQ5_K : GgmlType::kQ4_K;
      break;
    case Role::kFfnDown:
      type = more_bits(place.layer, layers) ? GgmlType::kQ6_K : GgmlType::kQ4_K;
      break;
    default:
      break;
  }
  if (ne0 % ggml_block_size(type) == 0) return type;
  if (type == GgmlType::kQ4_K) return GgmlType::kQ5_0;
  if (type == GgmlType::kQ5_K) return GgmlType::kQ5_1;
  if (type == GgmlType::kQ6_K) return GgmlType::kQ8_0;
  return type;
}

// The type of one matrix with ne0 weights per row in a file of `weights` type: the weight type itself, but
// for a q4_0 file's embedding and output at q8_0 (as emo quantize keeps them at int8, and llama.cpp's own
// Q4_0 files keep the output at higher precision) and q4_k's mix.
GgmlType matrix_type(GgmlType weights, MatrixPlace place, const ModelConfig& c, int64_t ne0) {
  if (weights == GgmlType::kQ4_K)
    return q4_k_m_type(place, c.num_hidden_layers, c.experts_in_layer(0) - c.shared_in_layer(0), ne0);
  const bool outer = place.role == Role::kEmbedding || place.role == Role::kOutput;
  return weights == GgmlType::kQ4_0 && outer ? GgmlType::kQ8_0 : weights;
}

// n weights (whole blocks) in `type`, appended to out: Q4_0 with the fitted block scales of emo quantize
// (kernels/q4.h: llama.cpp's layout, dequantised by llama.cpp unchanged), the others by ggml_encode.
void encode(GgmlType type, const float* w, int64_t n, std::vector<uint8_t>& out) {
  if (type != GgmlType::kQ4_0) return ggml_encode(type, w, n, out);
  const size_t start = out.size();
  out.resize(start + static_cast<size_t>(ggml_row_bytes(type, n)));
  quantize_row_q4_0_fitted(w, reinterpret_cast<BlockQ4_0*>(out.data() + start), n);
}

// Float pieces, scaled, concatenated into rows of `row` weights (a piece may be part of a row: the shared
// experts' down projections side by side) and encoded in `type` row by row.
struct Pieces {
  std::vector<const float*> parts;
  int64_t part_size = 0;
  float scale = 1.0f;
  int64_t row = 0;  // weights per row (ne0); 0: part_size
};

std::function<void(std::vector<uint8_t>&)> encoder(GgmlType type, Pieces pieces) {
  return [type, pieces](std::vector<uint8_t>& out) {
    const int64_t row = pieces.row > 0 ? pieces.row : pieces.part_size;
    std::vector<float> buffer;
    for (const float* part : pieces.parts) {
      for (int64_t i = 0; i < pieces.part_size; ++i) buffer.push_back(part[i] * pieces.scale);
      if (static_cast<int64_t>(buffer.size()) % row != 0) continue;
      encode(type, buffer.data(), static_cast<int64_t>(buffer.size()), out);
      buffer.clear();
    }
    EMO_CHECK(buffer.empty(), kOp, "pieces of ", pieces.part_size, " weights do not fill rows of ", row);
  };
}

std::function<void(std::vector<uint8_t>&)> constant(float value, int64_t n) {
  return [value, n](std::vector<uint8_t>& out) {
    std::vector<float> v(static_cast<size_t>(n), value);
    ggml_encode(GgmlType::kF32, v.data(), n, out);
  };
}

// The checks llama.cpp's qwen2moe imposes, with the reason in the message.
void check_exportable(const ModelConfig& c, const std::string& dir) {
  if (!c.is_moe()) fail_file(kOp, dir, "a dense model has no qwen2moe mapping (only MoE models export)");
  if (c.norm_topk_prob)
    fail_file(kOp, dir, "norm_topk_prob is true, but llama.cpp's qwen2moe uses the raw top-k probabilities");
  const int64_t E = c.experts_in_layer(0), ns = c.shared_in_layer(0);
  if (ns < 1) fail_file(kOp, dir, "qwen2moe needs a shared expert; this model has none");
  for (int64_t l = 1; l < c.num_hidden_layers; ++l)
    if (c.experts_in_layer(l) != E || c.shared_in_layer(l) != ns)
      fail_file(
          kOp, dir,
          cat("layer ", l, " has ", c.experts_in_layer(l), " experts (", c.shared_in_layer(l),
              " shared), layer 0 has ", E, " (", ns,
              " shared): llama.cpp needs the same expert count in every layer (prune to a uniform subset, "
              "e.g. the same number of experts per layer)"));
}

std::vector<std::string> token_texts(const Tokenizer& tok, int64_t rows, std::vector<int32_t>& types) {
  std::map<int32_t, const AddedToken*> added;
  for (const AddedToken& t : tok.added_tokens()) added[t.id] = &t;
  std::vector<std::string> texts;
  for (int64_t id = 0; id < rows; ++id) {
    auto it = added.find(static_cast<int32_t>(id));
    if (it != added.end()) {
      texts.push_back(it->second->content);
      types.push_back(it->second->special ? kTokenControl : kTokenUserDefined);
      continue;
    }
    std::optional<std::string> bytes =
        id < tok.vocab_size() ? tok.id_to_token(static_cast<int32_t>(id)) : std::nullopt;
    if (bytes && !bytes->empty()) {
      texts.push_back(byte_level::encode(*bytes));
      types.push_back(kTokenNormal);
    } else {  // a hole of the vocabulary or an embedding row past it: never produced by the tokenizer
      texts.push_back(cat("[PAD", id, "]"));
      types.push_back(kTokenUnused);
    }
  }
  return texts;
}

void set_tokenizer(GgufWriter& w, const Tokenizer& tok, const ModelConfig& c, const std::string& path) {
  if (tok.vocab_size() > c.vocab_size)
    fail_file(kOp, path,
              cat("the tokenizer has ", tok.vocab_size(), " ids, the model's embedding only ", c.vocab_size,
                  " rows"));
  std::vector<int32_t> types;
  std::vector<std::string> tokens = token_texts(tok, c.vocab_size, types);
  std::vector<std::string> merges;
  for (const auto& [left, right] : tok.merges())
    merges.push_back(byte_level::encode(tok.id_to_token(left).value_or("")) + " " +
                     byte_level::encode(tok.id_to_token(right).value_or("")));
  if (tok.split_pattern() != kCl100kPattern)
    log_warn(
        cat("[", kOp, "] ", path,
            ": the pre-tokenizer regex is not cl100k's; llama.cpp will split text with cl100k's (\"dbrx\")"));
  const int32_t eos = c.eos_token_id ? static_cast<int32_t>(*c.eos_token_id) : tok.eos_id();
  w.set("tokenizer.ggml.model", GgufValue::string("gpt2"));
  w.set("tokenizer.ggml.pre", GgufValue::string("dbrx"));
  w.set("tokenizer.ggml.tokens", GgufValue::strings(std::move(tokens)));
  w.set("tokenizer.ggml.token_type", GgufValue::i32s(std::move(types)));
  w.set("tokenizer.ggml.merges", GgufValue::strings(std::move(merges)));
  w.set("tokenizer.ggml.eos_token_id", GgufValue::u32(static_cast<uint32_t>(eos)));
  w.set("tokenizer.ggml.bos_token_id",
        GgufValue::u32(static_cast<uint32_t>(c.bos_token_id ? *c.bos_token_id : eos)));
  std::optional<int32_t> pad =
      c.pad_token_id ? std::optional<int32_t>(static_cast<int32_t>(*c.pad_token_id)) : tok.pad_id();
  if (pad) w.set("tokenizer.ggml.padding_token_id", GgufValue::u32(static_cast<uint32_t>(*pad)));
  w.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(false));
  w.set("tokenizer.ggml.add_eos_token", GgufValue::boolean(false));
}

}  // namespace

GgufExportSummary export_gguf(const std::string& model_dir, const std::string& out_path,
                              const GgufExportOptions& options) {
  uint32_t file_type = 0;
  const GgmlType wt = weight_type(options.dtype, &file_type);
  const ModelConfig config = ModelConfig::load((fs::path(model_dir) / "config.json").string());
  check_exportable(config, model_dir);
  const std::string tokenizer_path =
      options.tokenizer.empty() ? (fs::path(model_dir) / "tokenizer.json").string() : options.tokenizer;
  // Before any long work: loading and converting a large model takes minutes.
  check_new_output_file(
      out_path, {"export gguf", {model_dir, tokenizer_path}, options.force},
      [](const std::string& path) { return !gguf_leading_string(path, kGgufExporterKey).empty(); });
  const Tokenizer tokenizer = Tokenizer::load(tokenizer_path);
  std::unique_ptr<Model> model = load_model_dequantized(model_dir);
  const ModelConfig& c = model->config();
  const int64_t C = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, L = c.num_hidden_layers;
  const int64_t hd = c.head_dim(), H = c.num_attention_heads, Hkv = c.num_key_value_heads;
  const int64_t E = c.experts_in_layer(0), ns = c.shared_in_layer(0), Er = E - ns;
  const int64_t used = std::min(c.num_experts_per_tok - ns, Er);
  // q4_k's rows that are not whole super-blocks of 256 fall back to 32-weight blocks (q4_k_m_type).
  const int64_t block = wt == GgmlType::kQ4_K ? 32 : ggml_block_size(wt);
  if (C % block != 0 || F % block != 0 || (H * hd) % block != 0)
    fail_file(
        kOp, model_dir,
        cat(options.dtype, " stores rows in blocks of ", block, " weights: hidden_size ", C,
            ", intermediate_size ", F, " and the attention width ", H * hd, " must be multiples of it"));

  GgufWriter w;
  const std::string a = "qwen2moe.";
  w.set("general.architecture", GgufValue::string("qwen2moe"));
  w.set(kGgufExporterKey, GgufValue::string(cat("emo ", kEmoVersion)));
  w.set("general.name",
        GgufValue::string(options.name.empty() ? fs::absolute(model_dir).filename().string() : options.name));
  w.set("general.alignment", GgufValue::u32(GgufWriter::kAlignment));
  w.set("general.file_type", GgufValue::u32(file_type));
  w.set(a + "block_count", GgufValue::u32(static_cast<uint32_t>(L)));
  w.set(a + "context_length", GgufValue::u32(static_cast<uint32_t>(c.max_position_embeddings)));
  w.set(a + "embedding_length", GgufValue::u32(static_cast<uint32_t>(C)));
  w.set(a + "feed_forward_length", GgufValue::u32(static_cast<uint32_t>(F)));
  w.set(a + "attention.head_count", GgufValue::u32(static_cast<uint32_t>(H)));
  w.set(a + "attention.head_count_kv", GgufValue::u32(static_cast<uint32_t>(Hkv)));
  w.set(a + "rope.freq_base", GgufValue::f32(static_cast<float>(c.rope_theta)));
  w.set(a + "attention.layer_norm_rms_epsilon", GgufValue::f32(static_cast<float>(c.rms_norm_eps)));
  w.set(a + "expert_count", GgufValue::u32(static_cast<uint32_t>(Er)));
  w.set(a + "expert_used_count", GgufValue::u32(static_cast<uint32_t>(used)));
  w.set(a + "expert_feed_forward_length", GgufValue::u32(static_cast<uint32_t>(F)));
  w.set(a + "expert_shared_feed_forward_length", GgufValue::u32(static_cast<uint32_t>(ns * F)));
  set_tokenizer(w, tokenizer, c, tokenizer_path);

  const Model& m = *model;
  auto data = [&](const std::string& name) { return m.weight(name).data(); };
  auto whole = [&](const std::string& name, float scale = 1.0f) {
    return Pieces{{data(name)}, m.weight(name).size(), scale};
  };
  // A matrix [ne0 = in, out(, experts)] at its type in this file.
  auto matrix = [&](const std::string& name, std::vector<int64_t> dims, MatrixPlace place, Pieces pieces) {
    const GgmlType type = matrix_type(wt, place, c, dims[0]);
    pieces.row = dims[0];
    w.add_tensor({name, std::move(dims), type, encoder(type, std::move(pieces))});
  };
  matrix("token_embd.weight", {C, V}, {Role::kEmbedding}, whole("model.embed_tokens.weight"));
  w.add_tensor(
      {"output_norm.weight", {C}, GgmlType::kF32, encoder(GgmlType::kF32, whole("model.norm.weight"))});
  matrix("output.weight", {C, V}, {Role::kOutput},
         whole(c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight"));
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = cat("model.layers.", l, "."), b = cat("blk.", l, ".");
    auto f32 = [&](const std::string& name, const std::string& from) {
      w.add_tensor({b + name, {C}, GgmlType::kF32, encoder(GgmlType::kF32, whole(p + from))});
    };
    auto layer_matrix = [&](const std::string& name, std::vector<int64_t> dims, Role role, Pieces pieces) {
      matrix(b + name, std::move(dims), {role, l}, std::move(pieces));
    };
    f32("attn_norm.weight", "pre_attention_layernorm.weight");
    layer_matrix("attn_q.weight", {C, H * hd}, Role::kAttnQ, whole(p + "self_attn.q_proj.weight"));
    layer_matrix("attn_k.weight", {C, Hkv * hd}, Role::kAttnK, whole(p + "self_attn.k_proj.weight"));
    layer_matrix("attn_v.weight", {C, Hkv * hd}, Role::kAttnV, whole(p + "self_attn.v_proj.weight"));
    w.add_tensor({b + "attn_q.bias", {H * hd}, GgmlType::kF32, constant(0.0f, H * hd)});
    w.add_tensor({b + "attn_k.bias", {Hkv * hd}, GgmlType::kF32, constant(0.0f, Hkv * hd)});
    w.add_tensor({b + "attn_v.bias", {Hkv * hd}, GgmlType::kF32, constant(0.0f, Hkv * hd)});
    layer_matrix("attn_output.weight", {H * hd, C}, Role::kAttnOutput, whole(p + "self_attn.o_proj.weight"));
    f32("ffn_norm.weight", "pre_feedforward_layernorm.weight");
    // The router's routed rows come first ([E, C], shared rows last): the first Er rows are the routed gate.
    w.add_tensor({b + "ffn_gate_inp.weight",
                  {C, Er},
                  GgmlType::kF32,
                  encoder(GgmlType::kF32, Pieces{{data(p + "mlp.gate.weight")}, Er * C, 1.0f})});
    auto experts = [&](const std::string& proj, int64_t first, int64_t count, float scale) {
      Pieces pieces{{}, F * C, scale};
      for (int64_t e = first; e < first + count; ++e)
        pieces.parts.push_back(data(cat(p, "mlp.experts.", e, ".", proj)));
      return pieces;
    };
    layer_matrix("ffn_gate_exps.weight", {C, F, Er}, Role::kFfnGate, experts("gate_proj.weight", 0, Er, 1));
    layer_matrix("ffn_up_exps.weight", {C, F, Er}, Role::kFfnUp, experts("up_proj.weight", 0, Er, 1));
    layer_matrix("ffn_down_exps.weight", {F, C, Er}, Role::kFfnDown, experts("down_proj.weight", 0, Er, 1));
    // Several shared experts are one SwiGLU of width ns*F: gate/up rows stacked, down rows side by side.
    w.add_tensor({b + "ffn_gate_inp_shexp.weight", {C}, GgmlType::kF32, constant(kSharedGateWeight, C)});
    layer_matrix("ffn_gate_shexp.weight", {C, ns * F}, Role::kFfnGate,
                 experts("gate_proj.weight", Er, ns, 1));
    layer_matrix("ffn_up_shexp.weight", {C, ns * F}, Role::kFfnUp, experts("up_proj.weight", Er, ns, 1));
    Pieces down{{}, F, kSharedDownScale};
    for (int64_t row = 0; row < C; ++row)
      for (int64_t e = Er; e < E; ++e)
        down.parts.push_back(data(cat(p, "mlp.experts.", e, ".down_proj.weight")) + row * F);
    layer_matrix("ffn_down_shexp.weight", {ns * F, C}, Role::kFfnDown, down);
  }
  GgufExportSummary s;
  s.layers = L;
  s.routed_experts = Er;
  s.used_experts = used;
  Timer timer;
  w.write(out_path, [&](size_t done, size_t total) {
    if (done == total || done % 64 == 0)
      log_info(cat("[", kOp, "] ", done, "/", total, " tensors, ", human_duration(timer.seconds())));
  });
  s.tensors = 3 + 17 * L;  // embedding, final norm, output; 17 per layer (see above)
  s.bytes = static_cast<int64_t>(fs::file_size(out_path));
  return s;
}

}  // namespace emo
