#include "infer/model_files.h"

#include <filesystem>

#include "core/error.h"
#include "io/safetensors.h"
#include "train/checkpoint.h"

namespace emo {

namespace fs = std::filesystem;

namespace {

bool is_model_dir(const fs::path& dir) {
  return fs::is_regular_file(dir / "config.json") && SafetensorsCheckpoint::exists(dir.string());
}

}  // namespace

std::string resolve_model_dir(const std::string& model, const std::string& op) {
  fs::path path(model);
  if (is_model_dir(path)) return model;
  // checkpoints/latest is a one-line file naming the step; its directory resolves to that step.
  if (fs::is_regular_file(path) && path.filename() == "latest") path = path.parent_path();
  if (fs::is_directory(path)) {
    const std::string checkpoint = resolve_checkpoint(path.string());
    if (!checkpoint.empty() && is_model_dir(checkpoint)) return checkpoint;
  }
  if (!fs::exists(path)) fail_file(op, model, "no such file or directory");
  fail_file(
      op, model,
      "not a model: expected a directory with config.json and model.safetensors (or "
      "model.safetensors.index.json and its shards), a training run directory or its checkpoints/latest");
}

std::vector<std::string> tokenizer_candidates(const std::string& model_dir) {
  return {(fs::path(model_dir) / "tokenizer.json").string()};
}

std::optional<std::string> find_tokenizer(const std::string& model_dir) {
  for (const std::string& path : tokenizer_candidates(model_dir))
    if (fs::is_regular_file(path)) return path;
  return std::nullopt;
}

std::string tokenizer_path_for(const std::string& model_dir, const std::string& option,
                               const std::string& op) {
  if (!option.empty()) return option;
  if (auto found = find_tokenizer(model_dir)) return *found;
  std::string looked;
  for (const std::string& path : tokenizer_candidates(model_dir))
    looked += (looked.empty() ? "" : ", ") + path;
  fail_file(op, model_dir,
            cat("no tokenizer found beside the model (looked for ", looked,
                "); give --tokenizer FILE (for the released EMO models: emo tokenizer dolma2 --out DIR, then "
                "--tokenizer DIR/tokenizer.json)"));
}

Tokenizer load_tokenizer_for(const std::string& model_dir, const std::string& option, int64_t model_vocab,
                             const std::string& op) {
  const std::string path = tokenizer_path_for(model_dir, option, op);
  Tokenizer tokenizer = Tokenizer::load(path);
  // Ids past the embedding would be read out of its bounds; a smaller tokenizer is fine (padded embedding).
  if (tokenizer.vocab_size() > model_vocab)
    fail_file(
        op, path,
        cat("the tokenizer has ", tokenizer.vocab_size(), " tokens but the model ", model_dir,
            " has an embedding of ", model_vocab,
            " rows (vocab_size): it is another model's tokenizer; give the model's own with --tokenizer"));
  return tokenizer;
}

}  // namespace emo
