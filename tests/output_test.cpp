// The output guard (io/output_dir) at the real command line of every command that writes a directory or a
// file beside prune, merge, quantize, pull and train (which their own tests cover): emo analyze, emo sweep,
// emo corpus build, emo reproduce and emo export gguf refuse what emo did not write, an output that is or
// contains an input, and replace only their own previous output, with --force.
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "core/error.h"
#include "data/corpus.h"
#include "data/dataset.h"
#include "export/gguf_export.h"
#include "fault_injection.h"
#include "io/gguf.h"
#include "io/json_file.h"
#include "io/output_dir.h"
#include "model/config.h"
#include "run_emo.h"
#include "select/subset.h"
#include "tiny_emo.h"
#include "tokenizer/tokenizer.h"

namespace emo {
namespace {

namespace fs = std::filesystem;
using test::run_emo, test::tree_bytes;

void write_text(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

// A scratch directory with the tiny model (MODEL), a two-domain dataset for it (valid.bin), a directory of
// the user's (foreign/) and a file of the user's (file.txt).
struct Scratch {
  test::TempDir dir{"emo_output_test_"};
  std::string model = dir / "model", data = dir / "valid.bin", foreign = dir / "foreign",
              file = dir / "file.txt";
  Scratch() {
    test::write_tiny_emo(model);
    data::DatasetWriter writer({"law", "code"}, 300);
    for (int d = 0; d < 12; ++d) {
      std::vector<int32_t> doc;
      for (int t = 0; t < 40; ++t) doc.push_back(2 + (d * 7 + t * (d % 2 ? 5 : 3)) % 290);
      writer.add(doc, d % 2);
    }
    writer.write(data);
    write_text(foreign + "/sub/notes.txt", "the user's");
    write_text(file, "a file");
  }
  std::string operator/(const std::string& name) const { return dir / name; }
};

struct Refusal {
  std::string args, why;
};

// Each command of `refusals` exits 1 with its reason, and none of them changed the scratch directory.
void expect_refusals(const Scratch& s, const std::vector<Refusal>& refusals) {
  const std::string before = tree_bytes(s.dir.path);
  for (const Refusal& r : refusals) {
    const test::EmoRun run = run_emo(r.args);
    EXPECT_EQ(run.status, 1) << r.args;
    EXPECT_NE(run.err.find(r.why), std::string::npos) << r.args << ": " << run.err;
  }
  EXPECT_TRUE(tree_bytes(s.dir.path) == before) << "a refused command changed what it found";
}

// Nothing named like a temporary or a moved-aside output of emo beside the outputs.
void expect_no_leftovers(const Scratch& s) {
  for (const auto& e : fs::directory_iterator(s.dir.path))
    EXPECT_EQ(e.path().filename().string().find(".emo-"), std::string::npos)
        << e.path() << " holding:\n"
        << (e.is_directory() ? tree_bytes(e.path()).substr(0, 2000) : "");
}

// The refusals every whole output shares, for `args` ending in the output option: a directory of the
// user's (with or without --force), a file, a model directory emo did not write.
std::vector<Refusal> foreign_output_refusals(const Scratch& s, const std::string& args) {
  return {{args + s.foreign, "not written by emo"},
          {args + s.foreign + " --force", "not written by emo"},
          {args + s.file, "is not a directory"},
          {args + s.model + " --force", "not written by emo"}};
}

// A directory output of `command`: written once, refused a second time without --force, replaced with it;
// no temporary sibling left behind.
void expect_own_output_replaced_only_with_force(const Scratch& s, const std::string& args,
                                                const std::string& out, const std::string& command) {
  const test::EmoRun first = run_emo(args + out);
  ASSERT_EQ(first.status, 0) << first.err;
  EXPECT_EQ(read_json_file(out + "/.emo-output")["command"], command);
  EXPECT_EQ(read_json_file(out + "/.emo-output")["complete"], true);
  const test::EmoRun again = run_emo(args + out);
  EXPECT_EQ(again.status, 1);
  EXPECT_NE(again.err.find("holds a previous output of 'emo " + command + "': give --force"),
            std::string::npos)
      << again.err;
  const test::EmoRun forced = run_emo(args + out + " --force");
  EXPECT_EQ(forced.status, 0) << forced.err;
  expect_no_leftovers(s);
}

TEST(OutputGuard, AnalyzeRefusesForeignOutputsAndInputsAndReplacesOnlyItsOwnWithForce) {
  Scratch s;
  write_text(s / "pruned/.emo-output", R"({"format": "emo-output", "command": "prune"})");
  const std::string analyze = "analyze " + s.model + " --data " + s.data +
                              " --clusters 4 --max-tokens 200 --snippets 2 --restarts 1 -o ";
  expect_refusals(
      s, {
             {analyze + s.foreign, "not written by emo"},
             {analyze + s.foreign + " --force", "not written by emo"},
             {analyze + s.file, "is not a directory"},
             {analyze + s.model, "is the input"},
             {analyze + s.dir.path.string(), "contains the input"},
             {analyze + s.model + "/report", "lies inside the input"},
             {analyze + s.data, "is the input"},
             {analyze + s / "pruned --force", "holds the output of 'emo prune', not of 'emo analyze'"},
         });
  expect_own_output_replaced_only_with_force(s, analyze, s / "analysis", "analyze");
  EXPECT_TRUE(fs::exists(s / "analysis/report.html"));
  EXPECT_TRUE(fs::exists(s / "analysis/analysis.json"));
}

TEST(OutputGuard, SweepRefusesForeignOutputsAndInputsAndReplacesOnlyItsOwnWithForce) {
  Scratch s;
  const std::string sweep = "sweep " + s.model + " --data " + s.data +
                            " --keep-k 4 --methods random --seq-len 16 --max-tokens 32 -o ";
  expect_refusals(s, {
                         {sweep + s.foreign, "not written by emo"},
                         {sweep + s.foreign + " --force", "not written by emo"},
                         {sweep + s.file, "is not a directory"},
                         {sweep + s.model, "is the input"},
                         {sweep + s.dir.path.string(), "contains the input"},
                         {sweep + s.data, "is the input"},
                     });
  expect_own_output_replaced_only_with_force(s, sweep, s / "sweep", "sweep");
  for (const char* file : {"results.md", "results.csv", "quality.svg"})
    EXPECT_TRUE(fs::exists(s / (std::string("sweep/") + file))) << file;
}

// The refusals come before any fetching (the download cache here is empty and offline); the writing half is
// write_corpus, the same code after the fetch.
TEST(OutputGuard, CorpusBuildRefusesForeignOutputsAndItsCacheAndReplacesOnlyItsOwnWithForce) {
  Scratch s;
  fs::create_directories(s / "cache");
  const std::string build = "corpus build --cache " + s / "cache" + " --out ";
  expect_refusals(s, foreign_output_refusals(s, build));
  expect_refusals(s, {
                         {build + s / "cache", "is the input"},
                         {build + s.dir.path.string(), "contains the input"},
                         {build + s / "cache/corpus", "lies inside the input"},
                     });
  data::CorpusOptions options;
  options.out_dir = s / "corpus";
  options.cache_dir = s / "cache";
  const std::vector<data::Document> documents = {{"law/1", "law", "src", "A text of law."},
                                                 {"code/1", "code-c", "src", "int main() {}"}};
  data::write_corpus(documents, {}, options);
  EXPECT_EQ(read_json_file(s / "corpus/.emo-output")["command"], "corpus build");
  EXPECT_TRUE(fs::exists(s / "corpus/manifest.json"));
  try {
    data::write_corpus(documents, {}, options);
    ADD_FAILURE() << "a second corpus over the first without force";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds a previous output of 'emo corpus build'"), std::string::npos)
        << e.what();
  }
  const test::EmoRun refused = run_emo(build + s / "corpus");
  EXPECT_NE(refused.err.find("give --force"), std::string::npos) << refused.err;
  options.force = true;
  data::write_corpus(documents, {}, options);
  EXPECT_EQ(data::read_corpus_jsonl(s / "corpus/train.jsonl").size() +
                data::read_corpus_jsonl(s / "corpus/validation.jsonl").size() +
                data::read_corpus_jsonl(s / "corpus/test.jsonl").size(),
            2u);
}

// emo reproduce continues its own run directory (no --force: every rerun resumes it), claims it before any
// work and locks it against a second reproduce.
TEST(OutputGuard, ReproduceRefusesForeignRunDirectoriesItsDataAndASecondRun) {
  Scratch s;
  fs::create_directories(s / "data");
  write_text(s / "older/budget.json", "{}");
  const std::string reproduce =
      "reproduce --no-progress --data " + s / "data" + " --cache " + s / "cache" + " --out ";
  expect_refusals(s, {
                         {reproduce + s.foreign, "not written by emo"},
                         {reproduce + s.file, "is not a directory"},
                         {reproduce + s / "data", "is the input"},
                         {reproduce + s.dir.path.string(), "contains the input"},
                         {reproduce + s / "data/run", "lies inside the input"},
                         {reproduce + s / "older", "holds budget.json as an output of 'emo reproduce'"},
                     });
  claim_output_directory(s / "run", {"reproduce", {}, false});
  DirectoryLock held(s / "run", "reproduce");  // this process stands for a reproduce in progress
  const test::EmoRun second = run_emo(reproduce + s / "run");
  EXPECT_EQ(second.status, 1);
  EXPECT_NE(second.err.find(cat("in use by another 'emo reproduce' (pid ", ::getpid(), ")")),
            std::string::npos)
      << second.err;
  EXPECT_FALSE(fs::exists(s / "run/budget.json"));
}

TEST(OutputGuard, ExportGgufReplacesOnlyAFileItWroteAndOnlyWithForce) {
  Scratch s;
  fs::create_symlink(s.file, s / "link.gguf");
  write_text(s / "other.gguf", "GGUF but not emo's");
  const std::string exp = "export gguf " + s.model + " -o ";
  expect_refusals(s, {
                         {exp + s.file, "was not written by 'emo export gguf'"},
                         {exp + s.file + " --force", "was not written by 'emo export gguf'"},
                         {exp + s / "other.gguf --force", "was not written by 'emo export gguf'"},
                         {exp + s.model + "/tokenizer.json --force", "is the input"},
                         {exp + s.model + "/config.json --force", "was not written by 'emo export gguf'"},
                         {exp + s.model, "is the input"},
                         {exp + s.foreign, "is not a regular file"},
                         {exp + s / "link.gguf --force", "is a symbolic link"},
                     });
  const std::string out = s / "model.gguf";
  ASSERT_EQ(run_emo(exp + out).status, 0);
  EXPECT_EQ(gguf_leading_string(out, kGgufExporterKey), "emo 0.1.0");
  EXPECT_EQ(GgufFile::open(out).get("general.architecture").text, "qwen2moe");
  const test::EmoRun again = run_emo(exp + out);
  EXPECT_EQ(again.status, 1);
  EXPECT_NE(again.err.find("holds a previous output of 'emo export gguf': give --force"), std::string::npos)
      << again.err;
  EXPECT_EQ(run_emo(exp + out + " --force --dtype bf16").status, 0);
  EXPECT_EQ(GgufFile::open(out).get("general.file_type").integer, 32);  // the bf16 file replaced the f32 one
  // A new file inside the model directory destroys nothing of it: allowed.
  EXPECT_EQ(run_emo(exp + s.model + "/model.gguf").status, 0);
  EXPECT_EQ(gguf_leading_string(s.file, kGgufExporterKey), "");
  for (const auto& e : fs::directory_iterator(s.dir.path))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
}

// emo tokenizer train -o DIR is a whole output: refused over the user's directories, files and its corpus
// before any counting, written into a temporary sibling, its own previous output replaced only with --force.
TEST(OutputGuard, TokenizerTrainRefusesForeignOutputsAndItsCorpusAndReplacesOnlyItsOwnWithForce) {
  Scratch s;
  write_text(s / "texts/corpus.txt", "the law of the land and the code of the machine\n");
  write_text(s / "pruned/.emo-output", R"({"format": "emo-output", "command": "prune"})");
  const std::string train = "tokenizer train --vocab-size 260 --corpus " + s / "texts/corpus.txt" + " -o ";
  expect_refusals(s, foreign_output_refusals(s, train));
  expect_refusals(s, {
                         {train + s / "texts/corpus.txt", "is the input"},
                         {train + s / "texts", "contains the input"},
                         {train + s / "pruned --force", "holds the output of 'emo prune'"},
                     });
  expect_own_output_replaced_only_with_force(s, train, s / "tok", "tokenizer train");
  EXPECT_EQ(Tokenizer::load(s / "tok/tokenizer.json").vocab_size(), 260);
}

// emo tokenizer dolma2 --out DIR: the same guard, checked before its parts are fetched or read.
TEST(OutputGuard, TokenizerDolma2RefusesForeignOutputsBeforeFetchingItsParts) {
  Scratch s;
  write_text(s / "parts/cl100k.json", "{}");
  const std::string dolma2 = "tokenizer dolma2 --cl100k-json " + s / "parts/cl100k.json" +
                             " --tiktoken /nonexistent/cl100k.tiktoken --out ";
  expect_refusals(s, foreign_output_refusals(s, dolma2));
  expect_refusals(s, {{dolma2 + s / "parts", "contains the input"}});
  const test::EmoRun missing = run_emo(dolma2 + s / "dolma2");
  EXPECT_EQ(missing.status, 1);
  EXPECT_NE(missing.err.find("/nonexistent/cl100k.tiktoken: not found"), std::string::npos) << missing.err;
  EXPECT_FALSE(fs::exists(s / "dolma2"));
  expect_no_leftovers(s);
}

// ---------------------------------------------------------------------------------------------- faults

// Two different subsets of the tiny model (keep-k 4: the shared expert and 3 routed experts per layer), and
// the prune commands that write them (without -o).
struct TwoPrunes {
  std::string a, b;
  explicit TwoPrunes(const Scratch& s) {
    const ModelConfig config = ModelConfig::load(s.model + "/config.json");
    ExpertSubset subset = ExpertSubset::for_model(config, 4, "layerwise");
    subset.routed = {{0, 1, 2}, {3, 4, 5}, {6, 7, 8}};
    subset.save(s / "a.json");
    subset.routed = {{6, 7, 8}, {0, 1, 2}, {3, 4, 5}};
    subset.save(s / "b.json");
    a = "prune " + s.model + " --subset " + s / "a.json";
    b = "prune " + s.model + " --subset " + s / "b.json";
  }
};

// Kills `pid` (SIGKILL) anywhere from now to a little past `took`, the time of a whole run measured on this
// machine, and returns its wait status.
int kill_at_a_random_moment(pid_t pid, std::mt19937& rng, std::chrono::microseconds took) {
  std::this_thread::sleep_for(std::chrono::microseconds(rng() % (took.count() * 6 / 5 + 1)));
  ::kill(pid, SIGKILL);
  int status = 0;
  EXPECT_EQ(waitpid(pid, &status, 0), pid);
  return status;
}

// SIGKILL of a command replacing `out` (with --force) at random moments, `first` and `second` alternately:
// each time `out` holds the previous output or the whole new one, never a mixture or nothing.
void expect_sigkill_leaves_the_old_or_the_new_output(const Scratch& s, const std::string& first,
                                                     const std::string& second, const std::string& out) {
  ASSERT_EQ(run_emo(first + " -o " + out).status, 0);
  const std::string first_tree = tree_bytes(out);
  const auto started = std::chrono::steady_clock::now();
  ASSERT_EQ(run_emo(second + " -o " + out + " --force").status, 0);
  const auto took =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started);
  const std::string second_tree = tree_bytes(out);
  ASSERT_NE(first_tree, second_tree);
  std::mt19937 rng(29);
  int whole_new = 0;
  for (int round = 0; round < 12; ++round) {
    const std::string before = tree_bytes(out);
    const pid_t pid =
        test::spawn_emo((round % 2 ? second : first) + " -o " + out + " --force", s / "kill.err");
    ASSERT_GT(pid, 0);
    kill_at_a_random_moment(pid, rng, took);
    ASSERT_TRUE(fs::is_directory(out)) << "round " << round << ": killed, it left no output";
    const std::string now = tree_bytes(out);
    EXPECT_TRUE(now == first_tree || now == second_tree) << "round " << round << ": a mixture";
    whole_new += now != before;
  }
  // The next run removes what the killed ones left (temporaries of processes that are gone), nothing else.
  ASSERT_EQ(run_emo(first + " -o " + out + " --force").status, 0);
  EXPECT_EQ(tree_bytes(out), first_tree);
  expect_no_leftovers(s);
  std::printf("%d of 12 killed runs had replaced the output\n", whole_new);
}

TEST(OutputFaults, SigkillOfPruneAtRandomMomentsLeavesTheOldOutputOrTheWholeNewOne) {
  Scratch s;
  const TwoPrunes prunes(s);
  expect_sigkill_leaves_the_old_or_the_new_output(s, prunes.a, prunes.b, s / "pruned");
}

TEST(OutputFaults, SigkillOfQuantizeAtRandomMomentsLeavesTheOldOutputOrTheWholeNewOne) {
  Scratch s;
  const std::string quantize = "quantize " + s.model + " --skip-eval --dtype ";
  expect_sigkill_leaves_the_old_or_the_new_output(s, quantize + "int8", quantize + "bf16", s / "quantized");
}

// A corpus for emo tokenizer train that takes a few hundred milliseconds to count and merge: 4000 words of
// random letters, 60,000 of them in all (the same bytes every run).
std::string write_tokenizer_corpus(const Scratch& s) {
  std::mt19937 rng(5);
  std::vector<std::string> words(4000);
  for (std::string& word : words)
    for (size_t length = 3 + rng() % 7; word.size() < length;) word += static_cast<char>('a' + rng() % 26);
  std::string text;
  for (int i = 0; i < 60000; ++i) text += words[rng() % words.size()] + (i % 12 == 11 ? "\n" : " ");
  write_text(s / "texts/corpus.txt", text);
  return s / "texts/corpus.txt";
}

// SIGKILL of emo tokenizer train at random moments, from its start to a little past the end of a whole run:
// the output is absent or the whole tokenizer (never a half-written one), and the next run with the same
// arguments succeeds, leaving no temporary.
TEST(OutputFaults, SigkillOfTokenizerTrainAtRandomMomentsLeavesNoHalfTokenizerAndTheRerunSucceeds) {
  Scratch s;
  const std::string out = s / "tok";
  const std::string train =
      "tokenizer train --vocab-size 3000 --corpus " + write_tokenizer_corpus(s) + " --force -o ";
  const auto started = std::chrono::steady_clock::now();
  ASSERT_EQ(run_emo(train + s / "reference").status, 0);
  const auto took =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started);
  const std::string whole = tree_bytes(s / "reference");
  std::mt19937 rng(31);
  int finished = 0;
  for (int round = 0; round < 20; ++round) {
    const pid_t pid = test::spawn_emo(train + out, s / "kill.err");
    ASSERT_GT(pid, 0);
    finished += WIFEXITED(kill_at_a_random_moment(pid, rng, took));
    if (fs::exists(out)) {
      EXPECT_TRUE(tree_bytes(out) == whole) << "round " << round << ": a half output";
    }
    const test::EmoRun rerun = run_emo(train + out);
    ASSERT_EQ(rerun.status, 0) << "round " << round << ": " << rerun.err;
    EXPECT_TRUE(tree_bytes(out) == whole) << "round " << round;
    expect_no_leftovers(s);
    fs::remove_all(out);  // the next round starts from nothing, as a first run does
  }
  std::printf("%d of 20 runs had finished before the kill (a whole run took %lld ms)\n", finished,
              static_cast<long long>(took.count() / 1000));
}

// Documents enough for the corpus writer to take some tens of milliseconds.
std::vector<data::Document> corpus_documents(int count, char letter) {
  std::vector<data::Document> documents;
  for (int i = 0; i < count; ++i)
    documents.push_back({"law/" + std::to_string(i), "law", "src",
                         std::string(1500 + i % 700, static_cast<char>(letter + i % 20))});
  return documents;
}

// Worker half of SigkillOfTheCorpusWriter...: writes a corpus over EMO_OUTPUT_TEST_CORPUS_OUT until killed.
TEST(OutputFaults, CorpusWriterWorker) {
  const char* out = std::getenv("EMO_OUTPUT_TEST_CORPUS_OUT");
  if (out == nullptr) GTEST_SKIP() << "started by OutputFaults.SigkillOfTheCorpusWriterAtRandomMoments...";
  data::CorpusOptions options;
  options.out_dir = out;
  options.force = true;
  data::write_corpus(corpus_documents(3000, std::getenv("EMO_OUTPUT_TEST_CORPUS_B") ? 'A' : 'a'), {},
                     options);
}

// SIGKILL of the corpus writer (the half of emo corpus build that writes --out, after the fetch) at random
// moments while it replaces a corpus: the output holds the previous corpus or the whole new one, and the
// next write removes the killed runs' temporaries.
TEST(OutputFaults, SigkillOfTheCorpusWriterAtRandomMomentsLeavesTheOldCorpusOrTheWholeNewOne) {
  Scratch s;
  const std::string out = s / "corpus";
  std::string self = fs::read_symlink("/proc/self/exe").string();
  std::string filter = "--gtest_filter=OutputFaults.CorpusWriterWorker";
  std::string out_env = "EMO_OUTPUT_TEST_CORPUS_OUT=" + out, b_env = "EMO_OUTPUT_TEST_CORPUS_B=1";
  auto start_worker = [&](bool second) {
    char* argv[] = {self.data(), filter.data(), nullptr};
    char* envp[] = {out_env.data(), second ? b_env.data() : nullptr, nullptr};
    pid_t pid = 0;
    EXPECT_EQ(posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv, envp), 0);
    return pid;
  };
  auto run_worker = [&](bool second) {
    int status = 0;
    waitpid(start_worker(second), &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
  };
  ASSERT_TRUE(run_worker(false));
  const std::string first_tree = tree_bytes(out);
  const auto started = std::chrono::steady_clock::now();
  ASSERT_TRUE(run_worker(true));
  const auto took =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started);
  const std::string second_tree = tree_bytes(out);
  ASSERT_NE(first_tree, second_tree);
  std::mt19937 rng(37);
  for (int round = 0; round < 20; ++round) {
    kill_at_a_random_moment(start_worker(round % 2 == 0), rng, took);
    ASSERT_TRUE(fs::is_directory(out)) << "round " << round << ": killed, it left no corpus";
    const std::string now = tree_bytes(out);
    EXPECT_TRUE(now == first_tree || now == second_tree) << "round " << round << ": a mixture";
  }
  ASSERT_TRUE(run_worker(false));
  EXPECT_EQ(tree_bytes(out), first_tree);
  expect_no_leftovers(s);
}

// A full disk (a file size limit of 8 KB on the command: the weights need more) while prune or quantize
// replaces an output: the error names the file being written, the previous output is intact, no temporary
// is left.
TEST(OutputFaults, AFullDiskDuringPruneOrQuantizeNamesTheFileAndKeepsThePreviousOutput) {
  Scratch s;
  const TwoPrunes prunes(s);
  const std::string quantize = "quantize " + s.model + " --skip-eval --dtype ";
  struct Case {
    std::string first, second, out;
  };
  for (const Case& c :
       {Case{prunes.a, prunes.b, s / "pruned"}, Case{quantize + "int8", quantize + "bf16", s / "q"}}) {
    ASSERT_EQ(run_emo(c.first + " -o " + c.out).status, 0);
    const std::string before = tree_bytes(c.out);
    const test::EmoRun full =
        test::run_emo_env(test::full_disk_after_blocks(16), c.second + " -o " + c.out + " --force");
    EXPECT_EQ(full.status, 1) << c.second;
    EXPECT_NE(full.err.find("emo: error: [io] " + c.out + ".emo-tmp-"), std::string::npos) << full.err;
    EXPECT_NE(full.err.find("write failed: File too large"), std::string::npos) << full.err;
    EXPECT_EQ(full.err.find("internal error"), std::string::npos) << full.err;
    EXPECT_TRUE(tree_bytes(c.out) == before) << c.second;
    expect_no_leftovers(s);
  }
}

// The corpus writer (the half of emo corpus build after the fetch) on a full disk, in this process.
TEST(OutputFaults, AFullDiskDuringACorpusBuildNamesTheFileAndKeepsThePreviousCorpus) {
  Scratch s;
  data::CorpusOptions options;
  options.out_dir = s / "corpus";
  data::write_corpus({{"law/1", "law", "src", "A short text of law."}}, {}, options);
  const std::string before = tree_bytes(s / "corpus");
  std::vector<data::Document> large;
  for (int i = 0; i < 40; ++i)
    large.push_back({"law/" + std::to_string(i), "law", "src", std::string(2000, 'a' + i % 26)});
  options.force = true;
  std::string message;
  {
    test::FileSizeLimit limit(16 * 1024);
    try {
      data::write_corpus(large, {}, options);
    } catch (const Error& e) {
      message = e.what();
    }
  }
  EXPECT_NE(message.find("[io] " + s / "corpus.emo-tmp-"), std::string::npos) << message;
  EXPECT_NE(message.find(".jsonl"), std::string::npos) << message;
  EXPECT_NE(message.find("write failed: File too large"), std::string::npos) << message;
  EXPECT_TRUE(tree_bytes(s / "corpus") == before);
  expect_no_leftovers(s);
}

// A real full file system (a tmpfs of 32 MB, filled but 16 KB by a file of the test's) while prune,
// quantize and the corpus writer replace an output (--force): `No space left on device` naming the file
// being written, exit 1, the previous output byte-identical and no temporary left; once the space is freed
// the same command succeeds.
TEST(OutputFaults, ARealFullFileSystemDuringPruneQuantizeOrACorpusKeepsThePreviousOutputAndTheRerunSucceeds) {
  const std::string why = test::SmallFileSystem::unavailable();
  if (!why.empty()) GTEST_SKIP() << why;
  Scratch s;
  const TwoPrunes prunes(s);
  const std::string quantize = "quantize " + s.model + " --skip-eval --dtype ";
  // The corpus writer runs as this test program's worker (an error: gtest's report of the exception).
  const std::string writer = "EMO_OUTPUT_TEST_CORPUS_OUT=$D/out " +
                             fs::read_symlink("/proc/self/exe").string() +
                             " --gtest_filter=OutputFaults.CorpusWriterWorker";
  struct Case {
    std::string first, second;
  };
  for (const Case& c :
       {Case{"emo first " + prunes.a + " -o $D/out", "emo S " + prunes.b + " -o $D/out --force"},
        Case{"emo first " + quantize + "int8 -o $D/out", "emo S " + quantize + "bf16 -o $D/out --force"},
        Case{"run first env " + writer, "run S env EMO_OUTPUT_TEST_CORPUS_B=1 " + writer}}) {
    const std::string dir = s / "small", out = dir + "/out";
    const test::SmallFileSystem small(dir, s / "results");
    auto second = [&](const std::string& name) {
      std::string line = c.second;
      return line.replace(line.find(" S "), 3, " " + name + " ");
    };
    ASSERT_EQ(small.run(32 << 20, c.first + "; snap before out\nfill 16384; " + second("full") +
                                      "; snap full out; ls -a $D > $R/listing\nunfill; " + second("freed") +
                                      "; snap after out"),
              0);
    ASSERT_EQ(small.status("first"), 0) << c.first << ": " << small.err("first");
    const std::string full = small.err("full");
    EXPECT_EQ(small.status("full"), 1) << c.second << ": " << full;
    EXPECT_NE(full.find("[io] " + out + ".emo-tmp-"), std::string::npos) << full;
    EXPECT_NE(full.find("No space left on device"), std::string::npos) << full;
    EXPECT_EQ(full.find("internal error"), std::string::npos) << full;
    EXPECT_TRUE(tree_bytes(small.result("full")) == tree_bytes(small.result("before"))) << c.second;
    std::ifstream listing(small.result("listing"));
    for (std::string name; std::getline(listing, name);)
      EXPECT_EQ(name.find(".emo-"), std::string::npos) << c.second << ": left " << name;
    ASSERT_EQ(small.status("freed"), 0) << c.second << ": " << small.err("freed");
    EXPECT_FALSE(tree_bytes(small.result("after")) == tree_bytes(small.result("before"))) << c.second;
  }
}

// An output directory emo may not write into (as a user other than root: root writes anywhere): a clear
// error naming the directory, exit 1, nothing created.
TEST(OutputFaults, AReadOnlyOutputDirectoryIsAnErrorNamingIt) {
  std::string as_user;
  if (!test::unprivileged_prefix(&as_user)) GTEST_SKIP() << "root without setpriv: no read-only directory";
  Scratch s;
  const TwoPrunes prunes(s);
  fs::create_directories(s / "readonly");
  ::chmod((s / "readonly").c_str(), 0555);
  struct Case {
    std::string args, why;
  };
  for (const Case& c :
       {Case{prunes.a + " -o " + s / "readonly/pruned", s / "readonly/pruned: cannot create"},
        Case{"sweep " + s.model + " --data " + s.data + " --keep-k 4 -o " + s / "readonly/sweep",
             s / "readonly/sweep: cannot create"}}) {
    const test::EmoRun run = test::run_emo_env(as_user, c.args);
    EXPECT_EQ(run.status, 1) << c.args;
    EXPECT_NE(run.err.find(c.why), std::string::npos) << run.err;
    EXPECT_NE(run.err.find("Permission denied"), std::string::npos) << run.err;
  }
  EXPECT_TRUE(fs::is_empty(s / "readonly"));
  ::chmod((s / "readonly").c_str(), 0755);
}

}  // namespace
}  // namespace emo
