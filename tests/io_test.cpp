// Specification of src/io (atomic writes, JSON files, safetensors) and of the model config.json
// (model/config).
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>

#include "core/error.h"
#include "fault_injection.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "io/output_dir.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/model.h"
#include "select/subset.h"
#include "tokenizer/tokenizer.h"
#include "train/checkpoint.h"
#include "train/config.h"

namespace emo {
namespace {

namespace fs = std::filesystem;

class IoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / cat("emo_io_test-", ::getpid(), "-", std::random_device{}());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// Runs fn and returns the emo::Error message ("" when nothing was thrown).
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR_CONTAINS(statement, ...)                                                         \
  do {                                                                                                \
    const std::string message_ = error_of([&] { statement; });                                        \
    EXPECT_FALSE(message_.empty()) << #statement " did not throw emo::Error";                         \
    for (const std::string& part_ : std::vector<std::string>{__VA_ARGS__})                            \
      EXPECT_NE(message_.find(part_), std::string::npos) << "'" << part_ << "' not in: " << message_; \
  } while (0)

std::vector<std::string> entries_of(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// A safetensors file from a header text and a data section, for corruption cases.
std::string safetensors_bytes(const std::string& header, const std::string& data) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
  return out + header + data;
}

Tensor ramp(Shape shape, float start, float step) {
  Tensor t(std::move(shape));
  for (int64_t i = 0; i < t.size(); ++i) t[i] = start + step * static_cast<float>(i);
  return t;
}

// ------------------------------------------------------------------------------------------ atomic files

TEST_F(IoTest, AtomicWriteReplacesContentAndLeavesNoTemporaryFile) {
  atomic_write_file(path("a.txt"), "first");
  atomic_write_file(path("a.txt"), "second");
  EXPECT_EQ(read_bytes(path("a.txt")), "second");
  EXPECT_EQ(entries_of(dir_), std::vector<std::string>{"a.txt"});
}

TEST_F(IoTest, AtomicFileAbandonedBeforeCommitLeavesTheOldFile) {
  atomic_write_file(path("a.txt"), "old");
  {
    AtomicFile file(path("a.txt"));
    file.write("half of the new");
  }
  EXPECT_EQ(read_bytes(path("a.txt")), "old");
  EXPECT_EQ(entries_of(dir_), std::vector<std::string>{"a.txt"});
}

using test::FileSizeLimit;

TEST_F(IoTest, AFullDiskNamesTheFileAndLeavesTheOldOne) {
  atomic_write_file(path("a.txt"), "old");
  const Tensor w = ramp({4096}, 0, 1);
  write_safetensors(path("m.safetensors"), {{"w", w}});
  const std::string old_weights = read_bytes(path("m.safetensors"));
  {
    FileSizeLimit limit(1024);
    EXPECT_ERROR_CONTAINS(atomic_write_file(path("a.txt"), std::string(4096, 'x')), path("a.txt"),
                          "write failed: File too large");
    EXPECT_ERROR_CONTAINS(write_safetensors(path("m.safetensors"), {{"w", ramp({4096}, 1, 1)}}),
                          path("m.safetensors"));
  }
  EXPECT_EQ(read_bytes(path("a.txt")), "old");
  EXPECT_EQ(read_bytes(path("m.safetensors")), old_weights);
  EXPECT_EQ(entries_of(dir_), (std::vector<std::string>{"a.txt", "m.safetensors"}));
  // A companion file copied into an output (a tokenizer): an emo::Error naming it, not a filesystem_error
  // (which the command line reports as an internal error). libstdc++ reports the failed copy as EIO.
  {
    FileSizeLimit limit(1024);
    EXPECT_ERROR_CONTAINS(copy_file_checked(path("m.safetensors"), path("copy.safetensors")),
                          path("copy.safetensors") + ": copy of " + path("m.safetensors") + " failed: ");
  }
}

TEST_F(IoTest, OutputGuardCleansOnlyItsOwnStaleTemporariesAndRefusesSymlinks) {
  const std::string out = path("out");
  const OutputRules rules{"prune", {}, false};
  // Left by a killed run of ours (marker inside, process gone: no pid is that large), and two look-alikes.
  const std::string stale = out + ".emo-tmp-999999999-abcdef", foreign = out + ".emo-tmp-999999999-zzzzzz";
  fs::create_directories(stale);
  write_bytes(stale + "/.emo-output", R"({"format": "emo-output", "command": "prune", "complete": false})");
  fs::create_directories(foreign);
  write_bytes(foreign + "/mine.txt", "the user's");
  write_output_directory(out, rules, [](const std::string& tmp) { atomic_write_file(tmp + "/w.txt", "1"); });
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_EQ(read_bytes(foreign + "/mine.txt"), "the user's");
  EXPECT_EQ(read_json_file(out + "/.emo-output")["complete"], true);

  fs::create_directories(path("elsewhere"));
  fs::create_directory_symlink(path("elsewhere"), path("link"));
  EXPECT_NE(error_of([&] { check_new_output(path("link"), rules); }).find("symbolic link"),
            std::string::npos);
  // A previous output replaced with force: only the new files remain.
  write_output_directory(out, {"prune", {}, true},
                         [](const std::string& tmp) { atomic_write_file(tmp + "/x", "2"); });
  EXPECT_EQ(entries_of(out), (std::vector<std::string>{".emo-output", "x"}));
}

TEST_F(IoTest, AnUnfinishedOutputOfAnotherProcessIsNoModel) {
  const std::string dir = path("staged");
  fs::create_directories(dir);
  write_safetensors(dir + "/model.safetensors", {{"w", ramp({2}, 0, 1)}});
  mark_unfinished_output(dir, "pull");
  EXPECT_NO_THROW(SafetensorsCheckpoint::open(dir));  // its writer (this process) reads its own work
  write_bytes(dir + "/.emo-output",
              R"({"format": "emo-output", "command": "pull", "complete": false, "pid": 1})");
  const std::string message = error_of([&] { SafetensorsCheckpoint::open(dir); });
  EXPECT_NE(message.find("unfinished output of 'emo pull'"), std::string::npos) << message;
}

TEST_F(IoTest, ASecondLockOnADirectoryIsRefusedNamingTheHolder) {
  const std::string dir = path("run");
  fs::create_directories(dir);
  {
    DirectoryLock first(dir, "train");
    const std::string message = error_of([&] { DirectoryLock second(dir, "train"); });
    EXPECT_NE(message.find(cat("in use by another 'emo train' (pid ", ::getpid(), ")")), std::string::npos)
        << message;
  }
  EXPECT_NO_THROW(DirectoryLock again(dir, "train"));  // released with its holder
}

TEST_F(IoTest, AtomicDirectoryReplacesTheOldDirectoryOnlyOnCommit) {
  const std::string ckpt = path("ckpt");
  auto write = [&](const std::string& name, bool crash) {
    AtomicDirectory out(ckpt);
    atomic_write_file(out.temp_path() + "/" + name, "1");
    if (crash) fail("test", "crash while writing");
    out.commit();
  };
  write("old.txt", false);
  EXPECT_THROW(write("new.txt", true), Error);
  EXPECT_EQ(entries_of(ckpt), std::vector<std::string>{"old.txt"});
  write("new.txt", false);
  EXPECT_EQ(entries_of(ckpt), std::vector<std::string>{"new.txt"});
  EXPECT_EQ(entries_of(dir_), std::vector<std::string>{"ckpt"});  // no temporary or old directory left
}

// ------------------------------------------------------------------------------------------ JSON files

TEST_F(IoTest, JsonParseErrorNamesFileLineAndColumn) {
  write_bytes(path("config.json"), "{\n  \"a\": 1,\n  \"b\": ,\n}\n");
  EXPECT_ERROR_CONTAINS(read_json_file(path("config.json")),
                        "[json] " + path("config.json") + ": line 3, column 8: ");
  EXPECT_ERROR_CONTAINS(read_json_file(path("absent.json")), "absent.json", "cannot open");
}

TEST_F(IoTest, JsonErrorsOfEveryKindAreEmoErrorsInTheCallersName) {
  // A number past double's range is nlohmann's out_of_range, not a parse_error: still an emo::Error.
  write_bytes(path("state.json"), "{\"step\": 5E982}");
  EXPECT_ERROR_CONTAINS(read_json_file(path("state.json"), "checkpoint"),
                        "[checkpoint] " + path("state.json") + ": not valid JSON");
  EXPECT_ERROR_CONTAINS(read_json_file(path("absent.json"), "subset"), "[subset] ", "cannot open");
  // One line of a JSONL file: the line, and the column inside it.
  EXPECT_ERROR_CONTAINS(parse_json("{\"a\": ]", "tasks.jsonl", "tasks", 7),
                        "[tasks] tasks.jsonl: line 7, column 7: not valid JSON");
  EXPECT_ERROR_CONTAINS(parse_json("[1E400]", "tasks.jsonl", "tasks", 2),
                        "[tasks] tasks.jsonl: line 2: not valid JSON");
}

TEST_F(IoTest, JsonTypedGettersNameTheKeyAndTheFile) {
  const nlohmann::json j = {{"n", 3}, {"s", "x"}, {"list", {1, 2}}, {"null", nullptr}};
  EXPECT_EQ(json_get<int64_t>(j, "n", "c.json"), 3);
  EXPECT_EQ(json_get<std::vector<int64_t>>(j, "list", "c.json"), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(json_get_or<int64_t>(j, "absent", 7, "c.json"), 7);
  EXPECT_FALSE(json_get_optional<int64_t>(j, "null", "c.json").has_value());
  EXPECT_ERROR_CONTAINS(json_get<int64_t>(j, "absent", "c.json"), "[json] c.json: key 'absent': missing");
  EXPECT_ERROR_CONTAINS(json_get<int64_t>(j, "s", "c.json"), "c.json", "key 's'", "expected an integer",
                        "found a string");
  EXPECT_ERROR_CONTAINS(json_get_or<std::string>(j, "n", "d", "c.json"), "key 'n'", "expected a string");
  EXPECT_ERROR_CONTAINS(json_get<std::vector<int64_t>>(j, "s", "c.json"), "expected an array of an integer");
}

// ------------------------------------------------------------------------------------------ safetensors

TEST_F(IoTest, SafetensorsRoundTripsFp32ExactlyWithMetadata) {
  const Tensor a = ramp({2, 3}, -1.5f, 0.25f), b = ramp({4}, 1e-30f, 3.0f), empty({0, 5});
  write_safetensors(path("m.safetensors"), {{"b.weight", b}, {"a.weight", a}, {"empty", empty}},
                    {{"format", "pt"}});
  const SafetensorsFile file = SafetensorsFile::open(path("m.safetensors"));
  EXPECT_EQ(file.names(), (std::vector<std::string>{"a.weight", "b.weight", "empty"}));
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.info("a.weight").dtype, DType::kF32);
  EXPECT_EQ(file.info("a.weight").shape, (Shape{2, 3}));
  EXPECT_EQ(file.read_fp32("a.weight").vec(), a.vec());
  EXPECT_EQ(file.read_fp32("b.weight").vec(), b.vec());
  EXPECT_EQ(file.read_fp32("empty").shape(), (Shape{0, 5}));
  EXPECT_TRUE(file.contains("a.weight"));
  EXPECT_FALSE(file.contains("c.weight"));
  EXPECT_ERROR_CONTAINS(file.info("c.weight"), "[safetensors] " + path("m.safetensors"),
                        "no tensor 'c.weight'");
}

TEST_F(IoTest, SafetensorsStoresBf16RoundedToNearestEven) {
  const Tensor w = ramp({3, 5}, 0.1f, 1.001f);
  write_safetensors(path("m.safetensors"), {{"w", w, DType::kBF16}});
  const SafetensorsFile file = SafetensorsFile::open(path("m.safetensors"));
  const TensorInfo& info = file.info("w");
  EXPECT_EQ(info.dtype, DType::kBF16);
  EXPECT_EQ(info.nbytes, 15u * 2);
  const Tensor back = file.read_fp32("w");
  const uint16_t* stored = static_cast<const uint16_t*>(info.data);
  for (int64_t i = 0; i < w.size(); ++i) {
    EXPECT_EQ(stored[i], f32_to_bf16(w[i]));
    EXPECT_EQ(back[i], bf16_to_f32(f32_to_bf16(w[i])));
  }
}

TEST_F(IoTest, SafetensorsLayoutFollowsTheSafetensorsLibrary) {
  // Header padded to 8 bytes; larger dtypes first, then by name: F32 'z' before BF16 'a'.
  const Tensor a = ramp({3}, 1, 1), z = ramp({3}, 2, 1);
  write_safetensors(path("m.safetensors"), {{"a", a, DType::kBF16}, {"z", z}});
  const std::string bytes = read_bytes(path("m.safetensors"));
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  EXPECT_EQ(header_size % 8, 0u);
  const SafetensorsFile file = SafetensorsFile::open(path("m.safetensors"));
  EXPECT_EQ(file.info("z").file_offset, 8 + header_size);
  EXPECT_EQ(file.info("a").file_offset, 8 + header_size + 12);
  EXPECT_EQ(bytes.size(), 8 + header_size + 12 + 6);
}

TEST_F(IoTest, SafetensorsGivesZeroCopyPointersThatOutliveTheFirstHandle) {
  const Tensor w = ramp({64}, 0, 0.5f);
  write_safetensors(path("m.safetensors"), {{"w", w}});
  const float* mapped = nullptr;
  SafetensorsFile copy;
  {
    SafetensorsFile file = SafetensorsFile::open(path("m.safetensors"));
    mapped = static_cast<const float*>(file.info("w").data);
    copy = file;
  }
  EXPECT_EQ(copy.info("w").data, mapped);
  EXPECT_EQ(std::vector<float>(mapped, mapped + 64), w.vec());
}

TEST_F(IoTest, SafetensorsReadIntoChecksSizeAndDtype) {
  const Tensor w = ramp({2, 2}, 0, 1);
  const int32_t ints[2] = {7, -7};
  write_safetensors(path("m.safetensors"), {{"w", w}, SafetensorsEntry::raw("ids", DType::kI32, {2}, ints)});
  const SafetensorsFile file = SafetensorsFile::open(path("m.safetensors"));
  std::vector<float> dst(4);
  file.read_fp32_into("w", dst.data(), 4);
  EXPECT_EQ(dst, w.vec());
  EXPECT_ERROR_CONTAINS(file.read_fp32_into("w", dst.data(), 3), "tensor 'w'", "4 elements", "holds 3");
  EXPECT_ERROR_CONTAINS(file.read_fp32("ids"), "tensor 'ids'", "I32 is not a float type");
  EXPECT_EQ(static_cast<const int32_t*>(file.info("ids").data)[1], -7);
}

// Q4_0 has no safetensors dtype: its blocks are written as U8 [rows, cols / 32 * 18] in a file marked with
// kQ4MetadataKey, and read back as Q4_0 [rows, cols] (dequantised by read_fp32).
TEST_F(IoTest, SafetensorsStoresQ4BlocksAsU8BytesAndReadsThemBackAsQ4) {
  // Two rows of two blocks: scale 0.5 (fp16 0x3800), nibbles j -> element j = j - 8, element j + 16 = 7 - j.
  std::vector<uint8_t> blocks(2 * 2 * 18);
  for (size_t b = 0; b < 4; ++b) {
    blocks[b * 18] = 0x00, blocks[b * 18 + 1] = 0x38;
    for (int j = 0; j < 16; ++j) blocks[b * 18 + 2 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  }
  const Tensor other = ramp({3}, 1, 1);
  write_safetensors(path("m.safetensors"),
                    {SafetensorsEntry::raw("w", DType::kQ4_0, {2, 64}, blocks.data()), {"b", other}},
                    {{"format", "pt"}});
  const std::string bytes = read_bytes(path("m.safetensors"));
  EXPECT_NE(bytes.find("\"w\":{\"dtype\":\"U8\",\"shape\":[2,36]"), std::string::npos)
      << bytes.substr(0, 400);
  const SafetensorsFile file = SafetensorsFile::open(path("m.safetensors"));
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_TRUE(file.metadata().count(kQ4MetadataKey));
  const TensorInfo& info = file.info("w");
  EXPECT_EQ(info.dtype, DType::kQ4_0);
  EXPECT_EQ(info.shape, (Shape{2, 64}));
  EXPECT_EQ(info.nbytes, blocks.size());
  EXPECT_EQ(std::memcmp(info.data, blocks.data(), blocks.size()), 0);
  const Tensor values = file.read_fp32("w");
  for (int64_t i = 0; i < 128; ++i) {
    const int64_t j = i % 32;
    EXPECT_EQ(values[i], 0.5f * static_cast<float>(j < 16 ? j - 8 : 7 - (j - 16))) << i;
  }
  EXPECT_EQ(file.read_fp32("b").vec(), other.vec());

  // A marked file whose U8 tensor is not whole blocks; a Q4_0 entry of a partial block.
  const std::string key = kQ4MetadataKey;
  write_bytes(path("bad.safetensors"), safetensors_bytes("{\"__metadata__\":{\"" + key +
                                                             "\":\"x\"},\"w\":{\"dtype\":\"U8\",\"shape\":[2,"
                                                             "10],\"data_offsets\":[0,20]}}",
                                                         std::string(20, '\0')));
  EXPECT_ERROR_CONTAINS(SafetensorsFile::open(path("bad.safetensors")), path("bad.safetensors"), "tensor 'w'",
                        "U8 [2, 10]", "18-byte blocks");
  EXPECT_ERROR_CONTAINS(write_safetensors(path("p.safetensors"),
                                          {SafetensorsEntry::raw("w", DType::kQ4_0, {2, 48}, blocks.data())}),
                        "tensor 'w'", "whole blocks of 32");
}

TEST_F(IoTest, SafetensorsWriterRefusesBadEntries) {
  const Tensor w = ramp({2}, 0, 1);
  EXPECT_ERROR_CONTAINS(write_safetensors(path("m.safetensors"), {{"w", w}, {"w", w}}), "tensor 'w'",
                        "twice");
  EXPECT_ERROR_CONTAINS(write_safetensors(path("m.safetensors"), {{"__metadata__", w}}),
                        "invalid tensor name");
  EXPECT_ERROR_CONTAINS(write_safetensors(path("m.safetensors"), {{"w", w, DType::kI8}}), "cannot convert");
  EXPECT_FALSE(fs::exists(path("m.safetensors")));
}

TEST_F(IoTest, ShardedWriteIsReadBackThroughTheIndex) {
  const Tensor a = ramp({8}, 0, 1), b = ramp({8}, 10, 1), c = ramp({2, 2}, 20, 1);
  // 32 + 32 bytes overflow a 40-byte shard; 32 + 16 too: three shards.
  const auto written =
      write_safetensors_sharded(dir_.string(), {{"a", a}, {"b", b}, {"c", c}}, 40, {{"format", "pt"}});
  EXPECT_EQ(written,
            (std::vector<std::string>{"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                      "model-00003-of-00003.safetensors", "model.safetensors.index.json"}));
  const nlohmann::json index = read_json_file(path("model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 80);
  EXPECT_EQ(index["weight_map"]["b"], "model-00002-of-00003.safetensors");

  const SafetensorsCheckpoint ckpt = SafetensorsCheckpoint::open(dir_.string());
  EXPECT_EQ(ckpt.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(ckpt.files().size(), 3u);
  EXPECT_EQ(ckpt.read_fp32("a").vec(), a.vec());
  EXPECT_EQ(ckpt.read_fp32("b").vec(), b.vec());
  EXPECT_EQ(ckpt.read_fp32("c").vec(), c.vec());
  EXPECT_EQ(ckpt.metadata().at("format"), "pt");
  EXPECT_EQ(fs::path(ckpt.file_of("c").path()).filename(), "model-00003-of-00003.safetensors");
  EXPECT_ERROR_CONTAINS(ckpt.read_fp32("lm_head.weight"), dir_.string(), "no tensor 'lm_head.weight'");
}

TEST_F(IoTest, ShardedWriteLeavesOnlyTheFilesOfTheNewSave) {
  const Tensor a = ramp({8}, 0, 1);
  write_bytes(path("notes.txt"), "kept");
  write_safetensors_sharded(dir_.string(), {{"a", a}, {"b", a}, {"c", a}}, 40);
  write_safetensors_sharded(dir_.string(), {{"a", a}, {"b", a}}, 40);
  EXPECT_EQ(entries_of(dir_),
            (std::vector<std::string>{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                      "model.safetensors.index.json", "notes.txt"}));
  EXPECT_EQ(write_safetensors_sharded(dir_.string(), {{"a", a}}, 1 << 20),
            std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(entries_of(dir_), (std::vector<std::string>{"model.safetensors", "notes.txt"}));
  EXPECT_EQ(SafetensorsCheckpoint::open(dir_.string()).names(), std::vector<std::string>{"a"});
}

TEST_F(IoTest, CheckpointIndexErrorsNameTheShardAndTheTensor) {
  EXPECT_ERROR_CONTAINS(SafetensorsCheckpoint::open(dir_.string()), "neither model.safetensors");
  const Tensor a = ramp({8}, 0, 1);
  write_safetensors(path("model-00001-of-00001.safetensors"), {{"a", a}});
  write_bytes(path("model.safetensors.index.json"),
              R"({"metadata": {}, "weight_map": {"a": "model-00001-of-00001.safetensors",
                  "b": "model-00001-of-00001.safetensors"}})");
  EXPECT_ERROR_CONTAINS(SafetensorsCheckpoint::open(dir_.string()), "model-00001-of-00001.safetensors",
                        "no tensor 'b'");
  write_bytes(path("model.safetensors.index.json"),
              R"({"weight_map": {"a": "model-00002-of-00002.safetensors"}})");
  EXPECT_ERROR_CONTAINS(SafetensorsCheckpoint::open(dir_.string()),
                        "shard 'model-00002-of-00002.safetensors'", "holding 'a'", "does not exist");
  write_bytes(path("model.safetensors.index.json"), R"({"weight_map": )");
  EXPECT_ERROR_CONTAINS(SafetensorsCheckpoint::open(dir_.string()), "[json]", "model.safetensors.index.json");
}

TEST_F(IoTest, CheckpointIndexShardPathsStayInsideTheModelDirectory) {
  write_safetensors(path("model-00001-of-00001.safetensors"), {{"a", ramp({8}, 0, 1)}});
  for (const std::string shard :
       {"../../other/x.safetensors", "/etc/hostname", "sub/x.safetensors", "..", ""}) {
    write_bytes(path("model.safetensors.index.json"), R"({"weight_map": {"a": ")" + shard + R"("}})");
    EXPECT_ERROR_CONTAINS(SafetensorsCheckpoint::open(dir_.string()), "model.safetensors.index.json",
                          "weight_map['a'] is '" + shard + "'", "a file name of the model directory");
  }
}

TEST_F(IoTest, EveryTruncationOfASafetensorsFileIsAnErrorNeverACrash) {
  write_safetensors(path("m.safetensors"), {{"w", ramp({3, 2}, 0, 1)}, {"v", ramp({5}, 0, 1), DType::kBF16}},
                    {{"format", "pt"}});
  const std::string whole = read_bytes(path("m.safetensors"));
  for (size_t length = 0; length < whole.size(); ++length) {
    write_bytes(path("cut.safetensors"), whole.substr(0, length));
    const std::string message = error_of([&] { SafetensorsFile::open(path("cut.safetensors")); });
    EXPECT_NE(message.find("[safetensors] " + path("cut.safetensors")), std::string::npos)
        << "length " << length << ": " << message;
  }
  write_bytes(path("cut.safetensors"), whole);
  EXPECT_EQ(SafetensorsFile::open(path("cut.safetensors")).size(), 2u);
}

TEST_F(IoTest, EveryOneByteCorruptionOfTheHeaderIsAnErrorOrAValidFileNeverACrash) {
  write_safetensors(path("m.safetensors"), {{"w", ramp({3, 2}, 0, 1)}, {"v", ramp({5}, 0, 1), DType::kBF16}});
  const std::string whole = read_bytes(path("m.safetensors"));
  uint64_t header_size = 0;
  std::memcpy(&header_size, whole.data(), 8);
  int errors = 0;
  for (size_t at = 0; at < 8 + header_size; ++at)
    for (unsigned char value : {0x00, 0x22, 0x2c, 0x31, 0x5d, 0x7d, 0xff}) {
      std::string bytes = whole;
      bytes[at] = static_cast<char>(value);
      write_bytes(path("bad.safetensors"), bytes);
      try {
        const SafetensorsFile file = SafetensorsFile::open(path("bad.safetensors"));
        for (const auto& name : file.names())
          if (file.info(name).dtype == DType::kF32 || file.info(name).dtype == DType::kBF16)
            file.read_fp32(name);
      } catch (const Error&) {
        ++errors;
      }
    }
  EXPECT_GT(errors, 0);
}

TEST_F(IoTest, CorruptSafetensorsHeadersAreErrorsNamingTheTensorAndTheProblem) {
  const std::string f = path("bad.safetensors");
  auto open_with = [&](const std::string& header, const std::string& data) {
    write_bytes(f, safetensors_bytes(header, data));
    SafetensorsFile::open(f);
  };
  const std::string eight(8, '\0');
  EXPECT_ERROR_CONTAINS(open_with(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]})", eight),
                        f + ": header byte", "bad JSON");
  EXPECT_ERROR_CONTAINS(open_with(R"([1, 2])", ""), "expected a JSON object");
  EXPECT_ERROR_CONTAINS(open_with(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}})", eight),
                        "tensor 'w'", "run past the data section of 8 bytes");
  EXPECT_ERROR_CONTAINS(open_with(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                      "v": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                                  eight),
                        "tensor 'v'", "overlap tensor 'w'");
  EXPECT_ERROR_CONTAINS(open_with(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", eight),
                        "tensor 'w'", "hold 8 bytes, but F32 [3] needs 12");
  EXPECT_ERROR_CONTAINS(open_with(R"({"w": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})", eight),
                        "tensor 'w'", "unknown or unsupported dtype 'F64'");
  EXPECT_ERROR_CONTAINS(open_with(R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", eight),
                        "tensor 'w'", "non-negative");
  EXPECT_ERROR_CONTAINS(open_with(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", eight),
                        "tensor 'w'", "end before they begin");
  EXPECT_ERROR_CONTAINS(open_with(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", eight),
                        "tensor 'w'", "hole");
  EXPECT_ERROR_CONTAINS(open_with(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", eight),
                        "4 bytes that no tensor claims");
  EXPECT_ERROR_CONTAINS(open_with(R"({"w": {"dtype": "F32", "shape": [2]}})", eight), "tensor 'w'",
                        "data_offsets");
  EXPECT_ERROR_CONTAINS(open_with(R"({"__metadata__": {"n": 1}})", ""), "__metadata__", "value of 'n'");
  write_bytes(f, std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}");
  EXPECT_ERROR_CONTAINS(SafetensorsFile::open(f), f + ": byte 0: header length");
  EXPECT_ERROR_CONTAINS(SafetensorsFile::open(path("absent.safetensors")), "absent.safetensors",
                        "cannot open");
}

// A file written by an independent writer (numpy + struct): unpadded header (so the data section is not
// aligned), F32, BF16 (truncated from fp32 bit patterns), F16 and I64 tensors, metadata.
TEST_F(IoTest, ReadsAFileWrittenByPython) {
  if (!fs::exists("/usr/bin/python3")) GTEST_SKIP() << "/usr/bin/python3 is missing";
  const std::string script = R"PY(
import json, struct, sys
import numpy as np
f32 = (np.arange(6, dtype=np.float32) * 0.75 - 2.0).reshape(2, 3)
bf16 = ((np.arange(4, dtype=np.float32) + 0.3).view(np.uint32) >> 16).astype(np.uint16)
f16 = np.arange(5, dtype=np.float16) / 4
i64 = np.array([-1, 2**40], dtype=np.int64)
tensors = [("layer.f32", "F32", [2, 3], f32), ("layer.bf16", "BF16", [4], bf16),
           ("layer.f16", "F16", [5], f16), ("ids", "I64", [2], i64)]
header, data = {"__metadata__": {"source": "python"}}, b""
for name, dtype, shape, array in tensors:
    raw = array.tobytes()
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
    data += raw
text = json.dumps(header).encode()
if len(text) % 8 == 0:
    text += b" "
with open(sys.argv[1], "wb") as out:
    out.write(struct.pack("<Q", len(text)) + text + data)
)PY";
  write_bytes(path("write.py"), script);
  const std::string command = "/usr/bin/python3 " + path("write.py") + " " + path("py.safetensors") + " 2>&1";
  if (std::system(command.c_str()) != 0) GTEST_SKIP() << "python3 with numpy did not run: " << command;

  const SafetensorsFile file = SafetensorsFile::open(path("py.safetensors"));
  EXPECT_EQ(file.metadata().at("source"), "python");
  EXPECT_EQ(file.read_fp32("layer.f32").shape(), (Shape{2, 3}));
  EXPECT_EQ(file.read_fp32("layer.f32").vec(),
            (std::vector<float>{-2.0f, -1.25f, -0.5f, 0.25f, 1.0f, 1.75f}));
  const Tensor bf16 = file.read_fp32("layer.bf16");
  for (int i = 0; i < 4; ++i) {
    const float exact = static_cast<float>(i) + 0.3f;
    uint32_t bits;
    std::memcpy(&bits, &exact, 4);
    EXPECT_EQ(bf16[i], bf16_to_f32(static_cast<uint16_t>(bits >> 16)));
  }
  EXPECT_EQ(file.read_fp32("layer.f16").vec(), (std::vector<float>{0.0f, 0.25f, 0.5f, 0.75f, 1.0f}));
  int64_t ids[2];
  std::memcpy(ids, file.info("ids").data, sizeof ids);  // unaligned in this file: memcpy
  EXPECT_EQ(ids[0], -1);
  EXPECT_EQ(ids[1], int64_t{1} << 40);
}

// ------------------------------------------------------------------------------------------ config.json

// The released Emo_1b14b_1T configuration (docs/emo.md §1-2) plus keys emo does not interpret.
nlohmann::json released_config() {
  return nlohmann::json::parse(R"({
    "architectures": ["EmoForCausalLM"], "model_type": "emo", "vocab_size": 100352, "hidden_size": 2048,
    "intermediate_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 16,
    "hidden_act": "silu", "max_position_embeddings": 4096, "rope_theta": 500000, "rope_scaling": null,
    "attention_bias": false, "rms_norm_eps": 1e-06, "tie_word_embeddings": false, "pad_token_id": 100277,
    "bos_token_id": null, "eos_token_id": 100257, "num_experts": 128, "num_experts_per_tok": 8,
    "num_shared_experts": 1, "norm_topk_prob": false, "router_aux_loss_coef": 0.1, "torch_dtype": "float32",
    "use_cache": true, "transformers_version": "4.56.0", "initializer_range": 0.02})");
}

// Parameters of an MoE config in the §2 tensor layout.
int64_t parameter_count(const ModelConfig& c) {
  const int64_t d = c.hidden_size, hd = c.head_dim(), f = c.intermediate_size;
  const int64_t attention = d * c.num_attention_heads * hd * 2 + d * c.num_key_value_heads * hd * 2;
  int64_t total = c.vocab_size * d * 2 + d;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    total += 2 * d + attention + c.experts_in_layer(l) * (d + 3 * d * f);
  return total;
}

TEST_F(IoTest, ReleasedConfigLoadsWithTheReleasedParameterCount) {
  const ModelConfig c = ModelConfig::from_json(released_config());
  EXPECT_TRUE(c.is_moe());
  EXPECT_EQ(c.head_dim(), 128);
  EXPECT_EQ(c.routed_in_layer(3), 127);
  EXPECT_EQ(c.eos_token_id, 100257);
  EXPECT_EQ(c.pad_token_id, 100277);
  EXPECT_FALSE(c.bos_token_id.has_value());
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(parameter_count(c), 13'568'641'024);
  EXPECT_EQ(c.extra["transformers_version"], "4.56.0");
}

TEST_F(IoTest, ConfigRoundTripsThroughAFileKeepingUnknownKeys) {
  ModelConfig c = ModelConfig::from_json(released_config());
  c.num_experts_per_layer = std::vector<int64_t>(16, 32);
  c.num_experts = 32;
  c.save(path("config.json"));
  const nlohmann::json written = read_json_file(path("config.json"));
  EXPECT_EQ(written["architectures"], nlohmann::json::array({"EmoForCausalLM"}));
  EXPECT_EQ(written["hidden_act"], "silu");
  EXPECT_TRUE(written["rope_scaling"].is_null());
  EXPECT_TRUE(written["bos_token_id"].is_null());
  EXPECT_EQ(written["use_cache"], true);
  EXPECT_EQ(written["initializer_range"], 0.02);
  const ModelConfig back = ModelConfig::load(path("config.json"));
  EXPECT_EQ(back.to_json(), c.to_json());
  EXPECT_EQ(back.experts_in_layer(15), 32);
  nlohmann::json expected = released_config();
  expected["num_experts"] = 32;
  expected["num_experts_per_layer"] = std::vector<int64_t>(16, 32);
  EXPECT_EQ(written, expected);  // every key of the release, nothing more (rope_theta 500000 == 500000.0)
}

TEST_F(IoTest, DenseConfigUsesTheOlmo2ArchitectureAndNoMoeKeys) {
  nlohmann::json j = released_config();
  j["model_type"] = "olmo2_noqknorm_prenorm";
  j["architectures"] = {"Olmo2ForCausalLM"};
  j["intermediate_size"] = 8192;
  for (const char* key :
       {"num_experts", "num_experts_per_tok", "num_shared_experts", "norm_topk_prob", "router_aux_loss_coef"})
    j.erase(key);
  const ModelConfig c = ModelConfig::from_json(j);
  EXPECT_FALSE(c.is_moe());
  const nlohmann::json back = c.to_json();
  EXPECT_EQ(back["architectures"], nlohmann::json::array({"Olmo2ForCausalLM"}));
  EXPECT_FALSE(back.contains("num_experts"));
  EXPECT_EQ(back, j);
}

TEST_F(IoTest, ConfigRefusesRopeScalingAndUnknownModelTypes) {
  nlohmann::json j = released_config();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_ERROR_CONTAINS(ModelConfig::from_json(j, "c.json"), "[config] c.json", "rope_scaling",
                        "not supported yet");
  j = released_config();
  j.erase("rope_scaling");
  EXPECT_NO_THROW(ModelConfig::from_json(j));
  j["model_type"] = "mixtral";
  EXPECT_ERROR_CONTAINS(ModelConfig::from_json(j, "c.json"), "model_type 'mixtral' is not supported");
  j = released_config();
  j["hidden_act"] = "gelu";
  EXPECT_ERROR_CONTAINS(ModelConfig::from_json(j, "c.json"), "hidden_act 'gelu'");
}

TEST_F(IoTest, ConfigReadErrorsNameTheKeyAndTheFile) {
  nlohmann::json j = released_config();
  j.erase("hidden_size");
  EXPECT_ERROR_CONTAINS(ModelConfig::from_json(j, "c.json"), "c.json", "key 'hidden_size': missing");
  j = released_config();
  j["num_experts"] = "128";
  EXPECT_ERROR_CONTAINS(ModelConfig::from_json(j, "c.json"), "c.json", "key 'num_experts'",
                        "expected an integer");
  write_bytes(path("config.json"), "{\"model_type\": \"emo\",,}");
  EXPECT_ERROR_CONTAINS(ModelConfig::load(path("config.json")),
                        "[json] " + path("config.json") + ": line 1, column 22");
}

TEST_F(IoTest, ConfigValidationNamesTheInconsistency) {
  const ModelConfig good = ModelConfig::from_json(released_config());
  auto broken = [&](const std::function<void(ModelConfig&)>& edit) {
    ModelConfig c = good;
    edit(c);
    return error_of([&] { c.validate("c.json"); });
  };
  EXPECT_EQ(broken([](ModelConfig&) {}), "");
  EXPECT_NE(broken([](ModelConfig& c) {
              c.num_attention_heads = 12;
            }).find("not divisible by num_attention_heads 12"),
            std::string::npos);
  EXPECT_NE(broken([](ModelConfig& c) {
              c.num_key_value_heads = 3;
            }).find("not divisible by num_key_value_heads 3"),
            std::string::npos);
  EXPECT_NE(
      broken([](ModelConfig& c) { c.num_experts_per_tok = 129; }).find("num_experts_per_tok 129 exceeds"),
      std::string::npos);
  EXPECT_NE(broken([](ModelConfig& c) { c.num_experts_per_tok = 1; }).find("no routed slot"),
            std::string::npos);
  EXPECT_NE(broken([](ModelConfig& c) {
              c.num_experts_per_layer = {128, 128};
            }).find("has 2 entries for 16 layers"),
            std::string::npos);
  EXPECT_NE(broken([](ModelConfig& c) { c.eos_token_id = 100352; }).find("eos_token_id 100352 is outside"),
            std::string::npos);
  EXPECT_NE(broken([](ModelConfig& c) { c.vocab_size = 0; }).find("vocab_size must be positive"),
            std::string::npos);
  EXPECT_NE(broken([](ModelConfig& c) { c.attention_bias = true; }).find("attention_bias"),
            std::string::npos);
  EXPECT_EQ(broken([](ModelConfig& c) { c.num_attention_heads = 3; }).rfind("[config] c.json: ", 0), 0u);
  // Dense configs do not need MoE fields.
  EXPECT_EQ(broken([](ModelConfig& c) {
              c.model_type = "olmo2_noqknorm_prenorm";
              c.num_experts = 0;
              c.num_experts_per_tok = 0;
            }),
            "");
  ModelConfig no_shared = good;  // a standard MoE without a shared expert is valid
  no_shared.num_shared_experts = 0;
  EXPECT_NO_THROW(no_shared.save(path("no_shared.json")));
  ModelConfig bad = good;
  bad.num_experts = 0;
  EXPECT_ERROR_CONTAINS(bad.save(path("bad.json")), "num_experts must be positive");
  EXPECT_FALSE(fs::exists(path("bad.json")));  // save validates before writing
}

// Bad input: impossible sizes are rejected when the file is read, by a message naming the file and
// the field. config.json through ModelConfig::load and Model::load; the training configuration through
// TrainConfig::load (the pool range lives there).
TEST_F(IoTest, ImpossibleSizesAreRejectedAtLoadNamingTheField) {
  auto expect_all = [](const std::string& message, const std::string& part, auto... more) {
    EXPECT_FALSE(message.empty()) << "not rejected";
    for (const std::string& p : {part, std::string(more)...})
      EXPECT_NE(message.find(p), std::string::npos) << "'" << p << "' not in: " << message;
  };
  auto model_config_error = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = released_config();
    edit(j);
    fs::create_directories(path("model"));
    write_bytes(path("model/config.json"), j.dump());
    const std::string from_config = error_of([&] { ModelConfig::load(path("model/config.json")); });
    // The model loader reads the same file first: no weights are touched.
    EXPECT_EQ(error_of([&] { Model::load(path("model")); }), from_config);
    return from_config;
  };
  const std::string config_json = path("model/config.json");
  expect_all(model_config_error([](nlohmann::json& j) { j["num_attention_heads"] = 12; }),
             "[config] " + config_json, "hidden_size 2048", "num_attention_heads 12");
  expect_all(model_config_error([](nlohmann::json& j) { j["num_experts_per_tok"] = 129; }), config_json,
             "num_experts_per_tok 129 exceeds num_experts 128");
  expect_all(model_config_error([](nlohmann::json& j) { j["num_key_value_heads"] = 5; }), config_json,
             "num_key_value_heads 5");

  auto train_config_error = [&](const nlohmann::json& j) {
    write_bytes(path("train.json"), j.dump());
    return error_of([&] { TrainConfig::load(path("train.json")); });
  };
  const std::string train_json = path("train.json");
  EXPECT_EQ(train_config_error({{"model", {{"d", 256}, {"heads", 4}}}}), "");
  expect_all(train_config_error({{"model", {{"d", 250}, {"heads", 4}}}}), "[train-config] " + train_json,
             "model.d 250", "model.heads 4");
  expect_all(train_config_error({{"model", {{"experts", 8}, {"top_k", 9}}}}), train_json,
             "model.top_k 9 exceeds model.experts 8");
  expect_all(train_config_error({{"model", {{"top_k", 1}, {"shared_experts", 1}}}}), train_json,
             "model.top_k 1 leaves no routed slot");
  // The EMO pool range must lie inside [K, E] (0 = the default bound).
  expect_all(train_config_error({{"routing", {{"pool_min", 2}}}}), train_json,
             "routing.pool_min 2 is outside [model.top_k 4, model.experts 64]");
  expect_all(train_config_error({{"routing", {{"pool_max", 65}}}}), train_json,
             "routing.pool_max 65 is outside");
  expect_all(train_config_error({{"routing", {{"pool_min", 40}, {"pool_max", 20}}}}), train_json,
             "routing.pool_min 40 exceeds routing.pool_max 20");
  expect_all(train_config_error({{"routing", {{"pool_eval", 0}}}}), train_json,
             "routing.pool_eval must be positive");
  EXPECT_EQ(train_config_error({{"routing", {{"pool_min", 4}, {"pool_max", 64}}}}), "");
  // A dense model has no experts to check.
  EXPECT_EQ(train_config_error({{"routing", {{"mode", "dense"}}}, {"model", {{"top_k", 99}}}}), "");
}

// A wrong-typed value in each JSON file a user hands emo beside config.json (a subset, a tokenizer.json, a
// checkpoint's train_state.json with its training config) is an emo::Error naming the file and the key,
// never an nlohmann exception (which the command line reports as "internal error").
TEST_F(IoTest, WrongTypedValuesInSubsetTokenizerAndTrainStateNameTheFileAndTheKey) {
  struct Edit {
    std::string pointer;
    nlohmann::json value;
    std::string key;  // what the message must name
  };
  auto expect_named = [&](const nlohmann::json& good, const std::vector<Edit>& edits, const std::string& file,
                          const std::function<void()>& read) {
    for (const Edit& e : edits) {
      nlohmann::json j = good;
      j[nlohmann::json::json_pointer(e.pointer)] = e.value;
      write_json_file(file, j);
      std::string msg;
      try {
        read();
      } catch (const Error& error) {
        msg = error.what();
      } catch (const std::exception& other) {
        ADD_FAILURE() << e.pointer << " = " << e.value.dump() << ": not an emo::Error: " << other.what();
        continue;
      }
      EXPECT_NE(msg.find(file), std::string::npos) << e.pointer << ": " << msg;
      EXPECT_NE(msg.find(e.key), std::string::npos) << e.pointer << " (" << e.key << "): " << msg;
      EXPECT_EQ(msg.find("json.exception"), std::string::npos) << e.pointer << ": " << msg;
    }
  };
  const std::string fixtures = std::string(EMO_SOURCE_DIR) + "/fuzz/corpus/";

  const std::string subset = path("subset.json");
  expect_named(read_json_file(fixtures + "subset/two_layers.json"),
               {{"/version", "1", "version"},
                {"/model/num_experts", "8", "num_experts"},
                {"/keep_k", 2.5, "keep_k"},
                {"/method", 3, "method"},
                {"/calibration", 5, "calibration"},
                {"/calibration/examples", "one", "examples"},
                {"/calibration/seed", -1, "seed"},
                {"/layers/0/layer", true, "layer"},
                {"/layers/0/routed", "3", "routed"},
                {"/layers/1/routed/0", int64_t{1} << 33, "routed"},
                {"/layers/1/shared", {{"a", 1}}, "shared"}},
               subset, [&] { ExpertSubset::from_json(read_json_file(subset), subset); });

  const std::string tokenizer = path("tokenizer.json");
  expect_named(read_json_file(fixtures + "tokenizer_json/trained300.json"),
               {{"/added_tokens/0/special", "yes", "special"},
                {"/added_tokens/0/normalized", 0, "normalized"},
                {"/added_tokens/0/id", "298", "id"},
                {"/added_tokens/0/content", 7, "content"},
                {"/model/ignore_merges", 1, "ignore_merges"},
                {"/model/byte_fallback", "no", "byte_fallback"},
                {"/model/vocab", nlohmann::json::array(), "vocab"},
                {"/model/merges", nlohmann::json::object(), "merges"},
                {"/model/merges/0", 5, "merges[0]"},
                {"/pre_tokenizer/pretokenizers/0/behavior", 3, "behavior"},
                {"/pre_tokenizer/pretokenizers/0/invert", "no", "invert"},
                {"/pre_tokenizer/pretokenizers/0/pattern", "x", "pattern"},
                {"/pre_tokenizer/type", 1, "type"}},
               tokenizer, [&] { Tokenizer::load(tokenizer); });

  fs::create_directories(path("step-00000004"));
  const std::string state = path("step-00000004/train_state.json");
  TrainState good_state;
  good_state.step = 4;
  good_state.data = {{"position", 0}};
  expect_named(good_state.to_json(TrainConfig{}),
               {{"/step", "4", "step"},
                {"/tokens", 1.5, "tokens"},
                {"/rng/state", -1, "state"},
                {"/rng", 3, "rng"},
                {"/world_size", "2", "world_size"},
                {"/elapsed_seconds", "long", "elapsed_seconds"},
                {"/config/model/d", "128", "model.d"},
                {"/config/model/rope_theta", "high", "model.rope_theta"},
                {"/config/run/steps", true, "run.steps"},
                {"/config/routing/mode", 2, "routing.mode"},
                {"/config/routing", "emo", "routing"},
                {"/config/data/validation", 5, "data.validation"},
                {"/config/data/validation/news", 3, "data.validation.news"},
                {"/config/data/train", nlohmann::json::array(), "data.train"}},
               state, [&] {
                 TrainState read_state;
                 read_checkpoint_config(path("step-00000004"), &read_state);
               });
}

}  // namespace
}  // namespace emo
