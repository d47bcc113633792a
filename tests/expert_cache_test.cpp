// The expert cache under a byte budget (src/infer/expert_cache): least-recently-used eviction, pins never
// evicted, refusal without side effects; and InferWeights giving an evicted expert's pages back.
#include "infer/expert_cache.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include "core/error.h"
#include "infer/resident.h"
#include "infer/weights.h"
#include "tiny_emo.h"

namespace emo {
namespace {

// Two layers of five experts of 10 bytes each; evictions recorded in order.
struct Books {
  std::vector<ExpertKey> evicted;
  ExpertCache cache;
  explicit Books(int64_t budget)
      : cache({std::vector<int64_t>(5, 10), std::vector<int64_t>(5, 10)}, budget,
              [this](int64_t l, int64_t e) {
                evicted.push_back({static_cast<int32_t>(l), static_cast<int32_t>(e)});
              }) {}
  // Acquires and releases at once: the keys become the most recently used.
  void use(const std::vector<ExpertKey>& keys) {
    ASSERT_TRUE(cache.acquire(keys));
    cache.release(keys);
  }
};

TEST(ExpertCache, EvictsTheLeastRecentlyUsedFirst) {
  Books b(30);
  b.use({{0, 0}});
  b.use({{0, 1}});
  b.use({{1, 2}});
  b.use({{0, 0}});  // a hit: now 0/1 is the oldest, then 1/2, then 0/0
  EXPECT_TRUE(b.evicted.empty());
  b.use({{0, 3}});
  EXPECT_EQ(b.evicted, (std::vector<ExpertKey>{{0, 1}}));
  b.use({{0, 4}, {1, 0}});
  EXPECT_EQ(b.evicted, (std::vector<ExpertKey>{{0, 1}, {1, 2}, {0, 0}}));
  const ExpertCacheStats s = b.cache.stats();
  EXPECT_EQ(s.hits, 1);
  EXPECT_EQ(s.misses, 6);
  EXPECT_EQ(s.evictions, 3);
  EXPECT_EQ(s.resident_bytes, 30);
  EXPECT_EQ(s.pinned_bytes, 0);
  EXPECT_TRUE(b.cache.held({0, 3}) && b.cache.held({0, 4}) && b.cache.held({1, 0}));
  EXPECT_FALSE(b.cache.held({0, 0}));
}

TEST(ExpertCache, PinnedExpertsAreNeverEvicted) {
  Books b(30);
  ASSERT_TRUE(b.cache.acquire({{0, 0}, {0, 1}}));  // pinned
  b.use({{0, 2}});
  b.use({{0, 3}});  // room only by evicting 0/2: the pinned ones are older but stay
  EXPECT_EQ(b.evicted, (std::vector<ExpertKey>{{0, 2}}));
  EXPECT_EQ(b.cache.pins({0, 0}), 1);
  // A second sequence pinning one of them too: two releases before it may go.
  ASSERT_TRUE(b.cache.acquire({{0, 1}}));
  EXPECT_EQ(b.cache.pins({0, 1}), 2);
  b.cache.release({{0, 0}, {0, 1}});
  b.use({{1, 1}, {1, 2}});  // needs 20 bytes: 0/3 and 0/0 go, 0/1 is still pinned once
  EXPECT_EQ(b.evicted, (std::vector<ExpertKey>{{0, 2}, {0, 3}, {0, 0}}));
  EXPECT_TRUE(b.cache.held({0, 1}));
  b.cache.release({{0, 1}});
  EXPECT_EQ(b.cache.stats().pinned_bytes, 0);
}

TEST(ExpertCache, RefusesWhatCannotFitAndChangesNothing) {
  Books b(30);
  b.use({{0, 0}});
  ASSERT_TRUE(b.cache.acquire({{0, 1}, {0, 2}}));
  const ExpertCacheStats before = b.cache.stats();
  // 20 pinned + 20 more > 30, even though 0/0 could be evicted.
  EXPECT_FALSE(b.cache.acquire({{1, 0}, {1, 1}}));
  // More than the budget on its own.
  EXPECT_FALSE(b.cache.fits({{1, 0}, {1, 1}, {1, 2}, {1, 3}}));
  EXPECT_FALSE(b.cache.acquire({{1, 0}, {1, 1}, {1, 2}, {1, 3}}));
  const ExpertCacheStats after = b.cache.stats();
  EXPECT_EQ(after.hits, before.hits);
  EXPECT_EQ(after.misses, before.misses);
  EXPECT_EQ(after.resident_bytes, before.resident_bytes);
  EXPECT_TRUE(b.evicted.empty());
  EXPECT_EQ(b.cache.pins({1, 0}), 0);
  // Keys pinned already count once: 0/1 and 0/2 again plus one more fits.
  EXPECT_TRUE(b.cache.fits({{0, 1}, {0, 1}, {0, 2}}));
  EXPECT_TRUE(b.cache.acquire({{0, 1}, {0, 2}, {1, 4}}));
  EXPECT_EQ(b.evicted, (std::vector<ExpertKey>{{0, 0}}));
  EXPECT_THROW(b.cache.acquire({{2, 0}}), Error);
  EXPECT_THROW(b.cache.acquire({{0, 5}}), Error);
  EXPECT_THROW(b.cache.release({{1, 3}}), Error);
}

TEST(ExpertCache, WithoutABudgetNothingIsEvicted) {
  Books b(0);
  for (int32_t e = 0; e < 5; ++e) b.use({{0, e}, {1, e}});
  EXPECT_TRUE(b.evicted.empty());
  EXPECT_EQ(b.cache.stats().resident_bytes, 100);
  EXPECT_TRUE(b.cache.fits({{0, 0}, {0, 1}, {0, 2}, {0, 3}, {0, 4}, {1, 0}}));
}

// An evicted expert of a real checkpoint: its pages leave the process, and loading it again reads the same
// weights.
TEST(ExpertCache, EvictingUnloadsTheExpertsPages) {
  test::TempDir dir("emo_expert_cache_test_");
  test::write_tiny_emo(dir / "model", 1024, 64 << 20);  // experts of 3 x 16 x 1024 fp32 = 192 KiB
  auto weights = InferWeights::open(dir / "model");
  ExpertCache cache(*weights, 2 * weights->expert_bytes(0, 0));
  EXPECT_EQ(weights->expert_bytes(0, 0), 3 * 16 * 1024 * 4);
  auto touch = [&](int64_t l, int64_t e) {
    const ExpertView& v = weights->load_expert(l, e);
    float sum = 0;
    for (const MatrixView* m : {&v.gate, &v.up, &v.down})
      for (int64_t i = 0; i < m->rows * m->cols; ++i) sum += static_cast<const float*>(m->data)[i];
    return sum;
  };
  auto resident = [&](int64_t l, int64_t e) {
    int64_t bytes = 0;
    for (const MemoryRange& r : weights->expert_ranges(l, e))
      bytes += mapped_resident_bytes(r.begin, r.bytes);
    return bytes;
  };
  ASSERT_TRUE(cache.acquire({{0, 1}}));
  const float first = touch(0, 1);
  EXPECT_GE(resident(0, 1), weights->expert_bytes(0, 1));
  cache.release({{0, 1}});
  ASSERT_TRUE(cache.acquire({{0, 2}, {0, 3}}));  // no room for 0/1 any more
  EXPECT_FALSE(weights->expert_loaded(0, 1));
  // At most the pages it shares with its neighbours stay.
  EXPECT_LE(resident(0, 1), 2 * static_cast<int64_t>(sysconf(_SC_PAGESIZE)));
  cache.release({{0, 2}, {0, 3}});
  ASSERT_TRUE(cache.acquire({{0, 1}}));
  EXPECT_EQ(touch(0, 1), first);
  EXPECT_EQ(cache.stats().evictions, 2);
}

}  // namespace
}  // namespace emo
