#include "io/output_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

#include "core/error.h"
#include "core/version.h"
#include "io/atomic_file.h"
#include "io/json_file.h"

namespace emo {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "emo-output";
constexpr const char* kLockFile = ".emo-lock";

std::string without_trailing_slashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

// The path with symbolic links and '..' resolved as far as it exists (the rest kept as written).
fs::path resolved(const std::string& path) {
  const fs::path absolute = fs::absolute(without_trailing_slashes(path));
  std::error_code ec;
  fs::path canonical = fs::weakly_canonical(absolute, ec);
  return ec ? absolute.lexically_normal() : canonical;
}

// Whether `inner` is `outer` or lies below it, comparing whole components ("a/bc" is not inside "a/b").
bool is_within(const fs::path& inner, const fs::path& outer) {
  auto [o, i] = std::mismatch(outer.begin(), outer.end(), inner.begin(), inner.end());
  return o == outer.end();
}

// `may_lie_inside`: an output file inside an input directory is allowed (it destroys nothing there).
void refuse_overlap_with_inputs(const std::string& dir, const OutputRules& rules,
                                bool may_lie_inside = false) {
  const fs::path out = resolved(dir);
  for (const std::string& input : rules.inputs) {
    if (input.empty()) continue;
    const fs::path in = resolved(input);
    if (in == out)
      fail_file(rules.command, dir, cat("is the input '", input, "': choose another output directory"));
    if (is_within(in, out))
      fail_file(
          rules.command, dir,
          cat("contains the input '", input, "', which writing it would destroy: choose another output"));
    if (is_within(out, in) && !may_lie_inside)
      fail_file(rules.command, dir, cat("lies inside the input '", input, "': choose another output"));
  }
}

nlohmann::json marker_json(const std::string& command, bool complete) {
  nlohmann::json marker = {
      {"format", kFormat}, {"command", command}, {"version", kEmoVersion}, {"complete", complete}};
  if (!complete) marker["pid"] = static_cast<long long>(::getpid());
  return marker;
}

void write_marker(const std::string& dir, const std::string& command, bool complete) {
  atomic_write_file((fs::path(dir) / kOutputMarker).string(), marker_json(command, complete).dump(2) + "\n");
}

// The marker of `dir`, or null when it has none (or one that is not emo's).
nlohmann::json read_marker(const std::string& dir) {
  const fs::path path = fs::path(dir) / kOutputMarker;
  if (!fs::is_regular_file(path)) return nullptr;
  nlohmann::json marker;
  try {
    marker = read_json_file(path.string());
  } catch (const Error&) {
    return nullptr;
  }
  if (!marker.is_object() || marker.value("format", "") != kFormat || !marker.contains("command") ||
      !marker["command"].is_string())
    return nullptr;
  return marker;
}

// A path as one shell word: unchanged when it holds only safe characters, else single-quoted.
std::string shell_word(const std::string& text) {
  const bool safe = !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || std::strchr("_./-+:@%,=", c) != nullptr;
  });
  if (safe) return text;
  std::string quoted = "'";
  for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

// A non-empty directory without our marker. When it holds what an older emo's output of the command holds,
// it may well be one: the refusal then says how to adopt it, since silently taking it over could write into
// a directory of the user's.
[[noreturn]] void refuse_unmarked(const std::string& dir, const OutputRules& rules) {
  std::string found;
  for (const std::string& entry : rules.legacy_entries) {
    std::error_code ec;
    if (fs::exists(fs::symlink_status(fs::path(dir) / entry, ec)))
      found += (found.empty() ? "" : ", ") + entry;
  }
  if (found.empty())
    fail_file(rules.command, dir,
              cat("exists, is not empty and was not written by emo (no ", kOutputMarker,
                  " marker): choose another output, emo never deletes what it did not write"));
  fail_file(
      rules.command, dir,
      cat("has no ", kOutputMarker, " marker, but holds ", found, " as an output of 'emo ", rules.command,
          "' written by an older emo does. If it is one, adopt it with\n  ",
          adoption_command(dir, rules.command),
          "\nand run again; otherwise choose another output (emo never writes into a directory of yours)"));
}

enum class Existing { kAbsent, kEmpty, kOurs };

// What is at `dir`; throws unless it is nothing, an empty directory or an output of the same command.
Existing examine(const std::string& dir, const OutputRules& rules) {
  std::error_code ec;
  const fs::file_status status = fs::symlink_status(dir, ec);
  if (ec || !fs::exists(status)) return Existing::kAbsent;
  if (fs::is_symlink(status))
    fail_file(rules.command, dir, "is a symbolic link, not a directory emo wrote: choose another output");
  if (!fs::is_directory(status))
    fail_file(rules.command, dir,
              "exists and is not a directory (emo never replaces a file it did not write)");
  if (fs::is_empty(dir)) return Existing::kEmpty;
  const nlohmann::json marker = read_marker(dir);
  if (marker.is_null()) refuse_unmarked(dir, rules);
  const std::string command = marker["command"].get<std::string>();
  if (command != rules.command)
    fail_file(rules.command, dir,
              cat("holds the output of 'emo ", command, "', not of 'emo ", rules.command,
                  "': choose another output"));
  return Existing::kOurs;
}

bool process_is_gone(long long pid) {
  return pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

// Whether `dir` is empty or holds nothing but the temporary file of a marker: what a run killed right after
// creating its temporary directory leaves. Removing it destroys nothing.
bool holds_only_a_marker_being_written(const fs::path& dir) {
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec))
    if (entry.path().filename().string().rfind(cat(kOutputMarker, ".tmp-"), 0) != 0) return false;
  return !ec;
}

// Removes "<dir>.emo-tmp-<pid>-*" and "<dir>.emo-old-<pid>-*" siblings left by runs of ours that died: only
// directories carrying our marker, whose process no longer exists (an "old" one is put back when `dir` is
// missing).
void remove_stale_siblings(const std::string& dir) {
  const fs::path path(dir);
  const fs::path parent = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  const std::string name = path.filename().string();
  std::error_code ec;
  std::vector<fs::path> stale;
  for (const fs::directory_entry& entry : fs::directory_iterator(parent, ec)) {
    const std::string sibling = entry.path().filename().string();
    for (const char* kind : {".emo-tmp-", ".emo-old-"}) {
      const std::string prefix = name + kind;
      if (sibling.rfind(prefix, 0) != 0 || !entry.is_directory() || entry.is_symlink()) continue;
      const long long pid = std::atoll(sibling.c_str() + prefix.size());
      if ((!read_marker(entry.path().string()).is_null() ||
           holds_only_a_marker_being_written(entry.path())) &&
          process_is_gone(pid))
        stale.push_back(entry.path());
    }
  }
  for (const fs::path& doomed : stale) {
    // A run killed between moving the previous output aside and renaming the new one in (file systems
    // without RENAME_EXCHANGE) left no `dir`: the previous output, whole, goes back.
    if (doomed.filename().string().rfind(name + ".emo-old-", 0) == 0 &&
        !fs::exists(fs::symlink_status(path)) && ::rename(doomed.c_str(), path.c_str()) == 0)
      continue;
    remove_marked_directory(doomed.string());
  }
}

}  // namespace

std::string adoption_command(const std::string& dir, const std::string& command) {
  // Written out by hand: nlohmann orders keys alphabetically, and the hint reads better "format" first.
  const std::string json = cat("{\"format\": ", nlohmann::json(kFormat).dump(),
                               ", \"command\": ", nlohmann::json(command).dump(), "}");
  return cat("echo ", shell_word(json), " > ",
             shell_word((fs::path(without_trailing_slashes(dir)) / kOutputMarker).string()));
}

void check_new_output(const std::string& dir, const OutputRules& rules) {
  EMO_CHECK(!dir.empty(), rules.command, "no output directory given");
  refuse_overlap_with_inputs(dir, rules);
  if (examine(dir, rules) == Existing::kOurs && !rules.force)
    fail_file(rules.command, dir,
              cat("holds a previous output of 'emo ", rules.command,
                  "': give --force to replace it, or choose another output"));
}

void check_new_output_file(const std::string& path, const OutputRules& rules,
                           const std::function<bool(const std::string& path)>& written_by_emo) {
  EMO_CHECK(!path.empty(), rules.command, "no output file given");
  refuse_overlap_with_inputs(path, rules, true);
  std::error_code ec;
  const fs::file_status status = fs::symlink_status(path, ec);
  if (ec || !fs::exists(status)) return;
  if (fs::is_symlink(status))
    fail_file(rules.command, path, "is a symbolic link, not a file emo wrote: choose another output");
  if (!fs::is_regular_file(status))
    fail_file(rules.command, path, "exists and is not a regular file: choose another output");
  if (!written_by_emo(path))
    fail_file(rules.command, path,
              cat("exists and was not written by 'emo ", rules.command,
                  "': choose another output, emo never overwrites a file it did not write"));
  if (!rules.force)
    fail_file(rules.command, path,
              cat("holds a previous output of 'emo ", rules.command,
                  "': give --force to replace it, or choose another output"));
}

void check_new_output_json(const std::string& path, const OutputRules& rules, const std::string& format) {
  if (path.empty() || path == "-") return;
  check_new_output_file(path, rules, [&format](const std::string& existing) {
    // emo's JSON outputs are small: a large file is someone else's, and is not read whole to find out.
    constexpr uintmax_t kLargestOwnJson = uintmax_t{64} << 20;
    std::error_code ec;
    if (fs::file_size(existing, ec) > kLargestOwnJson || ec) return false;
    std::ifstream in(existing, std::ios::binary);
    const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
    return j.is_object() && j.contains("format") && j["format"] == format;
  });
}

OutputDirectory::OutputDirectory(std::string dir, OutputRules rules)
    : path_(without_trailing_slashes(std::move(dir))), rules_(std::move(rules)) {
  remove_stale_siblings(path_);  // first: it may put back a previous output a killed run left aside
  check_new_output(path_, rules_);
  atomic_ = std::make_unique<AtomicDirectory>(path_);
  temp_path_ = atomic_->temp_path();
  write_marker(temp_path_, rules_.command, false);
}

OutputDirectory::~OutputDirectory() = default;

void OutputDirectory::commit() {
  EMO_CHECK(!committed_, rules_.command, path_, ": committed twice");
  check_new_output(path_, rules_);  // what is at path_ may have changed during the work
  write_marker(temp_path_, rules_.command, true);
  atomic_->commit();
  committed_ = true;
}

void write_output_directory(const std::string& dir, const OutputRules& rules,
                            const std::function<void(const std::string& temp_dir)>& write_files) {
  OutputDirectory out(dir, rules);
  write_files(out.temp_path());
  out.commit();
}

void claim_output_directory(const std::string& dir, const OutputRules& rules) {
  EMO_CHECK(!dir.empty(), rules.command, "no output directory given");
  refuse_overlap_with_inputs(dir, rules);
  if (examine(dir, rules) == Existing::kOurs) return;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail_file(rules.command, dir, "cannot create the directory: " + ec.message());
  write_marker(dir, rules.command, true);
}

DirectoryLock::DirectoryLock(const std::string& dir, const std::string& command) {
  const std::string path = (fs::path(dir) / kLockFile).string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail_file(command, path, cat("cannot open the lock file: ", std::strerror(errno)));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    char holder[32] = {0};
    const ssize_t n = ::pread(fd_, holder, sizeof(holder) - 1, 0);
    ::close(fd_);
    fd_ = -1;
    if (error != EWOULDBLOCK) fail_file(command, path, cat("cannot lock: ", std::strerror(error)));
    const std::string pid = n > 0 ? std::string(holder, static_cast<size_t>(n)) : "unknown";
    fail_file(command, dir,
              cat("is in use by another 'emo ", command, "' (pid ", pid.substr(0, pid.find('\n')),
                  "): two runs on one output would overwrite each other's files; wait for it or stop it"));
  }
  const std::string pid = cat(::getpid(), "\n");
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) < 0) {
    // The lock holds without the pid; only the message of a refused second run is poorer.
  }
}

DirectoryLock::~DirectoryLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the descriptor releases the flock
}

void mark_unfinished_output(const std::string& dir, const std::string& command) {
  write_marker(dir, command, false);
}

void refuse_unfinished_output(const std::string& dir, const std::string& op) {
  const nlohmann::json marker = read_marker(dir);
  if (marker.is_null() || marker.value("complete", true)) return;
  if (marker.value("pid", 0LL) == static_cast<long long>(::getpid())) return;  // its writer reading its work
  fail_file(op, dir,
            cat("is an unfinished output of 'emo ", marker["command"].get<std::string>(),
                "' (being written, or left by a stopped run), not a model"));
}

}  // namespace emo
