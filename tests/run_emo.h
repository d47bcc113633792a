// Runs the real command line (build/bin/emo) from a test: exit status and what it printed on stderr.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

namespace emo::test {

struct EmoRun {
  int status = -1;  // the exit code (-1 when it did not exit normally)
  std::string err;  // stderr
  std::string out;  // stdout
};

inline std::string read_and_remove(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  in.close();
  std::filesystem::remove(path);
  return text.str();
}

// `args` go to the shell unquoted: test paths hold no spaces or shell characters. `env` ("NAME=value ...")
// is set for the command only; `input`, when given, is its stdin (else the test's own).
inline EmoRun run_emo_env(const std::string& env, const std::string& args,
                          const std::optional<std::string>& input = std::nullopt) {
  const std::filesystem::path scratch =
      std::filesystem::temp_directory_path() / ("emo_run_" + std::to_string(::getpid()));
  const std::string err_path = scratch.string() + ".err", out_path = scratch.string() + ".out",
                    in_path = scratch.string() + ".in";
  std::string command =
      env + " " + std::string(EMO_BINARY_DIR) + "/bin/emo " + args + " >" + out_path + " 2>" + err_path;
  if (input) {
    std::ofstream(in_path, std::ios::binary) << *input;
    command += " <" + in_path;
  }
  const int raw = std::system(command.c_str());
  EmoRun run;
  run.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  run.err = read_and_remove(err_path);
  run.out = read_and_remove(out_path);
  if (input) std::filesystem::remove(in_path);
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
