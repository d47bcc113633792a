#include "infer/model_info.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include "core/error.h"
#include "core/log.h"
#include "infer/model_files.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "select/prune.h"
#include "tokenizer/tokenizer.h"

namespace emo {

namespace fs = std::filesystem;

namespace {

constexpr const char* kOp = "info";
constexpr const char* kScaleSuffix = "_scale";  // int8 row scales (docs/inference.md)

// 13568641024 -> "13,568,641,024"
std::string grouped(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

std::string gb(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GB", static_cast<double>(bytes) / 1e9);
  return bytes >= 100'000'000 ? std::string(buf) : human_bytes(static_cast<double>(bytes));
}

bool is_int8_scale(const SafetensorsCheckpoint& checkpoint, const std::string& name) {
  const size_t n = std::char_traits<char>::length(kScaleSuffix);
  if (name.size() <= n || name.compare(name.size() - n, n, kScaleSuffix) != 0) return false;
  const std::string matrix = name.substr(0, name.size() - n);
  return checkpoint.contains(matrix) && checkpoint.info(matrix).dtype == DType::kI8;
}

TokenizerFacts tokenizer_facts(const std::string& path) {
  TokenizerFacts facts;
  facts.path = path;
  try {
    const Tokenizer tokenizer = Tokenizer::load(path);
    facts.vocab_size = tokenizer.vocab_size();
    facts.pad_id = tokenizer.pad_id();
    try {
      facts.eos_id = tokenizer.eos_id();
    } catch (const Error&) {
      // A tokenizer without special tokens has no EOS; generation then needs the config's eos_token_id.
    }
  } catch (const Error& e) {
    facts.problem = e.what();
  }
  return facts;
}

// Per layer: the bytes and parameters of each expert's tensors, from the headers.
struct ExpertTally {
  std::vector<std::map<int64_t, int64_t>> bytes, params;  // [layer][expert]
  std::vector<int64_t> router_bytes, router_params;       // [layer]
};

// L of "model.layers.L.mlp.gate.weight" (the router), -1 for any other tensor.
int64_t router_layer(const std::string& name) {
  const std::string prefix = "model.layers.", suffix = ".mlp.gate.weight";
  if (name.size() <= prefix.size() + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return -1;
  const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (digits.empty() || digits.size() > 6 || digits.find_first_not_of("0123456789") != std::string::npos)
    return -1;
  return std::stoll(digits);
}

void check_expert_counts(const ModelInfo& info, const ExpertTally& tally) {
  for (size_t l = 0; l < info.experts_per_layer.size(); ++l) {
    const int64_t stored = static_cast<int64_t>(tally.bytes[l].size());
    if (stored != info.experts_per_layer[l])
      fail_file(kOp, (fs::path(info.dir) / "config.json").string(),
                cat("layer ", l, ": config.json gives ", info.experts_per_layer[l],
                    " experts, the weights hold ", stored));
  }
}

}  // namespace

bool ModelInfo::uniform_experts() const {
  return std::adjacent_find(experts_per_layer.begin(), experts_per_layer.end(), std::not_equal_to<>()) ==
         experts_per_layer.end();
}

MemoryNeed ModelInfo::memory(int64_t keep_k) const {
  MemoryNeed need;
  need.keep_k = keep_k;
  need.weight_bytes = non_expert_bytes;
  need.weight_params = non_expert_params;
  for (size_t l = 0; l < experts_per_layer.size(); ++l) {
    if (keep_k != 0 && (keep_k <= shared_per_layer[l] || keep_k > experts_per_layer[l]))
      fail(kOp, cat("keep-k ", keep_k, " is not possible in layer ", l, ", which has ", experts_per_layer[l],
                    " experts of which ", shared_per_layer[l], " shared (give ", shared_per_layer[l] + 1,
                    "..", experts_per_layer[l], ")"));
    const int64_t kept = keep_k == 0 ? experts_per_layer[l] : keep_k;
    const int64_t dropped = experts_per_layer[l] - kept, experts = std::max<int64_t>(1, experts_per_layer[l]);
    need.weight_bytes += kept * expert_bytes_per_layer[l] - router_bytes_per_layer[l] * dropped / experts;
    need.weight_params += kept * expert_params_per_layer[l] - router_params_per_layer[l] * dropped / experts;
  }
  const int64_t kv_width = config.num_key_value_heads * config.head_dim();
  need.kv_bytes_per_token = 2 * config.num_hidden_layers * kv_width * static_cast<int64_t>(sizeof(float));
  need.context = config.max_position_embeddings;
  return need;
}

std::vector<MemoryNeed> ModelInfo::memory_table(int64_t extra_keep_k) const {
  std::set<int64_t> keeps;
  if (!experts_per_layer.empty() && uniform_experts() && experts_per_layer[0] >= 8) {
    const int64_t experts = experts_per_layer[0];
    for (int64_t part : {8, 4, 2})
      if (experts / part > shared_per_layer[0]) keeps.insert(experts / part);
  }
  if (extra_keep_k != 0) keeps.insert(extra_keep_k);
  std::vector<MemoryNeed> table;
  for (int64_t k : keeps) table.push_back(memory(k));
  table.push_back(memory(0));
  return table;
}

ModelInfo inspect_model(const std::string& dir) {
  ModelInfo info;
  info.dir = dir;
  info.config = ModelConfig::load((fs::path(dir) / "config.json").string());
  if (info.config.extra.contains("quantization_config"))
    info.quantization = info.config.extra["quantization_config"].dump();
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(dir);
  info.files = static_cast<int64_t>(checkpoint.files().size());
  info.weights_layout = fs::exists(fs::path(dir) / SafetensorsCheckpoint::kIndexFile)
                            ? cat(SafetensorsCheckpoint::kIndexFile, " (", info.files, " shards)")
                            : SafetensorsCheckpoint::kSingleFile;

  const int64_t layers = info.config.num_hidden_layers;
  const size_t layer_count = static_cast<size_t>(std::max<int64_t>(0, layers));
  ExpertTally tally{std::vector<std::map<int64_t, int64_t>>(layer_count),
                    std::vector<std::map<int64_t, int64_t>>(layer_count), std::vector<int64_t>(layer_count),
                    std::vector<int64_t>(layer_count)};
  for (const std::string& name : checkpoint.names()) {
    const TensorInfo& t = checkpoint.info(name);
    const bool scale = is_int8_scale(checkpoint, name);
    const int64_t params = scale ? 0 : t.numel(), bytes = static_cast<int64_t>(t.nbytes);
    ++info.tensors;
    info.params += params;
    info.weight_bytes += bytes;
    StoredDtype& stored = info.dtypes[dtype_name(t.dtype)];
    stored.tensors += 1;
    stored.params += params;
    stored.bytes += bytes;
    if (name == "model.embed_tokens.weight" || name == "lm_head.weight") info.embedding_params += params;
    const auto expert = expert_of_tensor(name);
    if (const int64_t layer = router_layer(name); layer >= 0 && layer < layers) {
      tally.router_bytes[layer] += bytes;
      tally.router_params[layer] += params;
    }
    if (expert && info.config.is_moe() && expert->first < layers) {
      tally.bytes[expert->first][expert->second] += bytes;
      tally.params[expert->first][expert->second] += params;
    } else {
      info.non_expert_bytes += bytes;
      info.non_expert_params += params;
    }
  }

  info.active_params = info.non_expert_params;
  if (info.config.is_moe()) {
    for (int64_t l = 0; l < layers; ++l) {
      info.experts_per_layer.push_back(info.config.experts_in_layer(l));
      info.shared_per_layer.push_back(info.config.shared_in_layer(l));
    }
    check_expert_counts(info, tally);
    info.router_bytes_per_layer = tally.router_bytes;
    info.router_params_per_layer = tally.router_params;
    for (int64_t l = 0; l < layers; ++l) {
      int64_t bytes = 0, params = 0;
      for (const auto& [e, b] : tally.bytes[l]) bytes += b;
      for (const auto& [e, p] : tally.params[l]) params += p;
      const int64_t experts = std::max<int64_t>(1, info.experts_per_layer[l]);
      info.expert_bytes_per_layer.push_back(bytes / experts);
      info.expert_params_per_layer.push_back(params / experts);
      const int64_t per_token = std::min(info.config.num_experts_per_tok, info.experts_per_layer[l]);
      info.active_params += per_token * (params / experts);
    }
  }

  info.tokenizer_looked_at = tokenizer_candidates(dir);
  if (auto path = find_tokenizer(dir)) info.tokenizer = tokenizer_facts(*path);
  const fs::path metadata = fs::path(dir) / "pruning_metadata.json";
  if (fs::exists(metadata)) info.pruning = read_json_file(metadata.string(), kOp);
  return info;
}

nlohmann::json ModelInfo::to_json(int64_t extra_keep_k) const {
  nlohmann::json j;
  j["format"] = kFormat;
  j["model"] = dir;
  j["config"] = config.to_json();
  j["weights"] = {
      {"layout", weights_layout}, {"files", files}, {"tensors", tensors}, {"bytes", weight_bytes}};
  nlohmann::json stored = nlohmann::json::object();
  for (const auto& [name, d] : dtypes)
    stored[name] = {{"tensors", d.tensors}, {"params", d.params}, {"bytes", d.bytes}};
  j["dtypes"] = stored;
  if (!quantization.empty()) j["quantization_config"] = config.extra.at("quantization_config");
  j["params"] = {{"total", params},
                 {"active_per_token", active_params},
                 {"embedding", embedding_params},
                 {"active_per_token_without_embedding", active_params - embedding_params}};
  if (config.is_moe())
    j["experts"] = {{"per_layer", experts_per_layer},
                    {"shared_per_layer", shared_per_layer},
                    {"uniform", uniform_experts()},
                    {"per_token", config.num_experts_per_tok},
                    {"bytes_per_expert", expert_bytes_per_layer},
                    {"params_per_expert", expert_params_per_layer}};
  if (tokenizer) {
    nlohmann::json t = {{"path", tokenizer->path}};
    if (tokenizer->problem.empty()) {
      t["vocab_size"] = tokenizer->vocab_size;
      t["eos_id"] = tokenizer->eos_id ? nlohmann::json(*tokenizer->eos_id) : nlohmann::json();
      t["pad_id"] = tokenizer->pad_id ? nlohmann::json(*tokenizer->pad_id) : nlohmann::json();
      t["fits_model_vocab"] = tokenizer->vocab_size <= config.vocab_size;
    } else {
      t["problem"] = tokenizer->problem;
    }
    j["tokenizer"] = t;
  } else {
    j["tokenizer"] = nullptr;
  }
  j["tokenizer_looked_at"] = tokenizer_looked_at;
  j["pruned"] = pruning.has_value();
  if (pruning) j["pruning_metadata"] = *pruning;
  nlohmann::json memory_rows = nlohmann::json::array();
  for (const MemoryNeed& m : memory_table(extra_keep_k))
    memory_rows.push_back({{"keep_k", m.keep_k == 0 ? nlohmann::json("all") : nlohmann::json(m.keep_k)},
                           {"weight_bytes", m.weight_bytes},
                           {"weight_params", m.weight_params},
                           {"kv_bytes_per_token", m.kv_bytes_per_token},
                           {"context", m.context},
                           {"bytes_at_context", m.total_at_context()}});
  j["memory"] = memory_rows;
  return j;
}

namespace {

std::string experts_line(const ModelInfo& info) {
  const ModelConfig& c = info.config;
  if (!c.is_moe()) return "experts: none (a dense model: one MLP per layer)\n";
  std::string line = "experts: ";
  if (info.uniform_experts()) {
    line += cat(info.experts_per_layer[0], " per layer in all ", info.experts_per_layer.size(), " layers (",
                info.experts_per_layer[0] - info.shared_per_layer[0], " routed + ", info.shared_per_layer[0],
                " shared)");
  } else {
    line += "not uniform, per layer";
    for (int64_t e : info.experts_per_layer) line += cat(" ", e);
    line += cat(" (", info.shared_per_layer[0], " shared in layer 0)");
  }
  return line + cat("; ", c.num_experts_per_tok, " per token, the shared one included\n");
}

std::string tokenizer_line(const ModelInfo& info) {
  if (!info.tokenizer) {
    std::string looked;
    for (const std::string& p : info.tokenizer_looked_at) looked += (looked.empty() ? "" : ", ") + p;
    return cat("tokenizer: none found (looked for ", looked,
               "); commands need --tokenizer FILE (the released models': emo tokenizer dolma2 --out DIR)\n");
  }
  const TokenizerFacts& t = *info.tokenizer;
  if (!t.problem.empty()) return cat("tokenizer: ", t.path, " cannot be used: ", t.problem, "\n");
  std::string line = cat("tokenizer: ", t.path, ", vocab ", grouped(t.vocab_size));
  line += t.eos_id ? cat(", eos ", *t.eos_id) : std::string(", no eos token");
  if (t.pad_id) line += cat(", pad ", *t.pad_id);
  if (t.vocab_size > info.config.vocab_size)
    line += cat(" (DOES NOT FIT the model: its vocabulary has ", info.config.vocab_size, " rows)");
  return line + "\n";
}

std::string pruning_lines(const ModelInfo& info) {
  if (!info.pruning) return "pruned: no (no pruning_metadata.json)\n";
  const nlohmann::json& p = *info.pruning;
  const std::string source_name = info.dir + "/pruning_metadata.json";
  std::string line = cat("pruned: a subset keeping ", json_get_or<int64_t>(p, "keep_k", 0, source_name));
  if (p.contains("parent") && p["parent"].is_object())
    line += cat(" of ", json_get_or<int64_t>(p["parent"], "num_experts", 0, source_name));
  line += cat(" experts per layer, method ", json_get_or<std::string>(p, "method", "?", source_name));
  if (p.contains("calibration") && p["calibration"].is_object()) {
    const std::string description =
        json_get_or<std::string>(p["calibration"], "description", "", source_name);
    if (!description.empty()) line += cat(", chosen from ", description);
  }
  line += "\n";
  if (p.contains("source") && p["source"].is_object()) {
    const nlohmann::json& s = p["source"];
    line += cat("  source: ", json_get_or<std::string>(s, "hub_repo", "?", source_name), " revision ",
                json_get_or<std::string>(s, "revision", "?", source_name), " (commit ",
                json_get_or<std::string>(s, "commit", "?", source_name), ")\n");
  } else {
    line += "  source: a local checkpoint (not recorded)\n";
  }
  if (p.contains("kept_original_indices") && p["kept_original_indices"].is_array()) {
    const nlohmann::json& kept = p["kept_original_indices"];
    for (size_t l = 0; l < kept.size(); ++l) {
      line += cat("  layer ", l, " keeps experts");
      if (kept[l].is_array())
        for (const auto& e : kept[l]) line += " " + e.dump();
      line += "\n";
    }
  }
  return line;
}

// 16 of 128 -> "12.5%"
std::string share_of_experts(int64_t keep_k, int64_t experts) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g%%",
                100.0 * static_cast<double>(keep_k) / static_cast<double>(experts));
  return buf;
}

}  // namespace

std::string ModelInfo::text(int64_t extra_keep_k) const {
  const ModelConfig& c = config;
  std::string out = cat("model: ", dir, "\n");
  out += cat("architecture: ", c.model_type, ", ", c.num_hidden_layers, " layers, hidden ", c.hidden_size,
             ", ", c.num_attention_heads, " heads of ", c.head_dim(), " (", c.num_key_value_heads,
             " key/value heads), ", c.is_moe() ? "expert width " : "MLP width ", c.intermediate_size,
             ", vocab ", grouped(c.vocab_size), ", context ", c.max_position_embeddings, ", rope theta ",
             c.rope_theta, c.tie_word_embeddings ? ", tied embeddings" : "", "\n");
  out += experts_line(*this);
  out += cat("parameters: ", grouped(params), " in all; ", grouped(active_params), " per token (",
             grouped(active_params - embedding_params), " without the embedding and output matrices)\n");
  out +=
      cat("weights: ", weights_layout, ", ", grouped(tensors), " tensors, ", gb(weight_bytes), "; stored as");
  for (const auto& [name, d] : dtypes)
    out += cat(" ", name, " (", d.tensors, " tensors, ", grouped(d.params), " parameters)");
  out += "\n";
  if (!quantization.empty()) out += cat("quantization: ", quantization, "\n");
  out += tokenizer_line(*this);
  out += pruning_lines(*this);
  const std::vector<MemoryNeed> table = memory_table(extra_keep_k);
  out += cat("memory to run (the weights kept resident, the whole embedding counted, + a KV cache of ",
             human_bytes(static_cast<double>(table[0].kv_bytes_per_token)), " per token):\n");
  out += cat("  experts per layer   parameters        weights     + KV at ", c.max_position_embeddings,
             " tokens\n");
  for (const MemoryNeed& m : table) {
    char row[160];
    const std::string experts =
        m.keep_k == 0 ? std::string(c.is_moe() ? "all" : "dense")
                      : cat(m.keep_k, " (", share_of_experts(m.keep_k, experts_per_layer[0]), ")");
    std::snprintf(row, sizeof row, "  %-18s  %-16s  %-10s  %s\n", experts.c_str(),
                  grouped(m.weight_params).c_str(), gb(m.weight_bytes).c_str(),
                  gb(m.total_at_context()).c_str());
    out += row;
  }
  return out;
}

}  // namespace emo
