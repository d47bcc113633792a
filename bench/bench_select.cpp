// Selective expert use, timed: selecting experts from ONE example (each method) and writing the pruned
// checkpoint, with the pruned file's size against the full one. References measured in the same run: one
// forward of the example over all experts (selection costs are quoted in forwards), and copying the full
// checkpoint file (pruning is quoted against a plain copy).
//
//   bench_select [MODEL_DIR] [--keep-k K] [--tokens N]
// Without MODEL_DIR a scaled instance of the released shape is made with Model::init_weights and saved to a
// temporary directory: d=256, L=8, H=4, E=64 (1 shared), K=8, f=128, vocab 8192.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/log.h"
#include "core/rng.h"
#include "model/forward_state.h"
#include "model/model.h"
#include "scaled_model.h"
#include "select/prune.h"
#include "select/selection.h"

namespace {

namespace fs = std::filesystem;

int64_t dir_bytes(const fs::path& dir, const std::string& prefix) {
  int64_t total = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind(prefix, 0) == 0 && e.path().extension() == ".safetensors")
      total += static_cast<int64_t>(fs::file_size(e.path()));
  return total;
}

// Layerwise selection by one full forward per layer (routed_usage with the layers chosen so far restricted).
std::vector<std::vector<int32_t>> layerwise_by_repeated_forwards(const emo::Model& model,
                                                                 const emo::Examples& examples,
                                                                 int64_t keep_k) {
  const emo::ModelConfig& c = model.config();
  emo::RoutingOptions routing;
  routing.mode = emo::RoutingMode::kSubset;
  routing.training = false;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    routing.subset.emplace_back(c.routed_in_layer(l));
    for (int64_t e = 0; e < c.routed_in_layer(l); ++e) routing.subset[l][e] = static_cast<int32_t>(e);
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    routing.subset[l] =
        emo::top_experts(emo::routed_usage(model, examples, routing)[l], keep_k - c.shared_in_layer(l));
  return routing.subset;
}

template <typename F>
double median_seconds(int repeats, F&& run) {
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    emo::Timer t;
    run();
    times.push_back(t.seconds());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir;
  int64_t keep_k = 8, tokens = 256;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--keep-k" && i + 1 < argc)
      keep_k = std::stoll(argv[++i]);
    else if (a == "--tokens" && i + 1 < argc)
      tokens = std::stoll(argv[++i]);
    else
      model_dir = a;
  }
  emo::set_log_level(emo::LogLevel::kWarn);
  const fs::path temp = fs::temp_directory_path() / "emo_bench_select";
  fs::remove_all(temp);
  fs::create_directories(temp);
  if (model_dir.empty()) {
    emo::Model model(emo::bench::scaled_released_config());
    model.init_weights(1);
    model_dir = (temp / "full").string();
    model.save(model_dir);
  }
  auto model = emo::Model::load(model_dir);
  const emo::ModelConfig& c = model->config();
  tokens = std::min<int64_t>(tokens, c.max_position_embeddings);

  // One example: a pseudo-random token sequence (selection cost does not depend on its content).
  emo::Examples example;
  example.description = "bench";
  emo::Rng rng(7);
  example.sequences.emplace_back();
  for (int64_t t = 0; t < tokens; ++t)
    example.sequences[0].push_back(static_cast<int32_t>(rng.uniform_int(2, c.vocab_size - 1)));

  emo::RoutingOptions standard;
  standard.training = false;
  emo::Batch batch = emo::Batch::from_tokens(1, tokens, example.sequences[0], {}, 1);
  const double forward_s = median_seconds(3, [&] { model->infer(batch, standard); });
  std::printf("model: d=%lld L=%lld E=%lld K=%lld f=%lld V=%lld; example of %lld tokens; keep-k %lld\n",
              static_cast<long long>(c.hidden_size), static_cast<long long>(c.num_hidden_layers),
              static_cast<long long>(c.num_experts), static_cast<long long>(c.num_experts_per_tok),
              static_cast<long long>(c.intermediate_size), static_cast<long long>(c.vocab_size),
              static_cast<long long>(tokens), static_cast<long long>(keep_k));
  std::printf("reference: one forward of the example        %8.3f s\n", forward_s);

  nlohmann::json figures = {
      {"bench", "select"}, {"tokens", tokens}, {"keep_k", keep_k}, {"forward_s", forward_s}};
  emo::ExpertSubset subset;
  for (const char* name : {"layerwise", "global", "easy_ep", "random"}) {
    emo::SelectionOptions options{keep_k, emo::parse_selection_method(name), 0};
    const double s = median_seconds(3, [&] { subset = emo::select_experts(*model, example, options); });
    std::printf("select %-10s                          %8.3f s  = %5.2f forwards\n", name, s, s / forward_s);
    figures[std::string("select_") + name + "_s"] = s;
    figures[std::string("select_") + name + "_forwards"] = s / forward_s;
  }
  // The layerwise method as first written: one forward of the examples per layer (same result, tested).
  const double repeated_s =
      median_seconds(3, [&] { layerwise_by_repeated_forwards(*model, example, keep_k); });
  const double layerwise_s = figures["select_layerwise_s"].get<double>();
  std::printf(
      "reference: layerwise with one forward per layer %5.3f s  = %5.2f forwards; layer by layer is "
      "%.2fx faster\n",
      repeated_s, repeated_s / forward_s, repeated_s / layerwise_s);
  figures["layerwise_repeated_s"] = repeated_s;
  figures["layerwise_speedup"] = repeated_s / layerwise_s;
  subset = emo::select_experts(*model, example, {keep_k, emo::SelectionMethod::kLayerwise, 0});

  const fs::path full_file = fs::path(model_dir) / "model.safetensors";
  const double copy_s = median_seconds(
      3, [&] { fs::copy_file(full_file, temp / "copy.safetensors", fs::copy_options::overwrite_existing); });
  emo::PruneSummary summary;
  const std::string pruned_dir = (temp / "pruned").string();
  const double prune_s = median_seconds(3, [&] {
    summary = emo::prune_checkpoint(model_dir, subset, pruned_dir, nullptr, {"prune", {}, true});
  });
  const int64_t full_bytes = dir_bytes(model_dir, "model"), pruned_bytes = dir_bytes(pruned_dir, "model");
  const double size_ratio = static_cast<double>(pruned_bytes) / static_cast<double>(full_bytes);
  std::printf("reference: copy the full checkpoint file     %8.3f s\n", copy_s);
  std::printf("prune to keep-k %-3lld                          %8.3f s  = %5.2f copies\n",
              static_cast<long long>(keep_k), prune_s, prune_s / copy_s);
  std::printf("file size: full %s, pruned %s (%.1f%%; params %.1f%%; experts kept %.1f%%)\n",
              emo::human_bytes(static_cast<double>(full_bytes)).c_str(),
              emo::human_bytes(static_cast<double>(pruned_bytes)).c_str(), 100.0 * size_ratio,
              100.0 * static_cast<double>(summary.params_out) / static_cast<double>(summary.params_in),
              100.0 * static_cast<double>(keep_k) / static_cast<double>(c.num_experts));
  figures["copy_s"] = copy_s;
  figures["prune_s"] = prune_s;
  figures["prune_copies"] = prune_s / copy_s;
  figures["full_bytes"] = full_bytes;
  figures["pruned_bytes"] = pruned_bytes;
  figures["size_ratio"] = size_ratio;
  fs::remove_all(temp);
  std::printf("%s\n", figures.dump().c_str());
  return 0;
}
