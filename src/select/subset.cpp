#include "select/subset.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "core/log.h"
#include "data/process.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "tensor/dtype.h"

namespace emo {
namespace {

constexpr int kVersion = 1;

[[noreturn]] void fail_layer(const std::string& source, int64_t layer, const std::string& problem) {
  fail_at("subset", source, cat("layer ", layer), problem);
}

// A required member of j, converted by the typed getters: a wrong type names the file, the place and the key
// ("[json] FILE: layer 3: key 'routed': expected an array of a 32-bit integer, found a string").
template <typename T>
T member(const nlohmann::json& j, const char* key, const std::string& source, const std::string& where) {
  if (!j.is_object() || !j.contains(key)) fail_at("subset", source, where, cat("missing \"", key, "\""));
  if constexpr (std::is_same_v<T, nlohmann::json>)
    return j.at(key);
  else
    return json_get<T>(j, key, cat(source, ": ", where));
}

}  // namespace

ExpertSubset ExpertSubset::for_model(const ModelConfig& config, int64_t keep_k, std::string method) {
  EMO_CHECK(config.is_moe(), "subset", "a dense model has no experts to select");
  ExpertSubset s;
  s.num_layers = config.num_hidden_layers;
  s.num_experts = config.experts_in_layer(0);
  s.num_shared = config.shared_in_layer(0);
  s.hidden_size = config.hidden_size;
  s.keep_k = keep_k;
  s.method = std::move(method);
  s.routed.resize(s.num_layers);
  s.shared.resize(s.num_layers);
  for (int64_t l = 0; l < s.num_layers; ++l) {
    const int64_t E = config.experts_in_layer(l), ns = config.shared_in_layer(l);
    for (int64_t j = E - ns; j < E; ++j) s.shared[l].push_back(static_cast<int32_t>(j));
  }
  return s;
}

void ExpertSubset::finish() {
  for (auto& kept : routed) std::sort(kept.begin(), kept.end());
}

nlohmann::json ExpertSubset::to_json() const {
  nlohmann::json layers = nlohmann::json::array();
  for (size_t l = 0; l < routed.size(); ++l)
    layers.push_back({{"layer", l}, {"routed", routed[l]}, {"shared", shared[l]}});
  nlohmann::json model = {
      {"num_hidden_layers", num_layers}, {"num_experts", num_experts}, {"num_shared_experts", num_shared}};
  if (hidden_size > 0) model["hidden_size"] = hidden_size;
  if (!fingerprint.empty()) model["fingerprint"] = fingerprint;
  return {{"format", kFormat},
          {"version", kVersion},
          {"model", model},
          {"keep_k", keep_k},
          {"method", method},
          {"calibration",
           {{"description", calibration.description},
            {"examples", calibration.examples},
            {"tokens", calibration.tokens},
            {"seed", calibration.seed}}},
          {"layers", layers}};
}

ExpertSubset ExpertSubset::from_json(const nlohmann::json& j, const std::string& source) {
  if (member<std::string>(j, "format", source, "top level") != kFormat)
    fail_file("subset", source, cat("not an expert subset file (\"format\" is not \"", kFormat, "\")"));
  const int version = member<int>(j, "version", source, "top level");
  if (version != kVersion) fail_file("subset", source, cat("unsupported version ", version));
  ExpertSubset s;
  const nlohmann::json& model = j.contains("model") ? j["model"] : nlohmann::json();
  s.num_layers = member<int64_t>(model, "num_hidden_layers", source, "\"model\"");
  s.num_experts = member<int64_t>(model, "num_experts", source, "\"model\"");
  s.num_shared = member<int64_t>(model, "num_shared_experts", source, "\"model\"");
  if (model.contains("hidden_size"))
    s.hidden_size = member<int64_t>(model, "hidden_size", source, "\"model\"");
  if (model.contains("fingerprint"))
    s.fingerprint = member<std::string>(model, "fingerprint", source, "\"model\"");
  s.keep_k = member<int64_t>(j, "keep_k", source, "top level");
  s.method = member<std::string>(j, "method", source, "top level");
  if (j.contains("calibration")) {
    const auto& c = j["calibration"];
    const std::string where = cat(source, ": calibration");
    if (!c.is_object()) json_detail::fail_type(source, "calibration", "an object", c);
    s.calibration.description = json_get_or<std::string>(c, "description", "", where);
    s.calibration.examples = json_get_or<int64_t>(c, "examples", 0, where);
    s.calibration.tokens = json_get_or<int64_t>(c, "tokens", 0, where);
    s.calibration.seed = json_get_or<uint64_t>(c, "seed", 0, where);
  }
  const auto layers = member<nlohmann::json>(j, "layers", source, "top level");
  if (!layers.is_array()) fail_file("subset", source, "\"layers\" is not an array");
  for (size_t l = 0; l < layers.size(); ++l) {
    const std::string where = cat("layer ", l);
    if (member<int64_t>(layers[l], "layer", source, where) != static_cast<int64_t>(l))
      fail_at("subset", source, where, "layers must be listed in order 0, 1, ...");
    s.routed.push_back(member<std::vector<int32_t>>(layers[l], "routed", source, where));
    s.shared.push_back(member<std::vector<int32_t>>(layers[l], "shared", source, where));
  }
  return s;
}

void ExpertSubset::check(const ModelConfig& config, const std::string& source) const {
  EMO_CHECK(config.is_moe(), "subset", source, ": the model is dense (no experts)");
  const int64_t L = config.num_hidden_layers;
  if (num_layers != L || static_cast<int64_t>(routed.size()) != L || static_cast<int64_t>(shared.size()) != L)
    fail_file("subset", source,
              cat("made for ", num_layers, " layers and lists ", routed.size(), ", the model has ", L));
  for (int64_t l = 0; l < L; ++l) {
    const int64_t E = config.experts_in_layer(l), ns = config.shared_in_layer(l), Er = E - ns;
    if (num_experts != E || num_shared != ns)
      fail_layer(source, l,
                 cat("made for ", num_experts, " experts (", num_shared, " shared), the model's layer has ",
                     E, " (", ns, " shared)"));
    if (keep_k > E) fail_layer(source, l, cat("keep_k ", keep_k, " exceeds the layer's ", E, " experts"));
    if (keep_k <= ns)
      fail_layer(source, l, cat("keep_k ", keep_k, " keeps no routed expert (", ns, " shared counted)"));
    const auto& kept = routed[l];
    if (static_cast<int64_t>(kept.size()) != keep_k - ns)
      fail_layer(source, l,
                 cat("lists ", kept.size(), " routed experts, keep_k ", keep_k, " with ", ns,
                     " shared needs ", keep_k - ns));
    std::set<int32_t> seen;
    for (int32_t e : kept) {
      if (e < 0 || e >= Er)
        fail_layer(source, l, cat("expert index ", e, " out of range (routed experts are 0..", Er - 1, ")"));
      if (!seen.insert(e).second) fail_layer(source, l, cat("duplicate expert ", e));
    }
    if (!std::is_sorted(kept.begin(), kept.end()))
      fail_layer(source, l, "routed experts must be listed in ascending order");
    std::vector<int32_t> expected_shared;
    for (int64_t j = Er; j < E; ++j) expected_shared.push_back(static_cast<int32_t>(j));
    if (shared[l] != expected_shared)
      fail_layer(source, l, cat("shared experts must be the last ", ns, " indices (", Er, "..", E - 1, ")"));
  }
}

void ExpertSubset::save(const std::string& path) const {
  atomic_write_file(path, to_json().dump(2) + "\n");
}

ExpertSubset ExpertSubset::load(const std::string& path, const ModelConfig& config) {
  const nlohmann::json j = read_json_file(path, "subset");
  ExpertSubset s = from_json(j, path);
  s.check(config, path);
  return s;
}

void ExpertSubset::check_source(const std::string& model_dir, const ModelConfig& config,
                                const std::string& source, bool force, const std::string& op) const {
  std::string problem;
  if (hidden_size > 0 && hidden_size != config.hidden_size) {
    problem =
        cat("chosen on a model of hidden size ", hidden_size, ", ", model_dir, " has ", config.hidden_size);
  } else if (!fingerprint.empty()) {
    const std::string here = checkpoint_fingerprint(model_dir, config);
    if (here != fingerprint)
      problem = cat("chosen on another checkpoint (router fingerprint ", fingerprint, "), not on ", model_dir,
                    " (", here, ")");
  }
  if (problem.empty()) return;
  if (force) {
    log_warn(cat("[", op, "] ", source, ": ", problem, "; used anyway (--force)"));
    return;
  }
  fail_file(op, source, problem + ": select the experts on this model, or give --force to use them anyway");
}

std::string checkpoint_fingerprint(const std::string& model_dir, const ModelConfig& config) {
  if (!config.is_moe()) return "";
  const SafetensorsCheckpoint weights = SafetensorsCheckpoint::open(model_dir);
  std::string bytes;
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string name = cat("model.layers.", l, ".mlp.gate.weight");
    if (!weights.contains(name)) continue;  // a dense layer
    const Tensor router = weights.read_fp32(name);
    for (float w : router.vec()) {
      const uint16_t h = f32_to_bf16(w);
      bytes.push_back(static_cast<char>(h & 0xff));
      bytes.push_back(static_cast<char>(h >> 8));
    }
  }
  return data::sha256_hex(bytes).substr(0, 16);
}

RoutingOptions ExpertSubset::routing_options() const {
  RoutingOptions options;
  options.mode = RoutingMode::kSubset;
  options.training = false;
  options.subset = routed;
  return options;
}

}  // namespace emo
