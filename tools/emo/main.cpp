// emo: the command line. Dispatches to the registered subcommands (cmd_*.cpp) and turns emo::Error into a
// clear message and a non-zero exit.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <memory>

#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "core/thread_pool.h"
#include "model/weights_check.h"

namespace emo::cli {

std::vector<CommandInfo>& command_registry() {
  static std::vector<CommandInfo> registry;
  return registry;
}

}  // namespace emo::cli

int main(int argc, char** argv) {
  using namespace emo;
  CLI::App app{"emo: Mixture-of-Experts language models with emergent modularity (EMO) on the CPU"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "emo 0.1.0");
  int threads = 0;
  bool verbose = false;
  // 0 and negative counts are refused rather than read as "all cores": leaving the option out is the way to
  // ask for the default.
  app.add_option(
         "--threads", threads,
         "Worker threads, at least 1; above 4x the hardware threads (at least 16) it is clamped with a "
         "warning (default: EMO_THREADS or all hardware threads)")
      ->check(CLI::Range(1, 1 << 30));
  bool allow_nonfinite = false;
  app.add_flag("--allow-nonfinite", allow_nonfinite,
               "Load weights that hold NaN or infinity (refused by default, naming the tensor and element)");
  app.add_flag("-v,--verbose", verbose, "Debug logging");

  auto& registry = cli::command_registry();
  std::sort(registry.begin(), registry.end(), [](auto& a, auto& b) { return a.name < b.name; });
  std::vector<std::function<int()>> runners(registry.size());
  std::vector<CLI::App*> subs;
  for (size_t i = 0; i < registry.size(); ++i) {
    CLI::App* sub = app.add_subcommand(registry[i].name, registry[i].description);
    runners[i] = registry[i].setup(*sub);
    subs.push_back(sub);
  }
  // Like git: no arguments at all print the help (on stdout) and exit 1, since no command ran.
  if (argc <= 1) {
    std::printf("%s", app.help().c_str());
    return 1;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 prints the message naming the option; a bad command line exits 1 like every other bad input
    // (CLI11's own codes are 100+), --help and --version 0.
    return app.exit(e) == 0 ? 0 : 1;
  }
  if (verbose) set_log_level(LogLevel::kDebug);
  set_allow_nonfinite_weights(allow_nonfinite);
  try {
    if (threads > 0)
      set_num_threads(threads);
    else
      num_threads();  // starts the pool now, so that a bad EMO_THREADS is reported before the work
    for (size_t i = 0; i < subs.size(); ++i)
      if (subs[i]->parsed()) return runners[i]();
  } catch (const Interrupted& e) {
    std::fprintf(stderr, "emo: stopped: %s\n", e.what());
    return e.exit_status();
  } catch (const Error& e) {
    std::fprintf(stderr, "emo: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "emo: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
