// `emo eval MODEL [--subset FILE]`: per-domain perplexity and multiple-choice accuracy (docs/tasks.md).
#include <cstdio>
#include <memory>

#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "eval/evaluate.h"
#include "infer/model_files.h"
#include "infer/quantize.h"
#include "io/json_file.h"
#include "io/output_dir.h"
#include "select/subset.h"

namespace {

namespace fs = std::filesystem;

std::function<int()> setup_eval(CLI::App& app) {
  struct Options {
    std::string model, subset, tokenizer, json;
    bool cross_document = false, force = false;
    emo::EvalRequest request;
  };
  auto o = std::make_shared<Options>();
  emo::cli::add_model_argument(app, o->model)->required();
  app.add_option("--subset", o->subset, "Route the full model through this expert subset (emo select)");
  app.add_flag("--force", o->force,
               "Use a --subset chosen on another checkpoint; replace a previous --json file of emo eval");
  app.add_option("--data", o->request.data_path,
                 "Tokenised split for perplexity, e.g. data/corpus/validation.bin");
  app.add_option("--domains", o->request.perplexity.domains, "Only these domains (default: all)")
      ->delimiter(',');
  app.add_option("--seq-len", o->request.perplexity.seq_len, "Row length (default: min(1024, context))")
      ->check(emo::cli::in_range(1, emo::ModelConfig::kMaxPositionEmbeddings));
  app.add_option("--batch-rows", o->request.perplexity.batch_rows, "Rows per forward")
      ->capture_default_str()
      ->check(emo::cli::in_range(1, 4096));
  app.add_option("--max-tokens", o->request.perplexity.max_tokens,
                 "Score exactly N tokens per domain (0: all)")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, emo::cli::kManyTokens));
  app.add_flag("--cross-document-attention", o->cross_document,
               "Let packed documents attend to each other (default: attention within each document)");
  app.add_option("--task", o->request.task_paths, "Multiple-choice task file (JSONL, docs/tasks.md)");
  app.add_option("--builtin-mc", o->request.builtin_mc,
                 "Questions per domain of each built-in task: next segment, and definition for dictionary "
                 "domains (0: none)")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, emo::cli::kManyItems));
  app.add_option("--save-tasks", o->request.save_tasks_dir,
                 "Write the generated dictionary tasks to this directory as task files (--task format)");
  app.add_option("--corpus-split", o->request.corpus_split_path,
                 "Corpus split JSONL for the dictionary task (default: the .jsonl beside --data)");
  app.add_option("--limit", o->request.limit, "Questions per task file (0: all)")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, emo::cli::kManyItems));
  app.add_option("--seed", o->request.seed, "Seed of the built-in tasks")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, emo::cli::kMaxSeed));
  emo::cli::add_tokenizer_option(app, o->tokenizer);
  app.add_option("--json", o->json,
                 "Write the results as JSON to this file ('-': stdout, the table on stderr)");
  return [o] {
    o->request.perplexity.intra_document_attention = !o->cross_document;
    const std::string model_dir = emo::resolve_model_dir(o->model, "eval");
    std::vector<std::string> inputs = {model_dir, o->subset, o->request.data_path, o->tokenizer,
                                       o->request.corpus_split_path};
    inputs.insert(inputs.end(), o->request.task_paths.begin(), o->request.task_paths.end());
    emo::check_new_output_json(o->json, {"eval", inputs, o->force}, emo::EvalReport::kFormat);
    // The task files go into a directory of emo's own (marked), never among the user's files.
    if (!o->request.save_tasks_dir.empty())
      emo::claim_output_directory(o->request.save_tasks_dir, {"eval", inputs});
    auto model = emo::load_model_dequantized(model_dir);
    emo::RoutingOptions routing;
    routing.training = false;
    if (!o->subset.empty()) {
      const emo::ExpertSubset subset = emo::ExpertSubset::load(o->subset, model->config());
      subset.check_source(model_dir, model->config(), o->subset, o->force, "eval");
      routing = subset.routing_options();
    }
    std::unique_ptr<emo::Tokenizer> tokenizer;
    // The built-in tasks use a tokenizer when there is one; task files need one.
    const bool has_tokenizer = !o->tokenizer.empty() || emo::find_tokenizer(model_dir);
    if (!o->request.task_paths.empty() || (o->request.builtin_mc > 0 && has_tokenizer))
      tokenizer = std::make_unique<emo::Tokenizer>(
          emo::load_tokenizer_for(model_dir, o->tokenizer, model->config().vocab_size, "eval"));
    emo::Timer timer;
    emo::EvalReport report = emo::run_eval(*model, routing, tokenizer.get(), o->request);
    std::fprintf(o->json == "-" ? stderr : stdout, "%s", report.table().c_str());
    emo::log_info(emo::cat("evaluated in ", emo::human_duration(timer.seconds())));
    if (!o->json.empty()) {
      nlohmann::json j = report.to_json();
      j["model"] = model_dir;
      j["subset"] = o->subset;
      emo::write_json_output(o->json, j);
    }
    return 0;
  };
}

EMO_COMMAND("eval", "Held-out perplexity per domain and multiple-choice accuracy of a model", setup_eval);

}  // namespace
