// The command line as a new user meets it (build/bin/emo on a tiny model): what each command prints where,
// the options a first session reaches for, and the errors that must say what is wrong.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "infer/quantize.h"
#include "run_emo.h"
#include "tiny_emo.h"
#include "tokenizer/tokenizer.h"

namespace emo {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::run_emo;
using test::run_emo_env;
using test::TempDir;

// `text` as one shell word.
std::string quoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

json parse(const std::string& text) {
  return json::parse(text, nullptr, true, false);
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

struct TinyModel {
  TempDir dir{"emo_cli_test_"};
  std::string model = dir / "model";
  TinyModel() { test::write_tiny_emo(model); }
  std::string generate(const std::string& args) const { return "generate " + model + " " + args; }
};

// ------------------------------------------------------------------------------------------ generate

TEST(CliGenerate, PrintsTheTextAloneAndTheJsonOnlyWhenAsked) {
  TinyModel m;
  const test::EmoRun plain = run_emo(m.generate("--prompt hello -n 12 --ignore-eos"));
  ASSERT_EQ(plain.status, 0) << plain.err;
  EXPECT_FALSE(plain.out.empty());
  EXPECT_EQ(plain.out.find("prompt_tokens"), std::string::npos) << plain.out;
  EXPECT_NE(plain.err.find("generated 12 tokens"), std::string::npos) << plain.err;

  const test::EmoRun to_stdout = run_emo(m.generate("--prompt hello -n 12 --ignore-eos --json -"));
  ASSERT_EQ(to_stdout.status, 0) << to_stdout.err;
  const json j = parse(to_stdout.out);
  EXPECT_EQ(j["text"], plain.out);
  EXPECT_EQ(j["generated_tokens"], 12);
  EXPECT_EQ(parse(run_emo(m.generate("--prompt hello -n 12 --ignore-eos --json")).out)["text"], plain.out);

  const test::EmoRun to_file =
      run_emo(m.generate("--prompt hello -n 12 --ignore-eos --json " + m.dir / "g.json"));
  ASSERT_EQ(to_file.status, 0) << to_file.err;
  EXPECT_EQ(to_file.out, plain.out);
  EXPECT_EQ(parse(slurp(m.dir / "g.json"))["text"], plain.out);
  EXPECT_EQ(run_emo(m.generate("--prompt hello -n 12 --ignore-eos --no-stream")).out, plain.out);
}

TEST(CliGenerate, StopStringsEndTheTextBeforeThem) {
  TinyModel m;
  const std::string full = run_emo(m.generate("--prompt hello -n 40 --ignore-eos")).out;
  // Two printable ASCII bytes from the middle of the text (no U+FFFD a replaced byte would bring).
  size_t at = 4;
  while (at + 1 < full.size() && !(std::isgraph(static_cast<unsigned char>(full[at])) &&
                                   std::isgraph(static_cast<unsigned char>(full[at + 1]))))
    ++at;
  ASSERT_LT(at + 1, full.size()) << full;
  const std::string stop = full.substr(at, 2);
  const std::string expected = full.substr(0, full.find(stop));
  const test::EmoRun run = run_emo(
      m.generate("--prompt hello -n 40 --ignore-eos --stop QQQQQQ --stop " + quoted(stop) + " --json -"));
  ASSERT_EQ(run.status, 0) << run.err;
  const json j = parse(run.out);
  EXPECT_EQ(j["stop"], "stop");
  EXPECT_EQ(j["text"], expected);
  EXPECT_LT(j["generated_tokens"].get<int64_t>(), 40);
  const test::EmoRun streamed =
      run_emo(m.generate("--prompt hello -n 40 --ignore-eos --stop " + quoted(stop)));
  EXPECT_EQ(streamed.out, expected);

  const test::EmoRun empty = run_emo(m.generate("--prompt hello --stop ''"));
  EXPECT_EQ(empty.status, 1);
  EXPECT_NE(empty.err.find("--stop: a stop string must not be empty"), std::string::npos) << empty.err;
}

TEST(CliGenerate, RepetitionPenaltyChangesGreedyTextAndIsChecked) {
  TinyModel m;
  const std::string base = m.generate("--prompt hello -n 30 --ignore-eos");
  const std::string plain = run_emo(base).out;
  EXPECT_EQ(run_emo(base + " --repetition-penalty 1").out, plain);
  const test::EmoRun penalised = run_emo(base + " --repetition-penalty 3");
  ASSERT_EQ(penalised.status, 0) << penalised.err;
  EXPECT_NE(penalised.out, plain);
  const test::EmoRun zero = run_emo(base + " --repetition-penalty 0");
  EXPECT_EQ(zero.status, 1);
  EXPECT_NE(zero.err.find("--repetition-penalty: Value 0 not in range"), std::string::npos) << zero.err;
}

TEST(CliGenerate, AnEmptyPromptStartsFromTheEndOfTextToken) {
  TinyModel m;
  for (const std::string prompt : {"--prompt ''", ""}) {
    const test::EmoRun run = run_emo(m.generate(prompt + " -n 6 --ignore-eos --json -"));
    ASSERT_EQ(run.status, 0) << run.err;
    EXPECT_NE(run.err.find("empty prompt: generating after the end-of-text token (id 298)"),
              std::string::npos)
        << run.err;
    const json j = parse(run.out);
    EXPECT_EQ(j["prompt_tokens"], 1);
    EXPECT_EQ(j["generated_tokens"], 6);
  }
}

TEST(CliGenerate, ATokenizerLargerThanTheEmbeddingIsRefusedNamingBothSizes) {
  TempDir dir("emo_cli_test_");
  test::write_tiny_emo(dir / "small", 12, 24'000, 256);
  const test::EmoRun run = run_emo("generate " + dir / "small" + " --prompt hello");
  EXPECT_EQ(run.status, 1);
  EXPECT_NE(run.err.find("the tokenizer has 300 tokens but the model " + dir / "small" +
                         " has an embedding of 256 rows"),
            std::string::npos)
      << run.err;
  EXPECT_NE(run.err.find(dir / "small/tokenizer.json"), std::string::npos) << run.err;
}

// A training run's layout around the model: run/checkpoints/step-00000004/ and checkpoints/latest.
std::string fake_run(const TinyModel& m) {
  const fs::path step = fs::path(m.dir / "run") / "checkpoints" / "step-00000004";
  fs::create_directories(step.parent_path());
  fs::copy(m.model, step, fs::copy_options::recursive);
  std::ofstream(step / "train_state.json") << "{}\n";
  std::ofstream(step.parent_path() / "latest") << "step-00000004\n";
  return m.dir / "run";
}

TEST(CliModelArgument, EveryCommandTakesARunDirectoryOrItsLatestCheckpoint) {
  TinyModel m;
  const std::string run = fake_run(m);
  const std::string expected = run_emo(m.generate("--prompt hello -n 8 --ignore-eos")).out;
  for (const std::string& model : {run, run + "/checkpoints/latest", run + "/checkpoints"}) {
    const test::EmoRun g = run_emo("generate " + model + " --prompt hello -n 8 --ignore-eos");
    ASSERT_EQ(g.status, 0) << g.err;
    EXPECT_EQ(g.out, expected);
  }
  std::ofstream(m.dir / "examples.txt") << "hello there, a short example of the task";
  EXPECT_EQ(run_emo("select " + run + " --examples " + m.dir / "examples.txt" + " --keep-k 4 -o " +
                    m.dir / "subset.json")
                .status,
            0);
  EXPECT_EQ(run_emo("prune " + run + " --subset " + m.dir / "subset.json" + " -o " + m.dir / "pruned").status,
            0);
  const test::EmoRun missing = run_emo("generate " + m.dir / "nothing" + " --prompt hello");
  EXPECT_EQ(missing.status, 1);
  EXPECT_NE(missing.err.find("no such file or directory"), std::string::npos) << missing.err;
}

// ------------------------------------------------------------------------------------------ the basics

TEST(CliBasics, NoArgumentsPrintTheHelpAndExitOne) {
  const test::EmoRun run = run_emo("");
  EXPECT_EQ(run.status, 1);  // as git: no command ran
  EXPECT_NE(run.out.find("generate"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("--threads"), std::string::npos) << run.out;
}

TEST(CliBasics, TokenizerEncodeReadsStdinWithoutText) {
  const std::string tok = " tokenizer encode -t " + test::kTrainedTokenizer;
  const test::EmoRun given = run_emo(tok + " --text " + quoted("hello world, again"));
  ASSERT_EQ(given.status, 0) << given.err;
  EXPECT_FALSE(given.out.empty());
  EXPECT_EQ(run_emo_env("", tok, std::string("hello world, again")).out, given.out);
  EXPECT_EQ(run_emo_env("", tok + " --file -", std::string("hello world, again")).out, given.out);
}

// ------------------------------------------------------------------------------------------ eval

// A one-domain ("text") dataset of the tiny model's tokenizer.
std::string write_dataset(const TinyModel& m) {
  std::ofstream text(m.dir / "heldout.txt");
  for (int i = 0; i < 40; ++i) text << "the quick brown fox jumps over the lazy dog " << i << ". ";
  text.close();
  write_text_dataset(m.dir / "heldout.txt", Tokenizer::load(test::kTrainedTokenizer), m.dir / "heldout.bin");
  return m.dir / "heldout.bin";
}

TEST(CliEval, MaxTokensScoresExactlyThatManyAndJsonGoesToStdout) {
  TinyModel m;
  const std::string data = write_dataset(m);
  for (int64_t n : {37, 100, 129}) {
    const test::EmoRun run = run_emo("eval " + m.model + " --data " + data + " --seq-len 32 --max-tokens " +
                                     std::to_string(n) + " --json -");
    ASSERT_EQ(run.status, 0) << run.err;
    const json j = parse(run.out);  // the table went to stderr
    EXPECT_EQ(j["perplexity"][0]["domain"], "text");
    EXPECT_EQ(j["perplexity"][0]["tokens"], n);
    EXPECT_NE(run.err.find("perplexity"), std::string::npos) << run.err;
  }
}

// ------------------------------------------------------------------------------------------ sweep, analyze

TEST(CliSweep, ModelsGoByShortNamesAndAnInt8CheckpointIsSweptToo) {
  TinyModel m;
  const std::string data = write_dataset(m);
  const test::EmoRun q = run_emo("quantize " + m.model + " --dtype int8 --skip-eval -o " + m.dir / "q8");
  ASSERT_EQ(q.status, 0) << q.err;
  const std::string sweep = "sweep " + m.model + " " + m.dir / "q8" + " --data " + data +
                            " --keep-k 4 --seq-len 32 --max-tokens 64 -o " + m.dir / "sweep";
  const test::EmoRun run = run_emo(sweep);
  ASSERT_EQ(run.status, 0) << run.err;
  const std::string md = slurp(m.dir / "sweep/results.md");
  EXPECT_EQ(md.find("| model | method | domain | k=4 (40.0%) | k=10 (100.0%) |\n"), 0u) << md;
  EXPECT_NE(md.find("| model | layerwise | text | "), std::string::npos) << md;
  EXPECT_NE(md.find("| q8 | layerwise | **mean** | "), std::string::npos) << md;
  EXPECT_NE(slurp(m.dir / "sweep/quality.svg").find("q8 / layerwise"), std::string::npos);

  const test::EmoRun named = run_emo(sweep + " --force --names fp32,int8");  // replaces its own output
  ASSERT_EQ(named.status, 0) << named.err;
  EXPECT_NE(slurp(m.dir / "sweep/results.md").find("| int8 | layerwise | text | "), std::string::npos);
  const test::EmoRun short_list = run_emo(sweep + " --force --names fp32");
  EXPECT_EQ(short_list.status, 1);
  EXPECT_NE(short_list.err.find("--names lists 1 names for 2 models"), std::string::npos) << short_list.err;
}

TEST(CliAnalyze, TheReportNamesTheModelByItsRun) {
  TinyModel m;
  const std::string data = write_dataset(m);
  const std::string run = fake_run(m);
  const std::string analyze = "analyze " + run + "/checkpoints/latest --data " + data +
                              " --max-tokens 300 --doc-tokens 32 --clusters 2 --restarts 1 --snippets 1 -o " +
                              m.dir / "report";
  const test::EmoRun by_run = run_emo(analyze);
  ASSERT_EQ(by_run.status, 0) << by_run.err;
  EXPECT_EQ(parse(slurp(m.dir / "report/analysis.json"))["models"][0]["name"], "run");
  const test::EmoRun named = run_emo(analyze + " --force --names tiny");  // replaces its own output
  ASSERT_EQ(named.status, 0) << named.err;
  EXPECT_EQ(parse(slurp(m.dir / "report/analysis.json"))["models"][0]["name"], "tiny");
}

// ------------------------------------------------------------------------------------------ subsets

// Model A, a second training of the same shapes (model B: other weights), a subset chosen on A and A pruned
// to it.
struct TwoModels {
  TempDir dir{"emo_cli_test_"};
  std::string a = dir / "a", b = dir / "b", subset = dir / "subset.json", pruned = dir / "pruned";
  TwoModels() {
    test::write_tiny_emo(a);
    test::write_tiny_emo(b, 12, 24'000, 300, 6);
    std::ofstream(dir / "examples.txt") << "hello there, a short example of the task";
    const test::EmoRun chosen =
        run_emo("select " + a + " --examples " + dir / "examples.txt" + " --keep-k 4 -o " + subset);
    EXPECT_EQ(chosen.status, 0) << chosen.err;
    const test::EmoRun cut = run_emo("prune " + a + " --subset " + subset + " -o " + pruned);
    EXPECT_EQ(cut.status, 0) << cut.err;
  }
};

TEST(CliSubset, ASubsetChosenOnAnotherCheckpointIsRefusedUnlessForced) {
  TwoModels m;
  const std::string data = m.dir / "heldout.bin";
  {
    std::ofstream(m.dir / "heldout.txt") << "the quick brown fox jumps over the lazy dog, again and again.";
    write_text_dataset(m.dir / "heldout.txt", Tokenizer::load(test::kTrainedTokenizer), data);
  }
  const std::vector<std::string> uses = {
      "eval " + m.b + " --data " + data + " --subset " + m.subset,
      "generate " + m.b + " --prompt hello -n 2 --subset " + m.subset,
      "prune " + m.b + " --subset " + m.subset + " -o " + m.dir / "pruned_b",
  };
  for (const std::string& use : uses) {
    const test::EmoRun refused = run_emo(use);
    EXPECT_EQ(refused.status, 1) << use;
    EXPECT_NE(refused.err.find(m.subset + ": chosen on another checkpoint (router fingerprint "),
              std::string::npos)
        << use << ": " << refused.err;
    EXPECT_NE(refused.err.find("give --force"), std::string::npos) << refused.err;
    const test::EmoRun forced = run_emo(use + " --force");
    EXPECT_EQ(forced.status, 0) << use << ": " << forced.err;
    EXPECT_NE(forced.err.find("used anyway (--force)"), std::string::npos) << forced.err;
  }
  // The same model in int8 is the same checkpoint for its subsets.
  const test::EmoRun q = run_emo("quantize " + m.a + " --dtype int8 --skip-eval -o " + m.dir / "a8");
  ASSERT_EQ(q.status, 0) << q.err;
  const test::EmoRun on_int8 = run_emo("eval " + m.dir / "a8" + " --data " + data + " --subset " + m.subset);
  EXPECT_EQ(on_int8.status, 0) << on_int8.err;
  EXPECT_EQ(on_int8.err.find("another checkpoint"), std::string::npos) << on_int8.err;

  // Another shape: the file's hidden size names both.
  json j = parse(slurp(m.subset));
  j["model"]["hidden_size"] = 32;
  std::ofstream(m.dir / "wide.json") << j.dump();
  const test::EmoRun wide = run_emo("eval " + m.a + " --data " + data + " --subset " + m.dir / "wide.json");
  EXPECT_EQ(wide.status, 1);
  EXPECT_NE(wide.err.find("chosen on a model of hidden size 32, " + m.a + " has 16"), std::string::npos)
      << wide.err;
}

TEST(CliSubset, FinetuneReadsContextAnswerLinesAndMergeRefusesAnotherParent) {
  TwoModels m;
  std::ofstream(m.dir / "task.jsonl")
      << "{\"context\": \"The capital of Italy is\", \"answer\": \" Rome\"}\n"
      << "{\"context\": \"The capital of France is\", \"answer\": \" Paris\"}\n";
  const test::EmoRun tuned =
      run_emo("finetune " + m.pruned + " --examples " + m.dir / "task.jsonl" + " -o " + m.dir / "tuned");
  ASSERT_EQ(tuned.status, 0) << tuned.err;
  EXPECT_NE(tuned.out.find("on 2 examples"), std::string::npos) << tuned.out;

  const test::EmoRun wrong = run_emo("merge " + m.b + " " + m.dir / "tuned" + " -o " + m.dir / "merged_b");
  EXPECT_EQ(wrong.status, 1);
  EXPECT_NE(wrong.err.find("the pruned model was made from another checkpoint"), std::string::npos)
      << wrong.err;
  EXPECT_NE(wrong.err.find("than the parent " + m.b), std::string::npos) << wrong.err;
  EXPECT_FALSE(fs::exists(m.dir / "merged_b"));
  const test::EmoRun right = run_emo("merge " + m.a + " " + m.dir / "tuned" + " -o " + m.dir / "merged");
  EXPECT_EQ(right.status, 0) << right.err;
}

TEST(OutputGuard, FinetuneRefusesForeignOutputsAndItsInputAndReplacesOnlyItsOwnWithForce) {
  TwoModels m;
  std::ofstream(m.dir / "task.jsonl")
      << "{\"context\": \"The capital of Italy is\", \"answer\": \" Rome\"}\n";
  fs::create_directories(m.dir / "foreign");
  std::ofstream(m.dir / "foreign/notes.txt") << "the user's";
  const std::string finetune = "finetune " + m.pruned + " --examples " + m.dir / "task.jsonl" + " -o ";
  const std::string pruned_weights = slurp(m.pruned + "/model.safetensors");
  for (const auto& [out, why] : std::vector<std::pair<std::string, std::string>>{
           {m.dir / "foreign", "not written by emo"},
           {m.dir / "foreign --force", "not written by emo"},
           {m.dir / "task.jsonl", "is the input"},
           {m.pruned, "is the input"},
           {m.pruned + "/tuned", "lies inside the input"},
       }) {
    const test::EmoRun refused = run_emo(finetune + out);
    EXPECT_EQ(refused.status, 1) << out;
    EXPECT_NE(refused.err.find(why), std::string::npos) << out << ": " << refused.err;
    EXPECT_EQ(refused.out.find("fine-tuned"), std::string::npos) << "refused after the training: " << out;
  }
  EXPECT_EQ(slurp(m.dir / "foreign/notes.txt"), "the user's");
  EXPECT_TRUE(slurp(m.pruned + "/model.safetensors") == pruned_weights);

  ASSERT_EQ(run_emo(finetune + m.dir / "tuned").status, 0);
  EXPECT_TRUE(fs::exists(m.dir / "tuned/pruning_metadata.json"));
  const test::EmoRun again = run_emo(finetune + m.dir / "tuned");
  EXPECT_EQ(again.status, 1);
  EXPECT_NE(again.err.find("holds a previous output of 'emo finetune': give --force"), std::string::npos)
      << again.err;
  const test::EmoRun forced = run_emo(finetune + m.dir / "tuned --force");
  EXPECT_EQ(forced.status, 0) << forced.err;
}

// The JSON files a command writes (select's subset, the --json reports of generate, eval and info) replace
// only a file of the same kind emo wrote, and only with --force; an input is never overwritten.
TEST(OutputGuard, JsonOutputsReplaceOnlyTheirOwnFileWithForce) {
  TinyModel m;
  std::ofstream(m.dir / "examples.txt") << "hello there, a short example of the task";
  std::ofstream(m.dir / "notes.json") << "{\"the user's\": true}";
  fs::create_directories(m.dir / "a_directory");
  fs::create_directories(m.dir / "foreign");
  std::ofstream(m.dir / "foreign/notes.txt") << "the user's";
  const std::string select =
      "select " + m.model + " --examples " + m.dir / "examples.txt" + " --keep-k 4 -o ";
  const std::string generate = m.generate("--prompt hi -n 2 --json ");
  const std::string eval = "eval " + m.model + " --json ";
  const std::string info = "info " + m.model + " --json ";
  const std::string config = m.model + "/config.json", examples = m.dir / "examples.txt";
  const std::string before = test::tree_bytes(m.dir.path);
  for (const auto& [args, why] : std::vector<std::pair<std::string, std::string>>{
           {select + examples, "is the input"},
           {select + m.dir / "notes.json", "was not written by 'emo select'"},
           {select + m.dir / "notes.json --force", "was not written by 'emo select'"},
           {select + config, "was not written by 'emo select'"},
           {generate + config, "was not written by 'emo generate'"},
           {eval + config, "was not written by 'emo eval'"},
           {info + m.dir / "notes.json", "was not written by 'emo info'"},
           {info + m.dir / "a_directory", "exists and is not a regular file"},
           // eval --save-tasks writes into a directory of emo's own only.
           {"eval " + m.model + " --data " + m.dir / "none.bin --save-tasks " + m.dir.path.string(),
            "contains the input"},
           {"eval " + m.model + " --data " + m.dir / "none.bin --save-tasks " + m.dir / "foreign",
            "not written by emo"},
       }) {
    const test::EmoRun refused = run_emo(args);
    EXPECT_EQ(refused.status, 1) << args;
    EXPECT_NE(refused.err.find(why), std::string::npos) << args << ": " << refused.err;
  }
  EXPECT_TRUE(test::tree_bytes(m.dir.path) == before) << "a refused command changed what it found";

  for (const std::string& command : {select, generate, info}) {
    const std::string out = m.dir / "out.json";
    fs::remove(out);
    ASSERT_EQ(run_emo(command + out).status, 0) << command;
    const test::EmoRun again = run_emo(command + out);
    EXPECT_EQ(again.status, 1) << command;
    EXPECT_NE(again.err.find("holds a previous output of 'emo "), std::string::npos) << again.err;
    EXPECT_NE(again.err.find("give --force"), std::string::npos) << again.err;
    const test::EmoRun forced = run_emo(command + out + " --force");
    EXPECT_EQ(forced.status, 0) << command << ": " << forced.err;
    // Another command's JSON is not this one's to replace.
    if (command != info) {
      const test::EmoRun other = run_emo(info + out + " --force");
      EXPECT_EQ(other.status, 1) << command;
      EXPECT_NE(other.err.find("was not written by 'emo info'"), std::string::npos) << other.err;
    }
  }
}

// ------------------------------------------------------------------------------------------ train

TEST(CliTrain, TokenizerOptionSizesTheModelAndALongWarmupIsWarned) {
  TempDir dir("emo_cli_test_");
  const test::EmoRun run = run_emo(
      "--threads 1 train --no-progress --out " + dir / "run" + " --data synthetic --tokenizer " +
      test::kTrainedTokenizer +
      " --steps 3 model.d=32 model.layers=2 model.heads=2 model.kv_heads=1 model.experts=8 model.top_k=3"
      " model.expert_width=32 batch.row_length=32 batch.micro_batch_rows=2 batch.global_batch_rows=4"
      " run.validate_every=0");
  ASSERT_EQ(run.status, 0) << run.err;
  EXPECT_NE(run.err.find("schedule.warmup_steps 2000 exceeds the run's 3 steps"), std::string::npos)
      << run.err;
  const std::string checkpoint = dir / "run/checkpoints/step-00000003";
  EXPECT_EQ(parse(slurp(checkpoint + "/config.json"))["vocab_size"], 384);  // 300 rounded up to 128s
  EXPECT_TRUE(fs::exists(checkpoint + "/tokenizer.json"));
  EXPECT_EQ(run.err.find("router collapse"), std::string::npos) << run.err;  // 3 steps: no window yet
}

}  // namespace
}  // namespace emo
