// Matrix multiply over BLAS (OpenBLAS, single-threaded; emo's thread pool splits large products).
#pragma once

#include <cstdint>

namespace emo {

// C[M,N] = alpha * op(A) @ op(B) + beta * C, row-major; op(A) is [M,K], op(B) is [K,N].
// lda/ldb/ldc are the row strides of A, B, C as stored. Splits M (or N) over the pool when large.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// The same on the calling thread only (for use inside parallel_tasks, e.g. one expert per thread).
void gemm_serial(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// Makes BLAS single-threaded; called once at start-up by the pool's first use of gemm.
void blas_init();

}  // namespace emo
