// A training configuration file (emo train --config).
#include "fuzz_input.h"
#include "train/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = emo::fuzz::write_input("run.json", data, size);
  return emo::fuzz::run_parser([&] { emo::TrainConfig::load(path).validate(path); });
}
