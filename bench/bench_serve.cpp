// The cost of serving and what continuous batching buys, over loopback HTTP against `emo serve`'s engine.
//   1. One stream: completions (greedy, non-streaming) against the same prompts decoded directly with
//      generate() in the same run, tokens/s of prompt + generation and the ratio; a conversation's second
//      turn with the first turn's KV cache reused against the same request in a fresh slot.
//   2. Several streams (--parallel 8): 1, 2, 4 and 8 concurrent clients, each streaming --requests
//      completions of --tokens tokens: aggregate generated tokens/s, time to first token and inter-token
//      latency (the gaps between a stream's chunks) p50 / p99, each row beside the single-stream row and
//      beside its bandwidth bound (streams x bandwidth / the bytes one step reads: the weights outside the
//      experts and, per layer, the experts the streams may use together), and the expert cache's hit rate;
//      (a) every stream on one pack, (b) 4 packs taken in turn under a --memory-budget holding 2 of them.
// Models: the reference model (the scaled released shape: d 256, L 8, H 4, E 64 with 1 shared, K 8, f 128,
// context 1024) and, unless --quick, a model of about 1.6 GB of fp32 weights (d 512, L 8, H 8, 64 experts of
// width 512, K 8), both with the tests' 300-token tokenizer and random weights (bench/scaled_model.h),
// written once into --dir. A
// pack keeps 16 of the 64 experts per layer (the packs are disjoint).
//   bench_serve [--quick] [--dir DIR] [--requests R] [--tokens T]
// Targets: 8 streams on one pack >= 4x the single-stream rate; 4 packs under the 2-pack budget >= 2x; p99
// inter-token latency at 8 streams <= 3x the single stream's. Ends with one JSON line.
#include <httplib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bandwidth.h"
#include "core/log.h"
#include "core/thread_pool.h"
#include "infer/generate.h"
#include "scaled_model.h"
#include "select/subset.h"
#include "serve/server.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

const std::string kTokenizer = std::string(EMO_SOURCE_DIR) + "/fuzz/corpus/tokenizer_json/trained300.json";
constexpr int kPacks = 4;
constexpr int64_t kPackKeep = 16;  // experts per layer a pack keeps, the shared one included
constexpr int kSlots = 8;

std::string prompt_text(int i) {
  std::string text = "Request " + std::to_string(i) + ": ";
  for (int k = 0; k < 24; ++k) text += "the quick brown fox " + std::to_string(i * 31 + k) + " ";
  return text;
}

// ~60 tokens: the streams' figures are of decoding, with a prefill that joins in one chunk.
std::string short_prompt(int i) {
  std::string text = "Request " + std::to_string(i) + ": ";
  for (int k = 0; k < 3; ++k) text += "the quick brown fox " + std::to_string(i * 31 + k) + " ";
  return text;
}

emo::ModelConfig with_tokenizer(emo::ModelConfig c) {
  c.vocab_size = 300;
  c.eos_token_id = 298;
  c.pad_token_id = 299;
  return c;
}

emo::ModelConfig big_config() {
  emo::ModelConfig c = emo::bench::scaled_released_config();
  c.hidden_size = 512;
  c.intermediate_size = 512;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 8;
  return with_tokenizer(c);
}

// Writes the model and its packs (pack<p>.json keeps routed experts 15p .. 15p+14 of every layer) once.
void ensure_model(const fs::path& dir, const emo::ModelConfig& config) {
  if (fs::exists(dir / "pack3.json")) return;
  emo::Timer t;
  const fs::path partial = dir.string() + ".partial";
  fs::remove_all(partial);
  emo::bench::write_random_fp32_checkpoint(partial.string(), config);
  fs::copy_file(kTokenizer, partial / "tokenizer.json");
  for (int p = 0; p < kPacks; ++p) {
    emo::ExpertSubset pack = emo::ExpertSubset::for_model(config, kPackKeep, "bench");
    for (auto& layer : pack.routed)
      for (int32_t e = 0; e < kPackKeep - 1; ++e)
        layer.push_back(static_cast<int32_t>(p * (kPackKeep - 1) + e));
    pack.finish();
    pack.save((partial / ("pack" + std::to_string(p) + ".json")).string());
  }
  fs::rename(partial, dir);
  std::printf("wrote %s in %.1f s\n", dir.c_str(), t.seconds());
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

struct Served {
  std::unique_ptr<emo::serve::Engine> engine;
  std::unique_ptr<emo::serve::Server> server;
  std::thread listener;
  int port = 0;
  Served(const fs::path& model, int64_t budget, int64_t parallel) {
    emo::serve::EngineOptions options;
    for (int p = 0; p < kPacks; ++p)
      options.packs["pack" + std::to_string(p)] = (model / ("pack" + std::to_string(p) + ".json")).string();
    options.memory_budget = budget;
    options.parallel = parallel;
    options.max_queue = 256;
    engine = std::make_unique<emo::serve::Engine>(emo::InferWeights::open(model.string()),
                                                  emo::Tokenizer::load(kTokenizer), options);
    emo::serve::ServerOptions server_options;
    server_options.port = 0;
    server = std::make_unique<emo::serve::Server>(*engine, server_options);
    port = server->bind();
    listener = std::thread([this] { server->listen(); });
  }
  ~Served() {
    server->stop();
    listener.join();
  }
  json post(const json& body) const {
    httplib::Client client("127.0.0.1", port);
    client.set_read_timeout(600, 0);
    auto res = client.Post("/v1/completions", body.dump(), "application/json");
    if (!res || res->status != 200) {
      std::fprintf(stderr, "bench_serve: request failed: %s\n", res ? res->body.c_str() : "no response");
      std::exit(1);
    }
    return json::parse(res->body);
  }
};

// One streamed completion: when its chunks arrived and how many tokens it generated.
struct StreamTimes {
  double first = 0;          // seconds from sending to the first chunk of text
  std::vector<double> gaps;  // seconds between consecutive chunks of text
  int64_t tokens = 0;
};

StreamTimes stream(int port, const json& body) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(600, 0);
  StreamTimes times;
  std::string pending;
  const auto sent = Clock::now();
  auto last = sent;
  bool any = false;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    pending.append(data, n);
    size_t end;
    while ((end = pending.find("\n\n")) != std::string::npos) {
      const std::string event = pending.substr(6, end - 6);  // after "data: "
      pending.erase(0, end + 2);
      if (event == "[DONE]") continue;
      const json chunk = json::parse(event);
      if (chunk.contains("usage") && !chunk["usage"].is_null())
        times.tokens = chunk["usage"]["completion_tokens"].get<int64_t>();
      if (chunk["choices"].empty() || chunk["choices"][0]["text"].get<std::string>().empty()) continue;
      const auto now = Clock::now();
      if (any)
        times.gaps.push_back(std::chrono::duration<double>(now - last).count());
      else
        times.first = std::chrono::duration<double>(now - sent).count();
      any = true;
      last = now;
    }
    return true;
  };
  httplib::Response res;
  httplib::Error error;
  if (!client.send(req, res, error) || res.status != 200) {
    std::fprintf(stderr, "bench_serve: a stream failed (%d)\n", res.status);
    std::exit(1);
  }
  return times;
}

struct Row {
  int streams = 0;
  double rate = 0, ttft_p50 = 0, ttft_p99 = 0, itl_p50 = 0, itl_p99 = 0, bound = 0, hit_rate = 0;
  double mean_batch = 0;
};

double gauge(const std::string& metrics, const std::string& name) {
  const size_t at = metrics.find("\nemo_" + name + " ");
  return at == std::string::npos ? 0 : std::stod(metrics.substr(at + name.size() + 6));
}

// `streams` clients, each streaming `requests` completions; client c's request r on pack (c + r) % packs.
Row run_streams(const Served& s, int streams, int requests, int64_t tokens, int packs, double bound) {
  httplib::Client probe("127.0.0.1", s.port);
  const emo::ExpertCacheStats before = s.engine->expert_cache_stats();
  const std::string metrics_before = probe.Get("/metrics")->body;
  std::vector<StreamTimes> all;
  std::mutex mutex;
  const auto start = Clock::now();
  std::vector<std::thread> clients;
  for (int c = 0; c < streams; ++c)
    clients.emplace_back([&, c] {
      for (int r = 0; r < requests; ++r) {
        const json body = {{"prompt", short_prompt(c * 100 + r)},
                           {"max_tokens", tokens},
                           {"temperature", 0},
                           {"stream", true},
                           {"stream_options", {{"include_usage", true}}},
                           {"experts", "pack" + std::to_string((c + r) % packs)}};
        StreamTimes t = stream(s.port, body);
        std::lock_guard lock(mutex);
        all.push_back(std::move(t));
      }
    });
  for (auto& c : clients) c.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const emo::ExpertCacheStats after = s.engine->expert_cache_stats();
  const std::string metrics_after = probe.Get("/metrics")->body;
  Row row;
  row.streams = streams;
  int64_t generated = 0;
  std::vector<double> firsts, gaps;
  for (const StreamTimes& t : all) {
    generated += t.tokens;
    firsts.push_back(t.first);
    gaps.insert(gaps.end(), t.gaps.begin(), t.gaps.end());
  }
  row.rate = static_cast<double>(generated) / seconds;
  row.ttft_p50 = percentile(firsts, 0.5) * 1e3;
  row.ttft_p99 = percentile(firsts, 0.99) * 1e3;
  row.itl_p50 = percentile(gaps, 0.5) * 1e3;
  row.itl_p99 = percentile(gaps, 0.99) * 1e3;
  row.bound = bound;
  const double hits = static_cast<double>(after.hits - before.hits);
  const double misses = static_cast<double>(after.misses - before.misses);
  row.hit_rate = hits + misses > 0 ? hits / (hits + misses) : 0;
  const double steps = gauge(metrics_after, "batch_steps_total") - gauge(metrics_before, "batch_steps_total");
  const double sequences =
      gauge(metrics_after, "batch_sequences_total") - gauge(metrics_before, "batch_sequences_total");
  row.mean_batch = steps > 0 ? sequences / steps : 0;
  return row;
}

json row_json(const Row& r, const Row& single) {
  return {{"streams", r.streams},
          {"tokens_per_second", r.rate},
          {"over_single", r.rate / single.rate},
          {"bound_tokens_per_second", r.bound},
          {"of_bound", r.rate / r.bound},
          {"ttft_ms_p50", r.ttft_p50},
          {"ttft_ms_p99", r.ttft_p99},
          {"itl_ms_p50", r.itl_p50},
          {"itl_ms_p99", r.itl_p99},
          {"itl_p99_over_single", r.itl_p99 / single.itl_p99},
          {"expert_cache_hit_rate", r.hit_rate},
          {"mean_batch", r.mean_batch}};
}

void print_rows(const char* title, const std::vector<Row>& rows, const Row& single) {
  std::printf("%s\n%8s %10s %8s %10s %7s %9s %9s %9s %9s %8s %6s %6s\n", title, "streams", "tok/s",
              "x single", "bound", "of bnd", "ttft p50", "ttft p99", "itl p50", "itl p99", "p99 x1", "hits",
              "batch");
  for (const Row& r : rows)
    std::printf("%8d %10.1f %8.2f %10.1f %7.2f %8.1fms %8.1fms %8.2fms %8.2fms %8.2f %5.0f%% %6.2f\n",
                r.streams, r.rate, r.rate / single.rate, r.bound, r.rate / r.bound, r.ttft_p50, r.ttft_p99,
                r.itl_p50, r.itl_p99, r.itl_p99 / single.itl_p99, 100 * r.hit_rate, r.mean_batch);
}

// The cost of serving one stream, and the second-turn figure (part 1).
json single_stream_cost(const fs::path& model, int requests, int64_t tokens) {
  const emo::Tokenizer tokenizer = emo::Tokenizer::load(kTokenizer);
  // Direct: generate() with a fresh decoder per prompt, no EOS (every request runs `tokens` tokens).
  auto weights = emo::InferWeights::open(model.string());
  int64_t direct_tokens = 0;
  emo::Timer direct_timer;
  for (int i = 0; i < requests; ++i) {
    const std::vector<int32_t> prompt = tokenizer.encode(prompt_text(i));
    emo::Decoder decoder(*weights, weights->config().max_position_embeddings);
    emo::GenerateOptions options;
    options.max_new_tokens = tokens;
    emo::GenerateResult r = emo::generate(decoder, prompt, options);
    direct_tokens += r.prompt_tokens + static_cast<int64_t>(r.tokens.size());
  }
  const double direct_seconds = direct_timer.seconds();
  weights.reset();

  // Served: the same prompts over loopback HTTP. EOS may end a reply early: rates count what ran.
  Served s(model, 0, 1);
  int64_t served_tokens = 0;
  emo::Timer served_timer;
  for (int i = 0; i < requests; ++i) {
    const json r = s.post({{"prompt", prompt_text(i)}, {"max_tokens", tokens}, {"temperature", 0}});
    served_tokens += r["usage"]["total_tokens"].get<int64_t>();
  }
  const double served_seconds = served_timer.seconds();
  // Second turn: the first turn's text + a new question, after the first turn (cache reused) and after a
  // request on other experts in between took the one slot (fresh prefill).
  const json first = s.post({{"prompt", prompt_text(100)}, {"max_tokens", tokens}, {"temperature", 0}});
  const std::string second_prompt =
      prompt_text(100) + first["choices"][0]["text"].get<std::string>() + " and then";
  const json second_body = {{"prompt", second_prompt}, {"max_tokens", 1}, {"temperature", 0}};
  emo::Timer reuse_timer;
  const json reused = s.post(second_body);
  const double reuse_seconds = reuse_timer.seconds();
  s.post({{"prompt", "x"}, {"max_tokens", 1}, {"experts", {{"keep_k", 8}}}});
  emo::Timer fresh_timer;
  const json fresh = s.post(second_body);
  const double fresh_seconds = fresh_timer.seconds();

  const double direct_rate = static_cast<double>(direct_tokens) / direct_seconds;
  const double served_rate = static_cast<double>(served_tokens) / served_seconds;
  std::printf("one stream, %d requests of ~%lld prompt + %lld tokens:\n", requests,
              static_cast<long long>(tokenizer.encode(prompt_text(0)).size()),
              static_cast<long long>(tokens));
  std::printf("  direct generate(): %8.1f tok/s\n  emo serve (HTTP):  %8.1f tok/s   ratio %.3f\n",
              direct_rate, served_rate, served_rate / direct_rate);
  std::printf(
      "  second turn (%lld prompt tokens): cache reused (%lld cached) %.1f ms, fresh prefill %.1f ms, "
      "speed-up %.2fx\n",
      static_cast<long long>(reused["usage"]["prompt_tokens"].get<int64_t>()),
      static_cast<long long>(reused["usage"]["prompt_tokens_details"]["cached_tokens"].get<int64_t>()),
      reuse_seconds * 1e3, fresh_seconds * 1e3, fresh_seconds / reuse_seconds);
  return {{"direct_tokens_per_second", direct_rate},
          {"served_tokens_per_second", served_rate},
          {"served_over_direct", served_rate / direct_rate},
          {"second_turn_prompt_tokens", reused["usage"]["prompt_tokens"]},
          {"second_turn_cached_tokens", reused["usage"]["prompt_tokens_details"]["cached_tokens"]},
          {"second_turn_reused_ms", reuse_seconds * 1e3},
          {"second_turn_fresh_ms", fresh_seconds * 1e3},
          {"fresh_cached_tokens", fresh["usage"]["prompt_tokens_details"]["cached_tokens"]}};
}

// Part 2 on one model: (a) one pack, (b) 4 packs under a budget of 2.
json multi_stream(const fs::path& model, int requests, int64_t tokens, double bandwidth) {
  auto weights = emo::InferWeights::open(model.string());
  const emo::ModelConfig config = weights->config();
  const int64_t K = config.num_experts_per_tok;
  // Bytes one step of n streams reads: the experts of a layer they may use together are at most those of
  // the packs running (16 each) and at most n * K.
  auto bound = [&](int n, int packs_running) {
    const int64_t experts = std::min<int64_t>(kPackKeep * packs_running, n * K);
    return n * bandwidth * 1e9 / static_cast<double>(weights->bytes_per_token(experts));
  };
  int64_t pack_bytes = 0;  // one pack's experts, the shared one included
  for (int64_t l = 0; l < config.num_hidden_layers; ++l)
    for (int64_t e = 0; e < kPackKeep; ++e) pack_bytes += weights->expert_bytes(l, e);

  std::vector<Row> one_pack, four_packs;
  {
    Served s(model, 0, kSlots);
    s.post({{"prompt", "warm"}, {"max_tokens", 2}, {"experts", "pack0"}});
    for (int n : {1, 2, 4, 8}) one_pack.push_back(run_streams(s, n, requests, tokens, 1, bound(n, 1)));
  }
  // A budget of 2.5 packs: 2 packs' experts (their shared experts counted once) and room to spare, not 3.
  const int64_t budget = pack_bytes * 5 / 2;
  {
    Served s(model, budget, kSlots);
    for (int n : {1, 2, 4, 8})
      four_packs.push_back(run_streams(s, n, requests, tokens, kPacks, bound(n, std::min(n, 2))));
  }
  const Row& single = one_pack.front();
  std::printf("\n%lld tokens per request, %d requests per stream, --parallel %d, bandwidth %.1f GB/s\n",
              static_cast<long long>(tokens), requests, kSlots, bandwidth);
  print_rows("(a) every stream on one pack (16 of 64 experts per layer)", one_pack, single);
  std::printf("(b) 4 packs in turn, --memory-budget %.0f MiB (2 of the packs of %.0f MiB)\n",
              static_cast<double>(budget) / 1048576.0, static_cast<double>(pack_bytes) / 1048576.0);
  print_rows("", four_packs, single);
  json a = json::array(), b = json::array();
  for (const Row& r : one_pack) a.push_back(row_json(r, single));
  for (const Row& r : four_packs) b.push_back(row_json(r, single));
  return {{"one_pack", a},
          {"four_packs_budget_two", b},
          {"pack_bytes", pack_bytes},
          {"budget_bytes", budget},
          {"target_8_streams_one_pack", one_pack.back().rate / single.rate},
          {"target_8_streams_four_packs", four_packs.back().rate / single.rate},
          {"target_itl_p99_8_streams", one_pack.back().itl_p99 / single.itl_p99}};
}

}  // namespace

int main(int argc, char** argv) {
  int requests = 3;
  int64_t tokens = 48;
  bool quick = false;
  std::string dir = (fs::temp_directory_path() / "emo_bench_serve_models").string();
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    if (i + 1 >= argc) continue;
    if (!std::strcmp(argv[i], "--requests")) requests = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--tokens")) tokens = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--dir")) dir = argv[i + 1];
  }
  std::vector<std::pair<std::string, emo::ModelConfig>> models = {
      {"reference", with_tokenizer(emo::bench::scaled_released_config())}};
  if (!quick) models.emplace_back("big", big_config());
  const std::vector<float> buffer(64 << 20, 1.0f);  // 256 MiB
  const double bandwidth = emo::bench::median(emo::bench::read_bandwidths(buffer, 5));
  std::printf("%d threads; memory bandwidth (parallel read of 256 MiB, median of 5) %.1f GB/s\n",
              emo::num_threads(), bandwidth);
  json summary = {{"bench", "serve"}, {"threads", emo::num_threads()}, {"bandwidth_gbs", bandwidth}};
  for (const auto& [name, config] : models) {
    const fs::path model = fs::path(dir) / name;
    fs::create_directories(dir);
    ensure_model(model, config);
    std::printf("\n== %s model (d %lld, L %lld, E %lld of width %lld)\n", name.c_str(),
                static_cast<long long>(config.hidden_size), static_cast<long long>(config.num_hidden_layers),
                static_cast<long long>(config.num_experts), static_cast<long long>(config.intermediate_size));
    json m = single_stream_cost(model, requests, tokens);
    m.update(multi_stream(model, requests, tokens, bandwidth));
    summary[name] = m;
  }
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}
