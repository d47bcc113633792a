// `emo prune MODEL --subset FILE -o DIR`: a smaller checkpoint holding only the subset's experts (emo.md §5).
#include <cstdio>
#include <filesystem>
#include <memory>

#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "infer/model_files.h"
#include "model/config.h"
#include "select/prune.h"
#include "select/subset.h"

namespace {

namespace fs = std::filesystem;

std::function<int()> setup_prune(CLI::App& app) {
  struct Options {
    std::string model, subset, out;
    bool force = false;
  };
  auto o = std::make_shared<Options>();
  emo::cli::add_model_argument(app, o->model, "Full model directory (config.json + safetensors")->required();
  app.add_option("--subset", o->subset, "Subset file (emo select)")->required();
  app.add_option("-o,--out", o->out, "Directory of the pruned model")->required();
  app.add_flag("--force", o->force,
               "Replace a previous output of emo prune at --out; use a subset chosen on another checkpoint");
  return [o] {
    const std::string model_dir = emo::resolve_model_dir(o->model, "prune");
    const emo::ModelConfig config = emo::ModelConfig::load((fs::path(model_dir) / "config.json").string());
    const emo::ExpertSubset subset = emo::ExpertSubset::load(o->subset, config);
    subset.check_source(model_dir, config, o->subset, o->force, "prune");
    emo::PruneSummary s =
        emo::prune_checkpoint(model_dir, subset, o->out, nullptr, {"prune", {o->subset}, o->force});
    std::printf("pruned %s -> %s: keep-k %lld of %lld experts per layer\n", model_dir.c_str(), o->out.c_str(),
                static_cast<long long>(subset.keep_k), static_cast<long long>(subset.num_experts));
    std::printf("parameters %lld -> %lld (%.1f%%), tensor bytes %s -> %s (%.1f%%), %lld tensors, %s\n",
                static_cast<long long>(s.params_in), static_cast<long long>(s.params_out),
                100.0 * static_cast<double>(s.params_out) / static_cast<double>(s.params_in),
                emo::human_bytes(static_cast<double>(s.bytes_in)).c_str(),
                emo::human_bytes(static_cast<double>(s.bytes_out)).c_str(),
                100.0 * static_cast<double>(s.bytes_out) / static_cast<double>(s.bytes_in),
                static_cast<long long>(s.tensors), emo::human_duration(s.seconds).c_str());
    return 0;
  };
}

EMO_COMMAND("prune", "Write a pruned checkpoint keeping only a subset's experts", setup_prune);

}  // namespace
