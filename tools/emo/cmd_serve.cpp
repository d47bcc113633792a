// `emo serve MODEL`: an OpenAI-compatible HTTP server where each conversation runs on its own experts
// (docs/serve.md).
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <thread>

#include "command.h"
#include "core/error.h"
#include "core/log.h"
#include "infer/model_files.h"
#include "serve/server.h"

namespace {

namespace fs = std::filesystem;

int signal_pipe[2] = {-1, -1};

void on_signal(int signal) {
  const unsigned char byte = static_cast<unsigned char>(signal);
  ssize_t written = write(signal_pipe[1], &byte, 1);  // async-signal-safe
  (void)written;
}

std::function<int()> setup_serve(CLI::App& app) {
  struct Options {
    std::string model, tokenizer, model_name, memory_budget;
    std::vector<std::string> packs;
    int64_t timeout = 600, max_body = 4 << 20;
    size_t max_queue = 64;
    emo::serve::EngineOptions engine;
    emo::serve::ServerOptions server;
  };
  auto o = std::make_shared<Options>();
  emo::cli::add_model_argument(app, o->model)->required();
  app.add_option("--host", o->server.host, "Address to listen on")->capture_default_str();
  app.add_option("--port", o->server.port, "Port to listen on (0: any free port)")
      ->capture_default_str()
      ->check(emo::cli::in_range(0, 65535));
  app.add_option("--api-key", o->server.api_key, "Require 'Authorization: Bearer KEY' on /v1/*");
  app.add_option("--chat-template", o->engine.chat_template,
                 "plain, chatml, or a template file (docs/serve.md)")
      ->capture_default_str();
  app.add_option("--pack", o->packs, "NAME=subset.json: an expert subset requests name with \"experts\"");
  app.add_option("--keep-k", o->engine.keep_k,
                 "Experts per layer a request chooses from its prompt by default (0: all experts)")
      ->capture_default_str()
      ->check(emo::cli::in_range(1, 1 << 20));
  app.add_option("--model-name", o->model_name,
                 "The model id /v1/models reports (default: the directory name)");
  emo::cli::add_tokenizer_option(app, o->tokenizer);
  app.add_option("--memory-budget", o->memory_budget,
                 "Most memory the experts held at once may take: 2GiB, 512MiB, bytes (default: no limit)");
  app.add_option("--timeout", o->timeout, "Seconds a request may run")
      ->capture_default_str()
      ->check(emo::cli::in_range(1, 1e9));
  app.add_option("--max-body", o->max_body, "Largest request body in bytes")
      ->capture_default_str()
      ->check(emo::cli::in_range(1, int64_t{1} << 40));
  app.add_option("--parallel", o->engine.parallel,
                 "Requests decoded together, each in a slot with its own KV cache (1: one at a time)")
      ->capture_default_str()
      ->check(emo::cli::in_range(1, 256));
  app.add_option("--prefill-chunk", o->engine.prefill_chunk,
                 "Prompt tokens prefilled per step between the running streams' tokens")
      ->capture_default_str()
      ->check(emo::cli::in_range(1, 1 << 20));
  app.add_option("--max-queue", o->max_queue, "Requests waiting beyond this get a 503")
      ->capture_default_str()
      ->check(emo::cli::in_range(1, emo::cli::kManyItems));
  return [o] {
    for (const std::string& p : o->packs) {
      const size_t eq = p.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == p.size())
        emo::fail("serve", "--pack " + p + ": expected NAME=subset.json");
      o->engine.packs[p.substr(0, eq)] = p.substr(eq + 1);
    }
    EMO_CHECK(o->timeout > 0 && o->max_body > 0 && o->max_queue > 0, "serve",
              "--timeout, --max-body and --max-queue must be positive");
    o->engine.max_queue = o->max_queue;
    if (!o->memory_budget.empty()) {
      o->engine.memory_budget = emo::parse_bytes(o->memory_budget, "--memory-budget");
      EMO_CHECK(o->engine.memory_budget > 0, "serve", "--memory-budget ", o->memory_budget,
                ": must be positive");
    }
    o->server.request_timeout = std::chrono::seconds(o->timeout);
    o->server.max_body_bytes = static_cast<size_t>(o->max_body);
    o->server.model_name =
        o->model_name.empty() ? fs::path(o->model).lexically_normal().filename().string() : o->model_name;
    if (o->server.model_name.empty()) o->server.model_name = "emo";

    // SIGTERM / SIGINT may reach any thread (the thread pool's predate this command): the handler only
    // writes the signal to a pipe, and one thread reads it and stops the server.
    EMO_CHECK(pipe(signal_pipe) == 0, "serve", "cannot create a pipe");
    struct sigaction action = {};
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, nullptr);
    sigaction(SIGINT, &action, nullptr);

    const std::string model_dir = emo::resolve_model_dir(o->model, "serve");
    auto weights = emo::InferWeights::open(model_dir);
    const emo::ModelConfig config = weights->config();
    for (const auto& [name, path] : o->engine.packs)
      emo::ExpertSubset::load(path, config).check_source(model_dir, config, path, false, "serve");
    emo::Tokenizer tokenizer = emo::load_tokenizer_for(model_dir, o->tokenizer, config.vocab_size, "serve");
    emo::serve::Engine engine(std::move(weights), std::move(tokenizer), o->engine);
    emo::serve::Server server(engine, o->server);
    const int port = server.bind();
    std::printf("emo serve: listening on http://%s:%d (model %s, template %s)\n", o->server.host.c_str(),
                port, o->server.model_name.c_str(), engine.chat_template().name.c_str());
    std::fflush(stdout);

    std::thread waiter([&] {
      unsigned char signal = 0;
      while (read(signal_pipe[0], &signal, 1) < 0 && errno == EINTR) {
      }
      emo::log_info(
          emo::cat("serve: signal ", signal, ": refusing new requests, finishing the running ones"));
      engine.stop_accepting();
      const auto deadline = std::chrono::steady_clock::now() + o->server.request_timeout;
      while (!engine.idle() && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      server.stop();
    });
    server.listen();
    waiter.join();
    emo::log_info(emo::cat("serve: stopped after ", server.requests_served(), " requests"));
    return 0;
  };
}

EMO_COMMAND("serve", "OpenAI-compatible HTTP server; each conversation runs on its own experts", setup_serve);

}  // namespace
