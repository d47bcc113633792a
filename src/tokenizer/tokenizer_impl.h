// Internal state of emo::Tokenizer, shared by the encoder (tokenizer.cpp) and the tokenizer.json reader and
// writer (tokenizer_json.cpp). Not part of the public interface.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace emo {

// Merge table: (left id, right id) -> (rank, merged id), open addressing over 64-bit keys. The BPE inner loop
// looks pairs up millions of times per second, so it avoids std::unordered_map's node chasing.
class MergeTable {
 public:
  struct Entry {
    uint64_t key = kEmpty;
    int32_t rank = 0, merged = 0;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};

  void reserve(size_t n);
  // Returns false when the pair is already present (the first, lowest rank, wins).
  bool insert(int32_t left, int32_t right, int32_t rank, int32_t merged);
  const Entry* find(int32_t left, int32_t right) const {
    uint64_t key = pack(left, right);
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      const Entry& e = slots_[i];
      if (e.key == key) return &e;
      if (e.key == kEmpty) return nullptr;
    }
  }

 private:
  static uint64_t pack(int32_t left, int32_t right) {
    return (uint64_t{static_cast<uint32_t>(left)} << 32) | static_cast<uint32_t>(right);
  }
  size_t slot(uint64_t key) const { return (key * 0x9E3779B97F4A7C15ull) >> shift_; }

  std::vector<Entry> slots_;
  size_t mask_ = 0;
  int shift_ = 64;
};

struct Tokenizer::Impl {
  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  // Vocabulary: raw bytes of each id (added tokens: their content); `present` marks ids in use.
  std::vector<std::string> token_bytes;
  std::vector<bool> present;
  std::unordered_map<std::string, int32_t> id_of_bytes;  // BPE tokens only
  std::array<int32_t, 256> byte_id{};                    // id of each single byte
  std::vector<std::pair<int32_t, int32_t>> merges;       // in rank order
  MergeTable merge_table;
  bool ignore_merges = false;  // HF option: a piece that is itself a token skips the merges

  std::string pattern;
  std::unique_ptr<PreTokenizer> pre_tokenizer;

  std::vector<AddedToken> added;
  std::unordered_map<std::string, int32_t> id_of_added;
  // Added tokens by first byte, longest first, for leftmost-longest matching.
  std::array<std::vector<int32_t>, 256> added_by_first_byte;
  std::array<bool, 256> added_first_byte{};

  uint64_t serial = 0;  // distinguishes tokenizers in the per-thread piece caches

  // Finishes construction: merge table, regex, added token index. `source` names the input in errors.
  void build(const std::string& source);

  void encode_into(std::string_view text, bool match_added, std::vector<int32_t>& out) const;
  void encode_text(std::string_view text, std::vector<int32_t>& out) const;
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
  void bpe(std::string_view piece, std::vector<int32_t>& out) const;
  void bpe_small(std::vector<int32_t>& ids) const;
  void bpe_large(std::vector<int32_t>& ids) const;
};

}  // namespace emo
