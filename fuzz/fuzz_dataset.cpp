// A tokenised dataset .bin: opened (header, checksums, offsets, ids checked), then every document read.
#include "data/dataset.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = emo::fuzz::write_input("train.bin", data, size);
  return emo::fuzz::run_parser([&] {
    const auto dataset = emo::data::Dataset::open(path);
    uint64_t sum = 0;
    for (int64_t d = 0; d < dataset.num_documents(); ++d) {
      for (uint32_t token : dataset.document(d)) sum += token;
      sum += dataset.domain_of(d);
    }
    if (sum == 1) std::abort();  // keeps the reads from being optimised away; never true of real data
  });
}
