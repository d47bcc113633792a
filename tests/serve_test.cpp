// Specification of the OpenAI wire format of `emo serve` (src/serve/openai): request checking with OpenAI's
// error object naming the field, stop strings and UTF-8 held back while streaming, response objects.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "infer/generate.h"
#include "infer/resident.h"
#include "model/model.h"
#include "run_emo.h"
#include "sanitizer.h"
#include "serve/openai.h"
#include "serve/server.h"
#include "tiny_emo.h"

namespace emo::serve {
namespace {

ApiError error_of(const std::string& body, bool chat = false) {
  try {
    parse_completion_request(body, chat);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "accepted: " << body;
  return {};
}

TEST(ServeOpenAi, ParsesACompletionRequest) {
  CompletionRequest r = parse_completion_request(
      R"({"model": "m", "prompt": "hi", "max_tokens": 5, "temperature": 0, "top_p": 0.5, "top_k": 3,
          "seed": 7, "stop": ["\n", "x"], "stream": true, "stream_options": {"include_usage": true},
          "n": 1, "experts": "code"})",
      false);
  EXPECT_EQ(*r.prompt_text, "hi");
  EXPECT_EQ(*r.max_tokens, 5);
  EXPECT_EQ(r.sampling.temperature, 0.0);
  EXPECT_EQ(r.sampling.top_p, 0.5);
  EXPECT_EQ(r.sampling.top_k, 3);
  EXPECT_TRUE(r.seeded);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n", "x"}));
  EXPECT_TRUE(r.stream && r.include_usage);
  EXPECT_EQ(r.experts.kind, ExpertsChoice::Kind::kNamed);
  EXPECT_EQ(r.experts.name, "code");
}

TEST(ServeOpenAi, ParsesChatAndTheExpertsExtension) {
  CompletionRequest r = parse_completion_request(
      R"({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text",
          "text": "a"}, {"type": "text", "text": "b"}]}], "experts": {"keep_k": 4, "examples": ["x"]}})",
      true);
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[1].content, "ab");
  EXPECT_EQ(r.experts.kind, ExpertsChoice::Kind::kExamples);
  EXPECT_EQ(r.experts.keep_k, 4);
  EXPECT_EQ(parse_completion_request(R"({"prompt": "a", "experts": "auto"})", false).experts.kind,
            ExpertsChoice::Kind::kAuto);
  EXPECT_EQ(parse_completion_request(R"({"prompt": [1, 2]})", false).prompt_tokens,
            (std::vector<int32_t>{1, 2}));
}

TEST(ServeOpenAi, EveryBadInputNamesItsField) {
  struct Case {
    std::string body, param;
    bool chat = false;
  };
  const std::vector<Case> cases = {
      {"{\"prompt\": ", ""},
      {"[1]", ""},
      {"{\"prompt\": \"\xff\"}", ""},
      {R"({"prompt": 3})", "prompt"},
      {R"({"prompt": ""})", "prompt"},
      {R"({})", "prompt"},
      {R"({"prompt": "a", "n": 2})", "n"},
      {R"({"prompt": "a", "max_tokens": 0})", "max_tokens"},
      {R"({"prompt": "a", "max_tokens": "5"})", "max_tokens"},
      {R"({"prompt": "a", "temperature": 3})", "temperature"},
      {R"({"prompt": "a", "top_p": 0})", "top_p"},
      {R"({"prompt": "a", "top_k": -1})", "top_k"},
      {R"({"prompt": "a", "stop": [1]})", "stop"},
      {R"({"prompt": "a", "stop": ["a","b","c","d","e"]})", "stop"},
      {R"({"prompt": "a", "stream": "yes"})", "stream"},
      {R"({"prompt": "a", "stream_options": {"include_usage": true}})", "stream_options"},
      {R"({"prompt": "a", "logprobs": 2})", "logprobs"},
      {R"({"prompt": "a", "bogus": 1})", "bogus"},
      {R"({"prompt": "a", "experts": {"keep_k": 4, "file": "/etc/passwd"}})", "experts.file"},
      {R"({"prompt": "a", "experts": {"keep_k": 0}})", "experts.keep_k"},
      {R"({"prompt": "a", "experts": 5})", "experts"},
      {R"({"messages": []})", "messages", true},
      {R"({"messages": [{"role": "robot", "content": "x"}]})", "messages[0].role", true},
      {R"({"messages": [{"role": "user"}]})", "messages[0].content", true},
      {R"({"messages": [{"role": "user", "content": "x"}], "prompt": "a"})", "prompt", true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body);
    ApiError e = error_of(c.body, c.chat);
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, c.param);
    const nlohmann::json j = e.to_json();
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    EXPECT_TRUE(j["error"]["message"].is_string());
    EXPECT_EQ(j["error"]["param"].is_null(), c.param.empty());
  }
}

TEST(ServeOpenAi, Utf8Checks) {
  EXPECT_FALSE(invalid_utf8_at("h\xC3\xA9llo \xF0\x9F\x98\x80"));
  EXPECT_EQ(*invalid_utf8_at("ab\xC0\xAF"), 2u);     // overlong
  EXPECT_EQ(*invalid_utf8_at("a\xED\xA0\x80"), 1u);  // surrogate
  EXPECT_EQ(*invalid_utf8_at("a\xE2\x82"), 1u);      // cut
  EXPECT_EQ(incomplete_utf8_tail("a\xE2\x82"), 2u);
  EXPECT_EQ(incomplete_utf8_tail("a\xE2\x82\xAC"), 0u);
  EXPECT_EQ(incomplete_utf8_tail("abc"), 0u);
}

TEST(ServeOpenAi, TextStreamHoldsBackStopPrefixesAndPartialCharacters) {
  TextStream s({"END"});
  EXPECT_EQ(s.push("hello E"), "hello ");
  EXPECT_EQ(s.push("N"), "");
  EXPECT_EQ(s.push("x \xE2\x82"), "ENx ");
  EXPECT_EQ(s.push("\xAC E"), "\xE2\x82\xAC ");
  EXPECT_EQ(s.push("ND and more"), "");
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(s.text(), "hello ENx \xE2\x82\xAC ");
  TextStream cut({});
  EXPECT_EQ(cut.push("a\xE2\x82"), "a");
  EXPECT_EQ(cut.finish(), "\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(ServeOpenAi, ResponseObjectsFollowOpenAi) {
  CompletionRequest chat =
      parse_completion_request(R"({"messages": [{"role": "user", "content": "x"}]})", true);
  ResponseIds ids{"chatcmpl-1", 1700000000, "tiny"};
  CompletionResult result{"hi", "stop", 3, 1, 2, {{"id", "all"}}};
  nlohmann::json r = response_json(chat, ids, result);
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["choices"][0]["message"]["content"], "hi");
  EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(r["usage"]["total_tokens"], 4);
  EXPECT_EQ(r["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
  nlohmann::json first = chunk_json(chat, ids, "", "", true);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  nlohmann::json last = chunk_json(chat, ids, "", "length", false);
  EXPECT_TRUE(last["choices"][0]["delta"].empty());
  CompletionRequest completion = parse_completion_request(R"({"prompt": "x"})", false);
  EXPECT_EQ(response_json(completion, ids, result)["choices"][0]["text"], "hi");
  EXPECT_EQ(response_json(completion, ids, result)["object"], "text_completion");
}

// ---- The server over loopback: a tiny EMO model, one engine, one httplib::Server on a port it picks.

namespace fs = std::filesystem;
using nlohmann::json;
using test::TempDir;
const std::string kTokenizer = test::kTrainedTokenizer;

void write_model(const std::string& dir, int64_t expert_width = 12) {
  test::write_tiny_emo(dir, expert_width, expert_width > 12 ? 64 << 20 : 24'000);
}

struct Served {
  TempDir dir{"emo_serve_test_"};
  std::string model = dir / "model";
  std::unique_ptr<Engine> engine;
  std::unique_ptr<Server> server;
  std::thread thread;
  int port = 0;

  explicit Served(EngineOptions engine_options = {}, ServerOptions options = {}, int64_t expert_width = 12) {
    write_model(model, expert_width);
    for (auto& [name, path] : engine_options.packs) path = dir / path;
    write_packs();
    engine = std::make_unique<Engine>(InferWeights::open(model), Tokenizer::load(kTokenizer), engine_options);
    options.host = "127.0.0.1";
    options.port = 0;
    server = std::make_unique<Server>(*engine, options);
    port = server->bind();
    thread = std::thread([this] { server->listen(); });
  }
  ~Served() {
    server->stop();
    thread.join();
  }
  // pack.json keeps routed experts {1, 4, 7} of every layer, pack_b.json {2, 5, 8}, pack_big.json 0..6.
  void write_packs() {
    const ModelConfig config = InferWeights::open(model)->config();
    auto write = [&](const std::string& name, const std::vector<int32_t>& routed) {
      ExpertSubset subset = ExpertSubset::for_model(config, static_cast<int64_t>(routed.size()) + 1, "test");
      for (auto& layer : subset.routed) layer = routed;
      subset.finish();
      subset.save(dir / name);
    };
    write("pack.json", {1, 4, 7});
    write("pack_b.json", {2, 5, 8});
    write("pack_big.json", {0, 1, 2, 3, 4, 5, 6});
  }
  httplib::Client client(const std::string& key = "") const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    if (!key.empty()) c.set_bearer_token_auth(key);
    return c;
  }
  // The body and status of a POST.
  std::pair<int, json> post(const std::string& path, const std::string& body,
                            const std::string& key = "") const {
    auto res = client(key).Post(path, body, "application/json");
    if (!res) return {-1, json()};
    return {res->status, json::parse(res->body)};
  }
};

// What `emo generate` produces greedily after `prompt` (the EOS dropped): the reference of the server.
std::string reference_text(const std::string& model, const std::vector<int32_t>& prompt, int64_t max_new,
                           const ExpertSubset* subset = nullptr) {
  auto weights = InferWeights::open(model);
  if (subset) apply_subset(*weights, *subset);
  const Tokenizer tokenizer = Tokenizer::load(kTokenizer);
  Decoder decoder(*weights, 64);
  GenerateOptions options;
  options.max_new_tokens = max_new;
  options.eos_id = 298;
  GenerateResult r = generate(decoder, prompt, options);
  if (!r.tokens.empty() && r.tokens.back() == 298) r.tokens.pop_back();
  return replace_invalid_utf8(tokenizer.decode(r.tokens));
}

// The `data:` payloads of an SSE body.
std::vector<std::string> sse_events(const std::string& body) {
  std::vector<std::string> events;
  size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const size_t end = body.find("\n\n", at);
    events.push_back(body.substr(at + 6, end - at - 6));
    at = end;
  }
  return events;
}

TEST(ServeHttp, HealthAndModels) {
  Served s;
  auto health = s.client().Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  auto models = s.client().Get("/v1/models");
  ASSERT_TRUE(models);
  const json j = json::parse(models->body);
  EXPECT_EQ(j["object"], "list");
  EXPECT_EQ(j["data"][0]["id"], "emo");
  EXPECT_EQ(j["data"][0]["object"], "model");
}

TEST(ServeHttp, GreedyCompletionIsWhatGenerateProduces) {
  Served s;
  const Tokenizer tokenizer = Tokenizer::load(kTokenizer);
  auto [status, j] = s.post("/v1/completions", R"({"prompt": "The capital of France", "max_tokens": 8,
                                                   "temperature": 0})");
  ASSERT_EQ(status, 200) << j.dump();
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], reference_text(s.model, tokenizer.encode("The capital of France"), 8));
  EXPECT_EQ(j["usage"]["prompt_tokens"],
            static_cast<int64_t>(tokenizer.encode("The capital of France").size()));
  EXPECT_EQ(j["experts"]["id"], "all");
  EXPECT_TRUE(j["choices"][0]["finish_reason"] == "length" || j["choices"][0]["finish_reason"] == "stop");
}

TEST(ServeHttp, StreamingSendsOpenAiChunksThenDone) {
  Served s;
  const std::string body = R"({"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 6,
                               "temperature": 0, "stream": true, "stream_options": {"include_usage": true}})";
  json plain = json::parse(body);
  plain.erase("stream");
  plain.erase("stream_options");
  auto [plain_status, reference] = s.post("/v1/chat/completions", plain.dump());
  ASSERT_EQ(plain_status, 200) << reference.dump();

  auto res = s.client().Post("/v1/chat/completions", body, "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_NE(res->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  const std::vector<std::string> events = sse_events(res->body);
  ASSERT_GE(events.size(), 3u) << res->body;
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::string finish;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json chunk = json::parse(events[i]);
    EXPECT_EQ(chunk["object"], "chat.completion.chunk");
    if (i == 0) {
      EXPECT_EQ(chunk["choices"][0]["delta"]["role"], "assistant");
    }
    if (chunk["choices"].empty()) {  // the usage chunk, last before [DONE]
      EXPECT_EQ(i + 2, events.size());
      EXPECT_EQ(chunk["usage"]["completion_tokens"], reference["usage"]["completion_tokens"]);
      continue;
    }
    EXPECT_TRUE(chunk["usage"].is_null());
    const json& choice = chunk["choices"][0];
    if (choice["delta"].contains("content")) text += choice["delta"]["content"].get<std::string>();
    if (!choice["finish_reason"].is_null()) finish = choice["finish_reason"];
  }
  EXPECT_EQ(text, reference["choices"][0]["message"]["content"]);
  EXPECT_EQ(finish, reference["choices"][0]["finish_reason"]);
}

TEST(ServeHttp, ASecondTurnReusesTheCachedPrefixAndMatchesAFreshRun) {
  Served s;
  auto [status1, turn1] = s.post("/v1/chat/completions",
                                 R"({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
                                     "temperature": 0})");
  ASSERT_EQ(status1, 200) << turn1.dump();
  json second = {{"messages",
                  {{{"role", "user"}, {"content", "Hi"}},
                   {{"role", "assistant"}, {"content", turn1["choices"][0]["message"]["content"]}},
                   {{"role", "user"}, {"content", "And then?"}}}},
                 {"max_tokens", 5},
                 {"temperature", 0}};
  auto [status2, turn2] = s.post("/v1/chat/completions", second.dump());
  ASSERT_EQ(status2, 200) << turn2.dump();
  EXPECT_GT(turn2["usage"]["prompt_tokens_details"]["cached_tokens"].get<int64_t>(), 0);
  const Tokenizer tokenizer = Tokenizer::load(kTokenizer);
  std::vector<ChatMessage> messages;
  for (const json& m : second["messages"]) messages.push_back({m["role"], m["content"]});
  const std::vector<int32_t> prompt = ChatTemplate::plain().render(messages, tokenizer);
  EXPECT_EQ(turn2["choices"][0]["message"]["content"], reference_text(s.model, prompt, 5));
}

TEST(ServeHttp, SampledRunsAreReproducibleForASeedAndStopAtStopStrings) {
  Served s;
  const std::string body = R"({"prompt": "abc", "max_tokens": 12, "temperature": 1.5, "top_p": 0.9,
                               "top_k": 50, "seed": 11})";
  auto [a_status, a] = s.post("/v1/completions", body);
  auto [b_status, b] = s.post("/v1/completions", body);
  ASSERT_EQ(a_status, 200) << a.dump();
  EXPECT_EQ(a["choices"][0]["text"], b["choices"][0]["text"]);
  const std::string text = a["choices"][0]["text"];
  // A stop string: the first printable ASCII character after the first byte (if the text has one).
  size_t at = 1;
  while (at < text.size() && !(text[at] > ' ' && text[at] < 127)) ++at;
  if (at < text.size()) {
    const std::string stop(1, text[at]);
    json with_stop = json::parse(body);
    with_stop["stop"] = stop;
    auto [c_status, c] = s.post("/v1/completions", with_stop.dump());
    ASSERT_EQ(c_status, 200) << c.dump();
    EXPECT_EQ(c["choices"][0]["text"], text.substr(0, text.find(stop)));
    EXPECT_EQ(c["choices"][0]["finish_reason"], "stop");
  }
}

TEST(ServeHttp, ExpertsPacksAndChosenSubsets) {
  EngineOptions options;
  options.packs["code"] = "pack.json";
  Served s(options);
  const Tokenizer tokenizer = Tokenizer::load(kTokenizer);
  auto [status, j] = s.post("/v1/completions", R"({"prompt": "def f(x):", "max_tokens": 6, "temperature": 0,
                                                   "experts": "code"})");
  ASSERT_EQ(status, 200) << j.dump();
  EXPECT_EQ(j["experts"]["id"], "code");
  EXPECT_EQ(j["experts"]["keep_k"], 4);
  const ExpertSubset pack = ExpertSubset::load(s.dir / "pack.json", InferWeights::open(s.model)->config());
  EXPECT_EQ(j["choices"][0]["text"], reference_text(s.model, tokenizer.encode("def f(x):"), 6, &pack));

  auto [auto_status, chosen] = s.post("/v1/completions", R"({"prompt": "def f(x):", "max_tokens": 6,
                                                             "temperature": 0, "experts": {"keep_k": 3}})");
  ASSERT_EQ(auto_status, 200) << chosen.dump();
  const std::string id = chosen["experts"]["id"];
  EXPECT_EQ(id.rfind("auto-", 0), 0u);
  EXPECT_EQ(chosen["experts"]["source"], "prompt");
  // The id names the subset in later requests.
  auto [again_status, again] =
      s.post("/v1/completions",
             json{{"prompt", "def f(x):"}, {"max_tokens", 6}, {"temperature", 0}, {"experts", id}}.dump());
  ASSERT_EQ(again_status, 200) << again.dump();
  EXPECT_EQ(again["experts"]["id"], id);
  EXPECT_EQ(again["choices"][0]["text"], chosen["choices"][0]["text"]);
  // ... and keeps the KV cache of the earlier request on it (the same prompt: all but its last token).
  EXPECT_EQ(again["usage"]["prompt_tokens_details"]["cached_tokens"].get<int64_t>(),
            again["usage"]["prompt_tokens"].get<int64_t>() - 1);
  // A request on another subset in between runs in another slot: the subset's slot keeps its cache.
  s.post("/v1/completions", R"({"prompt": "def f(x):", "max_tokens": 1, "experts": "code"})");
  auto [switched_status, switched] =
      s.post("/v1/completions",
             json{{"prompt", "def f(x):"}, {"max_tokens", 6}, {"temperature", 0}, {"experts", id}}.dump());
  ASSERT_EQ(switched_status, 200) << switched.dump();
  EXPECT_EQ(switched["usage"]["prompt_tokens_details"]["cached_tokens"],
            again["usage"]["prompt_tokens_details"]["cached_tokens"]);
  EXPECT_EQ(switched["choices"][0]["text"], chosen["choices"][0]["text"]);
  auto [examples_status, from_examples] =
      s.post("/v1/completions", R"({"prompt": "x", "max_tokens": 2, "experts": {"keep_k": 2,
                                    "examples": ["for i in range(10):", "return x"]}})");
  ASSERT_EQ(examples_status, 200) << from_examples.dump();
  EXPECT_EQ(from_examples["experts"]["source"], "examples");
}

TEST(ServeHttp, KeepKChoosesFromThePromptByDefault) {
  EngineOptions options;
  options.keep_k = 3;
  Served s(options);
  auto [status, j] = s.post("/v1/completions", R"({"prompt": "abc", "max_tokens": 2})");
  ASSERT_EQ(status, 200) << j.dump();
  EXPECT_EQ(j["experts"]["source"], "prompt");
  EXPECT_EQ(j["experts"]["keep_k"], 3);
  auto [all_status, all] =
      s.post("/v1/completions", R"({"prompt": "abc", "max_tokens": 2, "experts": "all"})");
  ASSERT_EQ(all_status, 200) << all.dump();
  EXPECT_EQ(all["experts"]["id"], "all");
  auto [bad, e] = s.post("/v1/completions", R"({"prompt": "abc", "experts": {"keep_k": 11}})");
  EXPECT_EQ(bad, 400);
  EXPECT_EQ(e["error"]["param"], "experts.keep_k");
}

TEST(ServeHttp, BadRequestsGetOpenAiErrorsNamingTheField) {
  ServerOptions options;
  options.max_body_bytes = 4096;
  Served s({}, options);
  auto expect_error = [&](const std::string& path, const std::string& body, int status,
                          const std::string& param) {
    auto [got, j] = s.post(path, body);
    EXPECT_EQ(got, status) << body << " -> " << j.dump();
    ASSERT_TRUE(j.contains("error")) << j.dump();
    EXPECT_TRUE(j["error"]["message"].is_string());
    if (param.empty())
      EXPECT_TRUE(j["error"]["param"].is_null()) << j.dump();
    else
      EXPECT_EQ(j["error"]["param"], param) << j.dump();
  };
  expect_error("/v1/completions", "{not json", 400, "");
  expect_error("/v1/completions", R"({"prompt": 3})", 400, "prompt");
  expect_error("/v1/completions", R"({"prompt": "a", "mystery": 1})", 400, "mystery");
  expect_error("/v1/completions", R"({"prompt": "a", "n": 2})", 400, "n");
  expect_error("/v1/completions", R"({"prompt": "a", "experts": "nope"})", 400, "experts");
  expect_error("/v1/completions", R"({"prompt": "a", "experts": {"keep_k": 3, "x": 1}})", 400, "experts.x");
  expect_error("/v1/completions", R"({"prompt": "a", "max_tokens": 100})", 400, "max_tokens");
  expect_error("/v1/completions",
               json{{"prompt", std::string(200, 'z') +
                                   " y y y y y y y y y y y y y y y y y y y "
                                   "y y y y y y y y y y y y y y y y y y y y y y y y y y y y y y y y "}}
                   .dump(),
               400, "prompt");
  expect_error("/v1/completions", R"({"prompt": [5, 7000]})", 400, "prompt");
  expect_error("/v1/chat/completions", R"({"messages": []})", 400, "messages");
  expect_error("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\"}]}", 400,
               "");
  auto big = s.client().Post("/v1/completions", std::string(8192, ' '), "application/json");
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 413);
  EXPECT_TRUE(json::parse(big->body).contains("error"));
  auto missing = s.client().Get("/v1/nothing");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
}

TEST(ServeHttp, ApiKeyIsCheckedOnV1AndMetricsCount) {
  ServerOptions options;
  options.api_key = "sekret";
  Served s({}, options);
  auto [no_key, e1] = s.post("/v1/completions", R"({"prompt": "a", "max_tokens": 1})");
  EXPECT_EQ(no_key, 401);
  EXPECT_EQ(e1["error"]["code"], "invalid_api_key");
  auto [wrong, e2] = s.post("/v1/completions", R"({"prompt": "a", "max_tokens": 1})", "other");
  EXPECT_EQ(wrong, 401);
  auto [ok, j] = s.post("/v1/completions", R"({"prompt": "a", "max_tokens": 2})", "sekret");
  EXPECT_EQ(ok, 200) << j.dump();
  auto health = s.client().Get("/health");  // outside /v1: no key needed
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  auto metrics = s.client().Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_NE(metrics->body.find("emo_requests_total 1\n"), std::string::npos) << metrics->body;
  EXPECT_NE(metrics->body.find("# TYPE emo_generated_tokens_total counter"), std::string::npos);
  EXPECT_NE(metrics->body.find("emo_requests_by_experts_total{experts=\"all\"} 1\n"), std::string::npos);
}

// The value of a metric line "emo_NAME VALUE" of /metrics.
double metric(const std::string& metrics, const std::string& name) {
  const size_t at = metrics.find("\nemo_" + name + " ");
  EXPECT_NE(at, std::string::npos) << name;
  if (at == std::string::npos) return -1;
  return std::stod(metrics.substr(at + name.size() + 6));
}

// A budget that holds one pack but not two: alternating requests on both all succeed (and equal generate on
// the pack), the cache evicts between them, the experts' pages in memory stay within the budget; what
// cannot fit gets a 503 with code memory_budget.
TEST(ServeHttp, AMemoryBudgetHoldingOnePackServesTwoInTurn) {
  constexpr int64_t kWidth = 4096, kExpert = 3 * 16 * kWidth * 4;  // 768 KiB per expert
  constexpr int64_t kBudget = 10 << 20;                            // 13 experts; a pack is 12 (3 layers x 4)
  EngineOptions options;
  options.packs = {{"a", "pack.json"}, {"b", "pack_b.json"}, {"big", "pack_big.json"}};
  options.memory_budget = kBudget;
  Served s(options, {}, kWidth);
  const Tokenizer tokenizer = Tokenizer::load(kTokenizer);
  const ModelConfig config = InferWeights::open(s.model)->config();
  std::map<std::string, std::string> expected;
  for (const auto& [name, file] :
       std::map<std::string, std::string>{{"a", "pack.json"}, {"b", "pack_b.json"}}) {
    const ExpertSubset pack = ExpertSubset::load(s.dir / file, config);
    expected[name] = reference_text(s.model, tokenizer.encode("def f(x):"), 6, &pack);
  }
  const int64_t rss_before = current_rss_bytes();
  for (int round = 0; round < 3; ++round)
    for (const std::string pack : {"a", "b"}) {
      auto [status, j] = s.post(
          "/v1/completions",
          json{{"prompt", "def f(x):"}, {"max_tokens", 6}, {"temperature", 0}, {"experts", pack}}.dump());
      ASSERT_EQ(status, 200) << j.dump();
      EXPECT_EQ(j["choices"][0]["text"], expected[pack]) << pack << " round " << round;
    }
  const int64_t rss_growth = current_rss_bytes() - rss_before;
  auto metrics = s.client().Get("/metrics");
  ASSERT_TRUE(metrics);
  const std::string& m = metrics->body;
  // The first request loads 12 experts; each switch keeps the 3 shared ones and makes room for the other
  // pack's routed ones by evicting 8 of the 9 routed ones held (the ninth is a hit when its pack returns).
  EXPECT_EQ(metric(m, "expert_cache_evictions_total"), 5 * 8) << m;
  EXPECT_EQ(metric(m, "expert_cache_misses_total"), 12 + 9 + 4 * 8) << m;
  EXPECT_EQ(metric(m, "expert_cache_hits_total"), 3 + 4 * 4) << m;
  EXPECT_EQ(metric(m, "expert_cache_budget_bytes"), kBudget);
  EXPECT_LE(metric(m, "expert_cache_resident_bytes"), kBudget);
  EXPECT_EQ(metric(m, "expert_cache_pinned_bytes"), 0);

  // The pages of the experts mapped in this process: within the budget plus what the kernel maps around a
  // held expert's ends (fault-around: at most 64 KiB each side). Both packs held would be 21 experts.
  const InferWeights& weights = s.engine->weights();
  int64_t mapped = 0, loaded = 0;
  for (int64_t l = 0; l < config.num_hidden_layers; ++l)
    for (int64_t e = 0; e < config.experts_in_layer(l); ++e) {
      loaded += weights.expert_loaded(l, e) ? 1 : 0;
      for (const MemoryRange& r : weights.expert_ranges(l, e))
        mapped += mapped_resident_bytes(r.begin, r.bytes);
    }
  EXPECT_LE(loaded * kExpert, kBudget);
  const int64_t bound = kBudget + loaded * 2 * (64 << 10);
  EXPECT_LE(mapped, bound);
  EXPECT_LT(bound, 21 * kExpert);
  // The process as a whole: at most the budget and the decoder's scratch more than before any request.
  EXPECT_LE(rss_growth, kBudget + (4 << 20)) << rss_growth;
  std::printf("experts mapped %.2f MiB (bound %.2f MiB), RSS growth %.2f MiB, budget %.2f MiB\n",
              mapped / 1048576.0, bound / 1048576.0, rss_growth / 1048576.0, kBudget / 1048576.0);

  for (const json& experts : {json("big"), json("all"), json{{"keep_k", 9}}}) {
    auto [status, e] = s.post("/v1/completions", json{{"prompt", "x"}, {"experts", experts}}.dump());
    EXPECT_EQ(status, 503) << e.dump();
    EXPECT_EQ(e["error"]["code"], "memory_budget") << e.dump();
    EXPECT_EQ(e["error"]["type"], "server_error");
    EXPECT_EQ(e["error"]["param"], "experts");
    EXPECT_NE(e["error"]["message"].get<std::string>().find("--memory-budget"), std::string::npos);
  }
  // A choice from the prompt that fits runs (pinned layer by layer).
  auto [chosen_status, chosen] =
      s.post("/v1/completions", R"({"prompt": "x", "max_tokens": 2, "experts": {"keep_k": 4}})");
  EXPECT_EQ(chosen_status, 200) << chosen.dump();
}

TEST(ServeHttp, CommandRefusesABadMemoryBudget) {
  TempDir dir{"emo_serve_test_"};
  write_model(dir / "model");
  for (const char* bad : {"2XB", "0", "lots"}) {
    const test::EmoRun run = test::run_emo("serve " + (dir / "model") + " --port 0 --memory-budget " + bad);
    EXPECT_EQ(run.status, 1) << bad;
    EXPECT_NE(run.err.find("--memory-budget"), std::string::npos) << run.err;
  }
}

// The command: prints where it listens, serves, and on SIGTERM finishes and exits 0.
TEST(ServeHttp, CommandPrintsItsAddressAndStopsOnSigterm) {
  TempDir dir{"emo_serve_test_"};
  write_model(dir / "model");
  const std::string out = dir / "out.txt";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    FILE* f = std::freopen(out.c_str(), "w", stdout);
    (void)f;
    const std::string emo = std::string(EMO_BINARY_DIR) + "/bin/emo";
    const std::string model = dir / "model";
    execl(emo.c_str(), emo.c_str(), "--threads", "1", "serve", model.c_str(), "--port", "0", nullptr);
    _exit(127);
  }
  int port = 0;
  for (int i = 0; i < 500 && port == 0; ++i) {  // at most 10 s
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::ifstream in(out);
    std::string line;
    std::getline(in, line);
    const size_t at = line.find("http://127.0.0.1:");
    if (at != std::string::npos) port = std::atoi(line.c_str() + at + 17);
  }
  ASSERT_GT(port, 0);
  httplib::Client client("127.0.0.1", port);
  auto res = client.Post("/v1/completions", R"({"prompt": "hi", "max_tokens": 3})", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  kill(pid, SIGTERM);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

// OpenAI's official Node client (openai 5.23.2, fetched into the cache) against the server: skipped where
// node is absent, unless CI is set.
TEST(ServeHttp, OfficialOpenAiNodeClientParsesEverything) {
  if (std::system("command -v node >/dev/null 2>&1") != 0) {
    if (std::getenv("CI")) FAIL() << "node is not installed";
    GTEST_SKIP() << "node is not installed";
  }
  ServerOptions options;
  options.api_key = "test-key";
  Served s({}, options);
  const std::string source = EMO_SOURCE_DIR;
  const std::string package = s.dir / "openai_dir.txt";
  ASSERT_EQ(std::system((source + "/scripts/fetch-npm openai@5.23.2 >" + package).c_str()), 0);
  std::ifstream in(package);
  std::string dir;
  std::getline(in, dir);
  const std::string command =
      "node " + source + "/tests/openai_client/client_test.js " + dir + " " + std::to_string(s.port);
  EXPECT_EQ(std::system(command.c_str()), 0) << command;
}

// ---- continuous batching (--parallel): several requests decoded together ----

// What `emo generate` produces greedily on the subset it chooses layerwise from the prompt (keep_k).
std::string reference_chosen_text(const std::string& model, const std::vector<int32_t>& prompt,
                                  int64_t max_new, int64_t keep_k) {
  auto weights = InferWeights::open(model);
  Decoder chooser(*weights, 64);
  const ExpertSubset chosen = select_layerwise(*weights, {&chooser}, {prompt}, keep_k, "prompt");
  return reference_text(model, prompt, max_new, &chosen);
}

// A request's outcome as a client sees it, streamed or not.
struct Outcome {
  int status = -1;
  std::string text, finish_reason, error;
  bool done = false;  // a stream's [DONE] (or a whole response)
};

Outcome run_request(const Served& s, json body, bool stream) {
  Outcome o;
  body["stream"] = stream;
  auto res = s.client().Post("/v1/completions", body.dump(), "application/json");
  if (!res) return o;
  o.status = res->status;
  if (!stream) {
    const json j = json::parse(res->body);
    if (o.status != 200) {
      o.error = j.dump();
      return o;
    }
    o.text = j["choices"][0]["text"];
    o.finish_reason = j["choices"][0]["finish_reason"];
    o.done = true;
    return o;
  }
  const std::vector<std::string> events = sse_events(res->body);
  for (const std::string& e : events) {
    if (e == "[DONE]") {
      o.done = true;
      continue;
    }
    const json chunk = json::parse(e);
    if (chunk.contains("error")) o.error = e;
    if (!chunk.contains("choices") || chunk["choices"].empty()) continue;
    o.text += chunk["choices"][0]["text"].get<std::string>();
    if (!chunk["choices"][0]["finish_reason"].is_null())
      o.finish_reason = chunk["choices"][0]["finish_reason"];
  }
  return o;
}

std::string metrics_of(const Served& s) {
  auto res = s.client().Get("/metrics");
  return res ? res->body : "";
}

// Polls /metrics until the engine has nothing running or queued (at most 20 s).
std::string idle_metrics(const Served& s) {
  std::string m;
  for (int i = 0; i < 1000; ++i) {
    m = metrics_of(s);
    if (metric(m, "requests_running") == 0 && metric(m, "queue_length") == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return m;
}

// The requests of the batching tests: prompts of up to ~40 tokens (longer than --prefill-chunk 8, so prompts
// join in chunks) on all experts, two packs and a choice from the prompt.
struct BatchCase {
  std::string prompt;
  json experts;
};
const std::vector<BatchCase> kBatchCases = {
    {"def f(x):", "a"},
    {"The capital of France is a city where the river", "all"},
    {"hi", "b"},
    {"for i in range(10): print(i) if i", json{{"keep_k", 3}}},
    {"Once upon a time", "a"},
};
constexpr int64_t kBatchTokens = 12;

EngineOptions batch_options(int64_t parallel) {
  EngineOptions options;
  options.packs = {{"a", "pack.json"}, {"b", "pack_b.json"}};
  options.parallel = parallel;
  options.prefill_chunk = 8;
  return options;
}

// The greedy reference of each case, as `emo generate` on its subset.
std::vector<std::string> batch_references(const Served& s) {
  const Tokenizer tokenizer = Tokenizer::load(kTokenizer);
  const ModelConfig config = InferWeights::open(s.model)->config();
  const ExpertSubset a = ExpertSubset::load(s.dir / "pack.json", config);
  const ExpertSubset b = ExpertSubset::load(s.dir / "pack_b.json", config);
  std::vector<std::string> references;
  for (const BatchCase& c : kBatchCases) {
    const std::vector<int32_t> prompt = tokenizer.encode(c.prompt);
    if (c.experts.is_object())
      references.push_back(reference_chosen_text(s.model, prompt, kBatchTokens, c.experts["keep_k"]));
    else
      references.push_back(reference_text(s.model, prompt, kBatchTokens,
                                          c.experts == "a"   ? &a
                                          : c.experts == "b" ? &b
                                                             : nullptr));
  }
  return references;
}

json batch_body(const BatchCase& c) {
  return {{"prompt", c.prompt}, {"max_tokens", kBatchTokens}, {"temperature", 0}, {"experts", c.experts}};
}

// Concurrent requests on all experts, two packs and a chosen subset, more than the slots: each equals what
// generate produces for its prompt and subset, whatever runs beside it; they were decoded in shared steps.
TEST(ServeBatch, ConcurrentRequestsOnDifferentSubsetsEqualGenerate) {
  for (int64_t parallel : {4, 1}) {
    SCOPED_TRACE(parallel);
    Served s(batch_options(parallel));
    const std::vector<std::string> references = batch_references(s);
    std::vector<Outcome> outcomes(kBatchCases.size());
    std::vector<std::thread> clients;
    for (size_t i = 0; i < kBatchCases.size(); ++i)
      clients.emplace_back([&, i] { outcomes[i] = run_request(s, batch_body(kBatchCases[i]), i % 2 == 1); });
    for (auto& c : clients) c.join();
    for (size_t i = 0; i < kBatchCases.size(); ++i) {
      EXPECT_EQ(outcomes[i].status, 200) << i << " " << outcomes[i].error;
      EXPECT_TRUE(outcomes[i].done) << i;
      EXPECT_EQ(outcomes[i].text, references[i]) << "case " << i;
    }
    const std::string m = idle_metrics(s);
    EXPECT_EQ(metric(m, "slots"), parallel);
    EXPECT_EQ(metric(m, "requests_total"), static_cast<double>(kBatchCases.size()));
    const double steps = metric(m, "batch_steps_total"), sequences = metric(m, "batch_sequences_total");
    if (parallel == 1)
      EXPECT_EQ(steps, sequences);
    else
      EXPECT_GT(sequences, steps) << m;  // some steps ran several sequences
    std::printf("--parallel %lld: %.0f steps, %.2f sequences per step\n", static_cast<long long>(parallel),
                steps, sequences / steps);
  }
}

// 8 clients x 8 requests, mixed subsets, streamed and not: no error, every stream complete, every text equal
// to generate's, memory within the bound, and the engine idle afterwards (nothing running, pinned or queued).
TEST(ServeBatch, EightClientsOfEightMixedRequests) {
  Served s(batch_options(4));
  const std::vector<std::string> references = batch_references(s);
  constexpr int kClients = 8, kRequests = 8;
  const int64_t rss_before = current_rss_bytes();
  std::vector<std::vector<Outcome>> outcomes(kClients, std::vector<Outcome>(kRequests));
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c)
    clients.emplace_back([&, c] {
      for (int r = 0; r < kRequests; ++r)
        outcomes[c][r] =
            run_request(s, batch_body(kBatchCases[(c + r) % kBatchCases.size()]), (c + r) % 2 == 0);
    });
  for (auto& c : clients) c.join();
  const int64_t rss_growth = current_rss_bytes() - rss_before;
  int errors = 0, incomplete = 0, different = 0;
  for (int c = 0; c < kClients; ++c)
    for (int r = 0; r < kRequests; ++r) {
      const Outcome& o = outcomes[c][r];
      errors += o.status != 200 || !o.error.empty();
      incomplete += !o.done || (o.finish_reason != "stop" && o.finish_reason != "length");
      different += o.text != references[(c + r) % kBatchCases.size()];
      EXPECT_EQ(o.status, 200) << o.error;
    }
  EXPECT_EQ(errors, 0);
  EXPECT_EQ(incomplete, 0);
  EXPECT_EQ(different, 0);
  const std::string m = idle_metrics(s);
  EXPECT_EQ(metric(m, "requests_running"), 0) << m;
  EXPECT_EQ(metric(m, "queue_length"), 0);
  EXPECT_EQ(metric(m, "expert_cache_pinned_bytes"), 0);
  EXPECT_EQ(metric(m, "requests_total"), kClients * kRequests);
  EXPECT_EQ(metric(m, "requests_failed_total"), 0);
  // The bound: the KV caches of the 4 slots over the whole context, the decoder's scratch and the HTTP
  // threads' stacks and buffers (the tiny model's weights are read before the first measure). Under
  // AddressSanitizer freed blocks stay resident in its quarantine and every allocation has redzones and
  // shadow, so the sanitizer suite allows more scratch.
  const ModelConfig config = InferWeights::open(s.model)->config();
  const int64_t kv = 4 * 2 * config.num_hidden_layers * config.max_position_embeddings *
                     config.num_key_value_heads * config.head_dim() * 4;
  const int64_t scratch = test::kUnderAddressSanitizer ? int64_t{64} << 20 : int64_t{16} << 20;
  EXPECT_LE(rss_growth, kv + scratch) << rss_growth;
  std::printf("64 requests: RSS growth %.2f MiB (bound %.2f MiB), %.2f sequences per step\n",
              rss_growth / 1048576.0, static_cast<double>(kv + scratch) / 1048576.0,
              metric(m, "batch_sequences_total") / metric(m, "batch_steps_total"));
}

// Sends a streamed request on a raw socket, reads until the first chunk of text arrives, and closes.
bool stream_then_vanish(int port, const std::string& body) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) return false;
  const std::string request =
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Content-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) return false;
  std::string got;
  char buf[4096];
  while (got.find("\"text\"") == std::string::npos) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return got.find("\"text\"") != std::string::npos;
}

// A client that goes away mid-stream: its sequence stops at the next step, its slot and its experts' pins
// are freed, and the server keeps serving (the other slot's stream is untouched).
TEST(ServeBatch, AClientGoneMidStreamFreesItsSlot) {
  EngineOptions options = batch_options(2);
  Served s(options, {}, 4096);  // experts of 768 KiB: a token takes long enough to leave mid-stream
  const Tokenizer tokenizer = Tokenizer::load(kTokenizer);
  const std::vector<int32_t> prompt = tokenizer.encode("hi");
  // The greedy run goes on for all of max_tokens (no EOS): only the disconnect can end it early.
  const int64_t max_tokens = 60;
  const json body = {{"prompt", "hi"}, {"max_tokens", max_tokens}, {"temperature", 0}, {"stream", true}};
  auto weights = InferWeights::open(s.model);
  Decoder decoder(*weights, 64);
  GenerateOptions generate_options;
  generate_options.max_new_tokens = max_tokens;
  generate_options.eos_id = 298;
  ASSERT_EQ(static_cast<int64_t>(generate(decoder, prompt, generate_options).tokens.size()), max_tokens);

  Outcome beside;
  std::thread other([&] { beside = run_request(s, batch_body(kBatchCases[0]), true); });
  ASSERT_TRUE(stream_then_vanish(s.port, body.dump()));
  other.join();
  const std::string m = idle_metrics(s);
  EXPECT_EQ(metric(m, "requests_running"), 0) << m;
  EXPECT_EQ(metric(m, "requests_cancelled_total"), 1) << m;
  EXPECT_LT(metric(m, "generated_tokens_total"), max_tokens + kBatchTokens) << m;
  EXPECT_EQ(metric(m, "expert_cache_pinned_bytes"), 0);
  EXPECT_EQ(beside.status, 200);
  EXPECT_TRUE(beside.done);
  EXPECT_EQ(beside.text, batch_references(s)[0]);
  const Outcome after = run_request(s, batch_body(kBatchCases[2]), false);
  EXPECT_EQ(after.status, 200) << after.error;
  EXPECT_EQ(after.text, batch_references(s)[2]);
}

// A budget that holds one pack: concurrent requests on two packs all run, the second pack's waiting in the
// queue until the first's sequences end (not refused); nothing stays pinned.
TEST(ServeBatch, APackThatDoesNotFitBesideTheRunningOnesWaits) {
  constexpr int64_t kBudget = 10 << 20;  // one pack of 12 experts of 768 KiB, not two
  EngineOptions options = batch_options(4);
  options.memory_budget = kBudget;
  Served s(options, {}, 4096);
  const std::vector<std::string> references = batch_references(s);
  const std::vector<size_t> cases = {0, 2, 4, 2, 0, 2};  // a, b, a, b, a, b
  std::vector<Outcome> outcomes(cases.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < cases.size(); ++i)
    clients.emplace_back(
        [&, i] { outcomes[i] = run_request(s, batch_body(kBatchCases[cases[i]]), i % 2 == 0); });
  for (auto& c : clients) c.join();
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(outcomes[i].status, 200) << outcomes[i].error;
    EXPECT_EQ(outcomes[i].text, references[cases[i]]) << i;
  }
  const std::string m = idle_metrics(s);
  EXPECT_EQ(metric(m, "expert_cache_pinned_bytes"), 0);
  EXPECT_LE(metric(m, "expert_cache_resident_bytes"), kBudget);
  EXPECT_EQ(metric(m, "requests_failed_total"), 0);
}

// With --parallel 1 a request on another subset in between takes the only slot: a fresh prefill after.
TEST(ServeBatch, ParallelOneHasOneCache) {
  Served s(batch_options(1));
  const json body = batch_body(kBatchCases[0]);
  run_request(s, body, false);
  auto [again_status, again] = s.post("/v1/completions", body.dump());
  EXPECT_GT(again["usage"]["prompt_tokens_details"]["cached_tokens"].get<int64_t>(), 0);
  run_request(s, batch_body(kBatchCases[2]), false);
  auto [switched_status, switched] = s.post("/v1/completions", body.dump());
  ASSERT_EQ(switched_status, 200) << switched.dump();
  EXPECT_EQ(switched["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
  EXPECT_EQ(switched["choices"][0]["text"], again["choices"][0]["text"]);
}

}  // namespace
}  // namespace emo::serve
