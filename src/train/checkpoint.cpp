#include "train/checkpoint.h"

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/error.h"
#include "core/log.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/weights_check.h"

namespace emo {

namespace fs = std::filesystem;

namespace {

constexpr const char* kOp = "checkpoint";
constexpr const char* kStateFile = "train_state.json";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kLatestFile = "latest";
constexpr const char* kTempPrefix = ".tmp-";

// step-NNNNNNNN -> NNNNNNNN, or -1 for a name that is not "step-..." at all. A "step-" name whose step is
// no number of 0 to kMaxSteps (step--0000004, step-1e15, 20 digits) is an error naming `path`: a damaged
// or hand-made checkpoint must not be skipped in silence (the run would resume from an older one).
int64_t step_of(const fs::path& path) {
  const std::string name = path.filename().string();
  if (name.rfind("step-", 0) != 0) return -1;
  const std::string digits = name.substr(5);
  int64_t step = -1;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
  if (digits.empty() || digits[0] == '-' || ec != std::errc() || end != digits.data() + digits.size() ||
      step > kMaxSteps)
    fail_file(kOp, path.string(),
              cat("not a checkpoint name: expected step-NNNNNNNN with a step of 0 to ", kMaxSteps));
  return step;
}

// A checkpoint is complete when its state file, written last, exists.
bool is_complete(const fs::path& dir) {
  return fs::is_regular_file(dir / kStateFile);
}

std::vector<std::pair<int64_t, fs::path>> complete_checkpoints(const fs::path& checkpoints_dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  if (!fs::is_directory(checkpoints_dir)) return out;
  for (const auto& entry : fs::directory_iterator(checkpoints_dir)) {
    if (!entry.is_directory()) continue;
    int64_t step = step_of(entry.path());
    if (step >= 0 && entry.is_directory() && is_complete(entry.path())) out.emplace_back(step, entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

nlohmann::json TrainState::to_json(const TrainConfig& config) const {
  return {{"step", step},
          {"tokens", tokens},
          {"data", data},
          {"rng", {{"state", rng_state}, {"inc", rng_inc}}},
          {"elapsed_seconds", elapsed_seconds},
          {"world_size", world_size},
          {"config", config.to_json()}};
}

TrainState TrainState::from_json(const nlohmann::json& j, const std::string& source) {
  TrainState s;
  s.step = json_get<int64_t>(j, "step", source);
  s.tokens = json_get<int64_t>(j, "tokens", source);
  if (!j.contains("data")) json_detail::fail_key(source, "data", "missing");
  s.data = j.at("data");
  if (!j.contains("rng")) json_detail::fail_key(source, "rng", "missing");
  s.rng_state = json_get<uint64_t>(j.at("rng"), "state", source + " (rng)");
  s.rng_inc = json_get<uint64_t>(j.at("rng"), "inc", source + " (rng)");
  s.elapsed_seconds = json_get_or<double>(j, "elapsed_seconds", 0.0, source);
  s.world_size = json_get_or<int>(j, "world_size", 1, source);
  if (s.step < 0 || s.step > kMaxSteps)
    fail_file(kOp, source, cat("step ", s.step, " is not a step of a run (0 to ", kMaxSteps, ")"));
  if (s.tokens < 0) fail_file(kOp, source, cat("tokens ", s.tokens, " is negative"));
  if (s.world_size < 1) fail_file(kOp, source, cat("world_size ", s.world_size, " must be at least 1"));
  return s;
}

std::string checkpoint_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

std::string save_checkpoint(const std::string& checkpoints_dir, const Model& model, AdamW& optimizer,
                            const std::vector<Param>& params, const TrainState& state,
                            const TrainConfig& config, int64_t keep_last, const CheckpointFault& fault) {
  const fs::path root(checkpoints_dir);
  const std::string name = checkpoint_name(state.step);
  const fs::path final_dir = root / name, temp_dir = root / (kTempPrefix + name);
  fs::create_directories(root);
  // Leftovers of an interrupted write or deletion are never complete checkpoints: clear them (and any
  // incomplete step-* a version of emo before the rename-then-delete rule may have left).
  std::vector<fs::path> leftovers;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::string entry_name = entry.path().filename().string();
    const bool temp_latest =
        entry_name.rfind(std::string(kLatestFile) + ".tmp", 0) == 0;  // atomic_write_file's
    if (entry_name.rfind(kTempPrefix, 0) == 0 || temp_latest ||
        (step_of(entry.path()) >= 0 && !is_complete(entry.path())))
      leftovers.push_back(entry.path());
  }
  for (const fs::path& leftover : leftovers) fs::remove_all(leftover);
  fs::create_directories(temp_dir);

  model.save(temp_dir.string());
  if (fault) fault("model");
  std::vector<SafetensorsEntry> moments;
  for (auto& [tensor_name, tensor] : optimizer.state_tensors(params))
    moments.push_back({tensor_name, tensor});
  write_safetensors((temp_dir / kOptimizerFile).string(), moments);
  if (fault) fault("optimizer");
  atomic_write_file((temp_dir / "train_config.json").string(), config.to_json().dump(2) + "\n");
  // The tokenizer travels with the model (the Hugging Face layout keeps them together; emo prune copies it).
  if (!config.data.tokenizer.empty() && fs::is_regular_file(config.data.tokenizer))
    copy_file_checked(config.data.tokenizer, (temp_dir / "tokenizer.json").string());
  atomic_write_file((temp_dir / kStateFile).string(), state.to_json(config).dump(2) + "\n");
  if (fault) fault("state");

  // Replacing an existing checkpoint of the same step (a re-run): move the old one aside first, so a crash
  // between the two renames leaves no half state under the final name (the newest complete one is used).
  const fs::path old_dir = root / (kTempPrefix + std::string("old-") + name);
  if (fs::exists(final_dir)) fs::rename(final_dir, old_dir);
  fs::rename(temp_dir, final_dir);
  fs::remove_all(old_dir);
  sync_directory(root.string());
  atomic_write_file((root / kLatestFile).string(), name + "\n");

  // Old checkpoints are renamed to a temporary name before they are deleted: a kill in the middle of a
  // deletion then leaves only a .tmp- directory (cleared by the next save), never a half-deleted step-*.
  auto all = complete_checkpoints(root);
  for (size_t i = 0; i + static_cast<size_t>(keep_last) < all.size(); ++i) {
    const fs::path doomed = root / (kTempPrefix + all[i].second.filename().string());
    fs::rename(all[i].second, doomed);
    fs::remove_all(doomed);
  }
  return final_dir.string();
}

std::string resolve_checkpoint(const std::string& path) {
  fs::path p(path);
  if (is_complete(p)) return p.string();
  if (fs::is_directory(p / "checkpoints")) p = p / "checkpoints";
  if (!fs::is_directory(p)) return "";
  // Listed first: a damaged checkpoint name is an error even when `latest` names a good one.
  auto all = complete_checkpoints(p);
  if (fs::is_regular_file(p / kLatestFile)) {
    std::ifstream in(p / kLatestFile);
    std::string name;
    std::getline(in, name);
    if (!name.empty() && is_complete(p / name)) return (p / name).string();
    log_warn(cat("[checkpoint] ", (p / kLatestFile).string(), ": names '", name,
                 "', which is not a complete checkpoint; using the newest complete one"));
  }
  return all.empty() ? std::string() : all.back().second.string();
}

std::string short_model_name(const std::string& model_dir) {
  fs::path p = fs::path(model_dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  if (p.parent_path().filename() == "checkpoints") return p.parent_path().parent_path().filename().string();
  return p.filename().string();
}

TrainConfig read_checkpoint_config(const std::string& checkpoint_dir, TrainState* state) {
  const fs::path state_path = fs::path(checkpoint_dir) / kStateFile;
  nlohmann::json j = read_json_file(state_path.string(), kOp);
  if (state) *state = TrainState::from_json(j, state_path.string());
  if (!j.contains("config")) fail_file(kOp, state_path.string(), "no 'config'");
  return TrainConfig::from_json(j["config"], state_path.string());
}

LoadedCheckpoint load_checkpoint(const std::string& checkpoint_dir) {
  LoadedCheckpoint out;
  out.path = checkpoint_dir;
  out.config = read_checkpoint_config(checkpoint_dir, &out.state);
  out.model = Model::load(checkpoint_dir);
  return out;
}

void load_optimizer(const std::string& checkpoint_dir, AdamW& optimizer, const std::vector<Param>& params,
                    int64_t steps_taken) {
  const std::string path = (fs::path(checkpoint_dir) / kOptimizerFile).string();
  SafetensorsFile file = SafetensorsFile::open(path);
  for (auto& [name, tensor] : optimizer.state_tensors(params)) {
    if (!file.contains(name)) fail_file(kOp, path, cat("no tensor '", name, "'"));
    check_finite(file.info(name), path);
    Tensor loaded = file.read_fp32(name);
    if (loaded.shape() != tensor->shape())
      fail_file(kOp, path,
                cat("'", name, "' has shape ", shape_str(loaded.shape()), ", the model needs ",
                    shape_str(tensor->shape())));
    *tensor = std::move(loaded);
  }
  optimizer.set_steps_taken(steps_taken);
}

}  // namespace emo
