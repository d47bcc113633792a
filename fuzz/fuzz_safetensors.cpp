// A safetensors file: the header (JSON, offsets, dtypes, shapes) and then every tensor's data view read
// through read_fp32, so an offset the header check let through would be read out of the mapping.
#include "fuzz_input.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = emo::fuzz::write_input("model.safetensors", data, size);
  return emo::fuzz::run_parser([&] {
    const auto file = emo::SafetensorsFile::open(path);
    for (const auto& [name, info] : file.tensors()) {
      if (info.nbytes > (size_t{1} << 24)) continue;  // the fp32 copy, not the parser, would be large
      const bool floating =
          info.dtype == emo::DType::kF32 || info.dtype == emo::DType::kBF16 || info.dtype == emo::DType::kF16;
      if (floating) file.read_fp32(name);
    }
  });
}
