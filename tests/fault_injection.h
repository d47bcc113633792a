// Faults for the tests: a full disk (a file size limit, or a real full file system: a small tmpfs), a
// read-only directory, an emo command started in the background to be killed or signalled at a chosen
// moment.
#pragma once

#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
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

// A real full file system: a tmpfs mounted on `dir` in a mount namespace of its own (`unshare -rm`, which an
// unprivileged user may do where user namespaces are enabled), alive while one shell script runs on it. The
// tmpfs vanishes with the script, so the script copies out what the test checks: `snap NAME PATH` copies
// DIR/PATH to RESULTS/NAME; `run NAME COMMAND...` runs a command, its stdout, stderr and exit status to
// RESULTS/NAME.out, .err and .status (`emo NAME ARGS` runs emo so); `fill BYTES` fills the file system but
// BYTES (a file of the script's, .filler at the root of the tmpfs, outside every output); `unfill` frees it
// again.
class SmallFileSystem {
 public:
  SmallFileSystem(std::string dir, std::string results) : dir_(std::move(dir)), results_(std::move(results)) {
    std::filesystem::create_directories(dir_);
    std::filesystem::create_directories(results_);
  }

  // "" when the machine lets this process mount a tmpfs in a namespace of its own, else why not.
  static std::string unavailable() {
    const std::string probe =
        std::filesystem::temp_directory_path() / ("emo_tmpfs_probe_" + std::to_string(::getpid()));
    std::filesystem::create_directories(probe);
    const std::string line = "unshare -rm sh -c 'mount -t tmpfs -o size=64k tmpfs " + probe + "' 2>&1";
    const int status = std::system(line.c_str());
    std::filesystem::remove(probe);
    return status == 0 ? ""
                       : "no small tmpfs: 'unshare -rm' + 'mount -t tmpfs' is not permitted on this machine";
  }

  // Runs `body` with the tmpfs of `bytes` bytes mounted on the directory; returns the shell's status.
  int run(long long bytes, const std::string& body) const {
    const std::string script = results_ + "/script.sh";
    std::ofstream(script)
        << "D='" << dir_ << "'; R='" << results_ << "'; E='" << EMO_BINARY_DIR << "/bin/emo'\n"
        << "mount -t tmpfs -o size=" << bytes << " tmpfs \"$D\" || exit 99\n"
        << "snap() { rm -rf \"$R/$1\"; cp -a \"$D/$2\" \"$R/$1\"; }\n"
        << "run() { n=$1; shift; \"$@\" >\"$R/$n.out\" 2>\"$R/$n.err\"; echo $? >\"$R/$n.status\"; }\n"
        << "emo() { n=$1; shift; run \"$n\" \"$E\" \"$@\"; }\n"
        << "fill() { dd if=/dev/zero of=\"$D/.filler\" bs=4096 2>/dev/null; "
        << "truncate -s -$1 \"$D/.filler\"; }\n"
        << "unfill() { rm -f \"$D/.filler\"; }\n"
        << body << "\n";
    return std::system(("unshare -rm sh " + script).c_str());
  }

  // The exit status and the output (stderr, then stdout) of the script's `run NAME ...` or `emo NAME ...`.
  int status(const std::string& name) const { return std::atoi(text(name + ".status").c_str()); }
  std::string err(const std::string& name) const { return text(name + ".err") + text(name + ".out"); }
  std::string result(const std::string& name) const { return results_ + "/" + name; }

 private:
  std::string text(const std::string& name) const {
    std::ifstream in(results_ + "/" + name);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  std::string dir_, results_;
};

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
