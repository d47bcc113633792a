#include "infer/expert_cache.h"

#include <algorithm>

#include "core/error.h"
#include "infer/weights.h"

namespace emo {
namespace {

constexpr const char* kOp = "expert cache";

std::vector<std::vector<int64_t>> expert_bytes_of(const InferWeights& weights) {
  const ModelConfig& config = weights.config();
  std::vector<std::vector<int64_t>> bytes(static_cast<size_t>(config.num_hidden_layers));
  if (!config.is_moe()) return bytes;  // the dense MLP is not an expert: it counts with the other weights
  for (int64_t l = 0; l < config.num_hidden_layers; ++l)
    for (int64_t e = 0; e < config.experts_in_layer(l); ++e) bytes[l].push_back(weights.expert_bytes(l, e));
  return bytes;
}

}  // namespace

ExpertCache::ExpertCache(std::vector<std::vector<int64_t>> expert_bytes, int64_t budget_bytes, Evict evict)
    : evict_(std::move(evict)) {
  EMO_CHECK(budget_bytes >= 0, kOp, "a budget of ", budget_bytes, " bytes");
  stats_.budget_bytes = budget_bytes;
  layer_offset_.push_back(0);
  for (const auto& layer : expert_bytes) {
    for (int64_t b : layer) entries_.push_back({b, false, 0, 0});
    layer_offset_.push_back(static_cast<int64_t>(entries_.size()));
  }
}

ExpertCache::ExpertCache(InferWeights& weights, int64_t budget_bytes)
    : ExpertCache(expert_bytes_of(weights), budget_bytes,
                  [&weights](int64_t l, int64_t e) { weights.unload_expert(l, e); }) {}

int64_t ExpertCache::index(ExpertKey key) const {
  EMO_CHECK(key.layer >= 0 && key.layer + 1 < static_cast<int64_t>(layer_offset_.size()), kOp, "no layer ",
            key.layer);
  const int64_t i = layer_offset_[key.layer] + key.expert;
  EMO_CHECK(key.expert >= 0 && i < layer_offset_[key.layer + 1], kOp, "layer ", key.layer, " has no expert ",
            key.expert);
  return i;
}

ExpertCache::Entry& ExpertCache::entry(ExpertKey key) {
  return entries_[index(key)];
}

const ExpertCache::Entry& ExpertCache::entry(ExpertKey key) const {
  return entries_[index(key)];
}

std::vector<ExpertKey> ExpertCache::distinct(std::vector<ExpertKey> keys) const {
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  for (ExpertKey k : keys) index(k);  // checks every key before anything changes
  return keys;
}

int64_t ExpertCache::bytes_of(const std::vector<ExpertKey>& keys) const {
  int64_t bytes = 0;
  for (ExpertKey k : distinct(keys)) bytes += entry(k).bytes;
  return bytes;
}

bool ExpertCache::fits(const std::vector<ExpertKey>& keys) const {
  return stats_.budget_bytes == 0 || bytes_of(keys) <= stats_.budget_bytes;
}

void ExpertCache::evict_one() {
  const int64_t i = evictable_.begin()->second;
  evictable_.erase(evictable_.begin());
  Entry& e = entries_[i];
  e.held = false;
  stats_.resident_bytes -= e.bytes;
  ++stats_.evictions;
  const auto layer =
      std::upper_bound(layer_offset_.begin(), layer_offset_.end(), i) - layer_offset_.begin() - 1;
  evict_(layer, i - layer_offset_[layer]);
}

bool ExpertCache::acquire(const std::vector<ExpertKey>& requested) {
  const std::vector<ExpertKey> keys = distinct(requested);
  std::lock_guard lock(mutex_);
  int64_t unpinned = 0;  // bytes of the keys nobody pins yet
  for (ExpertKey k : keys)
    if (entry(k).pins == 0) unpinned += entry(k).bytes;
  if (stats_.budget_bytes > 0 && stats_.pinned_bytes + unpinned > stats_.budget_bytes) return false;

  int64_t incoming = 0;  // bytes of the keys not held
  for (ExpertKey k : keys) {
    Entry& e = entry(k);
    if (e.held) {
      ++stats_.hits;
      if (e.pins == 0) evictable_.erase({e.last_use, index(k)});
    } else {
      ++stats_.misses;
      incoming += e.bytes;
    }
    if (e.pins++ == 0) stats_.pinned_bytes += e.bytes;
  }
  // Room for the incoming ones; the check above guarantees that the unpinned experts suffice.
  while (stats_.budget_bytes > 0 && stats_.resident_bytes + incoming > stats_.budget_bytes) evict_one();
  for (ExpertKey k : keys) {
    Entry& e = entry(k);
    if (!e.held) {
      e.held = true;
      stats_.resident_bytes += e.bytes;
    }
  }
  return true;
}

void ExpertCache::release(const std::vector<ExpertKey>& requested) {
  const std::vector<ExpertKey> keys = distinct(requested);
  std::lock_guard lock(mutex_);
  ++tick_;
  for (ExpertKey k : keys) {
    Entry& e = entry(k);
    EMO_CHECK(e.pins > 0, kOp, "layer ", k.layer, ": expert ", k.expert, " released but not pinned");
    if (--e.pins > 0) continue;
    stats_.pinned_bytes -= e.bytes;
    e.last_use = tick_;
    evictable_.insert({e.last_use, index(k)});
  }
}

bool ExpertCache::held(ExpertKey key) const {
  std::lock_guard lock(mutex_);
  return entry(key).held;
}

int64_t ExpertCache::pins(ExpertKey key) const {
  std::lock_guard lock(mutex_);
  return entry(key).pins;
}

ExpertCacheStats ExpertCache::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

bool ExpertPins::add(const std::vector<ExpertKey>& keys) {
  if (!cache_.acquire(keys)) return false;
  acquired_.push_back(keys);
  return true;
}

}  // namespace emo
