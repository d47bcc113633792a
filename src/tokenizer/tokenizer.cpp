// Encoding and decoding. Data flow of encode: text -> split at added tokens (leftmost-longest) -> each
// stretch of ordinary text split into pieces by the pre-tokenizer regex -> each piece's bytes -> BPE merges
// by rank (cached per thread) -> ids.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <functional>
#include <queue>

#include "core/error.h"
#include "core/thread_pool.h"
#include "tokenizer/tokenizer_impl.h"

namespace emo {

const char* const kCl100kPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// ---- merge table ----

void MergeTable::reserve(size_t n) {
  size_t capacity = 16;
  shift_ = 60;
  while (capacity < 2 * n) {
    capacity *= 2;
    --shift_;
  }
  slots_.assign(capacity, Entry{});
  mask_ = capacity - 1;
}

bool MergeTable::insert(int32_t left, int32_t right, int32_t rank, int32_t merged) {
  uint64_t key = pack(left, right);
  for (size_t i = slot(key);; i = (i + 1) & mask_) {
    Entry& e = slots_[i];
    if (e.key == key) return false;
    if (e.key == kEmpty) {
      e = Entry{key, rank, merged};
      return true;
    }
  }
}

// ---- construction ----

void Tokenizer::Impl::build(const std::string& source) {
  static std::atomic<uint64_t> next_serial{1};
  serial = next_serial++;
  if (present.size() < token_bytes.size()) present.resize(token_bytes.size(), false);
  id_of_bytes.clear();
  std::vector<bool> is_added(token_bytes.size(), false);
  for (const AddedToken& t : added) is_added[t.id] = true;
  for (size_t id = 0; id < token_bytes.size(); ++id)
    if (present[id] && !is_added[id]) id_of_bytes.emplace(token_bytes[id], static_cast<int32_t>(id));
  for (int b = 0; b < 256; ++b) {
    auto it = id_of_bytes.find(std::string(1, static_cast<char>(b)));
    if (it == id_of_bytes.end())
      fail_file("tokenizer", source,
                cat("the vocabulary lacks the single byte 0x", std::hex, b,
                    " (byte-level BPE needs all 256 to encode any input)"));
    byte_id[b] = it->second;
  }
  merge_table.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    auto [left, right] = merges[rank];
    auto it = id_of_bytes.find(token_bytes[left] + token_bytes[right]);
    if (it == id_of_bytes.end())
      fail_file("tokenizer", source, cat("merge ", rank, " gives a token that is not in the vocabulary"));
    merge_table.insert(left, right, static_cast<int32_t>(rank), it->second);
  }
  pre_tokenizer = std::make_unique<PreTokenizer>(pattern, source);
  id_of_added.clear();
  for (auto& list : added_by_first_byte) list.clear();
  added_first_byte.fill(false);
  std::vector<const AddedToken*> by_length;
  for (const AddedToken& t : added) {
    if (t.content.empty()) fail_file("tokenizer", source, cat("added token ", t.id, " is empty"));
    id_of_added[t.content] = t.id;
    by_length.push_back(&t);
  }
  std::stable_sort(by_length.begin(), by_length.end(), [](const AddedToken* a, const AddedToken* b) {
    return a->content.size() > b->content.size();
  });
  for (const AddedToken* t : by_length) {
    auto first = static_cast<unsigned char>(t->content[0]);
    added_by_first_byte[first].push_back(t->id);
    added_first_byte[first] = true;
  }
}

// ---- BPE ----

// Few symbols: rescan the adjacent pairs for the lowest rank after every merge (ties: leftmost). This is the
// same order as the priority queue below, with less bookkeeping.
void Tokenizer::Impl::bpe_small(std::vector<int32_t>& ids) const {
  while (ids.size() > 1) {
    int32_t best_rank = INT32_MAX, best_merged = -1;
    size_t best_at = 0;
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      const MergeTable::Entry* e = merge_table.find(ids[i], ids[i + 1]);
      if (e && e->rank < best_rank) {
        best_rank = e->rank;
        best_merged = e->merged;
        best_at = i;
      }
    }
    if (best_merged < 0) return;
    ids[best_at] = best_merged;
    ids.erase(ids.begin() + best_at + 1);
  }
}

// Many symbols (long words, CJK runs, whitespace runs): a linked list of symbols and a min-heap of candidate
// merges ordered by (rank, position), entries checked for staleness when popped, as Hugging Face does.
void Tokenizer::Impl::bpe_large(std::vector<int32_t>& ids) const {
  const int n = static_cast<int>(ids.size());
  std::vector<int> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank;
    int pos;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto push = [&](int pos) {
    if (pos < 0 || next[pos] < 0) return;
    if (const MergeTable::Entry* e = merge_table.find(ids[pos], ids[next[pos]])) heap.push({e->rank, pos});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    Candidate c = heap.top();
    heap.pop();
    if (!alive[c.pos] || next[c.pos] < 0) continue;
    const MergeTable::Entry* e = merge_table.find(ids[c.pos], ids[next[c.pos]]);
    if (!e || e->rank != c.rank) continue;  // the pair changed since this candidate was pushed
    int right = next[c.pos];
    ids[c.pos] = e->merged;
    alive[right] = false;
    next[c.pos] = next[right];
    if (next[c.pos] >= 0) prev[next[c.pos]] = c.pos;
    push(prev[c.pos]);
    push(c.pos);
  }
  size_t kept = 0;
  for (int i = 0; i >= 0; i = next[i]) ids[kept++] = ids[i];
  ids.resize(kept);
}

void Tokenizer::Impl::bpe(std::string_view piece, std::vector<int32_t>& out) const {
  if (ignore_merges) {
    auto it = id_of_bytes.find(std::string(piece));
    if (it != id_of_bytes.end()) {
      out.push_back(it->second);
      return;
    }
  }
  std::vector<int32_t> ids(piece.size());
  for (size_t i = 0; i < piece.size(); ++i) ids[i] = byte_id[static_cast<unsigned char>(piece[i])];
  if (ids.size() <= 48)
    bpe_small(ids);
  else
    bpe_large(ids);
  out.insert(out.end(), ids.begin(), ids.end());
}

namespace {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Per-thread cache of piece -> ids for one tokenizer at a time (pieces repeat heavily in natural text).
struct PieceCache {
  static constexpr size_t kMaxEntries = 1 << 16;
  static constexpr size_t kMaxPieceBytes = 64;
  uint64_t owner = 0;
  std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> ids_of_piece;
};

PieceCache& piece_cache(uint64_t owner) {
  thread_local PieceCache cache;
  if (cache.owner != owner) {
    cache.ids_of_piece.clear();
    cache.owner = owner;
  }
  return cache;
}

}  // namespace

void Tokenizer::Impl::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.size() == 1) {
    out.push_back(byte_id[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (piece.size() > PieceCache::kMaxPieceBytes) {
    bpe(piece, out);
    return;
  }
  PieceCache& cache = piece_cache(serial);
  auto it = cache.ids_of_piece.find(piece);
  if (it != cache.ids_of_piece.end()) {
    out.insert(out.end(), it->second.begin(), it->second.end());
    return;
  }
  size_t start = out.size();
  bpe(piece, out);
  if (cache.ids_of_piece.size() >= PieceCache::kMaxEntries) cache.ids_of_piece.clear();
  cache.ids_of_piece.emplace(std::string(piece), std::vector<int32_t>(out.begin() + start, out.end()));
}

void Tokenizer::Impl::encode_text(std::string_view text, std::vector<int32_t>& out) const {
  pre_tokenizer->split(text, [&](std::string_view piece) { encode_piece(piece, out); });
}

void Tokenizer::Impl::encode_into(std::string_view text, bool match_added, std::vector<int32_t>& out) const {
  if (!match_added || added.empty()) {
    encode_text(text, out);
    return;
  }
  size_t plain_from = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    auto first = static_cast<unsigned char>(text[i]);
    if (!added_first_byte[first]) continue;
    for (int32_t id : added_by_first_byte[first]) {
      const std::string& content = token_bytes[id];
      if (text.compare(i, content.size(), content) != 0) continue;
      encode_text(text.substr(plain_from, i - plain_from), out);
      out.push_back(id);
      i += content.size() - 1;
      plain_from = i + 1;
      break;
    }
  }
  encode_text(text.substr(plain_from), out);
}

// ---- public interface ----

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  impl_->encode_into(text, true, out);
  return out;
}

std::vector<int32_t> Tokenizer::encode_ordinary(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  impl_->encode_into(text, false, out);
  return out;
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(const std::vector<std::string>& texts) const {
  std::vector<std::vector<int32_t>> result(texts.size());
  // Documents differ widely in length, so they are handed out one at a time rather than in fixed chunks.
  parallel_tasks(static_cast<int64_t>(texts.size()), [&](int64_t i) { result[i] = encode(texts[i]); });
  return result;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= impl_->token_bytes.size() || !impl_->present[id])
      fail("tokenizer", cat("decode: token id ", id, " is not in the vocabulary (size ", vocab_size(), ")"));
    out += impl_->token_bytes[id];
  }
  return out;
}

int64_t Tokenizer::vocab_size() const {
  return static_cast<int64_t>(impl_->token_bytes.size());
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  std::string key(token);
  if (auto it = impl_->id_of_added.find(key); it != impl_->id_of_added.end()) return it->second;
  if (auto it = impl_->id_of_bytes.find(key); it != impl_->id_of_bytes.end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= vocab_size() || !impl_->present[id]) return std::nullopt;
  return impl_->token_bytes[id];
}

int32_t Tokenizer::eos_id() const {
  if (auto id = token_to_id("<|endoftext|>")) return *id;
  for (const AddedToken& t : impl_->added)
    if (t.special) return t.id;
  fail("tokenizer", "the tokenizer has no end-of-text token (no special added token)");
}

std::optional<int32_t> Tokenizer::pad_id() const {
  if (auto it = impl_->id_of_added.find("<|pad|>"); it != impl_->id_of_added.end()) return it->second;
  return std::nullopt;
}

const std::vector<AddedToken>& Tokenizer::added_tokens() const {
  return impl_->added;
}
const std::string& Tokenizer::split_pattern() const {
  return impl_->pattern;
}
int64_t Tokenizer::num_merges() const {
  return static_cast<int64_t>(impl_->merges.size());
}

const std::vector<std::pair<int32_t, int32_t>>& Tokenizer::merges() const {
  return impl_->merges;
}

Tokenizer Tokenizer::from_parts(std::vector<std::string> token_bytes,
                                std::vector<std::pair<int32_t, int32_t>> merges, std::string split_pattern,
                                std::vector<AddedToken> added_tokens) {
  auto impl = std::make_shared<Impl>();
  int64_t size = static_cast<int64_t>(token_bytes.size());
  for (const AddedToken& t : added_tokens) size = std::max<int64_t>(size, t.id + 1);
  impl->token_bytes = std::move(token_bytes);
  impl->present.resize(impl->token_bytes.size());
  for (size_t id = 0; id < impl->token_bytes.size(); ++id) impl->present[id] = !impl->token_bytes[id].empty();
  impl->token_bytes.resize(size);
  impl->present.resize(size, false);
  for (const AddedToken& t : added_tokens) {
    EMO_CHECK(t.id >= 0, "tokenizer", "added token '", t.content, "' has a negative id");
    impl->token_bytes[t.id] = t.content;
    impl->present[t.id] = true;
  }
  for (auto [left, right] : merges)
    EMO_CHECK(left >= 0 && right >= 0 && left < size && right < size, "tokenizer", "merge (", left, ", ",
              right, ") names an id outside the vocabulary");
  impl->merges = std::move(merges);
  impl->pattern = std::move(split_pattern);
  impl->added = std::move(added_tokens);
  impl->build("<parts>");
  return Tokenizer(std::move(impl));
}

}  // namespace emo
