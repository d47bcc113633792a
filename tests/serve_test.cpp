// Specification of the OpenAI wire format of `emo serve` (src/serve/openai): request checking with OpenAI's
// error object naming the field, stop strings and UTF-8 held back while streaming, response objects.
#include <gtest/gtest.h>

#include "serve/openai.h"

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

}  // namespace
}  // namespace emo::serve
