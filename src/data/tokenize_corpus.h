// Tokenising a built corpus split into the binary dataset format (data/dataset.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace emo::data {

struct TokenizeOptions {
  std::string corpus_dir = "data/corpus";  // holds manifest.json and <split>.jsonl
  std::string split = "train";
  std::string tokenizer_path;  // tokenizer.json
  std::string out_path;        // empty: <corpus_dir>/<split>.bin
};

struct TokenizeSummary {
  int64_t documents = 0, tokens = 0, bytes = 0;
  double seconds = 0;
  std::string out_path;
};

// Token ids of each text, encoded in parallel on emo's thread pool. Texts are encoded as ordinary text:
// "<|endoftext|>" written inside a document is not an EOS (EOS only ever separates documents).
std::vector<std::vector<int32_t>> encode_documents(const Tokenizer& tokenizer,
                                                   const std::vector<std::string>& texts);

// Reads <split>.jsonl, encodes it and writes the dataset; domain ids follow manifest.json's "domain_names",
// so they agree across the splits of one corpus.
TokenizeSummary tokenize_corpus(const TokenizeOptions& options);

}  // namespace emo::data
