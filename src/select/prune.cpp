#include "select/prune.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <regex>

#include "core/error.h"
#include "core/log.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/weights_check.h"

namespace emo {
namespace {

// "model.layers.L.mlp.gate.weight" or "model.layers.L.mlp.experts.E.<rest>"; anything else is not about
// experts.
struct ExpertName {
  enum Kind { kOther, kRouter, kExpert } kind = kOther;
  int64_t layer = -1, expert = -1;
  std::string rest;  // "gate_proj.weight", ...
};

ExpertName parse_name(const std::string& name) {
  static const std::regex router(R"(model\.layers\.(\d+)\.mlp\.gate\.weight)");
  static const std::regex expert(R"(model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(.+))");
  std::smatch m;
  ExpertName out;
  if (std::regex_match(name, m, router)) {
    out.kind = ExpertName::kRouter;
    out.layer = std::stoll(m[1]);
  } else if (std::regex_match(name, m, expert)) {
    out.kind = ExpertName::kExpert;
    out.layer = std::stoll(m[1]);
    out.expert = std::stoll(m[2]);
    out.rest = m[3];
  }
  return out;
}

namespace fs = std::filesystem;

// Hugging Face's default shard size ("5GB"), so a pruned released model keeps the layout of its parent.
constexpr int64_t kMaxShardBytes = 5'000'000'000;

std::string expert_name(int64_t layer, int64_t expert, const std::string& rest) {
  return cat("model.layers.", layer, ".mlp.experts.", expert, ".", rest);
}

}  // namespace

ModelConfig pruned_config(const ModelConfig& full, const ExpertSubset& subset) {
  ModelConfig c = full;
  c.num_experts = subset.keep_k;
  c.num_experts_per_tok = std::min(full.num_experts_per_tok, subset.keep_k);
  if (!c.num_experts_per_layer.empty()) c.num_experts_per_layer.assign(full.num_hidden_layers, subset.keep_k);
  return c;
}

std::vector<int32_t> kept_experts(const ExpertSubset& subset, int64_t layer) {
  std::vector<int32_t> kept = subset.routed[layer];
  kept.insert(kept.end(), subset.shared[layer].begin(), subset.shared[layer].end());
  return kept;
}

std::vector<PrunedTensor> prune_plan(const ExpertSubset& subset, const std::vector<std::string>& full_names) {
  // new_index[l][original expert] = index in the pruned layer, or -1 when dropped.
  std::vector<std::vector<int32_t>> new_index(subset.num_layers,
                                              std::vector<int32_t>(subset.num_experts, -1));
  for (int64_t l = 0; l < subset.num_layers; ++l) {
    auto kept = kept_experts(subset, l);
    for (size_t j = 0; j < kept.size(); ++j) new_index[l][kept[j]] = static_cast<int32_t>(j);
  }
  std::vector<PrunedTensor> plan;
  // Experts of a layer are listed in the pruned order (not the original one), so they are gathered per layer
  // and emitted right after the layer's router.
  std::map<std::pair<int64_t, int32_t>, std::vector<PrunedTensor>> experts;  // (layer, new index) -> tensors
  for (const std::string& name : full_names) {
    ExpertName parsed = parse_name(name);
    if (parsed.kind != ExpertName::kOther)
      EMO_CHECK(parsed.layer < subset.num_layers, "prune", "tensor '", name, "' is past the subset's ",
                subset.num_layers, " layers");
    if (parsed.kind == ExpertName::kRouter) {
      plan.push_back({name, name, kept_experts(subset, parsed.layer)});
    } else if (parsed.kind == ExpertName::kExpert) {
      EMO_CHECK(parsed.expert < subset.num_experts, "prune", "tensor '", name, "' is past the subset's ",
                subset.num_experts, " experts");
      const int32_t j = new_index[parsed.layer][parsed.expert];
      if (j >= 0) experts[{parsed.layer, j}].push_back({expert_name(parsed.layer, j, parsed.rest), name, {}});
    } else {
      plan.push_back({name, name, {}});
    }
  }
  // Each layer's experts go right after its router; any left (a layer without router tensor) at the end.
  std::vector<PrunedTensor> ordered;
  auto emit_layer = [&](int64_t layer) {
    for (auto it = experts.lower_bound({layer, 0}); it != experts.end() && it->first.first == layer;) {
      for (auto& e : it->second) ordered.push_back(std::move(e));
      it = experts.erase(it);
    }
  };
  for (auto& t : plan) {
    ordered.push_back(t);
    ExpertName parsed = parse_name(t.name);
    if (parsed.kind == ExpertName::kRouter) emit_layer(parsed.layer);
  }
  while (!experts.empty()) emit_layer(experts.begin()->first.first);
  return ordered;
}

std::optional<std::pair<int64_t, int64_t>> expert_of_tensor(const std::string& name) {
  const ExpertName parsed = parse_name(name);
  if (parsed.kind != ExpertName::kExpert) return std::nullopt;
  return std::make_pair(parsed.layer, parsed.expert);
}

std::unique_ptr<Model> prune_model(const Model& full, const ExpertSubset& subset) {
  subset.check(full.config(), "prune");
  auto pruned = std::make_unique<Model>(pruned_config(full.config(), subset));
  for (const PrunedTensor& t : prune_plan(subset, full.param_names())) {
    const Tensor& src = full.weight(t.source);
    Tensor& dst = pruned->weight(t.name);
    if (t.rows.empty()) {
      EMO_CHECK(src.shape() == dst.shape(), "prune", "tensor '", t.name, "' has shape ",
                shape_str(src.shape()), ", the pruned model expects ", shape_str(dst.shape()));
      dst.vec() = src.vec();
      continue;
    }
    const int64_t width = src.dim(1);  // [rows, width]
    EMO_CHECK(dst.dim(0) == static_cast<int64_t>(t.rows.size()) && dst.dim(1) == width, "prune", "router '",
              t.name, "' of shape ", shape_str(dst.shape()), " cannot take ", t.rows.size(),
              " rows of width ", width);
    for (size_t r = 0; r < t.rows.size(); ++r)
      std::memcpy(dst.data() + r * width, src.data() + t.rows[r] * width, sizeof(float) * width);
  }
  return pruned;
}

nlohmann::json pruning_metadata(const ExpertSubset& subset, const ModelConfig& full) {
  nlohmann::json kept = nlohmann::json::array();
  for (int64_t l = 0; l < subset.num_layers; ++l) kept.push_back(kept_experts(subset, l));
  nlohmann::json j = subset.to_json();
  j["format"] = "emo-pruning-metadata";
  j["kept_original_indices"] =
      kept;  // per layer, in the pruned model's order (routed ascending, shared last)
  j["parent"] = {{"num_experts", full.num_experts},
                 {"num_experts_per_tok", full.num_experts_per_tok},
                 {"num_shared_experts", full.num_shared_experts}};
  return j;
}

PruneSummary prune_checkpoint(const std::string& model_dir, const ExpertSubset& subset,
                              const std::string& out_dir, const nlohmann::json& source, OutputRules rules) {
  Timer timer;
  rules.inputs.push_back(model_dir);
  OutputDirectory output(out_dir, std::move(rules));
  const fs::path dir(model_dir);
  const CheckedCheckpoint opened = open_checked_checkpoint(model_dir);
  const ModelConfig& full = opened.config;
  const SafetensorsCheckpoint& checkpoint = opened.weights;
  subset.check(full, "prune");

  PruneSummary summary;
  for (const std::string& name : checkpoint.names()) {
    summary.params_in += checkpoint.info(name).numel();
    summary.bytes_in += static_cast<int64_t>(checkpoint.info(name).nbytes);
  }
  std::vector<SafetensorsEntry> entries;
  std::deque<std::vector<char>> sliced;  // router rows gathered out of the mapping (the rest is zero-copy)
  for (const PrunedTensor& t : prune_plan(subset, checkpoint.names())) {
    const TensorInfo& info = checkpoint.info(t.source);
    check_finite(checkpoint, t.source);
    if (t.rows.empty()) {
      entries.push_back(SafetensorsEntry::raw(t.name, info.dtype, info.shape, info.data));
    } else {
      EMO_CHECK(info.shape.size() == 2, "prune", "router '", t.source, "' has shape ", shape_str(info.shape));
      const size_t row_bytes = static_cast<size_t>(info.shape[1]) * dtype_size(info.dtype);
      std::vector<char>& rows = sliced.emplace_back(t.rows.size() * row_bytes);
      for (size_t r = 0; r < t.rows.size(); ++r) {
        EMO_CHECK(t.rows[r] < info.shape[0], "prune", "router '", t.source, "' has ", info.shape[0],
                  " rows, row ", t.rows[r], " was asked for");
        std::memcpy(rows.data() + r * row_bytes, static_cast<const char*>(info.data) + t.rows[r] * row_bytes,
                    row_bytes);
      }
      entries.push_back(SafetensorsEntry::raw(
          t.name, info.dtype, {static_cast<int64_t>(t.rows.size()), info.shape[1]}, rows.data()));
    }
    summary.params_out += numel(entries.back().shape);
    summary.bytes_out += static_cast<int64_t>(entries.back().nbytes());
  }
  summary.tensors = static_cast<int64_t>(entries.size());

  {
    const std::string& temp_dir = output.temp_path();
    const fs::path out(temp_dir);
    write_safetensors_sharded(temp_dir, entries, kMaxShardBytes, checkpoint.metadata());
    pruned_config(full, subset).save((out / "config.json").string());
    // The parent's own fingerprint, whatever the subset file recorded: emo merge checks it.
    ExpertSubset recorded = subset;
    recorded.hidden_size = full.hidden_size;
    recorded.fingerprint = checkpoint_fingerprint(model_dir, full);
    nlohmann::json metadata = pruning_metadata(recorded, full);
    if (!source.is_null()) metadata["source"] = source;
    write_json_file((out / "pruning_metadata.json").string(), metadata);
    for (const char* name : kCompanionFiles)
      if (fs::exists(dir / name)) copy_file_checked((dir / name).string(), (out / name).string());
  }
  output.commit();
  summary.seconds = timer.seconds();
  return summary;
}

}  // namespace emo
