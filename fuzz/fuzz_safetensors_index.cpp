// model.safetensors.index.json of a sharded checkpoint: the input is the index, the directory holds two
// real shards (written once), so weight maps naming them, missing files or other paths are all reachable.
#include "fuzz_input.h"
#include "io/safetensors.h"

namespace {

const std::filesystem::path& model_dir() {
  static const std::filesystem::path dir = [] {
    auto path = emo::fuzz::scratch_dir() / "sharded";
    std::filesystem::create_directories(path);
    const float a[4] = {1, 2, 3, 4}, b[2] = {5, 6};
    emo::write_safetensors((path / "model-00001-of-00002.safetensors").string(),
                           {emo::SafetensorsEntry("a.weight", emo::DType::kF32, {2, 2}, a)});
    emo::write_safetensors((path / "model-00002-of-00002.safetensors").string(),
                           {emo::SafetensorsEntry("b.weight", emo::DType::kBF16, {2}, b)});
    return path;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& dir = model_dir();
  {
    std::ofstream out(dir / emo::SafetensorsCheckpoint::kIndexFile, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  return emo::fuzz::run_parser([&] {
    const auto checkpoint = emo::SafetensorsCheckpoint::open(dir.string());
    for (const auto& name : checkpoint.names()) checkpoint.read_fp32(name);
  });
}
