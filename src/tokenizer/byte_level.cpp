#include "tokenizer/byte_level.h"

#include <array>
#include <cstdint>

namespace emo::byte_level {
namespace {

struct Tables {
  std::array<std::string, 256> char_of_byte;   // UTF-8 of the character for each byte
  std::array<int16_t, 324> byte_of_codepoint;  // -1 for codepoints outside the mapping
};

bool maps_to_itself(int b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

std::string utf8_of(uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else {  // the mapping never goes past U+0143, so two bytes suffice
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

Tables make_tables() {
  Tables t;
  t.byte_of_codepoint.fill(-1);
  int next_extra = 0;
  for (int b = 0; b < 256; ++b) {
    uint32_t cp = maps_to_itself(b) ? b : 256 + next_extra++;
    t.char_of_byte[b] = utf8_of(cp);
    t.byte_of_codepoint[cp] = static_cast<int16_t>(b);
  }
  return t;
}

const Tables& tables() {
  static const Tables t = make_tables();
  return t;
}

}  // namespace

std::string encode(std::string_view bytes) {
  const Tables& t = tables();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += t.char_of_byte[b];
  return out;
}

std::optional<std::string> decode(std::string_view text) {
  const Tables& t = tables();
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    auto c0 = static_cast<unsigned char>(text[i]);
    uint32_t cp;
    if (c0 < 0x80) {
      cp = c0;
      i += 1;
    } else if ((c0 & 0xE0) == 0xC0 && i + 1 < text.size()) {
      cp = ((c0 & 0x1F) << 6) | (static_cast<unsigned char>(text[i + 1]) & 0x3F);
      i += 2;
    } else {
      return std::nullopt;  // three- and four-byte characters are never part of the mapping
    }
    if (cp >= t.byte_of_codepoint.size() || t.byte_of_codepoint[cp] < 0) return std::nullopt;
    out += static_cast<char>(t.byte_of_codepoint[cp]);
  }
  return out;
}

}  // namespace emo::byte_level
