#include "tokenizer/pre_tokenizer.h"

#include "core/error.h"

namespace emo {

PreTokenizer::PreTokenizer(const std::string& pattern, const std::string& source) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                        PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error_code, &error_offset, nullptr);
  if (!code_) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof message);
    fail_at("tokenizer", source, cat("pre-tokenizer regex, character ", error_offset),
            cat("cannot compile: ", reinterpret_cast<const char*>(message)));
  }
  pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter when JIT is unavailable
}

PreTokenizer::~PreTokenizer() {
  pcre2_code_free(code_);
}

pcre2_match_data* PreTokenizer::thread_match_data() {
  // Only the whole match is read, so one ovector pair is enough, and one block serves every pattern.
  struct Holder {
    pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
    ~Holder() { pcre2_match_data_free(data); }
  };
  thread_local Holder holder;
  return holder.data;
}

}  // namespace emo
