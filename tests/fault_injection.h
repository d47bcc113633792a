// Faults for the tests: a full disk (a file size limit), a read-only directory, an emo command started in
// the background to be killed or signalled at a chosen moment.
#pragma once

#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <string>

namespace emo::test {

// A full disk in this process, simulated by a file size limit (RLIMIT_FSIZE with SIGXFSZ ignored: write
// fails with EFBIG as it would with ENOSPC, and no size-limited file system is needed, nor root).
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &saved_);
    saved_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit limit = saved_;
    limit.rlim_cur = bytes;
    setrlimit(RLIMIT_FSIZE, &limit);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, saved_handler_);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;

 private:
  rlimit saved_{};
  void (*saved_handler_)(int) = SIG_DFL;
};

// The same for one emo command: a shell prefix for run_emo_env (`ulimit -f` counts 512-byte blocks in
// dash and in bash's POSIX mode; an ignored SIGXFSZ stays ignored across exec).
inline std::string full_disk_after_blocks(int blocks) {
  return "trap '' XFSZ; ulimit -f " + std::to_string(blocks) + ";";
}

// Sets `prefix` to what runs an emo command as an unprivileged user: root writes into a directory whatever
// its mode, so a read-only directory is read-only only to someone else. "" when this process is not root;
// false when it is root and setpriv is missing (the test is then skipped).
inline bool unprivileged_prefix(std::string* prefix) {
  if (::geteuid() != 0) return *prefix = "", true;
  if (!std::filesystem::exists("/usr/bin/setpriv")) return false;
  *prefix = "/usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups";
  return true;
}

// Starts `emo ARGS` in the background (stdout discarded, stderr to err_path) and returns its pid: the shell
// execs emo, so the pid is emo's and a signal sent to it reaches emo.
inline pid_t spawn_emo(const std::string& args, const std::string& err_path) {
  std::string shell = "/bin/sh", flag = "-c";
  std::string line = "exec " + std::string(EMO_BINARY_DIR) + "/bin/emo " + args + " >/dev/null 2>" + err_path;
  char* argv[] = {shell.data(), flag.data(), line.data(), nullptr};
  pid_t pid = 0;
  if (posix_spawn(&pid, shell.c_str(), nullptr, nullptr, argv, environ) != 0) return -1;
  return pid;
}

}  // namespace emo::test
