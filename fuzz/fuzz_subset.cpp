// An expert subset file, checked against a small MoE config (2 layers of 8 experts, 1 shared).
#include "fuzz_input.h"
#include "select/subset.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const emo::ModelConfig config = [] {
    emo::ModelConfig c;
    c.num_hidden_layers = 2;
    c.num_experts = 8;
    c.num_shared_experts = 1;
    c.num_experts_per_tok = 2;
    return c;
  }();
  const std::string path = emo::fuzz::write_input("subset.json", data, size);
  return emo::fuzz::run_parser([&] { emo::ExpertSubset::load(path, config).to_json(); });
}
