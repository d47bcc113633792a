// How a chat (a list of messages) becomes the prompt of a model that only continues text. Not Hugging
// Face's Jinja: a fixed shape that covers the common formats, each message = prefix + content + suffix by
// role, then the generation prompt; built in: "plain" (the default, for base models) and "chatml"; any
// other in a small JSON file (docs/serve.md). The template's pieces are encoded with the tokenizer's added
// tokens recognised (so "<|im_start|>" is one token), the messages' contents as ordinary text (a user cannot
// forge a role marker), and every message on its own, so that a later turn repeats the earlier turns' tokens
// exactly and the server can reuse their KV cache.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "serve/openai.h"
#include "tokenizer/tokenizer.h"

namespace emo::serve {

struct ChatTemplate {
  struct Role {
    std::string prefix, suffix;
  };
  std::string name;
  std::string begin;  // once before the first message (e.g. a BOS token's text)
  Role system, user, assistant;
  std::string generation_prompt;  // after the last message: where the model's reply starts
  std::vector<std::string> stop;  // stop strings every chat request gets besides its own

  // "plain": "System text\n\nUser: ...\nAssistant: ...\n" ending in "Assistant:", stop "\nUser:".
  static ChatTemplate plain();
  // "<|im_start|>role\ncontent<|im_end|>\n" ending in "<|im_start|>assistant\n", stop "<|im_end|>".
  static ChatTemplate chatml();
  // A built-in name, or a JSON file {"begin", "system": {"prefix", "suffix"}, "user", "assistant",
  // "generation_prompt", "stop"} (every key optional but "user" and "assistant"). Throws emo::Error naming
  // the file and the key.
  static ChatTemplate load(const std::string& name_or_path);

  // The prompt's tokens ("developer" messages take the system role).
  std::vector<int32_t> render(const std::vector<ChatMessage>& messages, const Tokenizer& tokenizer) const;
  // The same as text (for documentation and tests).
  std::string render_text(const std::vector<ChatMessage>& messages) const;
};

}  // namespace emo::serve
