// `emo reproduce`: the paper's headline at small scale in one command (src/experiments/reproduce.h).
//   emo reproduce                          quick budget (about 10 minutes on 2 cores) into
//   runs/reproduce-quick emo reproduce --budget standard        about an hour: the README's table and figure
//   emo reproduce --budget full --config sizes.json --out runs/big
// Rerunning reuses every finished stage (corpus, tokenizer, datasets, trained models, scored cells).
#include <cstdio>
#include <memory>

#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "experiments/reproduce.h"
#include "io/json_file.h"

namespace {

struct ReproduceArgs {
  std::string budget = "quick", config, out, data = "data", cache;
  bool no_progress = false;
};

EMO_COMMAND("reproduce",
            "The paper's headline at small scale: train EMO, standard MoE and dense, select, prune, evaluate",
            [](CLI::App& app) {
              auto args = std::make_shared<ReproduceArgs>();
              app.add_option("--budget", args->budget, "quick (~13 min on 2 cores), standard (~1 h) or full")
                  ->check(CLI::IsMember({"quick", "standard", "full"}));
              app.add_option("--config", args->config,
                             "JSON with budget fields to override (sizes for --budget full)");
              app.add_option("--out", args->out, "Run directory (default runs/reproduce-<budget>)");
              app.add_option("--data", args->data, "Directory of the corpus, tokenizers and tokenised splits")
                  ->capture_default_str();
              app.add_option("--cache", args->cache, "Download cache of the corpus sources");
              app.add_flag("--no-progress", args->no_progress, "Plain log lines instead of progress bars");
              return [args] {
                using namespace emo;
                emo::ReproduceOptions options;
                options.budget = ReproduceBudget::preset(args->budget);
                if (!args->config.empty())
                  options.budget =
                      ReproduceBudget::from_json(read_json_file(args->config), options.budget, args->config);
                options.out_dir = args->out;
                options.data_dir = args->data;
                options.cache_dir = args->cache;
                options.show_progress = !args->no_progress;
                const nlohmann::json summary = run_reproduce(options);
                log_info(cat("reproduce: report in ",
                             options.out_dir.empty() ? "runs/reproduce-" + args->budget : options.out_dir,
                             "/results.md"));
                std::printf("%s\n", summary.dump().c_str());
                return 0;
              };
            });

}  // namespace
