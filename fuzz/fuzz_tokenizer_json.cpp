// A Hugging Face tokenizer.json: parsed, and when accepted, a short text encoded and decoded with it.
#include "fuzz_input.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return emo::fuzz::run_parser([&] {
    const auto tokenizer = emo::Tokenizer::from_json_text(emo::fuzz::as_text(data, size), "tokenizer.json");
    const auto ids = tokenizer.encode("Hello, world! <|endoftext|> 123 \xff");
    tokenizer.decode(ids);
  });
}
