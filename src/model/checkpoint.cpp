// Checkpoint I/O in the Hugging Face layout (docs/emo.md §2): config.json plus model.safetensors,
// or shards model-0000N-of-0000M.safetensors with model.safetensors.index.json. fp32, bf16 and f16 load; fp32
// and bf16 save.
#include <filesystem>
#include <set>

#include "core/error.h"
#include "core/log.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/model_weights.h"
#include "model/weights_check.h"

namespace emo {
namespace {

namespace fs = std::filesystem;

// 5 GB, the Hugging Face default max_shard_size.
constexpr int64_t kDefaultShardBytes = 5'000'000'000;

// "float32" / "bfloat16" (the torch_dtype spellings) and their short forms.
DType storage_dtype(const std::string& name, std::string* torch_name) {
  if (name == "float32" || name == "fp32" || name == "f32" || name == "F32") {
    *torch_name = "float32";
    return DType::kF32;
  }
  if (name == "bfloat16" || name == "bf16" || name == "BF16") {
    *torch_name = "bfloat16";
    return DType::kBF16;
  }
  fail("checkpoint", cat("cannot save weights as '", name, "' (float32 or bfloat16)"));
}

// Removes weight files of an earlier save that the new one did not write (a sharded save replaced by a single
// file, or a different shard count), so the directory holds one consistent checkpoint.
void remove_stale_weight_files(const std::string& dir, const std::vector<std::string>& written) {
  std::set<std::string> keep(written.begin(), written.end());
  for (const auto& item : fs::directory_iterator(dir)) {
    const std::string name = item.path().filename().string();
    bool weights = name == SafetensorsCheckpoint::kIndexFile || name == SafetensorsCheckpoint::kSingleFile ||
                   (name.rfind("model-", 0) == 0 && item.path().extension() == ".safetensors");
    if (weights && !keep.count(name)) fs::remove(item.path());
  }
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& dir) {
  // config.json is checked against the weights' headers before the model is sized by it.
  const CheckedCheckpoint opened = open_checked_checkpoint(dir);
  const SafetensorsCheckpoint& checkpoint = opened.weights;
  auto model = std::make_unique<Model>(opened.config);
  std::set<std::string> used;
  for (auto& entry : model->weights_->entries) {
    if (!checkpoint.contains(entry.name))
      fail_file("checkpoint", dir, cat("no tensor '", entry.name, "' (the config.json implies it)"));
    const TensorInfo& info = checkpoint.info(entry.name);
    if (info.shape != entry.value.shape())
      fail_file("checkpoint", checkpoint.file_of(entry.name).path(),
                cat("tensor '", entry.name, "' has shape ", shape_str(info.shape),
                    ", the config.json implies ", shape_str(entry.value.shape())));
    check_finite(checkpoint, entry.name);
    checkpoint.read_fp32_into(entry.name, entry.value.data(), entry.value.size());
    used.insert(entry.name);
  }
  int64_t unused = 0;
  for (const auto& name : checkpoint.names()) unused += used.count(name) ? 0 : 1;
  if (unused > 0)
    log_warn(cat("[checkpoint] ", dir, ": ignored ", unused, " tensor(s) the model does not use"));
  return model;
}

void Model::save(const std::string& dir, const std::string& dtype) const {
  save(dir, dtype, kDefaultShardBytes);
}

void Model::save(const std::string& dir, const std::string& dtype, int64_t max_shard_bytes) const {
  std::string torch_dtype;
  const DType stored = storage_dtype(dtype, &torch_dtype);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail_file("checkpoint", dir, "cannot create the directory: " + ec.message());
  std::vector<SafetensorsEntry> tensors;
  for (const auto& entry : weights_->entries) tensors.emplace_back(entry.name, entry.value, stored);
  std::vector<std::string> written =
      write_safetensors_sharded(dir, tensors, max_shard_bytes, {{"format", "pt"}});
  remove_stale_weight_files(dir, written);
  ModelConfig config = config_;
  config.torch_dtype = torch_dtype;
  config.save((fs::path(dir) / "config.json").string());
}

}  // namespace emo
