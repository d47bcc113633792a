#include "core/thread_pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/log.h"

namespace emo {
namespace {

thread_local bool tl_in_region = false;

int hardware_threads() {
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? static_cast<int>(hw) : 1;
}

// EMO_THREADS when it is a positive integer, else the hardware threads.
int default_threads() {
  const char* env = std::getenv("EMO_THREADS");
  if (env == nullptr || *env == '\0') return hardware_threads();
  char* end = nullptr;
  errno = 0;
  const long n = std::strtol(env, &end, 10);
  if (errno == 0 && *end == '\0' && n > 0) return static_cast<int>(std::min<long>(n, 1L << 30));
  log_warn(cat("EMO_THREADS='", env, "' is not a positive thread count: ignored, using the ",
               hardware_threads(), " hardware threads"));
  return hardware_threads();
}

// How long an idle worker keeps polling for the next job (and the caller for the end of one) before it blocks
// on a condition variable. Waking a blocked thread costs about 40 us on this machine (measured: an empty
// parallel_for took 41-46 us with blocking alone), more than a whole decode-step matrix product of a small
// model; polling hands out back-to-back jobs in well under a microsecond, and a thread idle for longer than
// this sleeps, so a waiting pool does not keep a core busy.
constexpr auto kSpin = std::chrono::microseconds(100);

// A hint to the CPU that this thread is spinning (frees the core's resources for its sibling thread).
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// Polls until done() or kSpin has passed; returns done().
template <class Done>
bool spin_until(Done done) {
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (int i = 1;; ++i) {
    if (done()) return true;
    cpu_relax();
    if (i % 64 == 0 && std::chrono::steady_clock::now() > deadline) return done();
  }
}

// A fixed set of workers that take the tasks of a job from a shared counter. The caller takes tasks too, so
// a job never waits for a worker that has not started: on a busy machine (a worker not scheduled) the caller
// simply runs every task itself, and it only ever waits for tasks a worker is running.
//
// The counter holds (job number << 32 | next task); a thread claims a task with a compare-and-swap that also
// checks the job number, so a worker that wakes late can never claim a task of a job that has ended. While
// the caller describes a new job (task, count) the counter is marked closed, so no claim can pair the new
// description with the old job. Every atomic is sequentially consistent: a few operations per job.
class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop(); }

  int size() const { return n_; }

  // Starts n - 1 workers. When the system refuses one (thread limit, no memory for its stack) the pool keeps
  // only the caller's thread and the failure is an emo::Error, never an uncaught std::system_error.
  void resize(int n) {
    stop();
    quit_ = false;
    n_ = 1;
    try {
      for (int i = 1; i < n; ++i) workers_.emplace_back([this] { loop(); });
    } catch (const std::system_error& e) {
      const size_t started = workers_.size();
      stop();
      fail("thread_pool", cat("could not start worker thread ", started + 1, " of ", n - 1, ": ", e.what(),
                              " (the system's thread limit, `ulimit -u`, or memory for thread stacks): give "
                              "fewer threads with --threads N or EMO_THREADS"));
    }
    n_ = n;
  }

  // Runs task(t) for every t in [0, n_tasks), spread over the workers and the caller; rethrows the first
  // exception once every task has ended.
  void run(int64_t n_tasks, const std::function<void(int64_t)>& task) {
    if (n_ == 1 || n_tasks == 1) {
      for (int64_t t = 0; t < n_tasks; ++t) task(t);
      return;
    }
    const uint64_t job = (counter_.load() >> 32) + 1;
    // Closed first: a worker still looking at the last job fails its claim from here on, before the job's
    // description changes under it.
    counter_.store(job << 32 | kClosed);
    task_.store(&task);
    n_tasks_.store(n_tasks);
    finished_.store(0);
    error_ = nullptr;
    {
      // Opened under the lock so that a worker about to block sees it in its wait predicate.
      std::lock_guard<std::mutex> lock(mu_);
      counter_.store(job << 32);
    }
    cv_.notify_all();
    work(job);
    auto all_done = [&] { return finished_.load() == n_tasks; };
    if (!spin_until(all_done)) {
      std::unique_lock<std::mutex> lock(mu_);
      done_cv_.wait(lock, all_done);
    }
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // Claims and runs tasks of `job` until none is left.
  void work(uint64_t job) {
    for (;;) {
      uint64_t seen = counter_.load();
      int64_t t = -1;
      while (seen >> 32 == job) {
        if (seen & kClosed) {  // being described: a few stores away
          cpu_relax();
          seen = counter_.load();
          continue;
        }
        const int64_t next = static_cast<int64_t>(seen & kNextMask);
        if (next >= n_tasks_.load()) break;
        if (counter_.compare_exchange_weak(seen, seen + 1)) {
          t = next;
          break;
        }
      }
      if (t < 0) return;
      run_task(t);
    }
  }

  void run_task(int64_t t) {
    tl_in_region = true;
    try {
      (*task_.load())(t);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_) error_ = std::current_exception();
    }
    tl_in_region = false;
    if (finished_.fetch_add(1) + 1 == n_tasks_.load()) {
      // The caller may have stopped polling: wake it under the lock so the signal cannot be missed.
      std::lock_guard<std::mutex> lock(mu_);
      done_cv_.notify_one();
    }
  }

  void loop() {
    uint64_t job = counter_.load() >> 32;  // the last job seen
    for (;;) {
      auto next = [&] { return quit_.load() || counter_.load() >> 32 != job; };
      if (!spin_until(next)) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, next);
      }
      if (quit_.load()) return;
      job = counter_.load() >> 32;
      work(job);
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  int n_ = 1;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  static constexpr uint64_t kClosed = uint64_t(1) << 31, kNextMask = kClosed - 1;
  std::atomic<uint64_t> counter_{0};  // job number << 32 | closed flag | next task
  std::atomic<const std::function<void(int64_t)>*> task_{nullptr};
  std::atomic<int64_t> n_tasks_{0}, finished_{0};
  std::atomic<bool> quit_{false};
  std::exception_ptr error_;
};

// n, or max_threads() with a warning when n is above it.
int clamp_threads(int n) {
  if (n <= max_threads()) return n;
  log_warn(cat(n, " threads asked for: using ", max_threads(), ", the most emo runs (4x the ",
               hardware_threads(), " hardware threads, at least 16)"));
  return max_threads();
}

Pool& pool() {
  static Pool instance(clamp_threads(default_threads()));
  return instance;
}

}  // namespace

int num_threads() {
  return pool().size();
}

int max_threads() {
  return std::max(16, 4 * hardware_threads());
}

void set_num_threads(int n) {
  pool().resize(clamp_threads(n > 0 ? n : default_threads()));
}

bool in_parallel_region() {
  return tl_in_region;
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  const int64_t chunks = std::min<int64_t>(num_threads(), (n + grain - 1) / grain);
  if (chunks <= 1 || tl_in_region) {
    fn(0, n);
    return;
  }
  pool().run(chunks, [&](int64_t chunk) { fn(n * chunk / chunks, n * (chunk + 1) / chunks); });
}

void parallel_tasks(int64_t n_tasks, const std::function<void(int64_t)>& fn) {
  if (n_tasks <= 0) return;
  EMO_CHECK(n_tasks < (int64_t(1) << 31), "thread_pool", n_tasks, " tasks in one job (at most 2^31 - 1)");
  if (tl_in_region) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t);
    return;
  }
  pool().run(n_tasks, fn);
}

}  // namespace emo
