// A byte-level BPE tokenizer compatible with Hugging Face `tokenizers` (the tokenizer.json format): a regex
// split pre-tokenizer (PCRE2, Unicode classes), the GPT-2 ByteLevel byte<->character mapping, BPE merges by
// rank, and added/special tokens that are matched before BPE and never split. Encodes any byte string,
// including invalid UTF-8: decode(encode(x)) == x for every byte string x (an added token decodes to its
// content).
//
// The tokenizer is immutable once built and cheap to copy (shared state); encode is safe from many threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace emo {

// One entry of tokenizer.json's "added_tokens".
struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = true;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false;
};

class Tokenizer {
 public:
  // Reads a Hugging Face tokenizer.json (BPE model, ByteLevel); throws emo::Error naming the file and the
  // problem.
  static Tokenizer load(const std::string& tokenizer_json_path);
  // Parses tokenizer.json text; `source` names it in error messages.
  static Tokenizer from_json_text(std::string_view json_text, const std::string& source);
  // Builds a tokenizer from parts: token bytes by id (raw bytes, not ByteLevel characters; an empty string
  // marks an unused id), merges as id pairs in rank order (each pair must concatenate to a token), the split
  // regex, and added tokens (their ids may lie past token_bytes).
  static Tokenizer from_parts(std::vector<std::string> token_bytes,
                              std::vector<std::pair<int32_t, int32_t>> merges, std::string split_pattern,
                              std::vector<AddedToken> added_tokens);

  // Writes tokenizer.json (Hugging Face format) atomically.
  void save(const std::string& path) const;
  std::string to_json_text() const;

  // Token ids of `text`: added tokens are found first, the rest is split by the regex and BPE-encoded.
  std::vector<int32_t> encode(std::string_view text) const;
  // Like encode, but added tokens in the text are encoded as ordinary text (for untrusted documents).
  std::vector<int32_t> encode_ordinary(std::string_view text) const;
  // The bytes of the tokens, concatenated (an added token gives its content). Unknown ids throw emo::Error.
  std::string decode(const std::vector<int32_t>& ids) const;
  // Encodes many documents in parallel on emo's thread pool; result[i] = encode(texts[i]).
  std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string>& texts) const;

  // One more than the largest token id (ids in [0, vocab_size) may have gaps, e.g. cl100k's 100256).
  int64_t vocab_size() const;
  // Id of a token given by its raw bytes (or an added token's content).
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // Raw bytes of a token, or nullopt for an unused id.
  std::optional<std::string> id_to_token(int32_t id) const;
  // "<|endoftext|>" when present, else the first special added token; throws when there is none.
  int32_t eos_id() const;
  // "<|pad|>" when present.
  std::optional<int32_t> pad_id() const;
  const std::vector<AddedToken>& added_tokens() const;
  const std::string& split_pattern() const;
  // Number of BPE merges.
  int64_t num_merges() const;
  // The merges as id pairs, in rank order.
  const std::vector<std::pair<int32_t, int32_t>>& merges() const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// Rows of a model's embedding (and output) matrix for a vocabulary: rounded up to a multiple of 128, as OLMo
// and EMO pad dolma2's 100278 ids to 100352 (aligned matrices; the extra rows are never produced by the
// tokenizer).
constexpr int64_t embedding_rows_for_vocab(int64_t vocab_size) {
  return (vocab_size + 127) / 128 * 128;
}

// Token ids in a vocabulary file may leave holes (cl100k puts its special tokens after a gap), but the
// largest id may exceed the number of entries by at most this much: tables are sized by the largest id, and a
// file naming id 2^31 with three entries must not allocate gigabytes.
constexpr int64_t kMaxTokenIdGap = int64_t{1} << 20;

// The pre-tokenizer regex of OpenAI's cl100k_base (also used by dolma2 and by tokenizers emo trains).
extern const char* const kCl100kPattern;

}  // namespace emo
