// A corpus split in JSON Lines ({"id", "domain", "source", "text"} per line).
#include "data/corpus.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = emo::fuzz::write_input("train.jsonl", data, size);
  return emo::fuzz::run_parser([&] { emo::data::read_corpus_jsonl(path); });
}
