// The experts held in memory under a byte budget, shared by every sequence that runs (emo serve
// --memory-budget, docs/serve.md). Each (layer, expert) is held or not; a held expert is pinned while a
// sequence that may use it runs, and the unpinned ones are dropped least recently used first when room is
// needed. The cache only keeps the books and decides: making an expert resident is the caller's (loading it
// in InferWeights as the decoder needs it), dropping one goes through the `evict` callback (for InferWeights:
// unload_expert, which gives its pages back).
//
// acquire(keys) pins all of the keys or none: it refuses (and changes nothing) when the keys together with
// the experts other sequences have pinned exceed the budget. An expert's bytes count from its acquire to its
// eviction, so the bytes held (pinned or not) never exceed the budget.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <set>
#include <vector>

namespace emo {

class InferWeights;

struct ExpertKey {
  int32_t layer = 0, expert = 0;
  auto operator<=>(const ExpertKey&) const = default;
};

struct ExpertCacheStats {
  int64_t hits = 0;       // acquired experts that were already held
  int64_t misses = 0;     // acquired experts that had to be made resident
  int64_t evictions = 0;  // experts dropped to make room
  int64_t resident_bytes = 0, pinned_bytes = 0;
  int64_t budget_bytes = 0;  // 0: no limit
};

class ExpertCache {
 public:
  using Evict = std::function<void(int64_t layer, int64_t expert)>;
  // expert_bytes[l][e]: what expert e of layer l occupies while held. budget_bytes 0: no limit.
  ExpertCache(std::vector<std::vector<int64_t>> expert_bytes, int64_t budget_bytes, Evict evict);
  // Over the experts of `weights` (nothing for a dense model), evicting with InferWeights::unload_expert.
  ExpertCache(InferWeights& weights, int64_t budget_bytes);

  // Bytes of the distinct keys.
  int64_t bytes_of(const std::vector<ExpertKey>& keys) const;
  // Whether the keys fit the budget at all (with nothing else pinned).
  bool fits(const std::vector<ExpertKey>& keys) const;
  // Pins every key and returns true, evicting unpinned held experts (least recently used first) to make
  // room for the ones not held; or returns false and changes nothing when the keys and the experts pinned
  // by others exceed the budget. A key pinned twice needs two releases.
  bool acquire(const std::vector<ExpertKey>& keys);
  // Unpins keys of an earlier acquire; they stay held, most recently used, until evicted.
  void release(const std::vector<ExpertKey>& keys);

  bool held(ExpertKey key) const;
  int64_t pins(ExpertKey key) const;
  ExpertCacheStats stats() const;  // safe from any thread

 private:
  struct Entry {
    int64_t bytes = 0;
    bool held = false;
    int64_t pins = 0;
    uint64_t last_use = 0;  // tick of the last release (the eviction order of unpinned held experts)
  };
  Entry& entry(ExpertKey key);
  const Entry& entry(ExpertKey key) const;
  int64_t index(ExpertKey key) const;
  std::vector<ExpertKey> distinct(std::vector<ExpertKey> keys) const;
  void evict_one();

  std::vector<int64_t> layer_offset_;  // [L+1] index of (l, 0)
  std::vector<Entry> entries_;
  std::set<std::pair<uint64_t, int64_t>> evictable_;  // (last_use, index) of held, unpinned experts
  Evict evict_;
  uint64_t tick_ = 0;
  mutable std::mutex mutex_;
  ExpertCacheStats stats_;
};

// The experts one sequence has pinned, released when it ends (also by an exception).
class ExpertPins {
 public:
  explicit ExpertPins(ExpertCache& cache) : cache_(cache) {}
  ~ExpertPins() { release(); }
  ExpertPins(const ExpertPins&) = delete;
  ExpertPins& operator=(const ExpertPins&) = delete;
  // acquire(keys) on the cache; false (nothing pinned) when refused.
  bool add(const std::vector<ExpertKey>& keys);
  // Unpins everything added so far (again a no-op).
  void release() {
    for (const auto& keys : acquired_) cache_.release(keys);
    acquired_.clear();
  }

 private:
  ExpertCache& cache_;
  std::vector<std::vector<ExpertKey>> acquired_;  // one entry per successful add
};

}  // namespace emo
