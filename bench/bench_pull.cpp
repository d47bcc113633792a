// `emo pull`, timed against a fake Hub on loopback ports (tests/fake_hub.h): pulling only the experts a
// task needs (layerwise selection while downloading, keep-k 8 of 64) against the reference measured in the
// same run, mirroring the whole repository (`--all`) from the same server. Loopback has no network latency
// or bandwidth limit: the figures are the bytes each moves and the client's own overhead (HTTP, staging,
// hashing, the selection's forwards, writing the output), not what a real link would take.
//
//   bench_pull [--keep-k K]
// The model is a scaled instance of the released shape made with Model::init_weights: d=256, L=8, H=4,
// E=64 (1 shared), K=8, f=128, vocab 8192, in shards of at most 32 MB.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "../tests/fake_hub.h"
#include "core/log.h"
#include "data/process.h"
#include "model/model.h"
#include "pull/pull.h"
#include "scaled_model.h"

namespace {

namespace fs = std::filesystem;

}  // namespace

int main(int argc, char** argv) {
  int64_t keep_k = 8;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--keep-k") == 0) keep_k = std::stoll(argv[++i]);
  const fs::path dir = fs::temp_directory_path() / ("emo_bench_pull_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  {
    emo::Model model(emo::bench::scaled_released_config());
    model.init_weights(3);
    model.save((dir / "full").string(), "float32", 32'000'000);
  }
  fs::copy_file(std::string(EMO_SOURCE_DIR) + "/fuzz/corpus/tokenizer_json/trained300.json",
                dir / "full/tokenizer.json");
  std::ofstream(dir / "examples.txt")
      << "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.";

  emo::testing::FakeHub hub("bench/emo");
  uint64_t repo_bytes = 0;
  for (const auto& e : fs::directory_iterator(dir / "full")) {
    hub.add_file(e.path().filename().string(), emo::data::read_file_bytes(e.path().string()),
                 e.path().extension() == ".safetensors");
    repo_bytes += fs::file_size(e.path());
  }
  emo::HubConfig config;
  config.endpoint = hub.endpoint();
  emo::HubClient client(config);

  emo::PullOptions all;
  all.repo = "bench/emo", all.out = (dir / "mirror").string(), all.all = true;
  emo::Timer mirror_timer;
  const emo::PullSummary mirror = emo::pull_model(client, all);
  const double mirror_s = mirror_timer.seconds();
  const uint64_t mirror_sent = hub.body_bytes();

  hub.reset_counts();
  emo::PullOptions subset;
  subset.repo = "bench/emo", subset.out = (dir / "subset").string(), subset.keep_k = keep_k;
  subset.examples = (dir / "examples.txt").string();
  emo::Timer subset_timer;
  const emo::PullSummary pulled = emo::pull_model(client, subset);
  const double subset_s = subset_timer.seconds();
  const uint64_t subset_sent = hub.body_bytes();

  std::printf("repository: %s (d=256 L=8 E=64 K=8 f=128 V=8192, fp32); keep-k %lld\n",
              emo::human_bytes(double(repo_bytes)).c_str(), static_cast<long long>(keep_k));
  std::printf("reference: emo pull --all          %8.3f s  %s sent  %lld requests\n", mirror_s,
              emo::human_bytes(double(mirror_sent)).c_str(), static_cast<long long>(mirror.requests));
  std::printf("emo pull --keep-k %-3lld --examples   %8.3f s  %s sent  %lld requests\n",
              static_cast<long long>(keep_k), subset_s, emo::human_bytes(double(subset_sent)).c_str(),
              static_cast<long long>(pulled.requests));
  std::printf("ratio: bytes %.3f, time %.3f\n", double(subset_sent) / double(mirror_sent),
              subset_s / mirror_s);
  const nlohmann::json figures = {{"bench", "pull"},
                                  {"keep_k", keep_k},
                                  {"repo_bytes", repo_bytes},
                                  {"mirror_bytes", mirror_sent},
                                  {"mirror_s", mirror_s},
                                  {"subset_bytes", subset_sent},
                                  {"subset_s", subset_s},
                                  {"bytes_ratio", double(subset_sent) / double(mirror_sent)},
                                  {"time_ratio", subset_s / mirror_s}};
  fs::remove_all(dir);
  std::printf("%s\n", figures.dump().c_str());
  return 0;
}
