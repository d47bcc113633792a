// `emo select MODEL --examples FILE --keep-k K --method M`: choose the experts a task keeps (emo.md §5).
#include <cstdio>
#include <filesystem>
#include <memory>

#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "infer/model_files.h"
#include "infer/quantize.h"
#include "io/output_dir.h"
#include "select/examples.h"
#include "select/selection.h"

namespace {

namespace fs = std::filesystem;

std::function<int()> setup_select(CLI::App& app) {
  struct Options {
    std::string model, examples, data, domain, tokenizer, method = "layerwise", out = "subset.json";
    int64_t documents = 1, keep_k = 0;
    uint64_t seed = 0;
    bool force = false;
  };
  auto o = std::make_shared<Options>();
  emo::cli::add_model_argument(app, o->model)->required();
  app.add_option("--examples", o->examples,
                 "Examples: plain text (one example) or JSONL (text, or context+answer)");
  app.add_option("--data", o->data, "Or a tokenised split (e.g. data/corpus/validation.bin) with --domain");
  app.add_option("--domain", o->domain, "Domain of the split's documents to use");
  app.add_option("--documents", o->documents, "Number of documents of the domain")
      ->capture_default_str()
      ->check(emo::cli::in_range(1, emo::cli::kManyItems));
  app.add_option("--keep-k", o->keep_k, "Experts kept per layer, the shared expert counted")
      ->required()
      ->check(emo::cli::in_range(1, 1 << 20));
  app.add_option("--method", o->method, "layerwise, global, easy_ep or random")->capture_default_str();
  app.add_option("--seed", o->seed, "Seed of the random method")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, emo::cli::kMaxSeed));
  emo::cli::add_tokenizer_option(app, o->tokenizer);
  app.add_option("-o,--out", o->out, "Subset file to write")->capture_default_str();
  app.add_flag("--force", o->force, "Replace a previous subset file of emo select at -o");
  return [o] {
    if (o->examples.empty() == o->data.empty())
      emo::fail("select", "give either --examples FILE or --data SPLIT --domain D [--documents N]");
    emo::SelectionOptions options{o->keep_k, emo::parse_selection_method(o->method), o->seed};
    const std::string model_dir = emo::resolve_model_dir(o->model, "select");
    emo::check_new_output_json(o->out, {"select", {model_dir, o->examples, o->data, o->tokenizer}, o->force},
                               emo::ExpertSubset::kFormat);
    auto model = emo::load_model_dequantized(model_dir);
    emo::Examples examples;
    if (!o->examples.empty()) {
      examples = emo::examples_from_file(
          o->examples,
          emo::load_tokenizer_for(model_dir, o->tokenizer, model->config().vocab_size, "select"));
    } else {
      if (o->domain.empty()) emo::fail("select", "--data needs --domain");
      examples = emo::examples_from_dataset(o->data, o->domain, o->documents);
    }
    emo::Timer timer;
    emo::ExpertSubset subset = emo::select_experts(*model, examples, options);
    subset.fingerprint = emo::checkpoint_fingerprint(model_dir, model->config());
    subset.save(o->out);
    const int64_t cut = examples.num_tokens() - subset.calibration.tokens;
    emo::log_info(emo::cat("selected ", o->keep_k, " experts per layer (", o->method, ") from ",
                           subset.calibration.examples, " example(s), ", subset.calibration.tokens, " tokens",
                           cut > 0 ? emo::cat(" (", cut, " beyond the model's context left out)") : "",
                           ", in ", emo::human_duration(timer.seconds()), " -> ", o->out));
    return 0;
  };
}

EMO_COMMAND("select", "Choose per layer the experts to keep from a few examples", setup_select);

}  // namespace
