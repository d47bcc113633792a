#include <gtest/gtest.h>

#include <atomic>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "tensor/dtype.h"
#include "tensor/tensor.h"

namespace emo {

TEST(Error, MessageStartsWithOperationAndNamesFile) {
  try {
    fail_at("safetensors", "model.safetensors", "byte 12", "header is truncated");
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "[safetensors] model.safetensors: byte 12: header is truncated");
  }
}

TEST(ThreadPool, ParallelForCoversRangeOnce) {
  std::vector<std::atomic<int>> hits(1000);
  parallel_for(1000, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[i]++;
  });
  for (auto& h : hits) EXPECT_EQ(h.load(), 1);
}

TEST(ThreadPool, TasksRunOnceAndExceptionsPropagate) {
  std::vector<std::atomic<int>> hits(37);
  parallel_tasks(37, [&](int64_t t) { hits[t]++; });
  for (auto& h : hits) EXPECT_EQ(h.load(), 1);
  EXPECT_THROW(parallel_tasks(8, [&](int64_t t) {
                 if (t == 5) fail("test", "boom");
               }),
               Error);
}

TEST(Rng, ReproducibleAndRestorable) {
  Rng a(42), b(42);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(a.next_u32(), b.next_u32());
  uint64_t s = a.state(), inc = a.inc();
  uint32_t next = a.next_u32();
  Rng c;
  c.restore(s, inc);
  EXPECT_EQ(c.next_u32(), next);
  for (int i = 0; i < 1000; ++i) {
    int64_t v = a.uniform_int(8, 64);
    EXPECT_GE(v, 8);
    EXPECT_LE(v, 64);
  }
}

TEST(DType, Bf16RoundTripAndRounding) {
  float values[] = {0.0f, 1.0f, -2.5f, 3.14159f, 1e-20f, 65504.0f};
  for (float v : values) {
    float r = bf16_to_f32(f32_to_bf16(v));
    EXPECT_NEAR(r, v, std::abs(v) * (1.0f / 128));
    EXPECT_EQ(f32_to_bf16(r), f32_to_bf16(v));  // idempotent
  }
  EXPECT_THROW(dtype_from_name("F8_E4M3"), Error);
}

TEST(Tensor, ShapeChecks) {
  Tensor t({2, 3});
  EXPECT_EQ(t.size(), 6);
  EXPECT_THROW(t.reshape({4, 2}), Error);
  EXPECT_THROW(Tensor({2, 2}, std::vector<float>(3)), Error);
}

}  // namespace emo
