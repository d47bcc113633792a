// Weight matrices of inference in their stored format, used in place: fp32, bf16, int8 with one fp32
// scale per row (w[r, c] = scale[r] * q[r, c], symmetric, q in [-127, 127]), and 4-bit Q4_0 blocks
// (kernels/q4.h: products in integers against int8 blocks of the activations, for any number of tokens).
// Matrix-vector products for one token (decode) and small-matrix products for a few tokens or a prompt, fp32
// accumulation, on AVX2 + FMA + F16C or, where the CPU has them, AVX-512 instructions chosen at run time.
// Layout as everywhere in emo: PyTorch [out, in] = [OC, C], row-major. Legend: N = tokens, C = input width,
// OC = output rows.
#pragma once

#include <cstdint>
#include <vector>

#include "tensor/dtype.h"

namespace emo {

// A read-only [rows, cols] weight matrix in kF32, kBF16, kI8 (then `scales` holds rows fp32 values) or kQ4_0
// (cols a multiple of 32; each row q4_row_bytes(cols) bytes of blocks, scales inside).
// The bytes may live in a memory-mapped file; rows need no alignment.
struct MatrixView {
  DType dtype = DType::kF32;
  const void* data = nullptr;
  const float* scales = nullptr;  // [rows], kI8 only
  int64_t rows = 0, cols = 0;

  // Bytes of the weights (scales included): what one full pass over the matrix reads.
  int64_t nbytes() const;
  // The view of rows [begin, end).
  MatrixView row_block(int64_t begin, int64_t end) const;
};

// Bytes of one row of `cols` weights of dtype (kF32, kBF16, kI8 without its scale, kQ4_0).
int64_t matrix_row_bytes(DType dtype, int64_t cols);

// Throws "[quant] <what>: ..." unless the view is usable: supported dtype, data set, scales for kI8, whole
// blocks for kQ4_0.
void check_matrix_view(const MatrixView& w, const char* what);

// y[OC] = W[OC, C] @ x[C], on the calling thread.
void matvec_serial(float* y, const MatrixView& w, const float* x);
// The same, rows split over the thread pool.
void matvec(float* y, const MatrixView& w, const float* x);

// Y[N, OC] = X[N, C] @ W^T on the calling thread. Few tokens stream each weight row once for all of them;
// more tokens dequantise blocks of rows into fp32 and use sgemm (fp32 weights go to sgemm directly).
void matmul_serial(float* y, const float* x, int64_t N, const MatrixView& w);
// The same, output rows split over the thread pool.
void matmul(float* y, const float* x, int64_t N, const MatrixView& w);

// Several products of the same input in one parallel region (e.g. q, k and v): ys[i][N, ws[i].rows] =
// X[N, C] @ ws[i]^T; every matrix has C columns.
void matmul_group(const std::vector<float*>& ys, const float* x, int64_t N,
                  const std::vector<MatrixView>& ws);

// The instructions of every product (fp32, bf16, int8, q4): the one kernel choice of the process, from the
// CPU's features (core/machine's cpu_features, detected once). kAvx2: AVX2 + FMA, which every CPU emo runs on
// has. kAvx512: fp32 by AVX-512F FMA, bf16 by AVX-512 BF16 (vdpbf16ps, the activation split into two bf16
// parts, see quant_avx512.cpp), int8 by AVX-512 VNNI (vpdpwssd: the AVX2 kernel's integer arithmetic, so
// bit-identical results), q4 by AVX-512 VNNI (vpdpbusd, kernels/q4.h: bit-identical too); a format whose
// instructions the CPU lacks stays on AVX2. fp32, bf16 and int8 products of more than a few tokens use sgemm
// with either kernel.
enum class QuantKernel { kAvx2, kAvx512 };
const char* quant_kernel_name(QuantKernel kernel);  // "avx2", "avx512"
// Whether the kernel runs products of dtype (kF32, kBF16, kI8, kQ4_0) on this CPU; kAvx2 always does.
bool quant_kernel_available(QuantKernel kernel, DType dtype);
// The kernel products use: kAvx512 where the CPU has AVX-512F, unless the environment variable
// EMO_QUANT_KERNEL=avx2 or set_quant_kernel chose otherwise.
QuantKernel quant_kernel();
// Forces a kernel for the whole process (tests, benchmarks); throws "[quant] ..." for kAvx512 on a CPU
// without AVX-512F.
void set_quant_kernel(QuantKernel kernel);

// out[(end - begin), C] = rows [begin, end) of W in fp32.
void dequantize_rows(float* out, const MatrixView& w, int64_t begin, int64_t end);

// Symmetric per-row int8: scales[r] = max|w[r, :]| / 127 (1 for an all-zero row), q = round(w / scale).
// w[rows, cols] -> q[rows, cols], scales[rows]. Rows split over the pool.
void quantize_rows_int8(int8_t* q, float* scales, const float* w, int64_t rows, int64_t cols);

}  // namespace emo
