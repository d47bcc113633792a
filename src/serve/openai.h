// OpenAI's HTTP API as `emo serve` speaks it (docs/serve.md): parsing and checking the bodies of
// /v1/completions and /v1/chat/completions into a request the engine runs, the error object every bad input
// gets, and the response / stream-chunk objects in OpenAI's wire format. No HTTP and no model here: pure
// functions of JSON, unit-tested on their own.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "infer/sampler.h"
#include "infer/text_stream.h"

namespace emo::serve {

// A bad request: the HTTP status and OpenAI's error object {"error": {message, type, param, code}}.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // empty -> null
  std::string code;   // empty -> null
  nlohmann::json to_json() const;
};

// Throws ApiError.
[[noreturn]] void reject(int status, const std::string& param, const std::string& message,
                         const std::string& code = "", const std::string& type = "invalid_request_error");

// The `experts` extension field: which experts a request runs on.
struct ExpertsChoice {
  enum class Kind { kDefault, kAuto, kNamed, kExamples };
  Kind kind = Kind::kDefault;
  std::string name;                   // kNamed: a pack or the id of a subset the server returned earlier
  int64_t keep_k = 0;                 // kAuto / kExamples: 0 = the server's --keep-k
  std::vector<std::string> examples;  // kExamples: calibration texts
};

struct ChatMessage {
  std::string role, content;
};

// One request, checked: everything the engine needs, in the engine's terms.
struct CompletionRequest {
  bool chat = false;
  std::string model;
  std::optional<std::string> prompt_text;  // completions: the prompt as text
  std::vector<int32_t> prompt_tokens;      // completions: or as token ids
  std::vector<ChatMessage> messages;       // chat
  std::optional<int64_t> max_tokens;       // absent: up to the context (chat) or 16 (completions)
  SamplingOptions sampling;                // temperature 1 unless given, as OpenAI
  bool seeded = false;
  std::vector<std::string> stop;
  bool stream = false, include_usage = false;
  ExpertsChoice experts;
};

// Parses a request body. Throws ApiError naming the field for: a body that is not valid UTF-8 or not a JSON
// object, a field of the wrong type or out of range, an unknown field, n != 1, logprobs, an empty prompt or
// messages. Context limits are checked later (they need the tokenizer).
CompletionRequest parse_completion_request(std::string_view body, bool chat);

// What a run produced, for the response objects.
struct CompletionResult {
  std::string text;
  std::string finish_reason;  // "stop" or "length"
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
  nlohmann::json experts;  // {"id", "keep_k", "source"}
};

struct ResponseIds {
  std::string id;  // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;
  std::string model;
};

nlohmann::json usage_json(const CompletionResult& result);
// The whole (non-streaming) response.
nlohmann::json response_json(const CompletionRequest& request, const ResponseIds& ids,
                             const CompletionResult& result);
// One chunk of a stream: a text delta (finish_reason null), or the last one (finish_reason set, text
// possibly empty). `first` adds the chat role delta.
nlohmann::json chunk_json(const CompletionRequest& request, const ResponseIds& ids, const std::string& text,
                          const std::string& finish_reason, bool first);
// The usage chunk of stream_options.include_usage: choices empty.
nlohmann::json usage_chunk_json(const CompletionRequest& request, const ResponseIds& ids,
                                const CompletionResult& result);

}  // namespace emo::serve
