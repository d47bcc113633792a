// `emo pull` against a fake Hub on loopback ports (tests/fake_hub.h) serving a tiny EMO checkpoint in three
// shards: the pulled subset is `emo select` + `emo prune` on the full checkpoint, byte for byte; only the
// subset's bytes travel; a killed pull resumes with what is missing; faults are retried or named, never a
// corrupt output.
#include "pull/pull.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "core/error.h"
#include "data/process.h"
#include "fake_hub.h"
#include "infer/quantize.h"
#include "io/json_file.h"
#include "io/output_dir.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "select/examples.h"
#include "select/prune.h"
#include "select/selection.h"
#include "tiny_emo.h"
#include "tokenizer/tokenizer.h"

extern char** environ;

namespace emo {
namespace {

namespace fs = std::filesystem;
const std::string kRepo = "org/tiny-emo";
using test::TempDir;
const std::string kTokenizer = test::kTrainedTokenizer;

// The tiny model; `blocks_of_32` makes every matrix row whole blocks of 32 weights, as q4 needs.
void write_fixture(const std::string& dir, bool blocks_of_32) {
  if (blocks_of_32)
    test::write_tiny_emo(dir, 32, 24'000, 300, 5, 32);
  else
    test::write_tiny_emo(dir);
}

std::string read_bytes(const fs::path& p) {
  return data::read_file_bytes(p.string());
}

struct Fixture {
  TempDir dir{"emo_pull_test_"};
  std::string full = dir / "full";
  std::string examples = dir / "examples.txt";
  testing::FakeHub hub{kRepo};
  uint64_t small_bytes = 0;  // the files fetched whole (all but the shards)

  explicit Fixture(bool blocks_of_32 = false) {
    write_fixture(full, blocks_of_32);
    std::ofstream(examples) << "The capital of France is Paris. The capital of Italy is Rome.";
    for (const auto& e : fs::directory_iterator(full)) {
      const bool lfs = e.path().extension() == ".safetensors";
      hub.add_file(e.path().filename().string(), read_bytes(e.path()), lfs);
      if (!lfs) small_bytes += fs::file_size(e.path());
    }
  }

  HubClient client(std::string token = "") const { return testing::fast_client(hub, std::move(token)); }
  PullOptions selection(const std::string& out) const {
    PullOptions o;
    o.repo = kRepo;
    o.out = dir / out;
    o.keep_k = 4;
    o.examples = examples;
    return o;
  }
  // `emo select` + `emo prune` on the full checkpoint.
  ExpertSubset reference(const std::string& out) const {
    auto model = Model::load(full);
    const Examples ex = examples_from_file(examples, Tokenizer::load(full + "/tokenizer.json"));
    ExpertSubset subset = select_experts(*model, ex, {4, SelectionMethod::kLayerwise, 0});
    prune_checkpoint(full, subset, dir / out);
    return subset;
  }
  // Bytes a pull of `subset` must transfer: small files, each shard's 8-byte length and JSON header, and
  // the tensors but the dropped routed experts.
  uint64_t expected_bytes(const ExpertSubset& subset) const {
    uint64_t total = small_bytes;
    const SafetensorsCheckpoint ckpt = SafetensorsCheckpoint::open(full);
    for (const SafetensorsFile& f : ckpt.files()) {
      uint64_t data_start = UINT64_MAX;
      for (const auto& [name, info] : f.tensors()) data_start = std::min(data_start, info.file_offset);
      total += data_start;
    }
    for (const std::string& name : ckpt.names()) {
      const auto expert = expert_of_tensor(name);
      const auto& kept = subset.routed[expert ? expert->first : 0];
      const bool shared = expert && expert->second >= 9;
      if (!expert || shared || std::count(kept.begin(), kept.end(), expert->second))
        total += ckpt.info(name).nbytes;
    }
    return total;
  }
};

// The weight files and config of two checkpoint directories hold the same bytes.
void expect_same_checkpoint(const std::string& got, const std::string& want) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(want)) names.push_back(e.path().filename().string());
  ASSERT_FALSE(names.empty());
  for (const std::string& name : names) {
    ASSERT_TRUE(fs::exists(fs::path(got) / name)) << name;
    if (name == "pruning_metadata.json") continue;  // the pulled one adds "source"
    if (name == kOutputMarker) continue;            // names the command: "pull", not "prune" or "quantize"
    EXPECT_EQ(read_bytes(fs::path(got) / name), read_bytes(fs::path(want) / name)) << name;
  }
  nlohmann::json a = read_json_file(got + "/pruning_metadata.json"),
                 b = read_json_file(want + "/pruning_metadata.json");
  a.erase("source");
  EXPECT_EQ(a, b);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Pull, TheSubsetIsSelectPlusPruneAndOnlyItsBytesTravel) {
  Fixture fx;
  const ExpertSubset want = fx.reference("reference");
  HubClient hub = fx.client();
  const PullSummary s = pull_model(hub, fx.selection("pulled"));
  expect_same_checkpoint(fx.dir / "pulled", fx.dir / "reference");
  EXPECT_EQ(s.commit, testing::FakeHub::kCommit);
  EXPECT_EQ(fx.hub.body_bytes(), fx.expected_bytes(want));
  EXPECT_EQ(s.bytes_fetched, fx.hub.body_bytes());
  EXPECT_LT(s.bytes_fetched - fx.small_bytes, s.repo_bytes * 7 / 10) << "the dropped experts were fetched";
  EXPECT_TRUE(fs::exists(fx.dir / "pulled/tokenizer_config.json"));
  EXPECT_FALSE(fs::exists(fx.dir / "pulled.emo-pull")) << "the staging directory stays behind";
  const nlohmann::json source = read_json_file(fx.dir / "pulled/pruning_metadata.json")["source"];
  EXPECT_EQ(source["hub_repo"], kRepo);
  EXPECT_EQ(source["commit"], testing::FakeHub::kCommit);
  EXPECT_EQ(source["files"]["config.json"]["git_blob_id"],
            data::git_blob_sha1_hex(read_bytes(fx.full + "/config.json")));
  const std::string shard = SafetensorsCheckpoint::open(fx.full).files()[0].path();
  EXPECT_EQ(source["files"][fs::path(shard).filename().string()]["sha256"], data::sha256_file_hex(shard));
}

TEST(Pull, PassingFaultsAreRetriedAndTheOutputIsTheSame) {
  Fixture fx;
  const ExpertSubset want = fx.reference("reference");
  want.save(fx.dir / "subset.json");
  using F = testing::FakeHub::Fault;
  fx.hub.inject(F::kDropMidBody, "/lfs/");
  fx.hub.inject(F::kServerError, "/lfs/");
  fx.hub.inject(F::kRateLimited, "/lfs/");
  fx.hub.inject(F::kTruncatedRange, "/lfs/");
  fx.hub.inject(F::kServerError, "config.json");
  HubClient hub = fx.client();
  PullOptions o = fx.selection("pulled");
  o.keep_k = 0, o.examples = "", o.subset = fx.dir / "subset.json";
  pull_model(hub, o);
  EXPECT_EQ(fx.hub.faults_left(), 0);
  expect_same_checkpoint(fx.dir / "pulled", fx.dir / "reference");
}

TEST(Pull, AWrongHashIsNamedAndNothingIsWritten) {
  Fixture fx;
  fx.hub.claim_wrong_hash("config.json");
  HubClient hub = fx.client();
  const std::string message = error_of([&] { pull_model(hub, fx.selection("pulled")); });
  EXPECT_NE(message.find("[pull] config.json: wrong hash: git blob id"), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(fx.dir / "pulled"));

  // A mirrored shard that does not match its sha256: named, forgotten by the journal, no output.
  Fixture mirror;
  const std::string shard = fs::path(SafetensorsCheckpoint::open(mirror.full).files()[1].path()).filename();
  mirror.hub.claim_wrong_hash(shard);
  HubClient hub2 = mirror.client();
  PullOptions all;
  all.repo = kRepo, all.out = mirror.dir / "mirror", all.all = true;
  const std::string again = error_of([&] { pull_model(hub2, all); });
  EXPECT_NE(again.find("[pull] " + shard + ": wrong hash: sha256"), std::string::npos) << again;
  EXPECT_FALSE(fs::exists(mirror.dir / "mirror"));
}

TEST(Pull, AGatedRepositoryNeedsTheToken) {
  Fixture fx;
  fx.hub.require_token("hf_secret");
  HubClient anonymous = fx.client();
  const std::string message = error_of([&] { pull_model(anonymous, fx.selection("pulled")); });
  EXPECT_NE(message.find("HTTP 401 (GatedRepo"), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(fx.dir / "pulled"));
  HubClient hub = fx.client("hf_secret");
  pull_model(hub, fx.selection("pulled"));
  EXPECT_TRUE(fs::exists(fx.dir / "pulled/model.safetensors"));
  EXPECT_EQ(fx.hub.storage_auth_headers(), 0) << "the token went to the storage host";
}

TEST(Pull, MirrorsTheRepositoryAndConvertsOnTheWay) {
  Fixture fx;
  HubClient hub = fx.client();
  PullOptions all;
  all.repo = kRepo, all.out = fx.dir / "mirror", all.all = true, all.max_range_bytes = 5000;
  pull_model(hub, all);
  for (const auto& e : fs::directory_iterator(fx.full))
    EXPECT_EQ(read_bytes(fx.dir / ("mirror/" + e.path().filename().string())), read_bytes(e.path()))
        << e.path().filename();

  // --dtype int8 gives what `emo quantize` gives on the pruned checkpoint.
  fx.reference("reference");
  quantize_checkpoint(fx.dir / "reference", fx.dir / "reference_int8", DType::kI8);
  PullOptions o = fx.selection("pulled_int8");
  o.dtype = DType::kI8;
  pull_model(hub, o);
  expect_same_checkpoint(fx.dir / "pulled_int8", fx.dir / "reference_int8");
}

TEST(Pull, ConvertsTheSelectionToQ4AsQuantizeDoes) {
  Fixture fx(true);
  HubClient hub = fx.client();
  fx.reference("reference");
  quantize_checkpoint(fx.dir / "reference", fx.dir / "reference_q4", DType::kQ4_0);
  PullOptions o = fx.selection("pulled_q4");
  o.dtype = DType::kQ4_0;
  pull_model(hub, o);
  expect_same_checkpoint(fx.dir / "pulled_q4", fx.dir / "reference_q4");
  const SafetensorsCheckpoint pulled = SafetensorsCheckpoint::open(fx.dir / "pulled_q4");
  EXPECT_EQ(pulled.info("model.layers.0.self_attn.q_proj.weight").dtype, DType::kQ4_0);
}

TEST(Pull, ResumesAfterAKillFetchingOnlyWhatIsMissing) {
  Fixture fx;
  const ExpertSubset want = fx.reference("reference");
  const uint64_t full_transfer = fx.expected_bytes(want);
  // The command line, killed while the server holds its 14th content request.
  fx.hub.hold_from(14);
  setenv("HF_ENDPOINT", fx.hub.endpoint().c_str(), 1);
  const std::string emo = std::string(EMO_BINARY_DIR) + "/bin/emo";
  const std::string out = fx.dir / "pulled";
  std::vector<std::string> args = {emo, "pull",       kRepo,       "--out",      out, "--keep-k",
                                   "4", "--examples", fx.examples, "--parallel", "1"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, emo.c_str(), nullptr, nullptr, argv.data(), environ), 0);
  for (int i = 0; i < 1000 && !fx.hub.holding(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_TRUE(fx.hub.holding()) << "the pull never reached the held request";
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  unsetenv("HF_ENDPOINT");
  fx.hub.release();
  EXPECT_FALSE(fs::exists(out));
  ASSERT_TRUE(fs::exists(out + ".emo-pull/journal.jsonl"));
  const uint64_t before = fx.hub.body_bytes();
  EXPECT_GT(before, 0u);

  // One recorded range damaged on disk after the kill: it is checked, found wrong and fetched again.
  std::ifstream journal(out + ".emo-pull/journal.jsonl");
  std::string line, last;
  while (std::getline(journal, line)) last = line;
  const nlohmann::json damaged = nlohmann::json::parse(last);
  const uint64_t damaged_bytes = damaged["end"].get<uint64_t>() - damaged["begin"].get<uint64_t>();
  {
    std::fstream f(out + ".emo-pull/" + damaged["file"].get<std::string>(),
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(damaged["begin"].get<std::streamoff>());
    f.put('\x5a');
  }

  fx.hub.reset_counts();
  HubClient hub = fx.client();
  const PullSummary s = pull_model(hub, fx.selection("pulled"));
  EXPECT_GT(s.bytes_reused, 0u);
  EXPECT_EQ(s.bytes_reused, before - damaged_bytes) << "every intact byte the killed run received was kept";
  EXPECT_EQ(fx.hub.body_bytes(), full_transfer - s.bytes_reused);
  expect_same_checkpoint(out, fx.dir / "reference");
}

TEST(Pull, RefusesANonEmptyOutputAndUnsafeFileNames) {
  Fixture fx;
  fs::create_directories(fx.dir / "taken");
  std::ofstream(fx.dir / "taken/mine.txt") << "user data";
  HubClient hub = fx.client();
  const std::string message = error_of([&] { pull_model(hub, fx.selection("taken")); });
  EXPECT_NE(message.find("not empty and was not written by emo"), std::string::npos) << message;
  EXPECT_EQ(read_bytes(fx.dir / "taken/mine.txt"), "user data");
  EXPECT_FALSE(fs::exists(fx.dir / "taken.emo-pull")) << "refused before any request";

  PullOptions none = fx.selection("pulled");
  none.keep_k = 0, none.examples = "";
  EXPECT_NE(error_of([&] { pull_model(hub, none); }).find("give one of --keep-k K --examples FILE"),
            std::string::npos);
  PullOptions two = fx.selection("pulled");
  two.all = true;
  EXPECT_NE(error_of([&] { pull_model(hub, two); }).find("give one of"), std::string::npos);
  PullOptions no_examples = fx.selection("pulled");
  no_examples.examples = "";
  EXPECT_NE(error_of([&] { pull_model(hub, no_examples); }).find("--keep-k and --examples go together"),
            std::string::npos);
  EXPECT_EQ(fx.hub.content_requests(), 0) << "a bad command line reached the Hub";

  for (const char* bad : {"../x.safetensors", "/etc/passwd", "a/../../b", "a//b", "a\\b", ""})
    EXPECT_NE(error_of([&] { check_repo_file_name(bad, kRepo); }).find("file name"), std::string::npos)
        << bad;
  EXPECT_EQ(error_of([&] { check_repo_file_name("onnx/model.onnx", kRepo); }), "");

  // A previous pull's output is replaced only with force.
  const PullOptions first = fx.selection("again");
  pull_model(hub, first);
  EXPECT_NE(error_of([&] { pull_model(hub, first); }).find("give --force"), std::string::npos);
  PullOptions forced = first;
  forced.force = true;
  pull_model(hub, forced);
  EXPECT_TRUE(fs::exists(fx.dir / "again/config.json"));
  EXPECT_FALSE(fs::exists(fx.dir / "again.emo-pull"));

  // An index pointing outside the repository is refused before anything is written there.
  nlohmann::json index = read_json_file(fx.full + "/model.safetensors.index.json");
  index["weight_map"]["model.norm.weight"] = "../../escape.safetensors";
  fx.hub.add_file("model.safetensors.index.json", index.dump(), false);
  const std::string escape = error_of([&] { pull_model(hub, fx.selection("pulled")); });
  EXPECT_NE(escape.find("file name '../../escape.safetensors'"), std::string::npos) << escape;
  EXPECT_FALSE(fs::exists(fx.dir / "../escape.safetensors"));
}

}  // namespace
}  // namespace emo
