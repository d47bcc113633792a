// Runs the real command line (build/bin/emo) from a test: exit status and what it printed on stderr.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace emo::test {

struct EmoRun {
  int status = -1;  // the exit code (-1 when it did not exit normally)
  std::string err;  // stderr
};

// `args` go to the shell unquoted: test paths hold no spaces or shell characters. `env` ("NAME=value ...")
// is set for the command only.
inline EmoRun run_emo_env(const std::string& env, const std::string& args) {
  const std::string err_path =
      (std::filesystem::temp_directory_path() / ("emo_run_" + std::to_string(::getpid()) + ".err")).string();
  const std::string command =
      env + " " + std::string(EMO_BINARY_DIR) + "/bin/emo " + args + " >/dev/null 2>" + err_path;
  const int raw = std::system(command.c_str());
  EmoRun run;
  run.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  std::ifstream in(err_path);
  std::ostringstream text;
  text << in.rdbuf();
  run.err = text.str();
  std::filesystem::remove(err_path);
  return run;
}

inline EmoRun run_emo(const std::string& args) {
  return run_emo_env("", args);
}

// Every file below `dir` with its bytes ("" for a directory), to show that a refused command left it alone.
inline std::string tree_bytes(const std::filesystem::path& dir) {
  std::ostringstream out;
  if (std::filesystem::is_regular_file(dir)) {
    std::ifstream in(dir, std::ios::binary);
    out << in.rdbuf();
    return out.str();
  }
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    out << e.path().lexically_relative(dir).string() << '\n';
    if (e.is_regular_file()) {
      std::ifstream in(e.path(), std::ios::binary);
      out << in.rdbuf() << '\n';
    }
  }
  return out.str();
}

}  // namespace emo::test
