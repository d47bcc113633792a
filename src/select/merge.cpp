#include "select/merge.h"

#include <deque>
#include <filesystem>
#include <map>
#include <regex>
#include <vector>

#include "core/error.h"
#include "core/log.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/weights_check.h"
#include "select/subset.h"

namespace emo {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kMaxShardBytes = 5'000'000'000;  // Hugging Face's default shard size

// kept[l][j] = original index of expert j of pruned layer l, checked against the parent's and the pruned
// model's shapes.
std::vector<std::vector<int32_t>> read_kept(const std::string& pruned_dir, const ModelConfig& parent,
                                            const ModelConfig& pruned) {
  const std::string path = (fs::path(pruned_dir) / "pruning_metadata.json").string();
  if (!fs::exists(path)) fail_file("merge", path, "missing: the model was not made by emo prune");
  const nlohmann::json meta = read_json_file(path);
  if (!meta.contains("kept_original_indices") || !meta["kept_original_indices"].is_array())
    fail_file("merge", path, "needs an array \"kept_original_indices\"");
  std::vector<std::vector<int32_t>> kept;
  try {
    kept = meta["kept_original_indices"].get<std::vector<std::vector<int32_t>>>();
  } catch (const nlohmann::json::exception&) {
    fail_file("merge", path, "\"kept_original_indices\" must be a list of integer lists");
  }
  if (static_cast<int64_t>(kept.size()) != parent.num_hidden_layers ||
      pruned.num_hidden_layers != parent.num_hidden_layers)
    fail_file("merge", path,
              cat("lists ", kept.size(), " layers, the parent has ", parent.num_hidden_layers,
                  ", the pruned model ", pruned.num_hidden_layers));
  for (int64_t l = 0; l < parent.num_hidden_layers; ++l) {
    if (static_cast<int64_t>(kept[l].size()) != pruned.experts_in_layer(l))
      fail_at("merge", path, cat("layer ", l),
              cat("lists ", kept[l].size(), " experts, the pruned model has ", pruned.experts_in_layer(l)));
    std::vector<bool> seen(parent.experts_in_layer(l), false);
    for (int32_t e : kept[l]) {
      if (e < 0 || e >= parent.experts_in_layer(l))
        fail_at("merge", path, cat("layer ", l),
                cat("expert index ", e, " out of range (the parent has ", parent.experts_in_layer(l), ")"));
      if (seen[e]) fail_at("merge", path, cat("layer ", l), cat("duplicate expert ", e));
      seen[e] = true;
    }
  }
  return kept;
}

// The pruned model's pruning_metadata.json records the fingerprint of the model it was pruned from (emo prune
// since it has one); writing its experts into another model would mix two models, so that is refused.
void check_parent_is_source(const std::string& parent_dir, const ModelConfig& parent,
                            const std::string& pruned_dir) {
  const std::string path = (fs::path(pruned_dir) / "pruning_metadata.json").string();
  const nlohmann::json meta = read_json_file(path, "merge");
  if (!meta.contains("model") || !meta["model"].is_object()) return;
  const std::string source = json_get_or<std::string>(meta["model"], "fingerprint", "", path);
  if (source.empty()) return;
  const std::string here = checkpoint_fingerprint(parent_dir, parent);
  if (here != source)
    fail_file(
        "merge", path,
        cat("the pruned model was made from another checkpoint (router fingerprint ", source,
            ") than the parent ", parent_dir, " (", here, "): merge it into the model it was pruned from"));
}

struct ExpertRef {
  int64_t layer = -1, expert = -1;  // expert -1: the router of the layer
  std::string rest;
};

// The layer/expert a parent tensor belongs to, or layer -1 for any other tensor.
ExpertRef parse_ref(const std::string& name) {
  static const std::regex router(R"(model\.layers\.(\d+)\.mlp\.gate\.weight)");
  static const std::regex expert(R"(model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(.+))");
  std::smatch m;
  ExpertRef ref;
  if (std::regex_match(name, m, router)) {
    ref.layer = std::stoll(m[1]);
  } else if (std::regex_match(name, m, expert)) {
    ref.layer = std::stoll(m[1]);
    ref.expert = std::stoll(m[2]);
    ref.rest = m[3];
  }
  return ref;
}

void combine(float* dst, const float* src, int64_t n, MergeMode mode) {
  if (mode == MergeMode::kReplace)
    std::copy(src, src + n, dst);
  else
    for (int64_t i = 0; i < n; ++i) dst[i] = 0.5f * (dst[i] + src[i]);
}

}  // namespace

MergeMode parse_merge_mode(const std::string& name) {
  if (name == "replace") return MergeMode::kReplace;
  if (name == "average") return MergeMode::kAverage;
  fail("merge", cat("unknown mode '", name, "' (replace, average)"));
}

MergeSummary merge_checkpoint(const std::string& parent_dir, const std::string& pruned_dir,
                              const std::string& out_dir, MergeMode mode, OutputRules rules) {
  Timer timer;
  rules.inputs.push_back(parent_dir);
  rules.inputs.push_back(pruned_dir);
  OutputDirectory output(out_dir, std::move(rules));
  const CheckedCheckpoint parent_opened = open_checked_checkpoint(parent_dir);
  const CheckedCheckpoint pruned_opened = open_checked_checkpoint(pruned_dir);
  const ModelConfig &parent = parent_opened.config, &pruned = pruned_opened.config;
  const SafetensorsCheckpoint &parent_weights = parent_opened.weights,
                              &pruned_weights = pruned_opened.weights;
  const auto kept = read_kept(pruned_dir, parent, pruned);
  check_parent_is_source(parent_dir, parent, pruned_dir);
  // pruned_index[l][original expert] = index in the pruned layer, or -1.
  std::vector<std::vector<int32_t>> pruned_index(parent.num_hidden_layers);
  for (int64_t l = 0; l < parent.num_hidden_layers; ++l) {
    pruned_index[l].assign(parent.experts_in_layer(l), -1);
    for (size_t j = 0; j < kept[l].size(); ++j) pruned_index[l][kept[l][j]] = static_cast<int32_t>(j);
  }

  MergeSummary summary;
  std::vector<SafetensorsEntry> entries;
  std::deque<Tensor> merged;  // fp32 values of the tensors that change; the others are written zero-copy
  for (const std::string& name : pruned_weights.names()) check_finite(pruned_weights, name);
  for (const std::string& name : parent_weights.names()) {
    check_finite(parent_weights, name);
    const TensorInfo& info = parent_weights.info(name);
    const ExpertRef ref = parse_ref(name);
    const bool is_router = ref.layer >= 0 && ref.expert < 0;
    const bool is_kept_expert = ref.layer >= 0 && ref.expert >= 0 && ref.layer < parent.num_hidden_layers &&
                                ref.expert < static_cast<int64_t>(pruned_index[ref.layer].size()) &&
                                pruned_index[ref.layer][ref.expert] >= 0;
    if (!is_router && !is_kept_expert) {
      if (ref.layer < 0 && pruned_weights.contains(name) &&
          pruned_weights.read_fp32(name).vec() != parent_weights.read_fp32(name).vec())
        summary.other_tensors_differing.push_back(name);
      entries.push_back(SafetensorsEntry::raw(name, info.dtype, info.shape, info.data));
      continue;
    }
    Tensor& value = merged.emplace_back(parent_weights.read_fp32(name));
    if (is_router) {
      const Tensor rows = pruned_weights.read_fp32(name);  // [k, d] in the pruned order
      const int64_t width = value.dim(1);
      EMO_CHECK(rows.ndim() == 2 && rows.dim(0) == static_cast<int64_t>(kept[ref.layer].size()) &&
                    rows.dim(1) == width,
                "merge", pruned_dir, ": router '", name, "' has shape ", shape_str(rows.shape()));
      for (size_t j = 0; j < kept[ref.layer].size(); ++j)
        combine(value.data() + kept[ref.layer][j] * width, rows.data() + j * width, width, mode);
    } else {
      const std::string source = cat("model.layers.", ref.layer, ".mlp.experts.",
                                     pruned_index[ref.layer][ref.expert], ".", ref.rest);
      const Tensor child = pruned_weights.read_fp32(source);
      EMO_CHECK(child.shape() == value.shape(), "merge", pruned_dir, ": '", source, "' has shape ",
                shape_str(child.shape()), ", the parent's '", name, "' ", shape_str(value.shape()));
      combine(value.data(), child.data(), value.size(), mode);
    }
    entries.emplace_back(name, value, info.dtype);
    ++summary.tensors_merged;
  }
  summary.tensors = static_cast<int64_t>(entries.size());

  {
    const std::string& temp_dir = output.temp_path();
    const fs::path out(temp_dir);
    write_safetensors_sharded(temp_dir, entries, kMaxShardBytes, parent_weights.metadata());
    parent.save((out / "config.json").string());
    write_json_file((out / "merge_metadata.json").string(),
                    {{"format", "emo-merge-metadata"},
                     {"parent", parent_dir},
                     {"pruned", pruned_dir},
                     {"mode", mode == MergeMode::kReplace ? "replace" : "average"},
                     {"kept_original_indices", kept}});
    if (fs::exists(fs::path(parent_dir) / "tokenizer.json"))
      copy_file_checked((fs::path(parent_dir) / "tokenizer.json").string(),
                        (out / "tokenizer.json").string());
  }
  output.commit();
  summary.seconds = timer.seconds();
  return summary;
}

}  // namespace emo
