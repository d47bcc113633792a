// The run directory of a training (--out). Rank 0 claims it as an output of "emo train" (the .emo-output
// marker of io/output_dir.h: an unmarked non-empty directory is refused, one that looks like an older emo's
// run with the line that adopts it) and locks it for the whole run, so that a second run on the same
// directory is refused naming the holder's pid instead of interleaving its metrics and checkpoints.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace emo {

class DirectoryLock;

class RunDirectory {
 public:
  // `inputs`: every path the run reads (datasets, tokenizer, configuration, the checkpoint it starts from);
  // a run directory that is, contains or lies inside one is refused. Under MPI only rank 0 looks at the
  // directory; its refusal is broadcast and every rank throws the same error (the others would otherwise
  // wait forever in the first collective).
  RunDirectory(const std::string& dir, const std::vector<std::string>& inputs);
  ~RunDirectory();
  RunDirectory(const RunDirectory&) = delete;
  RunDirectory& operator=(const RunDirectory&) = delete;

 private:
  std::unique_ptr<DirectoryLock> lock_;  // rank 0's, released when the run ends or the process dies
};

}  // namespace emo
