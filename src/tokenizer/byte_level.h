// The GPT-2 "ByteLevel" mapping of Hugging Face tokenizers: every byte is shown as one printable Unicode
// character, so that vocab and merges in tokenizer.json are plain text. Printable Latin-1 bytes map to
// themselves; the other 68 bytes map to U+0100.. in byte order (space becomes "Ġ", newline "Ċ").
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace emo::byte_level {

// The UTF-8 text of the character standing for each byte.
std::string encode(std::string_view bytes);
// The bytes behind a ByteLevel string; nullopt when it holds a character outside the 256 of the mapping
// (or is not valid UTF-8).
std::optional<std::string> decode(std::string_view text);

}  // namespace emo::byte_level
