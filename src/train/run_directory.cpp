#include "train/run_directory.h"

#include "core/error.h"
#include "io/output_dir.h"
#include "train/distributed.h"

namespace emo {

namespace {

// What an older emo's run directory holds: an unmarked directory with any of them gets the adoption line.
const std::vector<std::string>& run_directory_entries() {
  static const std::vector<std::string> entries = {"checkpoints", "metrics.jsonl", "train_config.json"};
  return entries;
}

}  // namespace

RunDirectory::RunDirectory(const std::string& dir, const std::vector<std::string>& inputs) {
  const Distributed& dist = Distributed::instance();
  std::string refusal;
  if (dist.is_root()) {
    try {
      claim_output_directory(dir, {"train", inputs, false, run_directory_entries()});
      lock_ = std::make_unique<DirectoryLock>(dir, "train");
    } catch (const Error& e) {
      refusal = e.what();
    }
  }
  dist.broadcast(&refusal);
  if (!refusal.empty()) throw Error(refusal);
}

RunDirectory::~RunDirectory() = default;

}  // namespace emo
