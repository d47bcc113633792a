#include "infer/text_stream.h"

#include <algorithm>
#include <cstdint>

namespace emo {

std::optional<size_t> invalid_utf8_at(std::string_view text) {
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(text[i]);
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = 2, cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3, cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4, cp = c & 0x07;
    } else {
      return i;
    }
    if (i + len > n) return i;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(text[i + k]);
      if ((cc & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, surrogates and code points past U+10FFFF.
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return i;
    i += len;
  }
  return std::nullopt;
}

size_t incomplete_utf8_tail(std::string_view text) {
  // Look back at most 3 bytes for a lead byte whose sequence runs past the end.
  for (size_t back = 1; back <= std::min<size_t>(3, text.size()); ++back) {
    const auto c = static_cast<unsigned char>(text[text.size() - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return len > back ? back : 0;
  }
  return 0;
}

std::string TextStream::push(std::string_view bytes) {
  if (stopped_) return "";
  pending_.append(bytes);
  for (const std::string& s : stop_) {
    const size_t at = pending_.find(s);
    if (at != std::string::npos) {
      pending_.resize(at);
      stopped_ = true;
    }
  }
  if (stopped_) return finish();
  // Hold back the longest tail that is a proper prefix of a stop string, and an incomplete character.
  size_t hold = incomplete_utf8_tail(pending_);
  for (const std::string& s : stop_)
    for (size_t k = std::min(s.size() - 1, pending_.size()); k > hold; --k)
      if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  std::string out = replace_invalid_utf8(std::string_view(pending_).substr(0, pending_.size() - hold));
  pending_.erase(0, pending_.size() - hold);
  sent_ += out;
  return out;
}

std::string TextStream::finish() {
  std::string out = replace_invalid_utf8(pending_);
  pending_.clear();
  sent_ += out;
  return out;
}

std::string replace_invalid_utf8(std::string_view text) {
  // Invalid bytes (a token that splits a character the model never completed) become U+FFFD.
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    auto bad = invalid_utf8_at(text.substr(i));
    if (!bad) {
      out.append(text.substr(i));
      break;
    }
    out.append(text.substr(i, *bad));
    out += "\xEF\xBF\xBD";
    i += *bad + 1;
  }
  return out;
}

}  // namespace emo
