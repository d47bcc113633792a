// A model's config.json: parsed, then validated as Model::load does before it sizes anything.
#include "fuzz_input.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = emo::fuzz::write_input("config.json", data, size);
  return emo::fuzz::run_parser([&] {
    const auto config = emo::ModelConfig::load(path);
    config.validate(path);
    config.to_json();
  });
}
