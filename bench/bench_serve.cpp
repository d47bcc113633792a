// The cost of serving: completions through `emo serve`'s engine and HTTP (loopback, one client, greedy,
// non-streaming) against the same prompts decoded directly with generate() in the same run, as tokens/s of
// prompt + generation, and the ratio. A second figure: a conversation's second turn with the KV cache of the
// first reused, against the same request after a switch of experts (fresh prefill).
// Model: the scaled released shape (d 256, L 8, H 4, E 64 with 1 shared, K 8, f 128, context 1024) with the
// tests' 300-token tokenizer, randomly initialised, written to a temp dir.
//   bench_serve [--requests N] [--tokens T]
// Ends with one JSON line.
#include <httplib.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "core/log.h"
#include "core/thread_pool.h"
#include "infer/generate.h"
#include "model/model.h"
#include "scaled_model.h"
#include "serve/server.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kTokenizer = std::string(EMO_SOURCE_DIR) + "/fuzz/corpus/tokenizer_json/trained300.json";

std::string prompt_text(int i) {
  std::string text = "Request " + std::to_string(i) + ": ";
  for (int k = 0; k < 24; ++k) text += "the quick brown fox " + std::to_string(i * 31 + k) + " ";
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  int requests = 4;
  int64_t tokens = 64;
  for (int i = 1; i + 1 < argc; ++i) {
    if (!std::strcmp(argv[i], "--requests")) requests = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--tokens")) tokens = std::atoll(argv[i + 1]);
  }
  emo::ModelConfig config = emo::bench::scaled_released_config();
  config.vocab_size = 300;
  config.eos_token_id = 298;
  config.pad_token_id = 299;
  const fs::path dir = fs::temp_directory_path() / ("emo_bench_serve_" + std::to_string(getpid()));
  fs::create_directories(dir);
  {
    emo::Model model(config);
    model.init_weights(3);
    model.save(dir.string());
  }
  fs::copy_file(kTokenizer, dir / "tokenizer.json");
  const emo::Tokenizer tokenizer = emo::Tokenizer::load(kTokenizer);

  // Direct: generate() with a fresh decoder per prompt, no EOS (every request runs `tokens` tokens).
  auto weights = emo::InferWeights::open(dir.string());
  int64_t direct_tokens = 0;
  emo::Timer direct_timer;
  for (int i = 0; i < requests; ++i) {
    const std::vector<int32_t> prompt = tokenizer.encode(prompt_text(i));
    emo::Decoder decoder(*weights, config.max_position_embeddings);
    emo::GenerateOptions options;
    options.max_new_tokens = tokens;
    emo::GenerateResult r = emo::generate(decoder, prompt, options);
    direct_tokens += r.prompt_tokens + static_cast<int64_t>(r.tokens.size());
  }
  const double direct_seconds = direct_timer.seconds();
  weights.reset();

  // Served: the same prompts over loopback HTTP. EOS may end a reply early: rates count what ran.
  emo::serve::Engine engine(emo::InferWeights::open(dir.string()), tokenizer, {});
  emo::serve::ServerOptions server_options;
  server_options.port = 0;
  emo::serve::Server server(engine, server_options);
  const int port = server.bind();
  std::thread listener([&] { server.listen(); });
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(600, 0);
  auto post = [&](const json& body) {
    auto res = client.Post("/v1/completions", body.dump(), "application/json");
    if (!res || res->status != 200) {
      std::fprintf(stderr, "bench_serve: request failed: %s\n", res ? res->body.c_str() : "no response");
      std::exit(1);
    }
    return json::parse(res->body);
  };
  int64_t served_tokens = 0;
  emo::Timer served_timer;
  for (int i = 0; i < requests; ++i) {
    const json r = post({{"prompt", prompt_text(i)}, {"max_tokens", tokens}, {"temperature", 0}});
    served_tokens += r["usage"]["total_tokens"].get<int64_t>();
  }
  const double served_seconds = served_timer.seconds();

  // Second turn: the first turn's text + a new question, after the first turn (cache reused) and after a
  // request on other experts in between (fresh prefill).
  const json first = post({{"prompt", prompt_text(100)}, {"max_tokens", tokens}, {"temperature", 0}});
  const std::string second_prompt =
      prompt_text(100) + first["choices"][0]["text"].get<std::string>() + " and then";
  const json second_body = {{"prompt", second_prompt}, {"max_tokens", 1}, {"temperature", 0}};
  emo::Timer reuse_timer;
  const json reused = post(second_body);
  const double reuse_seconds = reuse_timer.seconds();
  post({{"prompt", "x"}, {"max_tokens", 1}, {"experts", {{"keep_k", 8}}}});
  emo::Timer fresh_timer;
  const json fresh = post(second_body);
  const double fresh_seconds = fresh_timer.seconds();
  server.stop();
  listener.join();
  fs::remove_all(dir);

  const double direct_rate = static_cast<double>(direct_tokens) / direct_seconds;
  const double served_rate = static_cast<double>(served_tokens) / served_seconds;
  std::printf("%d requests of ~%lld prompt + %lld tokens, %d threads\n", requests,
              static_cast<long long>(tokenizer.encode(prompt_text(0)).size()), static_cast<long long>(tokens),
              emo::num_threads());
  std::printf("direct generate(): %8.1f tok/s\nemo serve (HTTP):  %8.1f tok/s   ratio %.3f\n", direct_rate,
              served_rate, served_rate / direct_rate);
  std::printf(
      "second turn (%lld prompt tokens): cache reused (%lld cached) %.1f ms, fresh prefill %.1f ms, "
      "speed-up %.2fx\n",
      static_cast<long long>(reused["usage"]["prompt_tokens"].get<int64_t>()),
      static_cast<long long>(reused["usage"]["prompt_tokens_details"]["cached_tokens"].get<int64_t>()),
      reuse_seconds * 1e3, fresh_seconds * 1e3, fresh_seconds / reuse_seconds);
  json summary = {{"bench", "serve"},
                  {"threads", emo::num_threads()},
                  {"requests", requests},
                  {"direct_tokens_per_second", direct_rate},
                  {"served_tokens_per_second", served_rate},
                  {"served_over_direct", served_rate / direct_rate},
                  {"second_turn_prompt_tokens", reused["usage"]["prompt_tokens"]},
                  {"second_turn_cached_tokens", reused["usage"]["prompt_tokens_details"]["cached_tokens"]},
                  {"second_turn_reused_ms", reuse_seconds * 1e3},
                  {"second_turn_fresh_ms", fresh_seconds * 1e3},
                  {"fresh_cached_tokens", fresh["usage"]["prompt_tokens_details"]["cached_tokens"]}};
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}
