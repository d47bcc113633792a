#include "tokenizer/trainer.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>

#include "core/error.h"
#include "core/log.h"
#include "core/thread_pool.h"
#include "io/json_file.h"
#include "tokenizer/pre_tokenizer.h"

namespace emo {

WordCounter::WordCounter(const std::string& split_pattern) : pattern_(split_pattern) {
  PreTokenizer check(pattern_, "trainer");  // fail early on a bad pattern
}

void WordCounter::add(const std::vector<std::string>& documents) {
  PreTokenizer pre_tokenizer(pattern_, "trainer");
  int n_slices = std::max(1, std::min<int>(num_threads(), static_cast<int>(documents.size())));
  std::vector<std::unordered_map<std::string, int64_t>> slice_counts(n_slices);
  parallel_tasks(n_slices, [&](int64_t slice) {
    auto& counts = slice_counts[slice];
    for (size_t d = slice; d < documents.size(); d += n_slices)
      pre_tokenizer.split(documents[d], [&](std::string_view piece) { ++counts[std::string(piece)]; });
  });
  for (auto& counts : slice_counts)
    for (auto& [word, count] : counts) counts_[word] += count;
  documents_ += static_cast<int64_t>(documents.size());
  for (const std::string& d : documents) bytes_ += static_cast<int64_t>(d.size());
}

void WordCounter::add_files(const std::vector<std::string>& paths) {
  constexpr size_t kBatchBytes = size_t{32} << 20;  // documents held in memory at once
  constexpr size_t kPlainDocumentBytes = size_t{1} << 20;
  std::vector<std::string> batch;
  size_t batch_bytes = 0;
  auto push = [&](std::string document) {
    batch_bytes += document.size();
    batch.push_back(std::move(document));
    if (batch_bytes >= kBatchBytes) {
      add(batch);
      batch.clear();
      batch_bytes = 0;
    }
  };
  for (const std::string& path : paths) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail_file("tokenizer train", path, "cannot open the corpus file");
    bool jsonl = path.size() >= 6 && path.compare(path.size() - 6, 6, ".jsonl") == 0;
    std::string line, document;
    for (int64_t line_number = 1; std::getline(in, line); ++line_number) {
      if (!jsonl) {
        document += line;
        if (!in.eof()) document += '\n';
        if (document.size() >= kPlainDocumentBytes) push(std::move(document)), document.clear();
        continue;
      }
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const nlohmann::json record = parse_json(line, path, "tokenizer train", line_number);
      auto text = record.find("text");
      if (!record.is_object() || text == record.end() || !text->is_string())
        fail_at("tokenizer train", path, cat("line ", line_number), "no string field \"text\"");
      push(text->get<std::string>());
    }
    if (!document.empty()) push(std::move(document));
  }
  if (!batch.empty()) add(batch);
}

namespace {

uint64_t pair_key(int32_t left, int32_t right) {
  return (uint64_t{static_cast<uint32_t>(left)} << 32) | static_cast<uint32_t>(right);
}
int32_t left_of(uint64_t key) {
  return static_cast<int32_t>(key >> 32);
}
int32_t right_of(uint64_t key) {
  return static_cast<int32_t>(key & 0xFFFFFFFFu);
}

struct Word {
  std::vector<int32_t> symbols;
  int64_t count;
};

// A heap entry; the most frequent pair first, ties to the smaller pair (so training is deterministic).
struct Candidate {
  int64_t count;
  uint64_t pair;
  bool operator<(const Candidate& o) const { return count != o.count ? count < o.count : pair > o.pair; }
};

class MergeLearner {
 public:
  explicit MergeLearner(std::vector<Word> words) : words_(std::move(words)), stamp_(words_.size(), -1) {
    for (int32_t w = 0; w < static_cast<int32_t>(words_.size()); ++w) {
      const Word& word = words_[w];
      for (size_t i = 0; i + 1 < word.symbols.size(); ++i) {
        uint64_t key = pair_key(word.symbols[i], word.symbols[i + 1]);
        pair_count_[key] += word.count;
        note_word(key, w);
      }
    }
    for (auto& [key, count] : pair_count_) heap_.push({count, key});
  }

  // The next pair to merge, or false when no pair is frequent enough.
  bool best_pair(int64_t min_frequency, uint64_t& pair) {
    while (!heap_.empty()) {
      Candidate c = heap_.top();
      heap_.pop();
      int64_t current = count_of(c.pair);
      if (current != c.count) {  // stale: counts only fall, except new pairs, which are pushed fresh
        if (current > 0) heap_.push({current, c.pair});
        continue;
      }
      if (current < min_frequency) return false;
      pair = c.pair;
      return true;
    }
    return false;
  }

  // Replaces every occurrence of `pair` by `merged` and updates the counts of the pairs around them.
  void apply(uint64_t pair, int32_t merged, int step) {
    std::unordered_map<uint64_t, int64_t> delta;
    std::vector<int32_t> users = std::move(where_[pair]);
    where_.erase(pair);
    for (int32_t w : users) {
      if (stamp_[w] == step) continue;  // listed twice
      stamp_[w] = step;
      Word& word = words_[w];
      if (!merge_word(word.symbols, left_of(pair), right_of(pair), merged, word.count, delta, w)) continue;
    }
    for (auto& [key, change] : delta) {
      if (change == 0) continue;
      int64_t& count = pair_count_[key];
      count += change;
      if (change > 0) heap_.push({count, key});
      if (count <= 0) pair_count_.erase(key);
    }
  }

 private:
  int64_t count_of(uint64_t key) const {
    auto it = pair_count_.find(key);
    return it == pair_count_.end() ? 0 : it->second;
  }
  void note_word(uint64_t key, int32_t w) {
    auto& list = where_[key];
    if (list.empty() || list.back() != w) list.push_back(w);
  }

  // Left-to-right, non-overlapping, as BPE applies a merge. Pair count changes go to `delta`.
  bool merge_word(std::vector<int32_t>& symbols, int32_t left, int32_t right, int32_t merged, int64_t count,
                  std::unordered_map<uint64_t, int64_t>& delta, int32_t w) {
    bool changed = false;
    std::vector<int32_t> out;
    out.reserve(symbols.size());
    for (size_t i = 0; i < symbols.size(); ++i) {
      if (i + 1 < symbols.size() && symbols[i] == left && symbols[i + 1] == right) {
        out.push_back(merged);
        ++i;
        changed = true;
      } else {
        out.push_back(symbols[i]);
      }
    }
    if (!changed) return false;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) delta[pair_key(symbols[i], symbols[i + 1])] -= count;
    for (size_t i = 0; i + 1 < out.size(); ++i) {
      uint64_t key = pair_key(out[i], out[i + 1]);
      delta[key] += count;
      if (out[i] == merged || out[i + 1] == merged) note_word(key, w);
    }
    symbols = std::move(out);
    return true;
  }

  std::vector<Word> words_;
  std::vector<int> stamp_;  // last merge step that visited each word
  std::unordered_map<uint64_t, int64_t> pair_count_;
  std::unordered_map<uint64_t, std::vector<int32_t>> where_;  // pair -> words that contain (or contained) it
  std::priority_queue<Candidate> heap_;
};

}  // namespace

Tokenizer train_bpe(const std::unordered_map<std::string, int64_t>& word_counts,
                    const BpeTrainerOptions& options) {
  const int64_t n_specials = static_cast<int64_t>(options.special_tokens.size());
  EMO_CHECK(options.vocab_size >= 256 + n_specials, "tokenizer train", "vocab size ", options.vocab_size,
            " is smaller than the 256 bytes plus ", n_specials, " special tokens");
  // Sorted words make the result independent of hash order and thread count.
  std::vector<std::pair<std::string, int64_t>> sorted(word_counts.begin(), word_counts.end());
  std::sort(sorted.begin(), sorted.end());
  std::vector<Word> words;
  words.reserve(sorted.size());
  for (auto& [text, count] : sorted) {
    Word word{std::vector<int32_t>(text.size()), count};
    for (size_t i = 0; i < text.size(); ++i) word.symbols[i] = static_cast<unsigned char>(text[i]);
    words.push_back(std::move(word));
  }
  std::vector<std::string> token_bytes(256);
  for (int b = 0; b < 256; ++b) token_bytes[b] = std::string(1, static_cast<char>(b));
  std::vector<std::pair<int32_t, int32_t>> merges;

  MergeLearner learner(std::move(words));
  const int64_t n_merges = options.vocab_size - 256 - n_specials;
  Progress progress("bpe merges", n_merges, "merge");
  for (int64_t step = 0; step < n_merges; ++step) {
    uint64_t pair;
    if (!learner.best_pair(options.min_frequency, pair)) {
      log_warn(cat("tokenizer train: only ", step, " pairs occur at least ", options.min_frequency,
                   " times; the vocabulary stays at ", 256 + step + n_specials));
      break;
    }
    auto merged = static_cast<int32_t>(token_bytes.size());
    token_bytes.push_back(token_bytes[left_of(pair)] + token_bytes[right_of(pair)]);
    merges.emplace_back(left_of(pair), right_of(pair));
    learner.apply(pair, merged, static_cast<int>(step));
    if (step % 256 == 0) progress.update(step);
  }
  progress.finish();
  std::vector<AddedToken> added;
  for (const std::string& content : options.special_tokens) {
    AddedToken token;
    token.id = static_cast<int32_t>(token_bytes.size() + added.size());
    token.content = content;
    token.special = true;
    added.push_back(token);
  }
  return Tokenizer::from_parts(std::move(token_bytes), std::move(merges), options.split_pattern,
                               std::move(added));
}

Tokenizer train_bpe(const std::vector<std::string>& documents, const BpeTrainerOptions& options) {
  WordCounter counter(options.split_pattern);
  counter.add(documents);
  return train_bpe(counter.counts(), options);
}

}  // namespace emo
