// `emo merge PARENT PRUNED -o DIR [--mode replace|average]`: write a (fine-tuned) pruned model's experts back
// into its parent at their original indices (emo.md §5).
#include <cstdio>
#include <memory>

#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "infer/model_files.h"
#include "select/merge.h"

namespace {

std::function<int()> setup_merge(CLI::App& app) {
  struct Options {
    std::string parent, pruned, out, mode = "replace";
    bool force = false;
  };
  auto o = std::make_shared<Options>();
  app.add_option("parent", o->parent, "The full model the pruned one was made from")->required();
  app.add_option("pruned", o->pruned, "The pruned (fine-tuned) model, with its pruning_metadata.json")
      ->required();
  app.add_option("-o,--out", o->out, "Directory of the merged model")->required();
  app.add_flag("--force", o->force, "Replace a previous output of emo merge at --out");
  app.add_option("--mode", o->mode, "replace or average")->capture_default_str();
  return [o] {
    o->parent = emo::resolve_model_dir(o->parent, "merge");
    o->pruned = emo::resolve_model_dir(o->pruned, "merge");
    emo::MergeSummary s = emo::merge_checkpoint(o->parent, o->pruned, o->out, emo::parse_merge_mode(o->mode),
                                                {"merge", {}, o->force});
    std::printf("merged %s into %s -> %s (%s): %lld of %lld tensors from the pruned model, %s\n",
                o->pruned.c_str(), o->parent.c_str(), o->out.c_str(), o->mode.c_str(),
                static_cast<long long>(s.tensors_merged), static_cast<long long>(s.tensors),
                emo::human_duration(s.seconds).c_str());
    if (!s.other_tensors_differing.empty())
      emo::log_warn(emo::cat(s.other_tensors_differing.size(),
                             " other tensors of the pruned model differ from the "
                             "parent's (first: ",
                             s.other_tensors_differing.front(),
                             ") and were NOT merged: the merged model is not the fine-tuned one (fine-tune "
                             "without --all-params to train only what merge carries back)"));
    return 0;
  };
}

EMO_COMMAND("merge", "Write a pruned model's experts back into its parent", setup_merge);

}  // namespace
