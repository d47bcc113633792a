#include "serve/chat_template.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "io/json_file.h"

namespace emo::serve {
namespace {

constexpr const char* kOp = "chat-template";

const ChatTemplate::Role& role_of(const ChatTemplate& t, const std::string& role) {
  if (role == "system" || role == "developer") return t.system;
  if (role == "assistant") return t.assistant;
  return t.user;
}

ChatTemplate::Role role_from(const nlohmann::json& j, const std::string& key, const std::string& path,
                             bool required) {
  if (!j.contains(key)) {
    if (required) fail_file(kOp, path, "key '" + key + "': missing");
    return {};
  }
  const nlohmann::json& role = j.at(key);
  if (!role.is_object()) fail_file(kOp, path, "key '" + key + "': expected an object {prefix, suffix}");
  for (const auto& [k, v] : role.items())
    if (k != "prefix" && k != "suffix") fail_file(kOp, path, "key '" + key + "." + k + "': unknown");
  return {json_get_or<std::string>(role, "prefix", "", path + ": " + key),
          json_get_or<std::string>(role, "suffix", "", path + ": " + key)};
}

}  // namespace

ChatTemplate ChatTemplate::plain() {
  ChatTemplate t;
  t.name = "plain";
  t.system = {"", "\n\n"};
  t.user = {"User: ", "\n"};
  t.assistant = {"Assistant: ", "\n"};
  t.generation_prompt = "Assistant:";
  t.stop = {"\nUser:"};
  return t;
}

ChatTemplate ChatTemplate::chatml() {
  ChatTemplate t;
  t.name = "chatml";
  t.system = {"<|im_start|>system\n", "<|im_end|>\n"};
  t.user = {"<|im_start|>user\n", "<|im_end|>\n"};
  t.assistant = {"<|im_start|>assistant\n", "<|im_end|>\n"};
  t.generation_prompt = "<|im_start|>assistant\n";
  t.stop = {"<|im_end|>"};
  return t;
}

ChatTemplate ChatTemplate::load(const std::string& name_or_path) {
  if (name_or_path == "plain") return plain();
  if (name_or_path == "chatml") return chatml();
  if (!std::filesystem::is_regular_file(name_or_path))
    fail_file(kOp, name_or_path, "not a file, nor a built-in template (plain, chatml)");
  const nlohmann::json j = read_json_file(name_or_path, kOp);
  if (!j.is_object()) fail_file(kOp, name_or_path, "expected a JSON object");
  static const char* known[] = {"begin", "system", "user", "assistant", "generation_prompt", "stop"};
  for (const auto& [key, value] : j.items())
    if (std::find(std::begin(known), std::end(known), key) == std::end(known))
      fail_file(
          kOp, name_or_path,
          "key '" + key + "': unknown (known: begin, system, user, assistant, generation_prompt, stop)");
  ChatTemplate t;
  t.name = name_or_path;
  t.begin = json_get_or<std::string>(j, "begin", "", name_or_path);
  t.system = role_from(j, "system", name_or_path, false);
  t.user = role_from(j, "user", name_or_path, true);
  t.assistant = role_from(j, "assistant", name_or_path, true);
  t.generation_prompt = json_get_or<std::string>(j, "generation_prompt", "", name_or_path);
  t.stop = json_get_or<std::vector<std::string>>(j, "stop", {}, name_or_path);
  for (const std::string& s : t.stop)
    if (s.empty()) fail_file(kOp, name_or_path, "key 'stop': holds an empty string");
  return t;
}

std::vector<int32_t> ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                          const Tokenizer& tokenizer) const {
  std::vector<int32_t> tokens;
  auto add = [&](const std::vector<int32_t>& piece) {
    tokens.insert(tokens.end(), piece.begin(), piece.end());
  };
  if (!begin.empty()) add(tokenizer.encode(begin));
  for (const ChatMessage& m : messages) {
    const Role& role = role_of(*this, m.role);
    if (!role.prefix.empty()) add(tokenizer.encode(role.prefix));
    if (!m.content.empty()) add(tokenizer.encode_ordinary(m.content));
    if (!role.suffix.empty()) add(tokenizer.encode(role.suffix));
  }
  if (!generation_prompt.empty()) add(tokenizer.encode(generation_prompt));
  return tokens;
}

std::string ChatTemplate::render_text(const std::vector<ChatMessage>& messages) const {
  std::string text = begin;
  for (const ChatMessage& m : messages) {
    const Role& role = role_of(*this, m.role);
    text += role.prefix + m.content + role.suffix;
  }
  return text + generation_prompt;
}

}  // namespace emo::serve
