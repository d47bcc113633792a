// `emo finetune PRUNED --examples FILE -o DIR`: short fine-tune of a pruned model, loss on the answer only
// (emo.md §5; the release: 1 epoch, lr 5e-5, batch 32).
#include <cstdio>
#include <filesystem>
#include <memory>

#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "infer/model_files.h"
#include "select/examples.h"
#include "select/finetune.h"

namespace {

namespace fs = std::filesystem;

std::function<int()> setup_finetune(CLI::App& app) {
  struct Options {
    std::string model, examples, out, tokenizer, marker = "Answer:";
    emo::FinetuneOptions finetune;
    bool all_params = false, force = false;
  };
  auto o = std::make_shared<Options>();
  emo::cli::add_model_argument(app, o->model, "Pruned model directory (emo prune")->required();
  app.add_option("--examples", o->examples,
                 "Task examples: JSONL ({\"context\", \"answer\"}, or text with the marker) or plain text")
      ->required();
  app.add_option("-o,--out", o->out, "Directory of the fine-tuned model")->required();
  app.add_option("--marker", o->marker,
                 "For examples without an \"answer\" field: the loss covers the tokens after the last "
                 "occurrence of this marker")
      ->capture_default_str();
  app.add_option("--epochs", o->finetune.epochs, "Passes over the examples")
      ->capture_default_str()
      ->check(emo::cli::in_range(1, emo::cli::kManyItems));
  app.add_option("--lr", o->finetune.lr, "AdamW learning rate (constant)")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, 1, true));
  app.add_option("--batch", o->finetune.batch, "Examples per optimizer step")
      ->capture_default_str()
      ->check(emo::cli::in_range(1, emo::cli::kManyItems));
  app.add_option("--seed", o->finetune.seed, "Order of the examples")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, emo::cli::kMaxSeed));
  app.add_flag("--all-params", o->all_params,
               "Train every parameter (default: experts and routers only, what emo merge carries back)");
  emo::cli::add_tokenizer_option(app, o->tokenizer);
  app.add_flag("--force", o->force, "Replace a previous output of emo finetune at --out");
  return [o] {
    o->finetune.experts_only = !o->all_params;
    const fs::path dir(emo::resolve_model_dir(o->model, "finetune"));
    const emo::OutputRules output{"finetune", {dir.string(), o->examples, o->tokenizer}, o->force};
    emo::check_new_output(o->out, output);  // before the fine-tune, so a refused output costs no training
    auto model = emo::Model::load(dir.string());
    const emo::Tokenizer tokenizer =
        emo::load_tokenizer_for(dir.string(), o->tokenizer, model->config().vocab_size, "finetune");
    auto examples = emo::make_finetune_examples(emo::read_examples(o->examples), tokenizer, o->marker);
    const double before = emo::answer_loss(*model, examples);
    emo::FinetuneReport report = emo::finetune(*model, examples, o->finetune);
    const double after = emo::answer_loss(*model, examples);
    emo::save_finetuned(*model, dir.string(), o->out, output);
    std::printf(
        "fine-tuned %s (%lld parameters, %s) on %zu examples (%lld answer tokens), %lld steps: answer loss "
        "%.4f -> %.4f -> %s\n",
        dir.c_str(), static_cast<long long>(report.params_trained),
        o->all_params ? "all" : "experts and routers", examples.size(),
        static_cast<long long>(report.answer_tokens), static_cast<long long>(report.steps), before, after,
        o->out.c_str());
    return 0;
  };
}

EMO_COMMAND("finetune", "Fine-tune a pruned model on task examples (loss on the answer only)",
            setup_finetune);

}  // namespace
