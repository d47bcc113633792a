#include <gtest/gtest.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <numeric>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "run_emo.h"
#include "sanitizer.h"
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

TEST(ThreadPool, AThreadTheSystemRefusesIsAnErrorAndThePoolStillWorks) {
#ifdef EMO_TEST_UNDER_ASAN
  GTEST_SKIP() << "ASan replaces thread creation";
#else
  // Every new thread asks for a stack of 2^50 bytes, which no system maps: std::thread throws
  // std::system_error, which must come out as an emo::Error, not an abort.
  set_num_threads(2);  // the pool exists before thread creation fails
  pthread_attr_t saved, huge;
  ASSERT_EQ(pthread_getattr_default_np(&saved), 0);
  ASSERT_EQ(pthread_attr_init(&huge), 0);
  ASSERT_EQ(pthread_attr_setstacksize(&huge, size_t{1} << 50), 0);
  ASSERT_EQ(pthread_setattr_default_np(&huge), 0);
  std::string message;
  try {
    set_num_threads(3);
  } catch (const Error& e) {
    message = e.what();
  }
  ASSERT_EQ(pthread_setattr_default_np(&saved), 0);
  pthread_attr_destroy(&huge);
  pthread_attr_destroy(&saved);
  EXPECT_NE(message.find("[thread_pool] could not start worker thread 1 of 2"), std::string::npos) << message;
  EXPECT_EQ(num_threads(), 1);
  set_num_threads(2);
  EXPECT_EQ(num_threads(), 2);
  std::atomic<int> sum{0};
  parallel_tasks(10, [&](int64_t t) { sum += static_cast<int>(t); });
  EXPECT_EQ(sum.load(), 45);
#endif
}

TEST(ThreadPool, CountsAboveTheMaximumAreClampedAndBadEnvironmentIgnored) {
  set_num_threads(max_threads() + 100000);
  EXPECT_EQ(num_threads(), max_threads());
  EXPECT_GE(max_threads(), 16);
  set_num_threads(2);
  // The command line: a huge count is clamped with a warning (it aborted after 15 s before), 0 and -1 are
  // refused rather than read as "all cores", a bad EMO_THREADS is ignored with a warning.
  const test::EmoRun huge = test::run_emo("--threads 100000 info /nonexistent-model-dir");
  EXPECT_EQ(huge.status, 1) << huge.err;
  EXPECT_NE(huge.err.find("100000 threads asked for: using"), std::string::npos) << huge.err;
  EXPECT_EQ(huge.err.find("internal error"), std::string::npos) << huge.err;
  for (const char* bad : {"0", "-1"}) {
    const test::EmoRun refused =
        test::run_emo(std::string("--threads ") + bad + " info /nonexistent-model-dir");
    EXPECT_NE(refused.status, 0) << bad;
    EXPECT_NE(refused.err.find("--threads"), std::string::npos) << refused.err;
  }
  const test::EmoRun bad_env = test::run_emo_env("EMO_THREADS=lots", "info /nonexistent-model-dir");
  EXPECT_NE(bad_env.err.find("EMO_THREADS='lots' is not a positive thread count"), std::string::npos)
      << bad_env.err;
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
  EXPECT_THROW(parallel_tasks(8,
                              [&](int64_t t) {
                                if (t == 5) fail("test", "boom");
                              }),
               Error);
}

// The pool hands tasks out through one counter shared by the workers and the caller: back-to-back jobs (no
// worker asleep), jobs after the workers have gone to sleep, a resized pool and nested regions must each run
// every task exactly once.
TEST(ThreadPool, EveryTaskRunsOnceAcrossManyJobsSleepsAndResizes) {
  const int threads = num_threads();
  for (int pool_size : {4, 2, 3}) {
    set_num_threads(pool_size);
    for (int job = 0; job < 2000; ++job) {
      const int64_t n = 1 + job % 13;
      std::vector<std::atomic<int>> hits(n);
      parallel_tasks(n, [&](int64_t t) { hits[t]++; });
      for (auto& h : hits) ASSERT_EQ(h.load(), 1) << "job " << job << " pool " << pool_size;
      if (job % 500 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));  // workers block
    }
    std::atomic<int64_t> covered{0};
    parallel_for(64, 1, [&](int64_t b, int64_t e) {
      EXPECT_TRUE(in_parallel_region());
      parallel_for(e - b, 1, [&](int64_t b2, int64_t e2) { covered += e2 - b2; });  // nested: serial
    });
    EXPECT_EQ(covered.load(), 64);
    EXPECT_FALSE(in_parallel_region());
  }
  set_num_threads(threads);
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

TEST(Sizes, ParseBytesReadsUnitsAndRefusesTheRest) {
  EXPECT_EQ(parse_bytes("1048576", "--x"), 1048576);
  EXPECT_EQ(parse_bytes("512MiB", "--x"), 512ll << 20);
  EXPECT_EQ(parse_bytes("2GiB", "--x"), 2ll << 30);
  EXPECT_EQ(parse_bytes("2g", "--x"), 2ll << 30);
  EXPECT_EQ(parse_bytes("1.5 KiB", "--x"), 1536);
  EXPECT_EQ(parse_bytes("3MB", "--x"), 3'000'000);
  EXPECT_EQ(parse_bytes("10B", "--x"), 10);
  for (const char* bad : {"", "GiB", "2XB", "2 GiBs", "-1", "1.2.3", "1e3", "99999999999TiB"}) {
    SCOPED_TRACE(bad);
    try {
      parse_bytes(bad, "--memory-budget");
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--memory-budget '"), std::string::npos) << e.what();
    }
  }
}

}  // namespace emo
