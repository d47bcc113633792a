// `emo sweep MODEL... --data SPLIT --keep-k 8,16,32 --methods layerwise,random -o DIR`: the keep-k x domain x
// method grid with a results table (markdown, CSV) and a figure (SVG).
#include <cstdio>
#include <memory>

#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "infer/model_files.h"
#include "infer/quantize.h"
#include "io/output_dir.h"
#include "select/sweep.h"

namespace {

std::function<int()> setup_sweep(CLI::App& app) {
  struct Options {
    emo::SweepOptions sweep;
    std::string out = "sweep";
    bool force = false;
  };
  auto o = std::make_shared<Options>();
  app.add_option("models", o->sweep.models, "Model directories (or run directories, checkpoints/latest)")
      ->required();
  app.add_option("--names", o->sweep.names,
                 "Names of the models in the table and the figure, comma-separated (default: the run's "
                 "directory name)")
      ->delimiter(',');
  app.add_option("--data", o->sweep.eval_data, "Held-out tokenised split (e.g. data/corpus/test.bin)")
      ->required();
  app.add_option("--calib", o->sweep.calib_data, "Split the selection examples come from (default: --data)");
  app.add_option("--domains", o->sweep.domains, "Domains (default: all)")->delimiter(',');
  app.add_option("--methods", o->sweep.methods, "Selection methods")->delimiter(',')->capture_default_str();
  app.add_option("--keep-k", o->sweep.keep_k, "Experts kept per layer (shared counted)")
      ->delimiter(',')
      ->required()
      ->check(emo::cli::in_range(1, 1 << 20));
  app.add_option("--examples", o->sweep.examples, "Documents of the domain used to select")
      ->capture_default_str()
      ->check(emo::cli::in_range(1, emo::cli::kManyItems));
  app.add_option("--seed", o->sweep.seed, "Seed of the random method")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, emo::cli::kMaxSeed));
  app.add_option("--seq-len", o->sweep.perplexity.seq_len, "Row length (default: min(1024, context))")
      ->check(emo::cli::in_range(1, emo::ModelConfig::kMaxPositionEmbeddings));
  app.add_option("--max-tokens", o->sweep.perplexity.max_tokens, "Score exactly N tokens per domain (0: all)")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, emo::cli::kManyTokens));
  app.add_option("-o,--out", o->out, "Output directory (results.md, results.csv, quality.svg)")
      ->capture_default_str();
  app.add_flag("--force", o->force, "Replace a previous output of emo sweep at -o");
  return [o] {
    for (std::string& model : o->sweep.models) model = emo::resolve_model_dir(model, "sweep");
    std::vector<std::string> inputs = o->sweep.models;
    inputs.push_back(o->sweep.eval_data);
    inputs.push_back(o->sweep.calib_data);
    // Checked before the grid is scored; written into a temporary sibling, renamed into place when complete.
    emo::OutputDirectory out(o->out, {"sweep", inputs, o->force});
    o->sweep.load_model = emo::load_model_dequantized;
    auto rows = emo::run_sweep(o->sweep);
    emo::write_sweep(out.temp_path(), rows);
    out.commit();
    std::printf("%s", emo::sweep_markdown(rows).c_str());
    emo::log_info(emo::cat("sweep: ", rows.size(), " rows -> ", o->out, "/results.{md,csv}, quality.svg"));
    return 0;
  };
}

EMO_COMMAND("sweep", "Quality against experts kept: the keep-k x domain x method grid", setup_sweep);

}  // namespace
