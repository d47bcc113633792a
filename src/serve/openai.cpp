#include "serve/openai.h"

#include <algorithm>
#include <set>

#include "core/error.h"
#include "io/json_file.h"

namespace emo::serve {
namespace {

using nlohmann::json;

json null_or(const std::string& s) {
  return s.empty() ? json(nullptr) : json(s);
}

// Fields OpenAI defines that emo accepts only at their neutral value (anything else would be ignored
// silently, so it is refused).
void check_neutral(const json& body, const std::string& key, const json& neutral) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null() || *it == neutral) return;
  reject(400, key, "'" + key + "' is not supported by emo serve (only " + neutral.dump() + ")",
         "unsupported_parameter");
}

double number_in(const json& body, const std::string& key, double lo, double hi, double fallback) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return fallback;
  if (!it->is_number())
    reject(400, key, "'" + key + "' must be a number, not " + json_kind(*it), "invalid_type");
  const double v = it->get<double>();
  if (!(v >= lo && v <= hi))
    reject(400, key, cat("'", key, "' is ", v, ", outside [", lo, ", ", hi, "]"), "invalid_value");
  return v;
}

std::optional<int64_t> integer_in(const json& body, const std::string& key, int64_t lo, int64_t hi) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer())
    reject(400, key, "'" + key + "' must be an integer, not " + json_kind(*it), "invalid_type");
  // Unsigned values above int64's range would wrap: compare as unsigned first.
  if (it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(hi))
    reject(400, key, cat("'", key, "' is above ", hi), "invalid_value");
  const int64_t v = it->get<int64_t>();
  if (v < lo || v > hi)
    reject(400, key, cat("'", key, "' is ", v, ", outside [", lo, ", ", hi, "]"), "invalid_value");
  return v;
}

bool boolean(const json& body, const std::string& key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return false;
  if (!it->is_boolean())
    reject(400, key, "'" + key + "' must be a boolean, not " + json_kind(*it), "invalid_type");
  return it->get<bool>();
}

std::vector<std::string> parse_stop(const json& body) {
  auto it = body.find("stop");
  if (it == body.end() || it->is_null()) return {};
  std::vector<std::string> stop;
  if (it->is_string()) {
    stop.push_back(it->get<std::string>());
  } else if (it->is_array()) {
    if (it->size() > 4) reject(400, "stop", "'stop' holds at most 4 strings", "invalid_value");
    for (const json& s : *it) {
      if (!s.is_string())
        reject(400, "stop", "'stop' must be a string or an array of strings", "invalid_type");
      stop.push_back(s.get<std::string>());
    }
  } else {
    reject(400, "stop", "'stop' must be a string or an array of strings, not " + json_kind(*it),
           "invalid_type");
  }
  for (const std::string& s : stop)
    if (s.empty()) reject(400, "stop", "'stop' holds an empty string", "invalid_value");
  return stop;
}

ExpertsChoice parse_experts(const json& body) {
  ExpertsChoice choice;
  auto it = body.find("experts");
  if (it == body.end() || it->is_null()) return choice;
  if (it->is_string()) {
    const std::string name = it->get<std::string>();
    if (name.empty()) reject(400, "experts", "'experts' is an empty string", "invalid_value");
    if (name == "auto") {
      choice.kind = ExpertsChoice::Kind::kAuto;
    } else if (name == "all") {
      choice.kind = ExpertsChoice::Kind::kDefault;
      choice.name = "all";
    } else {
      choice.kind = ExpertsChoice::Kind::kNamed;
      choice.name = name;
    }
    return choice;
  }
  if (!it->is_object())
    reject(400, "experts",
           "'experts' must be \"auto\", \"all\", a pack name or {\"keep_k\", \"examples\"}, not " +
               json_kind(*it),
           "invalid_type");
  for (const auto& [key, value] : it->items()) {
    if (key != "keep_k" && key != "examples")
      reject(400, "experts." + key, "unknown field '" + key + "' in 'experts' (known: keep_k, examples)",
             "unknown_parameter");
  }
  choice.kind = ExpertsChoice::Kind::kAuto;
  if (it->contains("keep_k") && !it->at("keep_k").is_null()) {
    const json& k = it->at("keep_k");
    if (!k.is_number_integer() || k.get<int64_t>() < 1 || k.get<int64_t>() > (1 << 20))
      reject(400, "experts.keep_k", "'experts.keep_k' must be a positive integer", "invalid_value");
    choice.keep_k = k.get<int64_t>();
  }
  if (it->contains("examples") && !it->at("examples").is_null()) {
    const json& examples = it->at("examples");
    if (!examples.is_array() || examples.empty())
      reject(400, "experts.examples", "'experts.examples' must be a non-empty array of strings",
             "invalid_type");
    for (const json& e : examples) {
      if (!e.is_string() || e.get<std::string>().empty())
        reject(400, "experts.examples", "'experts.examples' must hold non-empty strings", "invalid_type");
      choice.examples.push_back(e.get<std::string>());
    }
    choice.kind = ExpertsChoice::Kind::kExamples;
  }
  return choice;
}

std::string message_content(const json& message, size_t index) {
  const std::string param = cat("messages[", index, "].content");
  auto it = message.find("content");
  if (it == message.end() || it->is_null()) reject(400, param, "'" + param + "' is missing", "invalid_value");
  if (it->is_string()) return it->get<std::string>();
  if (!it->is_array())
    reject(400, param, "'" + param + "' must be a string or an array of text parts, not " + json_kind(*it),
           "invalid_type");
  // Content parts: only text ones (images and audio need a model that has them).
  std::string text;
  for (const json& part : *it) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
        !part.at("text").is_string())
      reject(400, param, "'" + param + "' parts must be {\"type\": \"text\", \"text\": string}",
             "invalid_type");
    text += part.at("text").get<std::string>();
  }
  return text;
}

std::vector<ChatMessage> parse_messages(const json& body) {
  auto it = body.find("messages");
  if (it == body.end() || it->is_null())
    reject(400, "messages", "'messages' is missing", "missing_required_parameter");
  if (!it->is_array())
    reject(400, "messages", "'messages' must be an array, not " + json_kind(*it), "invalid_type");
  if (it->empty()) reject(400, "messages", "'messages' is empty", "invalid_value");
  static const std::set<std::string> roles = {"system", "developer", "user", "assistant"};
  std::vector<ChatMessage> messages;
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string param = cat("messages[", i, "]");
    if (!m.is_object())
      reject(400, param, "'" + param + "' must be an object, not " + json_kind(m), "invalid_type");
    auto role = m.find("role");
    if (role == m.end() || !role->is_string() || !roles.count(role->get<std::string>()))
      reject(400, param + ".role", "'" + param + ".role' must be one of system, developer, user, assistant",
             "invalid_value");
    for (const auto& [key, value] : m.items())
      if (key != "role" && key != "content" && key != "name")
        reject(400, param + "." + key, "'" + param + "." + key + "' is not supported",
               "unsupported_parameter");
    messages.push_back({role->get<std::string>(), message_content(m, i)});
  }
  return messages;
}

void parse_prompt(const json& body, CompletionRequest& request) {
  auto it = body.find("prompt");
  if (it == body.end() || it->is_null())
    reject(400, "prompt", "'prompt' is missing", "missing_required_parameter");
  if (it->is_string()) {
    request.prompt_text = it->get<std::string>();
  } else if (it->is_array() && it->size() == 1 && (*it)[0].is_string()) {
    request.prompt_text = (*it)[0].get<std::string>();
  } else if (it->is_array() && !it->empty() &&
             std::all_of(it->begin(), it->end(), [](const json& t) { return t.is_number_integer(); })) {
    for (const json& t : *it) {
      if (t.get<int64_t>() < 0 || t.get<int64_t>() > INT32_MAX)
        reject(400, "prompt",
               cat("'prompt' holds the token id ", t.dump(), ", which is negative or too large"),
               "invalid_value");
      request.prompt_tokens.push_back(t.get<int32_t>());
    }
  } else if (it->is_array() && it->size() > 1) {
    reject(400, "prompt", "'prompt' holds several prompts; emo serve takes one per request",
           "unsupported_value");
  } else {
    reject(400, "prompt", "'prompt' must be a string or an array of token ids, not " + json_kind(*it),
           "invalid_type");
  }
  if (request.prompt_text && request.prompt_text->empty())
    reject(400, "prompt", "'prompt' is empty", "invalid_value");
}

}  // namespace

nlohmann::json ApiError::to_json() const {
  return {
      {"error", {{"message", message}, {"type", type}, {"param", null_or(param)}, {"code", null_or(code)}}}};
}

void reject(int status, const std::string& param, const std::string& message, const std::string& code,
            const std::string& type) {
  ApiError error;
  error.status = status;
  error.param = param;
  error.message = message;
  error.code = code;
  error.type = type;
  throw error;
}

CompletionRequest parse_completion_request(std::string_view body, bool chat) {
  if (auto at = invalid_utf8_at(body))
    reject(400, "", cat("the request body is not valid UTF-8 (byte ", *at, ")"), "invalid_utf8");
  json j;
  try {
    j = parse_json(body, "request body", "serve");
  } catch (const Error& e) {
    reject(400, "", std::string("the request body is not valid JSON: ") + e.what(), "invalid_json");
  }
  if (!j.is_object())
    reject(400, "", "the request body must be a JSON object, not " + json_kind(j), "invalid_json");

  static const std::set<std::string> common = {"model",
                                               "max_tokens",
                                               "temperature",
                                               "top_p",
                                               "top_k",
                                               "seed",
                                               "stop",
                                               "stream",
                                               "stream_options",
                                               "n",
                                               "logprobs",
                                               "experts",
                                               "user",
                                               "frequency_penalty",
                                               "presence_penalty",
                                               "logit_bias"};
  static const std::set<std::string> completions_only = {"prompt", "echo", "best_of", "suffix"};
  static const std::set<std::string> chat_only = {"messages", "max_completion_tokens", "top_logprobs"};
  for (const auto& [key, value] : j.items()) {
    const bool known = common.count(key) || (chat ? chat_only.count(key) : completions_only.count(key));
    if (!known) reject(400, key, "Unrecognized request argument supplied: " + key, "unknown_parameter");
  }

  CompletionRequest request;
  request.chat = chat;
  if (j.contains("model") && !j["model"].is_null()) {
    if (!j["model"].is_string())
      reject(400, "model", "'model' must be a string, not " + json_kind(j["model"]), "invalid_type");
    request.model = j["model"].get<std::string>();
  }
  if (auto n = integer_in(j, "n", 1, 1 << 20); n && *n != 1)
    reject(400, "n", cat("'n' is ", *n, "; emo serve returns one choice per request (n=1)"),
           "unsupported_value");
  check_neutral(j, "logprobs", chat ? json(false) : json(nullptr));
  check_neutral(j, "top_logprobs", json(0));
  check_neutral(j, "echo", json(false));
  check_neutral(j, "best_of", json(1));
  check_neutral(j, "suffix", json(nullptr));
  check_neutral(j, "frequency_penalty", json(0));
  check_neutral(j, "presence_penalty", json(0));
  check_neutral(j, "logit_bias", json::object());
  if (j.contains("user") && !j["user"].is_null() && !j["user"].is_string())
    reject(400, "user", "'user' must be a string", "invalid_type");

  if (chat)
    request.messages = parse_messages(j);
  else
    parse_prompt(j, request);
  request.max_tokens = integer_in(j, "max_tokens", 1, INT32_MAX);
  if (chat) {
    if (auto m = integer_in(j, "max_completion_tokens", 1, INT32_MAX)) request.max_tokens = m;
  }
  request.sampling.temperature = number_in(j, "temperature", 0.0, 2.0, 1.0);
  request.sampling.top_p = number_in(j, "top_p", 0.0, 1.0, 1.0);
  if (request.sampling.top_p == 0.0) reject(400, "top_p", "'top_p' must be above 0", "invalid_value");
  request.sampling.top_k = integer_in(j, "top_k", 0, INT32_MAX).value_or(0);
  if (auto seed = integer_in(j, "seed", INT64_MIN, INT64_MAX)) {
    request.sampling.seed = static_cast<uint64_t>(*seed);
    request.seeded = true;
  }
  request.stop = parse_stop(j);
  request.stream = boolean(j, "stream");
  if (j.contains("stream_options") && !j["stream_options"].is_null()) {
    const json& options = j["stream_options"];
    if (!options.is_object())
      reject(400, "stream_options", "'stream_options' must be an object", "invalid_type");
    for (const auto& [key, value] : options.items())
      if (key != "include_usage")
        reject(400, "stream_options." + key, "unknown field '" + key + "' in 'stream_options'",
               "unknown_parameter");
    if (!request.stream)
      reject(400, "stream_options", "'stream_options' is only allowed with 'stream': true", "invalid_value");
    request.include_usage = boolean(options, "include_usage");
  }
  request.experts = parse_experts(j);
  return request;
}

nlohmann::json usage_json(const CompletionResult& result) {
  return {{"prompt_tokens", result.prompt_tokens},
          {"completion_tokens", result.completion_tokens},
          {"total_tokens", result.prompt_tokens + result.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", result.cached_tokens}}}};
}

nlohmann::json response_json(const CompletionRequest& request, const ResponseIds& ids,
                             const CompletionResult& result) {
  json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", result.finish_reason}};
  if (request.chat)
    choice["message"] = {{"role", "assistant"}, {"content", result.text}, {"refusal", nullptr}};
  else
    choice["text"] = result.text;
  return {{"id", ids.id},
          {"object", request.chat ? "chat.completion" : "text_completion"},
          {"created", ids.created},
          {"model", ids.model},
          {"system_fingerprint", nullptr},
          {"choices", json::array({choice})},
          {"usage", usage_json(result)},
          {"experts", result.experts}};
}

nlohmann::json chunk_json(const CompletionRequest& request, const ResponseIds& ids, const std::string& text,
                          const std::string& finish_reason, bool first) {
  json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", null_or(finish_reason)}};
  if (request.chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || (first && finish_reason.empty())) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  json chunk = {{"id", ids.id},
                {"object", request.chat ? "chat.completion.chunk" : "text_completion"},
                {"created", ids.created},
                {"model", ids.model},
                {"system_fingerprint", nullptr},
                {"choices", json::array({choice})}};
  if (request.include_usage) chunk["usage"] = nullptr;
  return chunk;
}

nlohmann::json usage_chunk_json(const CompletionRequest& request, const ResponseIds& ids,
                                const CompletionResult& result) {
  return {{"id", ids.id},
          {"object", request.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", ids.created},
          {"model", ids.model},
          {"system_fingerprint", nullptr},
          {"choices", json::array()},
          {"usage", usage_json(result)},
          {"experts", result.experts}};
}

}  // namespace emo::serve
