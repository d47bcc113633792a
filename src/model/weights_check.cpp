// Legend: C = width, F = expert width, V = vocab, E = experts of a layer, H/Hkv = query/kv heads, hd = head
// dim.
#include "model/weights_check.h"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <vector>

#include "core/error.h"
#include "tensor/dtype.h"

namespace emo {
namespace {

constexpr const char* kOp = "model";

// One dimension the config implies and the config field that sets it (value: the field's own value, which
// differs from `size` for a product such as num_key_value_heads x head_dim).
struct Dim {
  int64_t size;
  std::string field;
  int64_t value;
};

class Checker {
 public:
  Checker(const ModelConfig& config, const SafetensorsCheckpoint& weights, std::string config_path)
      : config_(config), weights_(weights), config_path_(std::move(config_path)) {}

  void run() const {
    const int64_t C = config_.hidden_size, V = config_.vocab_size;
    const Dim width{C, "hidden_size", C}, vocab{V, "vocab_size", V};
    expect("model.embed_tokens.weight", {vocab, width});
    check_layer_count();
    for (int64_t l = 0; l < config_.num_hidden_layers; ++l) check_layer(l);
    expect("model.norm.weight", {width});
    if (!config_.tie_word_embeddings) expect("lm_head.weight", {vocab, width});
  }

 private:
  const ModelConfig& config_;
  const SafetensorsCheckpoint& weights_;
  std::string config_path_;

  [[noreturn]] void fail_here(const std::string& problem) const { fail_file(kOp, config_path_, problem); }

  void expect(const std::string& name, const std::vector<Dim>& dims) const {
    Shape shape;
    for (const Dim& d : dims) shape.push_back(d.size);
    if (!weights_.contains(name))
      fail_here(cat("the config implies a tensor '", name, "', but ", weights_.path(), " has no tensor '",
                    name, "'"));
    const Shape& found = weights_.info(name).shape;
    if (found == shape) return;
    size_t blamed = 0;  // the first dimension that differs (a rank mismatch blames the first)
    while (found.size() == shape.size() && blamed < shape.size() && found[blamed] == shape[blamed]) ++blamed;
    if (blamed >= dims.size()) blamed = 0;
    fail_here(cat(dims[blamed].field, " ", dims[blamed].value, " but tensor '", name, "' has shape ",
                  shape_str(found), " in ", weights_.file_of(name).path(), " (the config implies ",
                  shape_str(shape), ")"));
  }

  // Layers the weights hold: one more than the largest index of a "model.layers.<l>." name.
  int64_t layers_held() const {
    const std::string prefix = "model.layers.";
    int64_t held = 0;
    for (const std::string& name : weights_.names()) {
      if (name.rfind(prefix, 0) != 0) continue;
      int64_t l = -1;
      const char* begin = name.data() + prefix.size();
      const auto [end, ec] = std::from_chars(begin, name.data() + name.size(), l);
      if (ec == std::errc() && *end == '.' && l >= held) held = l + 1;
    }
    return held;
  }

  // Before any per-layer work: a layer count the weights do not back would loop (and allocate) per layer.
  void check_layer_count() const {
    const int64_t held = layers_held();
    if (config_.num_hidden_layers > held)
      fail_here(cat("num_hidden_layers ", config_.num_hidden_layers, " but the weights in ", weights_.path(),
                    " hold ", held, " layer(s) (no tensor 'model.layers.", held,
                    ".self_attn.q_proj.weight')"));
  }

  void check_layer(int64_t l) const {
    const int64_t C = config_.hidden_size, F = config_.intermediate_size, hd = config_.head_dim();
    const int64_t Hkv = config_.num_key_value_heads;
    const Dim width{C, "hidden_size", C}, ffn{F, "intermediate_size", F};
    const Dim kv{Hkv * hd, "num_key_value_heads", Hkv};
    const std::string p = "model.layers." + std::to_string(l) + ".";
    expect(p + "pre_attention_layernorm.weight", {width});
    expect(p + "self_attn.q_proj.weight", {width, width});  // H * hd = C
    expect(p + "self_attn.k_proj.weight", {kv, width});
    expect(p + "self_attn.v_proj.weight", {kv, width});
    expect(p + "self_attn.o_proj.weight", {width, width});
    expect(p + "pre_feedforward_layernorm.weight", {width});
    if (!config_.is_moe()) {
      expect(p + "mlp.gate_proj.weight", {ffn, width});
      expect(p + "mlp.up_proj.weight", {ffn, width});
      expect(p + "mlp.down_proj.weight", {width, ffn});
      return;
    }
    // The router before the experts: its rows bound the expert loop by what the file holds.
    const int64_t E = config_.experts_in_layer(l);
    const std::string experts_field =
        config_.num_experts_per_layer.empty() ? "num_experts" : cat("num_experts_per_layer[", l, "]");
    expect(p + "mlp.gate.weight", {{E, experts_field, E}, width});
    for (int64_t e = 0; e < E; ++e) {
      const std::string ep = p + "mlp.experts." + std::to_string(e) + ".";
      expect(ep + "gate_proj.weight", {ffn, width});
      expect(ep + "up_proj.weight", {ffn, width});
      expect(ep + "down_proj.weight", {width, ffn});
    }
  }
};

}  // namespace

void check_config_matches_weights(const ModelConfig& config, const SafetensorsCheckpoint& weights,
                                  const std::string& config_path) {
  Checker(config, weights, config_path).run();
}

namespace {

std::atomic<bool> allow_nonfinite{false};

// "nan", "inf" or "-inf": the element at `index` as a float.
std::string nonfinite_name(const TensorInfo& tensor, int64_t index) {
  float value = 0;
  const size_t size = dtype_size(tensor.dtype);
  convert_to_f32(tensor.dtype, static_cast<const char*>(tensor.data) + static_cast<size_t>(index) * size,
                 &value, 1);
  if (std::isnan(value)) return "nan";
  return value > 0 ? "inf" : "-inf";
}

// The row-major coordinates of a flat index: [38, 18] in a [64, 32] tensor.
std::string element_of(const Shape& shape, int64_t index) {
  Shape coordinates(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    coordinates[d] = shape[d] > 0 ? index % shape[d] : 0;
    index = shape[d] > 0 ? index / shape[d] : 0;
  }
  return shape_str(coordinates);
}

}  // namespace

void set_allow_nonfinite_weights(bool allow) {
  allow_nonfinite = allow;
}

bool nonfinite_weights_allowed() {
  return allow_nonfinite;
}

void check_finite(const TensorInfo& tensor, const std::string& file) {
  check_finite(tensor, file, nullptr);
}

void check_finite(const TensorInfo& tensor, const std::string& file,
                  const std::function<void(const void* begin, int64_t bytes)>& after_piece) {
  const bool floats =
      tensor.dtype == DType::kF32 || tensor.dtype == DType::kBF16 || tensor.dtype == DType::kF16;
  if (allow_nonfinite || !floats) return;  // integer weights (int8 with scales) hold no NaN
  const int64_t n = tensor.numel();
  const int64_t size = static_cast<int64_t>(dtype_size(tensor.dtype));
  const int64_t piece = kCheckPieceBytes / size;
  int64_t bad = -1;
  for (int64_t begin = 0; begin < n && bad < 0; begin += piece) {
    const char* p = static_cast<const char*>(tensor.data) + begin * size;
    const int64_t count = std::min(piece, n - begin);
    const int64_t found = first_nonfinite(tensor.dtype, p, count);
    if (found >= 0) bad = begin + found;
    if (after_piece) after_piece(p, count * size);
  }
  if (bad < 0) return;
  fail_file(kOp, file,
            cat("tensor '", tensor.name, "' ", shape_str(tensor.shape), " holds ",
                nonfinite_name(tensor, bad), " at index ", bad, " (element ", element_of(tensor.shape, bad),
                "): the weights are damaged or come from a run that diverged; emo --allow-nonfinite loads "
                "them anyway"));
}

void check_finite(const SafetensorsCheckpoint& weights, const std::string& name) {
  check_finite(weights.info(name), weights.file_of(name).path());
}

CheckedCheckpoint open_checked_checkpoint(const std::string& dir) {
  const std::string config_path = (std::filesystem::path(dir) / "config.json").string();
  CheckedCheckpoint opened{ModelConfig::load(config_path), SafetensorsCheckpoint::open(dir)};
  check_config_matches_weights(opened.config, opened.weights, config_path);
  return opened;
}

}  // namespace emo
