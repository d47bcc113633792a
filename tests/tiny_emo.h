// A tiny EMO checkpoint with a real tokenizer beside it, for the tests that need a model on disk (pull,
// serve), and the per-test scratch directory they write it into.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>

#include "model/model.h"

namespace emo::test {

inline const std::string kTrainedTokenizer =
    std::string(EMO_SOURCE_DIR) + "/fuzz/corpus/tokenizer_json/trained300.json";

// A directory of its own per process and test case (ctest runs cases in parallel), removed at the end.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& prefix) {
    path = std::filesystem::temp_directory_path() /
           (prefix + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

// V=300 (the tokenizer's; another vocab_size makes a model the tokenizer does not fit), d=16 (or
// hidden_size), L=3, E=10 (9 routed + 1 shared), K=3, context 64, EOS 298; weights scaled so routing is far
// from uniform. Saved in shards of at most 24 kB, with the tokenizer beside it. `intermediate` (expert width)
// and `max_shard_bytes` make experts large enough to span many pages.
inline void write_tiny_emo(const std::string& dir, int64_t intermediate = 12,
                           int64_t max_shard_bytes = 24'000, int64_t vocab_size = 300, uint64_t seed = 5,
                           int64_t hidden_size = 16) {
  ModelConfig c;
  c.model_type = "emo";
  c.vocab_size = vocab_size;
  c.hidden_size = hidden_size;
  c.intermediate_size = intermediate;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.max_position_embeddings = 64;
  c.eos_token_id = std::min<int64_t>(298, vocab_size - 2);
  c.pad_token_id = std::min<int64_t>(299, vocab_size - 1);
  c.num_experts = 10;
  c.num_experts_per_tok = 3;
  c.num_shared_experts = 1;
  Model model(c);
  model.init_weights(seed);
  for (Param& p : model.params())
    if (p.value->ndim() > 1)
      for (float& w : p.value->vec()) w *= 12.0f;
  model.save(dir, "float32", max_shard_bytes);
  std::filesystem::copy_file(kTrainedTokenizer, std::filesystem::path(dir) / "tokenizer.json");
  std::ofstream(std::filesystem::path(dir) / "tokenizer_config.json")
      << "{\"eos_token\": \"<|endoftext|>\"}\n";
}

}  // namespace emo::test
