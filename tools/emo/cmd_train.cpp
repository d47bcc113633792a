// `emo train`: pretrain an EMO, standard-MoE or dense model (src/train). Examples:
//   emo train --config run.json --out runs/emo-small
//   emo train --out runs/tiny model.layers=2 run.steps=200 routing.mode=standard
//   emo train --out runs/small --data data/corpus/train.bin --validation data/corpus/validation.bin
//             data.tokenizer=data/tok8k/tokenizer.json
//   emo train --out runs/emo-small --resume
//   emo train --out runs/emo-anneal --anneal-from runs/emo-small --anneal-steps 500
//   mpirun -np 2 emo --threads 1 train --config run.json --out runs/emo-small
#include <cstdio>
#include <string>
#include <vector>

#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/distributed.h"
#include "train/row_source.h"
#include "train/schedule.h"
#include "train/trainer.h"

namespace {

struct TrainArgs {
  std::string config_path, out_dir, anneal_from, data, validation, tokenizer;
  std::vector<std::string> overrides;
  bool resume = false, no_progress = false;
  int64_t anneal_steps = 0, steps = 0;
};

// The configuration of this run: the file (or, when resuming or annealing, the checkpoint's own), then the
// command-line overrides.
emo::TrainConfig build_config(const TrainArgs& args, std::string* init_from) {
  using namespace emo;
  nlohmann::json j = TrainConfig{}.to_json();
  std::string checkpoint;
  TrainState checkpoint_state;
  if (!args.anneal_from.empty()) {
    checkpoint = resolve_checkpoint(args.anneal_from);
    if (checkpoint.empty()) fail_file("train", args.anneal_from, "no checkpoint there");
  } else if (args.resume) {
    checkpoint = resolve_checkpoint(args.out_dir);
  }
  TrainConfig checkpoint_config;
  if (!checkpoint.empty()) checkpoint_config = read_checkpoint_config(checkpoint, &checkpoint_state);
  if (!args.config_path.empty())
    j = TrainConfig::load(args.config_path).to_json();
  else if (!checkpoint.empty())
    j = checkpoint_config.to_json();
  if (!args.data.empty()) j["data"]["train"] = args.data;
  if (!args.tokenizer.empty()) j["data"]["tokenizer"] = args.tokenizer;
  if (!args.validation.empty())
    for (const auto& [domain, spec] : per_domain_sources(args.validation))
      j["data"]["validation"][domain] = spec;
  if (args.steps > 0) j["run"]["steps"] = args.steps;
  for (const std::string& o : args.overrides) apply_override(j, o);
  TrainConfig config =
      TrainConfig::from_json(j, args.config_path.empty() ? "command line" : args.config_path);
  if (args.resume && !checkpoint.empty())
    for (const std::string& change : check_resume_changes(checkpoint_config, config, checkpoint))
      log_info(cat("--resume: ", change, " (a resumed run may change this)"));

  if (!args.anneal_from.empty()) {
    // Continue from the checkpoint's step with a linear decay from the learning rate it had reached.
    EMO_CHECK(args.anneal_steps > 0, "train", "--anneal-from needs --anneal-steps N");
    const TrainConfig& original = checkpoint_config;
    const int64_t step = checkpoint_state.step;
    config.schedule.kind = "anneal";
    config.schedule.anneal_start_step = step;
    config.schedule.anneal_start_lr =
        learning_rate(original.schedule, original.optimizer.lr, step, original.total_steps());
    config.run.steps = step + args.anneal_steps;
    config.run.tokens = 0;
    *init_from = checkpoint;
  }
  return config;
}

EMO_COMMAND(
    "train", "Pretrain an EMO, standard-MoE or dense model (data-parallel under mpirun)", [](CLI::App& app) {
      auto args = std::make_shared<TrainArgs>();
      app.add_option("--config", args->config_path,
                     "Training configuration (JSON); defaults to the built-in recipe");
      app.add_option("--out", args->out_dir, "Run directory: checkpoints/, metrics.jsonl, loss_curve.svg")
          ->required();
      app.add_flag("--resume", args->resume, "Continue from the run directory's latest checkpoint");
      app.add_option("--anneal-from", args->anneal_from,
                     "Final linear learning-rate anneal starting from this checkpoint (or run directory)");
      app.add_option("--anneal-steps", args->anneal_steps, "Steps of the anneal")
          ->check(emo::cli::in_range(1, 1e12));
      app.add_option("--data", args->data,
                     "Training dataset (overrides data.train; \"synthetic\" for generated text)");
      app.add_option("--validation", args->validation,
                     "Held-out dataset: validation loss per domain of it (fills data.validation)");
      app.add_option(
          "--tokenizer", args->tokenizer,
          "tokenizer.json of the data: vocabulary and EOS, copied into every checkpoint (overrides "
          "data.tokenizer)");
      app.add_option("--steps", args->steps, "Total optimizer steps (overrides run.steps)")
          ->check(emo::cli::in_range(1, 1e12));
      app.add_flag("--no-progress", args->no_progress, "Plain log lines instead of a progress bar");
      app.add_option("overrides", args->overrides,
                     "Config overrides: section.key=value (e.g. optimizer.lr=1e-3)");
      return [args] {
        using namespace emo;
        std::string init_from;
        TrainConfig config = build_config(*args, &init_from);
        TrainOptions options;
        options.out_dir = args->out_dir;
        options.inputs.push_back(args->config_path);
        options.inputs.push_back(args->anneal_from);
        options.resume = args->resume;
        options.init_from = init_from;
        options.show_progress = !args->no_progress;
        Trainer trainer(config, options);
        trainer.run();
        if (trainer.stop_signal() != 0)
          throw Interrupted(trainer.stop_signal(),
                            cat("[train] signal ", trainer.stop_signal(), " at step ", trainer.step(), " of ",
                                config.total_steps(), "; checkpoint ", trainer.last_checkpoint(),
                                "; resume with the same command and --resume"));
        if (Distributed::instance().is_root()) {
          const TrainTiming& t = trainer.timing();
          log_info(cat("done at step ", trainer.step(), "; checkpoint ", trainer.last_checkpoint(), "; ",
                       human_duration(t.total_seconds), " (step ", human_duration(t.step_seconds), ", data ",
                       human_duration(t.data_seconds), ", checkpoints ", human_duration(t.checkpoint_seconds),
                       ", validation ", human_duration(t.validation_seconds), ")"));
        }
        return 0;
      };
    });

}  // namespace
