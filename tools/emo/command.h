// Subcommand registry of the `emo` command line. Each subcommand lives in its own cmd_<name>.cpp and
// registers itself with a static EMO_COMMAND(...) object; main.cpp knows none of them by name.
// Subcommands only parse arguments and call the library: no logic of their own.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace emo::cli {

// Adds options to `app` and returns the function that runs the command once the options are parsed
// (it returns the process exit code).
using CommandSetup = std::function<std::function<int()>(CLI::App& app)>;

struct CommandInfo {
  std::string name, description;
  CommandSetup setup;
};

std::vector<CommandInfo>& command_registry();

// Bounds of the numeric options, declared beside each option with ->check(in_range(lo, hi)).
inline constexpr double kManyTokens = 1e15;  // more tokens than any corpus or run: the bound of token counts
inline constexpr double kManyItems = 1e9;    // questions, examples, documents, clusters, snippets, epochs
inline constexpr double kMaxSeed = 18446744073709551615.0;  // 2^64 - 1

// A value outside [lo, hi], NaN, or not a number at all is refused by the command line before the command
// runs: "--seq-len: Value 0 not in range 1 to 16777216", exit 1. (CLI::Range lets NaN through.)
// `above_lo`: lo itself is excluded ("0 (excluded) to 1").
inline CLI::Validator in_range(double lo, double hi, bool above_lo = false) {
  auto text = [](double v) {
    std::ostringstream out;
    out.precision(15);
    out << v;
    return out.str();
  };
  const std::string bounds = text(lo) + (above_lo ? " (excluded)" : "") + " to " + text(hi);
  return CLI::Validator(
      [lo, hi, above_lo, bounds](std::string& input) -> std::string {
        char* end = nullptr;
        const long double value = std::strtold(input.c_str(), &end);
        const bool number = !input.empty() && end == input.c_str() + input.size();
        if (number && (above_lo ? value > lo : value >= lo) && value <= hi) return {};
        return "Value " + input + " not in range " + bounds;
      },
      "[" + bounds + "]");
}

// The MODEL argument of every command that reads a model: `what` names the model it wants; a run directory
// or its checkpoints/latest is accepted too (the command resolves it with emo::resolve_model_dir).
inline CLI::Option* add_model_argument(
    CLI::App& app, std::string& model,
    const std::string& what = "Model directory (config.json + safetensors") {
  return app.add_option("model", model, what + ", a run directory or checkpoints/latest)");
}

// --tokenizer of the commands that find the tokenizer beside the model by default; `use` says what for.
inline CLI::Option* add_tokenizer_option(CLI::App& app, std::string& path, const std::string& use = "") {
  return app.add_option("--tokenizer", path, "tokenizer.json" + use + " (default: MODEL/tokenizer.json)");
}

struct CommandRegistrar {
  CommandRegistrar(std::string name, std::string description, CommandSetup setup) {
    command_registry().push_back({std::move(name), std::move(description), std::move(setup)});
  }
};

}  // namespace emo::cli

#define EMO_CONCAT_INNER(a, b) a##b
#define EMO_CONCAT(a, b) EMO_CONCAT_INNER(a, b)
// EMO_COMMAND("train", "Pretrain a model", [](CLI::App& app) { ...; return [=] { ...; return 0; }; });
#define EMO_COMMAND(name, description, setup) \
  static ::emo::cli::CommandRegistrar EMO_CONCAT(emo_command_, __LINE__)(name, description, setup)
