// A tiktoken ranks file (lines "<base64 bytes> <rank>").
#include "fuzz_input.h"
#include "tokenizer/dolma2.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = emo::fuzz::write_input("ranks.tiktoken", data, size);
  return emo::fuzz::run_parser([&] { emo::load_tiktoken_ranks(path); });
}
