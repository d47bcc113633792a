// The regex split pre-tokenizer: cuts text into the pieces BPE works on. PCRE2 with UTF + UCP gives the
// Unicode classes (\p{L}, \p{N}, \s) that cl100k's pattern needs, JIT-compiled. With PCRE2_MATCH_INVALID_UTF
// the pattern runs over any bytes; invalid UTF-8 is never inside a match, and the stretches between matches
// are handed out as pieces too, so the pieces always cover the whole text.
#pragma once

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <string>
#include <string_view>

namespace emo {

class PreTokenizer {
 public:
  // `source` names where the pattern came from, for the error when it does not compile.
  PreTokenizer(const std::string& pattern, const std::string& source);
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  // Calls on_piece(std::string_view) for each piece of `text`, in order; the pieces concatenate to `text`.
  template <typename OnPiece>
  void split(std::string_view text, OnPiece&& on_piece) const {
    pcre2_match_data* match = thread_match_data();
    auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t done = 0, offset = 0;
    while (offset < text.size()) {
      if (pcre2_match(code_, subject, text.size(), offset, 0, match, nullptr) < 0) break;
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
      size_t begin = ovector[0], end = ovector[1];
      if (begin > done) on_piece(text.substr(done, begin - done));
      if (end == begin) {  // empty match: move on; the skipped byte joins the next gap
        offset = end + 1;
        done = begin;
        continue;
      }
      on_piece(text.substr(begin, end - begin));
      done = offset = end;
    }
    if (done < text.size()) on_piece(text.substr(done));
  }

 private:
  static pcre2_match_data* thread_match_data();
  pcre2_code* code_ = nullptr;
};

}  // namespace emo
