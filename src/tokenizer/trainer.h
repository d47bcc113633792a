// Training a byte-level BPE tokenizer (the same model Hugging Face's BpeTrainer learns): split documents with
// the pre-tokenizer regex, count each distinct piece ("word") once, then repeatedly merge the most frequent
// adjacent pair, updating the pair counts only for the words that contain the merged pair.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace emo {

struct BpeTrainerOptions {
  // Total vocabulary, including the 256 bytes and the special tokens.
  int64_t vocab_size = 8192;
  // Pairs seen fewer times than this are never merged (the vocabulary may then stay smaller).
  int64_t min_frequency = 2;
  std::string split_pattern = kCl100kPattern;
  // Appended after the merged tokens, in this order (end of text, then padding).
  std::vector<std::string> special_tokens = {"<|endoftext|>", "<|pad|>"};
};

// Counts the pieces of documents; feed it in batches (each batch is split in parallel on the thread pool).
class WordCounter {
 public:
  explicit WordCounter(const std::string& split_pattern = kCl100kPattern);
  void add(const std::vector<std::string>& documents);
  // Reads corpus files: *.jsonl holds one JSON object per line with a "text" field; any other file is plain
  // text (cut at line ends into ~1 MiB documents so it splits in parallel). Bad lines throw emo::Error naming
  // the file and line.
  void add_files(const std::vector<std::string>& paths);
  const std::unordered_map<std::string, int64_t>& counts() const { return counts_; }
  int64_t documents() const { return documents_; }
  int64_t bytes() const { return bytes_; }

 private:
  std::string pattern_;
  std::unordered_map<std::string, int64_t> counts_;
  int64_t documents_ = 0, bytes_ = 0;
};

// Learns merges from word counts; deterministic for given counts.
Tokenizer train_bpe(const std::unordered_map<std::string, int64_t>& word_counts,
                    const BpeTrainerOptions& options);
// Convenience: count `documents` and train.
Tokenizer train_bpe(const std::vector<std::string>& documents, const BpeTrainerOptions& options);

}  // namespace emo
