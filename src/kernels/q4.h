// 4-bit weights in llama.cpp's Q4_0 block layout, byte for byte, so that a GGUF writer copies the blocks
// unchanged: each row of a [rows, cols] matrix is cols / 32 blocks of 18 bytes, an fp16 scale d followed by
// 16 bytes of nibbles; byte j holds element j in its low nibble and element j + 16 in its high nibble, and
// the weight is (q - 8) * d. Products quantise the activations to int8 blocks of 32 (one fp32 scale per
// block, like llama.cpp's Q8_0) and multiply in integers: a scalar reference, AVX2 (maddubs / madd) and
// AVX-512 VNNI (dpbusd on 256-bit vectors, compiled with target attributes, chosen at run time where the CPU
// has it, by the one kernel choice of kernels/quant.h). Legend: N = tokens, C = input width (cols), OC =
// output rows.
#pragma once

#include <cstdint>

#include "tensor/dtype.h"  // kQ4BlockWeights, kQ4BlockBytes

namespace emo {

struct BlockQ4_0 {
  uint16_t d;      // fp16 scale (IEEE half, as llama.cpp's ggml_half)
  uint8_t qs[16];  // low nibbles: elements 0..15, high nibbles: elements 16..31
};
static_assert(sizeof(BlockQ4_0) == kQ4BlockBytes, "Q4_0 blocks are 18 bytes, as in llama.cpp");

// Bytes of one row of `cols` weights (cols a multiple of 32).
inline int64_t q4_row_bytes(int64_t cols) {
  return cols / kQ4BlockWeights * kQ4BlockBytes;
}

// One row: cols (a multiple of 32) fp32 values -> cols / 32 blocks. As llama.cpp's quantize_row_q4_0_ref:
// d = (the value of largest magnitude) / -8, q = min(15, trunc(w / d + 8.5)), so that value is exactly -8 d.
void quantize_row_q4_0(const float* w, BlockQ4_0* out, int64_t cols);
// The same layout with the scale chosen per block for the least squared error instead of from the extreme
// value: candidates d = extreme / s for s in [-8.5, -6] and [6.5, 7.5] (the extreme may round inward, giving
// the other 31 weights finer steps, or sit on the +7 end), each refined once by least squares for its
// rounded q, the best kept. Dequantises
// (and multiplies) exactly as Q4_0, so llama.cpp reads it unchanged.
void quantize_row_q4_0_fitted(const float* w, BlockQ4_0* out, int64_t cols);

// How quantize_rows_q4_0 chooses each block's scale.
enum class Q4Scale { kExtreme, kFitted };
// w[rows, cols] -> rows * q4_row_bytes(cols) bytes at out. Rows split over the pool. Throws "[quant] ..."
// when cols is not a multiple of 32.
void quantize_rows_q4_0(uint8_t* out, const float* w, int64_t rows, int64_t cols,
                        Q4Scale scale = Q4Scale::kExtreme);
// cols / 32 blocks -> cols fp32 values (convert_to_f32 of tensor/dtype).
void dequantize_row_q4_0(const BlockQ4_0* in, float* out, int64_t cols);

// Activations in int8 blocks of 32: x[c] ~= d[c / 32] * q[c], d = max|block| / 127 (1 for an all-zero block).
void quantize_row_q8(const float* x, int8_t* q, float* d, int64_t cols);

// The implementations of q4_dot_rows. Products (kernels/quant.h) take kAvx512Vnni where quant_kernel() is
// kAvx512 and the CPU has AVX-512 VNNI + VL, else kAvx2; kScalar is the reference tests compare against.
enum class Q4Kernel { kScalar, kAvx2, kAvx512Vnni };
const char* q4_kernel_name(Q4Kernel kernel);

// y[t * ldy + r] = dot(W[r, :], x[t, :]) for r < rows, t < N, on the calling thread: W is rows rows of Q4_0
// blocks (q4_row_bytes(cols) bytes each), x given as quantize_row_q8 made it (xq [N, cols], xd [N, cols /
// 32]).
void q4_dot_rows(Q4Kernel kernel, float* y, int64_t ldy, const uint8_t* w, int64_t rows, int64_t cols,
                 const int8_t* xq, const float* xd, int64_t N);

}  // namespace emo
