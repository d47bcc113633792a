// `emo info [MODEL]`: what this build is and what the machine offers; with MODEL, what the model is (read
// from its headers only: architecture, parameters, dtypes, experts, tokenizer, pruning, memory to run).
#include <cstdio>
#include <memory>

#include "command.h"
#include "core/thread_pool.h"
#include "infer/model_files.h"
#include "infer/model_info.h"
#include "io/atomic_file.h"
#include "io/output_dir.h"

namespace {

void print_build_facts() {
  std::printf("emo 0.1.0\nthreads: %d\n", emo::num_threads());
#ifdef EMO_HAVE_MPI
  std::printf("mpi: yes\n");
#else
  std::printf("mpi: no\n");
#endif
}

std::function<int()> setup_info(CLI::App& app) {
  struct Options {
    std::string model, json;
    int64_t keep_k = 0;
    bool force = false;
  };
  auto o = std::make_shared<Options>();
  emo::cli::add_model_argument(app, o->model);
  CLI::Option* json =
      app.add_option("--json", o->json, "Write the facts as JSON to this file ('-' or none: stdout)")
          ->expected(0, 1);
  app.add_flag("--force", o->force, "Replace a previous --json file of emo info");
  app.add_option("--keep-k", o->keep_k, "Also show the memory of a run keeping K experts per layer")
      ->check(emo::cli::in_range(1, 1 << 20));
  return [o, json] {
    if (o->model.empty()) {
      print_build_facts();
      return 0;
    }
    const std::string model_dir = emo::resolve_model_dir(o->model, "info");
    emo::check_new_output_json(o->json, {"info", {model_dir}, o->force}, emo::ModelInfo::kFormat);
    const emo::ModelInfo info = emo::inspect_model(model_dir);
    if (json->count() == 0) {
      std::printf("%s", info.text(o->keep_k).c_str());
      return 0;
    }
    const std::string text = info.to_json(o->keep_k).dump(2) + "\n";
    if (o->json.empty() || o->json == "-")
      std::fwrite(text.data(), 1, text.size(), stdout);
    else
      emo::atomic_write_file(o->json, text);
    return 0;
  };
}

EMO_COMMAND("info", "Print the build and machine facts, or what a model is (emo info MODEL)", setup_info);

}  // namespace
