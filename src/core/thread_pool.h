// The one thread pool of emo. Kernels split their work with parallel_for; BLAS runs single-threaded inside
// (see kernels/gemm), so the pool alone owns the cores and nothing oversubscribes them.
#pragma once

#include <cstdint>
#include <functional>

namespace emo {

// Number of worker threads (including the caller). Default: EMO_THREADS (a positive integer; anything else is
// ignored with a warning) or the machine's hardware threads.
int num_threads();
// The most threads the pool runs: 4x the hardware threads, at least 16. More threads than cores only add
// switching, and a mistyped count (100000) would exhaust the process's thread limit.
int max_threads();
// Resizes the pool; n <= 0 means the default, n above max_threads() is clamped to it with a warning. A thread
// the system refuses to start is an emo::Error naming the count (the pool is left with one thread, the
// caller's). Not to be called from inside parallel_for.
void set_num_threads(int n);

// Calls fn(begin, end) on disjoint chunks covering [0, n), in parallel, and returns when all are done.
// Chunks are at least `grain` items. Nested calls run serially on the calling thread.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t begin, int64_t end)>& fn);

// Calls fn(task) for task in [0, n_tasks), each task on one thread, tasks handed out dynamically
// (for uneven work such as experts with different token counts).
void parallel_tasks(int64_t n_tasks, const std::function<void(int64_t task)>& fn);

// True on a pool worker while it runs a parallel region.
bool in_parallel_region();

}  // namespace emo
