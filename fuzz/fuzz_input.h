// Shared by the fuzz targets: emo's parsers read files, so each input is written to a file of a per-process
// scratch directory first and the real parser opens it. An emo::Error is the expected answer to bad input;
// any other exception escapes and libFuzzer reports it as a crash (an "internal error" a user would see).
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "core/error.h"

namespace emo::fuzz {

// /tmp/emo-fuzz-<pid>/: one per process, so parallel fuzzing jobs never share a file.
inline const std::filesystem::path& scratch_dir() {
  // Never freed: the exit handler below runs after static destructors of objects made before it.
  static const std::filesystem::path* dir = [] {
    auto* path = new std::filesystem::path(std::filesystem::temp_directory_path() /
                                           ("emo-fuzz-" + std::to_string(getpid())));
    std::filesystem::create_directories(*path);
    // The directory is this process's own: removed at a normal exit (a crash leaves it for inspection).
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(*dir, ignored);
    });
    return path;
  }();
  return *dir;
}

inline std::string write_input(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = (scratch_dir() / name).string();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  return path;
}

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Runs `parse`; emo::Error (a clean rejection) is swallowed, anything else propagates. With EMO_FUZZ_VERBOSE
// set, says whether the input was accepted or the message it was rejected with.
template <typename Parse>
int run_parser(Parse&& parse) {
  static const bool verbose = std::getenv("EMO_FUZZ_VERBOSE") != nullptr;
  try {
    parse();
    if (verbose) std::fprintf(stderr, "accepted\n");
  } catch (const emo::Error& error) {
    if (verbose) std::fprintf(stderr, "rejected: %s\n", error.what());
  }
  return 0;
}

}  // namespace emo::fuzz
