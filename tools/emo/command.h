// Subcommand registry of the `emo` command line. Each subcommand lives in its own cmd_<name>.cpp and
// registers itself with a static EMO_COMMAND(...) object; main.cpp knows none of them by name.
// Subcommands only parse arguments and call the library: no logic of their own.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
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
