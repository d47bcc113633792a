#include "tokenizer/dolma2.h"

#include <fstream>

#include "core/error.h"

namespace emo {
namespace {

// Standard base64 (RFC 4648) without line breaks; nullopt on a malformed string.
std::optional<std::string> base64_decode(std::string_view text) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  if (text.size() % 4 != 0) return std::nullopt;
  std::string out;
  for (size_t i = 0; i < text.size(); i += 4) {
    int v[4], padding = 0;
    for (int k = 0; k < 4; ++k) {
      char c = text[i + k];
      if (c == '=' && i + 4 == text.size() && k >= 2) {
        v[k] = 0;
        ++padding;
      } else if ((v[k] = value(c)) < 0 || padding > 0) {
        return std::nullopt;
      }
    }
    uint32_t bits = (v[0] << 18) | (v[1] << 12) | (v[2] << 6) | v[3];
    out += static_cast<char>(bits >> 16);
    if (padding < 2) out += static_cast<char>((bits >> 8) & 0xFF);
    if (padding < 1) out += static_cast<char>(bits & 0xFF);
  }
  return out;
}

}  // namespace

std::vector<std::string> load_tiktoken_ranks(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_file("tiktoken", path, "cannot open the file");
  std::vector<std::pair<int64_t, std::string>> ranked;  // (rank, token bytes) in file order
  std::vector<int64_t> line_of;                         // the line of each entry of ranked
  int64_t largest = -1;
  std::string line;
  for (int64_t line_number = 1; std::getline(in, line); ++line_number) {
    if (line.empty()) continue;
    size_t space = line.find(' ');
    std::optional<std::string> bytes;
    if (space != std::string::npos) bytes = base64_decode(std::string_view(line).substr(0, space));
    if (!bytes || bytes->empty())
      fail_at("tiktoken", path, cat("line ", line_number), "expected '<base64> <rank>'");
    int64_t rank = -1;
    try {
      size_t used = 0;
      rank = std::stoll(line.substr(space + 1), &used);
      if (space + 1 + used != line.size()) rank = -1;
    } catch (const std::exception&) {
    }
    if (rank < 0 || rank > INT32_MAX) fail_at("tiktoken", path, cat("line ", line_number), "bad rank");
    largest = std::max(largest, rank);
    ranked.emplace_back(rank, std::move(*bytes));
    line_of.push_back(line_number);
  }
  // The table is sized by the largest rank: bound it by the entries read before allocating.
  const auto entries = static_cast<int64_t>(ranked.size());
  if (largest >= entries + kMaxTokenIdGap)
    fail_file("tiktoken", path,
              cat("largest rank ", largest, " but only ", entries,
                  " entries: ranks may leave holes of at most ", kMaxTokenIdGap, " in all"));
  std::vector<std::string> by_rank(static_cast<size_t>(largest + 1));
  for (size_t i = 0; i < ranked.size(); ++i) {
    auto& [rank, bytes] = ranked[i];
    if (!by_rank[rank].empty())
      fail_at("tiktoken", path, cat("line ", line_of[i]), cat("rank ", rank, " twice"));
    by_rank[rank] = std::move(bytes);
  }
  if (by_rank.empty()) fail_file("tiktoken", path, "no ranks in the file");
  return by_rank;
}

Tokenizer build_dolma2(const std::string& cl100k_tokenizer_json, const std::string& cl100k_tiktoken) {
  Tokenizer cl100k = Tokenizer::load(cl100k_tokenizer_json);
  std::vector<std::string> ranks = load_tiktoken_ranks(cl100k_tiktoken);
  std::vector<std::string> token_bytes(ranks.size());
  for (size_t id = 0; id < ranks.size(); ++id) {
    std::optional<std::string> token = cl100k.id_to_token(static_cast<int32_t>(id));
    if (!token || *token != ranks[id])
      fail_file("dolma2", cl100k_tokenizer_json,
                cat("token ", id, " differs from rank ", id, " of ", cl100k_tiktoken));
    token_bytes[id] = std::move(*token);
  }
  std::vector<AddedToken> added = cl100k.added_tokens();
  if (cl100k.token_to_id("<|endoftext|>") != kDolma2EosId)
    fail_file("dolma2", cl100k_tokenizer_json, cat("<|endoftext|> is not id ", kDolma2EosId));
  for (const AddedToken& t : added)
    if (t.id < static_cast<int32_t>(ranks.size()))
      fail_file("dolma2", cl100k_tokenizer_json, cat("added token ", t.id, " overlaps the BPE ranks"));
  AddedToken pad;
  pad.id = kDolma2PadId;
  pad.content = "<|pad|>";
  pad.special = true;
  added.push_back(pad);
  Tokenizer dolma2 =
      Tokenizer::from_parts(std::move(token_bytes), cl100k.merges(), cl100k.split_pattern(), added);
  EMO_CHECK(dolma2.vocab_size() == kDolma2VocabSize, "dolma2", "vocab size ", dolma2.vocab_size(),
            " instead of ", kDolma2VocabSize);
  return dolma2;
}

}  // namespace emo
