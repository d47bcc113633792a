#include "infer/quantize.h"

#include <deque>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/log.h"
#include "data/dataset.h"
#include "io/safetensors.h"
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

// Buffers that must live until the checkpoint is written.
struct Storage {
  std::deque<Tensor> fp32;
  std::deque<std::vector<int8_t>> int8;
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

void copy_if_present(const fs::path& from, const fs::path& to) {
  if (fs::exists(from)) fs::copy_file(from, to, fs::copy_options::overwrite_existing);
}

}  // namespace

QuantizeSummary quantize_checkpoint(const std::string& model_dir, const std::string& out_dir, DType dtype,
                                    OutputRules rules, int64_t max_shard_bytes) {
  EMO_CHECK(dtype == DType::kBF16 || dtype == DType::kI8, kOp, "cannot write ", dtype_name(dtype),
            " weights (bf16 or int8)");
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
    const bool matrix = info.shape.size() == 2;
    if (dtype == DType::kI8 && matrix && !is_router(name)) {
      add_int8(entries, in, info, storage);
      ++summary.converted;
    } else if (dtype == DType::kBF16 && info.dtype == DType::kBF16) {
      entries.push_back(SafetensorsEntry::raw(name, DType::kBF16, info.shape, info.data));
    } else {
      const DType target = dtype == DType::kBF16 ? DType::kBF16 : DType::kF32;
      entries.emplace_back(name, target, info.shape, fp32_values(in, info, storage));
      summary.converted += target == DType::kBF16 && matrix ? 1 : 0;
    }
  }
  for (const SafetensorsEntry& e : entries) summary.bytes_out += static_cast<int64_t>(e.nbytes());

  const std::string format = dtype == DType::kI8 ? "int8-per-row" : "bf16";
  write_safetensors_sharded(out.string(), entries, max_shard_bytes,
                            {{"format", "pt"}, {"emo_weight_format", format}});
  if (dtype == DType::kI8) {
    config.torch_dtype = "float32";  // the compute dtype; matrices are I8 with "<name>_scale"
    config.extra["quantization_config"] = {{"quant_method", "emo_int8_per_row"},
                                           {"scale_suffix", "_scale"},
                                           {"modules_not_quantized", {"mlp.gate", "norms"}},
                                           {"note", "emo-specific; other libraries do not read it"}};
  } else {
    config.torch_dtype = "bfloat16";
  }
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
