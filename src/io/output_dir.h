// The one guard of every directory emo writes (prune, merge, quantize, finetune, pull, train --out, corpus
// build, analyze, sweep, reproduce): nothing of the user's is ever deleted or overwritten.
//
// A directory emo writes holds a marker of its own, ".emo-output" ({"format": "emo-output", "command":
// "prune", "version": ..., "complete": true}). That marker is the only proof that a directory may be
// replaced or continued: an existing output that is a regular file, a symbolic link, a non-empty directory
// without the marker or with another command's marker is refused, and so is an output that is, contains or
// lies inside one of the command's inputs. Whole outputs (prune, merge, quantize, finetune, pull) are written
// into a temporary sibling "<dir>.emo-tmp-<pid>-XXXXXX" (marked unfinished, so no loader takes it for a
// model) and renamed into place when complete; --force replaces a previous output of the same command,
// nothing else.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace emo {

class AtomicDirectory;

// The name of the marker file inside an output directory.
inline constexpr const char* kOutputMarker = ".emo-output";

// Who writes an output directory, from what, and whether it may replace its own previous output.
struct OutputRules {
  std::string command;              // "prune", "merge", ...: recorded in the marker, the operation of errors
  std::vector<std::string> inputs;  // every path the command reads (model dirs, subset, examples, tokenizer)
  bool force = false;               // replace a previous output of the same command
  // Entries an output of this command holds when an older emo (before markers) wrote it, e.g. "checkpoints"
  // and "metrics.jsonl" of a train run: an unmarked directory holding any of them is still refused, but the
  // error tells how to adopt it (the one-line marker to write) rather than only to choose another output.
  std::vector<std::string> legacy_entries = {};
};

// The shell line that marks `dir` as an output of `command` (the adoption of an older emo's output).
std::string adoption_command(const std::string& dir, const std::string& command);

// Throws an emo::Error naming `dir` and the reason unless a whole new output of `rules.command` may be
// written at `dir` (absent, an empty directory, or with --force a previous output of the same command).
void check_new_output(const std::string& dir, const OutputRules& rules);

// A whole output being written: checks at construction (before any long work) and again at commit; the
// files go to temp_path(), a sibling of `dir` on the same file system. Stale temporary siblings of earlier
// runs of ours (marker inside, their process gone) are removed, nothing else.
class OutputDirectory {
 public:
  OutputDirectory(std::string dir, OutputRules rules);
  ~OutputDirectory();
  OutputDirectory(const OutputDirectory&) = delete;
  OutputDirectory& operator=(const OutputDirectory&) = delete;

  const std::string& temp_path() const { return temp_path_; }
  const std::string& path() const { return path_; }
  // Marks the output complete and renames it into place (a previous output of ours, with --force, is moved
  // aside first and removed once the new one is in).
  void commit();

 private:
  std::string path_, temp_path_;
  OutputRules rules_;
  std::unique_ptr<AtomicDirectory> atomic_;  // the temporary sibling, removed unless committed
  bool committed_ = false;
};

// Checks, runs write_files(temp_dir), commits: `dir` ends up holding what write_files wrote and the marker.
void write_output_directory(const std::string& dir, const OutputRules& rules,
                            const std::function<void(const std::string& temp_dir)>& write_files);

// The guard of an output that is one file (emo export gguf -o FILE.gguf). Throws an emo::Error naming `path`
// and the reason when it is a symbolic link or anything but a regular file, when it is or contains one of
// `rules.inputs`, and when a file exists there that `written_by_emo(path)` does not recognise as an output of
// the command (refused even with --force) or that it does recognise while --force is not given. The caller
// then writes the file to a temporary name beside it and renames it (io/atomic_file); a file lying inside an
// input directory is allowed: writing one new file there destroys nothing.
void check_new_output_file(const std::string& path, const OutputRules& rules,
                           const std::function<bool(const std::string& path)>& written_by_emo);

// The guard of a JSON file emo writes (a subset, the --json report of eval, generate, info): as
// check_new_output_file, a file being emo's own when it is a JSON object whose "format" is `format`. "" and
// "-" (stdout) pass.
void check_new_output_json(const std::string& path, const OutputRules& rules, const std::string& format);

// For outputs written in place and continued by a later run (train --out, reproduce, sweep, corpus build,
// analyze): creates `dir` with the marker when it is absent or empty, accepts it when it carries the
// marker of the same command, refuses anything else (and any overlap with an input). A marker of only
// "format" and "command" (what adoption_command writes) is enough: "version" and "complete" are optional.
void claim_output_directory(const std::string& dir, const OutputRules& rules);

// An exclusive lock (flock) on "<dir>/.emo-lock" held for the object's life: a second process on the same
// directory is refused with an error naming the holder's pid. Released by the kernel if the holder dies.
class DirectoryLock {
 public:
  DirectoryLock(const std::string& dir, const std::string& command);
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

 private:
  int fd_ = -1;
};

// Writes the marker of an unfinished output of `command` by this process into `dir` (a staging directory
// kept across runs, like emo pull's): loaders of other processes refuse the directory.
void mark_unfinished_output(const std::string& dir, const std::string& command);

// Throws when `dir` is an unfinished output of emo (a temporary or staging directory) of another process:
// loaders call it so that such a directory is never taken for a model (its writer may read it).
void refuse_unfinished_output(const std::string& dir, const std::string& op);

}  // namespace emo
