// The command line itself: every numeric option declares its range, and a value outside it (0, negative,
// huge, NaN, not a number) is refused before the command runs, exit 1, naming the option.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "run_emo.h"

namespace emo {
namespace {

// One numeric option: the command line before it (required arguments given, inputs that do not exist: a
// refused value stops the command before they are looked at), its name, the values it refuses and one it
// takes ("": not run, since the command would fetch from the network with it).
struct NumericOption {
  std::string command, option;
  std::vector<std::string> refused;
  std::string taken;
};

const std::string kModel = "/nonexistent-model-dir";

// Outputs a command given a value in range might create before it finds its inputs missing.
std::string scratch() {
  return (std::filesystem::temp_directory_path() / ("emo_cli_test_" + std::to_string(::getpid()))).string();
}

std::vector<NumericOption> numeric_options() {
  const std::string out = scratch() + "/out";
  const std::string analyze = "analyze " + kModel + " --data x.bin -o " + out;
  const std::string eval = "eval " + kModel, quantize = "quantize " + kModel + " --dtype int8 -o " + out;
  const std::string finetune = "finetune " + kModel + " --examples x.jsonl -o " + out;
  const std::string generate = "generate " + kModel + " --prompt hi";
  const std::string select = "select " + kModel + " --examples x.txt --keep-k 2 -o " + out + ".json";
  const std::string serve = "serve " + kModel;
  const std::string sweep = "sweep " + kModel + " --data x.bin --keep-k 2 -o " + out;
  const std::string tokenizer = "tokenizer train --corpus x.txt -o " + out;
  const std::string train = "train --out " + out + " --data x.bin";
  const std::vector<std::string> positive = {"0", "-5", "1e30", "nan", "lots"};
  const std::vector<std::string> count = {"-1", "1e30", "nan", "lots"};  // 0 means "all" or "none"
  const std::vector<std::string> share = {"0", "-0.5", "1.5", "nan"};    // in (0, 1]
  const std::vector<std::string> seed = {"-1", "1e30", "nan"};
  return {
      {analyze, "--max-tokens", positive, "100"},
      {analyze, "--doc-tokens", positive, "100"},
      {analyze, "--clusters", positive, "4"},
      {analyze, "--pca-variance", share, "0.9"},
      {analyze, "--restarts", positive, "2"},
      {analyze, "--coverage", share, "0.5"},
      {analyze, "--snippets", count, "0"},
      {analyze, "--snippet-context", count, "0"},
      {analyze, "--seed", seed, "7"},
      {analyze, "--batch-rows", positive, "2"},
      {"corpus build --out " + out, "--max-bytes-per-domain", count, ""},
      {eval, "--seq-len", positive, "64"},
      {eval, "--batch-rows", positive, "2"},
      {eval, "--max-tokens", count, "0"},
      {eval, "--builtin-mc", count, "0"},
      {eval, "--limit", count, "0"},
      {eval, "--seed", seed, "7"},
      {quantize, "--seq-len", positive, "64"},
      {quantize, "--max-tokens", count, "0"},
      {finetune, "--epochs", positive, "1"},
      {finetune, "--lr", share, "0.001"},
      {finetune, "--batch", positive, "4"},
      {finetune, "--seed", seed, "7"},
      {generate, "--max-new-tokens", {"-1", "1e30", "nan"}, "0"},
      {generate, "--temperature", {"-0.5", "1e30", "nan"}, "0"},
      {generate, "--top-k", count, "0"},
      {generate, "--top-p", share, "1"},
      {generate, "--seed", seed, "7"},
      {generate, "--keep-k", positive, "2"},
      {generate, "--auto-experts", positive, "2"},
      {"info " + kModel, "--keep-k", positive, "2"},
      {"pull org/repo -o " + out, "--keep-k", positive, ""},
      {"pull org/repo -o " + out, "--parallel", {"0", "-1", "100000", "nan"}, ""},
      {"select " + kModel + " --examples x.txt -o " + out + ".json", "--keep-k", positive, "2"},
      {select, "--documents", positive, "1"},
      {select, "--seed", seed, "7"},
      {serve, "--port", {"-1", "65536", "nan"}, "0"},
      {serve, "--keep-k", positive, "2"},
      {serve, "--timeout", positive, "10"},
      {serve, "--max-body", positive, "1000"},
      {serve, "--max-queue", positive, "1"},
      {"sweep " + kModel + " --data x.bin -o " + out + "", "--keep-k", positive, "2"},
      {sweep, "--examples", positive, "1"},
      {sweep, "--seed", seed, "7"},
      {sweep, "--seq-len", positive, "64"},
      {sweep, "--max-tokens", count, "0"},
      {tokenizer, "--vocab-size", {"0", "-1", "257", "1e30", "nan"}, "300"},
      {tokenizer, "--min-frequency", positive, "2"},
      {train, "--steps", positive, "10"},
      {train, "--anneal-steps", positive, "10"},
      {"", "--threads", positive, "1"},
  };
}

TEST(CommandLine, EveryNumericOptionRefusesValuesOutsideItsRangeNamingIt) {
  for (const NumericOption& o : numeric_options()) {
    auto line = [&](const std::string& value) {
      // A global option goes before the subcommand.
      return o.command.empty() ? o.option + " " + value + " info " + kModel
                               : o.command + " " + o.option + " " + value;
    };
    for (const std::string& value : o.refused) {
      const test::EmoRun run = test::run_emo(line(value));
      EXPECT_EQ(run.status, 1) << line(value) << "\n" << run.err;
      EXPECT_NE(run.err.find(o.option), std::string::npos) << line(value) << "\n" << run.err;
      EXPECT_EQ(run.err.find("internal error"), std::string::npos) << line(value) << "\n" << run.err;
    }
    // A value in range gets past the command line: the command then fails on the missing inputs instead.
    if (o.taken.empty()) continue;
    const test::EmoRun taken = test::run_emo(line(o.taken));
    EXPECT_EQ(taken.err.find("not in range"), std::string::npos) << line(o.taken) << "\n" << taken.err;
    EXPECT_EQ(taken.err.find(o.option + ":"), std::string::npos) << line(o.taken) << "\n" << taken.err;
  }
  std::filesystem::remove_all(scratch());
}

TEST(CommandLine, TokenIdsToDecodeAreInRange) {
  for (const char* id : {"-1", "2147483648", "nan"}) {
    const test::EmoRun run = test::run_emo(std::string("tokenizer decode -t /nonexistent.json 1 ") + id);
    EXPECT_EQ(run.status, 1) << id << "\n" << run.err;
    EXPECT_NE(run.err.find("ids"), std::string::npos) << id << "\n" << run.err;
  }
}

}  // namespace
}  // namespace emo
