// `emo pull REPO [--revision REV] --out DIR (--keep-k K --examples FILE | --subset FILE | --all)
// [--dtype f32|bf16|int8|q4]`: a model from the Hugging Face Hub, or only the experts a task needs
// (docs/pull.md).
#include <cstdio>
#include <memory>

#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "pull/pull.h"

namespace {

std::function<int()> setup_pull(CLI::App& app) {
  struct Options {
    emo::PullOptions pull;
    std::string dtype = "f32";
  };
  auto o = std::make_shared<Options>();
  app.add_option("repo", o->pull.repo, "Hub repository, e.g. allenai/Emo_1b14b_1T")->required();
  app.add_option("--revision", o->pull.revision, "Branch, tag or commit")->capture_default_str();
  app.add_option("-o,--out", o->pull.out, "Directory to write (must not exist or be empty)")->required();
  app.add_flag("--force", o->pull.force, "Replace a previous output of emo pull at --out");
  app.add_option("--keep-k", o->pull.keep_k,
                 "Experts kept per layer (shared counted), chosen from --examples")
      ->check(emo::cli::in_range(1, 1 << 20));
  app.add_option("--examples", o->pull.examples, "Examples: plain text or JSONL, as for emo select");
  app.add_option("--tokenizer", o->pull.tokenizer,
                 "tokenizer.json for the examples (default: the repository's)");
  app.add_option("--subset", o->pull.subset, "Or a subset file made earlier (emo select)");
  app.add_flag("--all", o->pull.all, "Mirror the whole repository");
  app.add_option("--dtype", o->dtype, "f32 (as stored), bf16, int8 or q4 (as emo quantize writes them)")
      ->capture_default_str();
  app.add_option("--parallel", o->pull.parallel, "Range requests at once")
      ->capture_default_str()
      ->check(emo::cli::in_range(1, 64));
  return [o] {
    if (o->dtype == "bf16")
      o->pull.dtype = emo::DType::kBF16;
    else if (o->dtype == "int8")
      o->pull.dtype = emo::DType::kI8;
    else if (o->dtype == "q4" || o->dtype == "q4_0")
      o->pull.dtype = emo::DType::kQ4_0;
    else if (o->dtype != "f32")
      emo::fail("pull", "--dtype is f32, bf16, int8 or q4, not '" + o->dtype + "'");
    emo::HubClient hub(emo::hub_config_from_environment());
    const emo::PullSummary s = emo::pull_model(hub, o->pull);
    std::printf("pulled %s at %s -> %s: %s fetched", o->pull.repo.c_str(), s.commit.c_str(),
                o->pull.out.c_str(), emo::human_bytes(static_cast<double>(s.bytes_fetched)).c_str());
    if (s.repo_bytes > 0)
      std::printf(" (small files included; the repository's weight files hold %s)",
                  emo::human_bytes(static_cast<double>(s.repo_bytes)).c_str());
    if (s.bytes_reused > 0)
      std::printf(", %s kept from an interrupted run",
                  emo::human_bytes(static_cast<double>(s.bytes_reused)).c_str());
    std::printf(", %lld requests, %s\n", static_cast<long long>(s.requests),
                emo::human_duration(s.seconds).c_str());
    return 0;
  };
}

EMO_COMMAND("pull", "Download a model from the Hugging Face Hub, or only the experts a task needs",
            setup_pull);

}  // namespace
