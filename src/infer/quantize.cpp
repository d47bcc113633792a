#include "infer/quantize.h"

#include <deque>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/log.h"
#include "data/dataset.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "kernels/q4.h"
#include "kernels/quant.h"
#include "model/weights_check.h"
#include "select/prune.h"

namespace emo {
namespace {

namespace fs = std::filesystem;
constexpr const char* kOp = "quantize";

bool is_router(const std::string& name) {
  const std::string suffix = ".mlp.gate.weight";
  return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The matrices q4 stores in blocks: attention and expert (or dense MLP) projections.
bool is_q4_matrix(const std::string& name) {
  for (const char* suffix :
       {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
        "self_attn.o_proj.weight", "gate_proj.weight", "up_proj.weight", "down_proj.weight"}) {
    const std::string s = suffix;
    if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) return true;
  }
  return false;
}

bool is_embedding_or_head(const std::string& name) {
  return name == "model.embed_tokens.weight" || name == "lm_head.weight";
}

// Buffers that must live until the checkpoint is written.
struct Storage {
  std::deque<Tensor> fp32;
  std::deque<std::vector<int8_t>> int8;
  std::deque<std::vector<uint8_t>> q4;
};

// fp32 values of a tensor: the mapping itself when stored as aligned F32, else a converted copy.
const float* fp32_values(const SafetensorsCheckpoint& in, const TensorInfo& info, Storage& storage) {
  if (info.dtype == DType::kF32 && reinterpret_cast<uintptr_t>(info.data) % alignof(float) == 0)
    return static_cast<const float*>(info.data);
  storage.fp32.push_back(in.read_fp32(info.name));
  return storage.fp32.back().data();
}

void add_int8(std::vector<SafetensorsEntry>& out, const SafetensorsCheckpoint& in, const TensorInfo& info,
              Storage& storage) {
  const int64_t rows = info.shape[0], cols = info.shape[1];
  Tensor converted;  // only for inputs that are not aligned fp32; freed once quantised
  const float* w = static_cast<const float*>(info.data);  // [rows, cols]
  if (info.dtype != DType::kF32 || reinterpret_cast<uintptr_t>(info.data) % alignof(float) != 0) {
    converted = in.read_fp32(info.name);
    w = converted.data();
  }
  storage.int8.emplace_back(static_cast<size_t>(rows * cols));
  storage.fp32.emplace_back(Shape{rows});
  quantize_rows_int8(storage.int8.back().data(), storage.fp32.back().data(), w, rows, cols);
  out.push_back(SafetensorsEntry::raw(info.name, DType::kI8, info.shape, storage.int8.back().data()));
  out.emplace_back(info.name + "_scale", DType::kF32, Shape{rows}, storage.fp32.back().data());
}

void add_q4(std::vector<SafetensorsEntry>& out, const SafetensorsCheckpoint& in, const TensorInfo& info,
            Q4Scale scale, Storage& storage) {
  const int64_t rows = info.shape[0], cols = info.shape[1];
  if (cols % kQ4BlockWeights != 0)
    fail_file(kOp, in.file_of(info.name).path(),
              cat("tensor '", info.name, "' ", shape_str(info.shape), ": q4 stores rows in blocks of ",
                  kQ4BlockWeights, " weights, and ", cols, " columns are not a multiple of ", kQ4BlockWeights,
                  " (use --dtype int8 or bf16)"));
  Tensor converted;  // only for inputs that are not aligned fp32; freed once quantised
  const float* w = static_cast<const float*>(info.data);  // [rows, cols]
  if (info.dtype != DType::kF32 || reinterpret_cast<uintptr_t>(info.data) % alignof(float) != 0) {
    converted = in.read_fp32(info.name);
    w = converted.data();
  }
  storage.q4.emplace_back(static_cast<size_t>(rows * q4_row_bytes(cols)));
  quantize_rows_q4_0(storage.q4.back().data(), w, rows, cols, scale);
  out.push_back(SafetensorsEntry::raw(info.name, DType::kQ4_0, info.shape, storage.q4.back().data()));
}

// The stored format of tensor `name` under `target`: kQ4_0, kI8 (with row scales), kBF16 or kF32.
DType stored_dtype(const std::string& name, const TensorInfo& info, const QuantizeTarget& target) {
  const bool matrix = info.shape.size() == 2;
  if (target.dtype == DType::kBF16) return DType::kBF16;
  if (!matrix || is_router(name)) return DType::kF32;
  if (target.dtype == DType::kI8) return DType::kI8;
  if (is_q4_matrix(name)) return DType::kQ4_0;
  return is_embedding_or_head(name) ? target.others : DType::kF32;
}

void copy_if_present(const fs::path& from, const fs::path& to) {
  if (fs::exists(from)) copy_file_checked(from.string(), to.string());
}

}  // namespace

SafetensorsMetadata quantized_metadata(const QuantizeTarget& target) {
  const DType dtype = target.dtype;
  const std::string format = dtype == DType::kI8 ? "int8-per-row" : dtype == DType::kQ4_0 ? "q4_0" : "bf16";
  return {{"format", "pt"}, {"emo_weight_format", format}};
}

void describe_quantization(ModelConfig& config, const QuantizeTarget& target) {
  const DType dtype = target.dtype;
  if (dtype == DType::kI8) {
    config.torch_dtype = "float32";  // the compute dtype; matrices are I8 with "<name>_scale"
    config.extra["quantization_config"] = {{"quant_method", "emo_int8_per_row"},
                                           {"scale_suffix", "_scale"},
                                           {"modules_not_quantized", {"mlp.gate", "norms"}},
                                           {"note", "emo-specific; other libraries do not read it"}};
  } else if (dtype == DType::kQ4_0) {
    config.torch_dtype = "float32";  // the compute dtype
    const std::string others = target.others == DType::kI8 ? "int8 per row (<name>_scale)" : "bfloat16";
    config.extra["quantization_config"] = {
        {"quant_method", "emo_q4_0"},
        {"block_size", kQ4BlockWeights},
        {"block_bytes", kQ4BlockBytes},
        {"layout",
         "llama.cpp Q4_0: per block an fp16 scale d, then 16 bytes, byte j = element j (low nibble) and j + "
         "16 "
         "(high); weight = (nibble - 8) * d; stored as U8 [rows, cols / 32 * 18]"},
        {"scale", target.scale == Q4Scale::kFitted ? "least squares per block" : "extreme / -8"},
        {"modules_quantized",
         {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "gate_proj",
          "up_proj", "down_proj"}},
        {"embed_tokens_and_lm_head", others},
        {"modules_not_quantized", {"mlp.gate", "norms"}},
        {"note", "emo-specific; other libraries do not read it (emo export gguf --dtype q4_0 does)"}};
  } else {
    config.torch_dtype = "bfloat16";
  }
}

QuantizeSummary quantize_checkpoint(const std::string& model_dir, const std::string& out_dir,
                                    const QuantizeTarget& target, OutputRules rules,
                                    int64_t max_shard_bytes) {
  const DType dtype = target.dtype;
  EMO_CHECK(dtype == DType::kBF16 || dtype == DType::kI8 || dtype == DType::kQ4_0, kOp, "cannot write ",
            dtype_name(dtype), " weights (bf16, int8 or q4)");
  EMO_CHECK(target.others == DType::kBF16 || target.others == DType::kI8, kOp,
            "q4 keeps the embeddings and lm_head in bf16 or int8, not ", dtype_name(target.others));
  rules.inputs.push_back(model_dir);
  OutputDirectory output(out_dir, std::move(rules));
  const fs::path out(output.temp_path());
  CheckedCheckpoint opened = open_checked_checkpoint(model_dir);
  ModelConfig& config = opened.config;
  const SafetensorsCheckpoint& in = opened.weights;
  Storage storage;
  std::vector<SafetensorsEntry> entries;
  QuantizeSummary summary;
  for (const std::string& name : in.names()) {
    const TensorInfo& info = in.info(name);
    if (info.dtype != DType::kF32 && info.dtype != DType::kBF16 && info.dtype != DType::kF16)
      fail_file(kOp, in.file_of(name).path(),
                cat("tensor '", name, "' is ", dtype_name(info.dtype),
                    "; only F32, BF16 or F16 checkpoints can ", "be converted"));
    check_finite(in, name);  // before anything is written
    summary.bytes_in += static_cast<int64_t>(info.nbytes);
    ++summary.tensors;
    const DType stored = stored_dtype(name, info, target);
    if (stored == DType::kQ4_0)
      add_q4(entries, in, info, target.scale, storage);
    else if (stored == DType::kI8)
      add_int8(entries, in, info, storage);
    else if (stored == DType::kBF16 && info.dtype == DType::kBF16)
      entries.push_back(SafetensorsEntry::raw(name, DType::kBF16, info.shape, info.data));
    else
      entries.emplace_back(name, stored, info.shape, fp32_values(in, info, storage));
    summary.converted += stored != DType::kF32 && info.shape.size() == 2 ? 1 : 0;
  }
  for (const SafetensorsEntry& e : entries) summary.bytes_out += static_cast<int64_t>(e.nbytes());

  write_safetensors_sharded(out.string(), entries, max_shard_bytes, quantized_metadata(target));
  describe_quantization(config, target);
  config.save((out / "config.json").string());
  for (const char* name : kCompanionFiles) copy_if_present(fs::path(model_dir) / name, out / name);
  copy_if_present(fs::path(model_dir) / "pruning_metadata.json", out / "pruning_metadata.json");
  output.commit();
  return summary;
}

std::unique_ptr<Model> load_model_dequantized(const std::string& dir) {
  CheckedCheckpoint opened = open_checked_checkpoint(dir);
  ModelConfig& config = opened.config;
  const SafetensorsCheckpoint& in = opened.weights;
  config.extra.erase("quantization_config");
  auto model = std::make_unique<Model>(config);
  for (const std::string& name : model->param_names()) {
    Tensor& value = model->weight(name);
    if (!in.contains(name)) fail_file(kOp, dir, cat("no tensor '", name, "' (the config.json implies it)"));
    const TensorInfo& info = in.info(name);
    if (info.shape != value.shape())
      fail_file(kOp, in.file_of(name).path(),
                cat("tensor '", name, "' has shape ", shape_str(info.shape), ", the config.json implies ",
                    shape_str(value.shape())));
    if (info.dtype != DType::kI8) {
      check_finite(in, name);
      in.read_fp32_into(name, value.data(), value.size());
      continue;
    }
    const std::string scale = name + "_scale";
    if (!in.contains(scale))
      fail_file(kOp, dir, cat("int8 tensor '", name, "' has no row scales '", scale, "'"));
    check_finite(in, scale);
    MatrixView view{DType::kI8, info.data, static_cast<const float*>(in.info(scale).data), info.shape[0],
                    info.shape[1]};
    dequantize_rows(value.data(), view, 0, view.rows);
  }
  return model;
}

void write_text_dataset(const std::string& text_path, const Tokenizer& tokenizer,
                        const std::string& out_path) {
  std::ifstream in(text_path, std::ios::binary);
  if (!in) fail_file(kOp, text_path, "cannot open");
  std::stringstream text;
  text << in.rdbuf();
  const std::vector<int32_t> tokens = tokenizer.encode_ordinary(text.str());
  EMO_CHECK(tokens.size() >= 2, kOp, text_path, ": too little text for a perplexity (", tokens.size(),
            " tokens)");
  data::DatasetWriter writer({"text"}, static_cast<uint32_t>(tokenizer.vocab_size()));
  writer.add(std::span<const int32_t>(tokens), 0);
  writer.write(out_path);
}

std::vector<DomainLoss> perplexity_of_checkpoints(const std::vector<std::string>& dirs,
                                                  const std::string& dataset_path,
                                                  const PerplexityOptions& options) {
  data::Dataset dataset = data::Dataset::open(dataset_path);
  RoutingOptions routing;
  routing.training = false;
  std::vector<DomainLoss> out;
  for (const std::string& dir : dirs) {
    auto model = load_model_dequantized(dir);
    std::vector<DomainLoss> losses = evaluate_domains(*model, dataset, routing, options);
    EMO_CHECK(!losses.empty(), kOp, dataset_path, ": no tokens to score");
    out.push_back(losses.back());  // "all"
  }
  return out;
}

}  // namespace emo
