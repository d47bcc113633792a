#include "kernels/gemm.h"

#include <cblas.h>

#include <algorithm>
#include <mutex>

#include "core/thread_pool.h"

namespace emo {
namespace {

// Below this many multiply-adds a product is not worth handing to the pool.
constexpr int64_t kParallelMinMacs = int64_t{1} << 20;
// Split points are rounded to this many rows/columns so every piece keeps whole BLAS micro-tiles.
constexpr int64_t kSplitAlign = 16;
// A large product is always cut into this many pieces, whatever the thread count: OpenBLAS's result for a row
// depends on the M of the call (on some CPUs it picks other kernels for other sizes), so a split that
// followed the thread count would make 1 and 2 threads round differently.
constexpr int64_t kGemmPieces = 2;

}  // namespace

void blas_init() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

void gemm_serial(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  blas_init();
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha, A, static_cast<int>(lda),
              B, static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
}

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  blas_init();
  if (in_parallel_region() || M * N * std::max<int64_t>(K, 1) < kParallelMinMacs) {
    gemm_serial(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // Split the longer of M and N into kGemmPieces; each piece is an independent sub-product, run by whichever
  // thread is free (one thread runs them in turn).
  bool split_m = M >= N;
  int64_t extent = split_m ? M : N;
  int64_t pieces = std::min<int64_t>(kGemmPieces, std::max<int64_t>(1, extent / kSplitAlign));
  auto boundary = [&](int64_t p) {
    if (p == pieces) return extent;
    return std::min(extent, (extent * p / pieces + kSplitAlign / 2) / kSplitAlign * kSplitAlign);
  };
  parallel_tasks(pieces, [&](int64_t p) {
    int64_t begin = boundary(p), end = boundary(p + 1);
    if (begin >= end) return;
    if (split_m) {
      // op(A) rows begin..end: rows of A, or columns of A when A is stored transposed.
      const float* a_part = trans_a ? A + begin : A + begin * lda;
      gemm_serial(trans_a, trans_b, end - begin, N, K, alpha, a_part, lda, B, ldb, beta, C + begin * ldc,
                  ldc);
    } else {
      // op(B) columns begin..end: columns of B, or rows of B when B is stored transposed.
      const float* b_part = trans_b ? B + begin * ldb : B + begin;
      gemm_serial(trans_a, trans_b, M, end - begin, K, alpha, A, lda, b_part, ldb, beta, C + begin, ldc);
    }
  });
}

}  // namespace emo
